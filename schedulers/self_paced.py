"""Self-Paced GRPO: a reward curriculum that advances when rewards saturate (report §3.4).

As the generator improves, a reward's scores cluster at the ceiling and its intra-group std
vanishes, so its group-relative advantage (report eq. 1) collapses to noise. The curriculum
watches each reward's intra-group std (discriminability) and mean (saturation) and moves the
weight through three phases, in order:

    visual_fidelity -> temporal_coherence -> semantic_alignment

Rule (hysteresis): steps are grouped into non-overlapping windows of `window` steps. A window
"satisfies" the current phase when EVERY reward of that phase has window-mean intra-group std
< std_threshold (it stopped discriminating) and, if saturation_threshold is set, window-mean
reward >= saturation_threshold (it is flat because it is mastered, not because it is too hard).
After `patience` consecutive satisfying windows the curriculum advances one phase; a window that
does not satisfy resets the count. It never moves back on its own (`set_phase` moves explicitly).

Blend: the current phase's rewards share 1 - floor of the weight and all rewards of earlier
phases share `floor` (equally per reward), so mastered skills keep a little pressure and are not
forgotten; later phases get 0. With no earlier phase the current phase gets everything.
Phases with no reward mapped to them are skipped. Plain Python state, JSON-serialisable.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch

PHASES = ("visual_fidelity", "temporal_coherence", "semantic_alignment")


class SelfPacedCurriculum:
    """Competence-aware reward weights for the joint reward (report §3.4).

    Usage per GRPO step: curriculum.observe({name: group_rewards [P, G]}); then use
    curriculum.weights() as the per-reward weights. Rewards not named in reward_phases (e.g. a
    safety gate) are ignored here. Does not look at the policy; only at reward statistics.
    """

    def __init__(
        self,
        reward_phases: Mapping[str, str],
        window: int = 8,
        std_threshold: float = 0.05,
        saturation_threshold: float | None = None,
        patience: int = 2,
        floor: float = 0.1,
    ):
        if not reward_phases:
            raise ValueError("reward_phases must map at least one reward name to a phase")
        for name, phase in reward_phases.items():
            if phase not in PHASES:
                raise ValueError(f"reward_phases[{name!r}] = {phase!r}; accepted phases are {PHASES}")
        if window < 1 or patience < 1:
            raise ValueError(f"window and patience must be >= 1, got window={window}, patience={patience}")
        if not 0.0 <= floor < 1.0:
            raise ValueError(f"floor must be in [0, 1), got {floor}")
        self.reward_phases = dict(reward_phases)
        self.window = int(window)
        self.std_threshold = float(std_threshold)
        self.saturation_threshold = None if saturation_threshold is None else float(saturation_threshold)
        self.patience = int(patience)
        self.floor = float(floor)
        self.phases = [p for p in PHASES if p in self.reward_phases.values()]  # skip empty phases
        self._phase_index = 0
        self._step = 0
        self._streak = 0
        self._window_stats: dict[str, dict[str, list[float]]] = self._empty_window()
        self._steps_in_window = 0
        self.last_window: dict[str, dict[str, float]] = {}  # per reward {"std", "mean"} for logging
        self.transitions: list[dict[str, Any]] = []  # {"step", "from", "to", "reason"}

    # -- reading ----------------------------------------------------------------------------------

    @property
    def phase(self) -> str:
        return self.phases[self._phase_index]

    @property
    def step(self) -> int:
        return self._step

    def weights(self) -> dict[str, float]:
        """Per-reward weights summing to 1: 1 - floor on the current phase, floor on earlier ones."""
        current = [n for n, p in self.reward_phases.items() if p == self.phase]
        earlier = [n for n, p in self.reward_phases.items() if self.phases.index(p) < self._phase_index]
        share_current = 1.0 - self.floor if earlier else 1.0
        weights = {name: 0.0 for name in self.reward_phases}
        for name in current:
            weights[name] = share_current / len(current)
        for name in earlier:
            weights[name] = self.floor / len(earlier)
        return weights

    # -- updating ---------------------------------------------------------------------------------

    def observe(self, group_rewards: Mapping[str, torch.Tensor]) -> None:
        """Record one step: per reward, mean over groups of the intra-group (population) std and
        the mean reward; closes a window every `window` steps and maybe advances the phase."""
        self._step += 1
        for name in self.reward_phases:
            if name in group_rewards:
                rewards = torch.as_tensor(group_rewards[name]).detach().to("cpu", torch.float64)
                rewards = rewards.reshape(-1, rewards.shape[-1])  # [P, G]
                self._window_stats[name]["std"].append(float(rewards.std(dim=-1, correction=0).mean()))
                self._window_stats[name]["mean"].append(float(rewards.mean()))
        self._steps_in_window += 1
        if self._steps_in_window == self.window:
            self._close_window()

    def set_phase(self, phase: str, reason: str = "explicit") -> None:
        """Move to any phase (forward or back) on request; the only way to move back."""
        if phase not in self.phases:
            raise ValueError(f"phase {phase!r} is not an active phase; accepted: {self.phases}")
        self._move_to(self.phases.index(phase), reason)

    def _close_window(self) -> None:
        self.last_window = {
            name: {key: sum(values) / len(values) for key, values in stats.items()}
            for name, stats in self._window_stats.items()
            if stats["std"]
        }
        self._window_stats = self._empty_window()
        self._steps_in_window = 0
        if self._phase_index == len(self.phases) - 1:
            return  # last phase: nothing to advance to
        current = [n for n, p in self.reward_phases.items() if p == self.phase]
        exhausted = [n for n in current if self._saturated(n)]
        self._streak = self._streak + 1 if len(exhausted) == len(current) else 0
        if self._streak >= self.patience:
            detail = ", ".join(
                f"{n} std={self.last_window[n]['std']:.4g} mean={self.last_window[n]['mean']:.4g}" for n in current
            )
            self._move_to(
                self._phase_index + 1,
                f"{self.phase} rewards stopped discriminating (std < {self.std_threshold:g}) for "
                f"{self.patience} windows of {self.window} steps: {detail}",
            )

    def _saturated(self, name: str) -> bool:
        stats = self.last_window.get(name)
        if stats is None:  # not observed this window: no evidence of saturation
            return False
        high_enough = self.saturation_threshold is None or stats["mean"] >= self.saturation_threshold
        return stats["std"] < self.std_threshold and high_enough

    def _move_to(self, index: int, reason: str) -> None:
        if index != self._phase_index:
            self.transitions.append(
                {"step": self._step, "from": self.phase, "to": self.phases[index], "reason": reason}
            )
        self._phase_index = index
        self._streak = 0
        self._window_stats = self._empty_window()
        self._steps_in_window = 0

    def _empty_window(self) -> dict[str, dict[str, list[float]]]:
        return {name: {"std": [], "mean": []} for name in self.reward_phases}

    # -- checkpointing ----------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """JSON-serialisable state (the config is included to check it on load)."""
        return {
            "reward_phases": dict(self.reward_phases),
            "phase": self.phase,
            "step": self._step,
            "streak": self._streak,
            "steps_in_window": self._steps_in_window,
            "window_stats": {n: {k: list(v) for k, v in s.items()} for n, s in self._window_stats.items()},
            "last_window": {n: dict(s) for n, s in self.last_window.items()},
            "transitions": [dict(t) for t in self.transitions],
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if dict(state["reward_phases"]) != self.reward_phases:
            raise ValueError(
                f"checkpoint reward_phases {dict(state['reward_phases'])} differ from this curriculum's "
                f"{self.reward_phases}"
            )
        self._phase_index = self.phases.index(state["phase"])
        self._step = int(state["step"])
        self._streak = int(state["streak"])
        self._steps_in_window = int(state["steps_in_window"])
        self._window_stats = {
            n: {k: [float(x) for x in v] for k, v in s.items()} for n, s in state["window_stats"].items()
        }
        self.last_window = {n: {k: float(x) for k, x in s.items()} for n, s in state["last_window"].items()}
        self.transitions = [dict(t) for t in state["transitions"]]

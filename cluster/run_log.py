"""Per-run metrics: one JSON line per step in `metrics.jsonl`, and the reward curve as a PNG."""

from __future__ import annotations

import json
from pathlib import Path


class MetricsLog:
    """Append-only JSONL; on resume, lines after the checkpoint's step are dropped so the file
    describes exactly one history."""

    def __init__(self, run_dir: str | Path, resume_step: int | None = None, name: str = "metrics.jsonl"):
        self.path = Path(run_dir) / name
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if resume_step is None:
            self.path.write_text("")
        elif self.path.exists():
            kept = [line for line in self.path.read_text().splitlines() if line and json.loads(line)["step"] <= resume_step]
            self.path.write_text("".join(line + "\n" for line in kept))

    def write(self, record: dict) -> None:
        with open(self.path, "a") as handle:
            handle.write(json.dumps(record) + "\n")

    def records(self) -> list[dict]:
        return [json.loads(line) for line in self.path.read_text().splitlines() if line]


def plot_curves(records: list[dict], keys: list[str], path: str | Path, title: str) -> Path:
    """Line plot of `keys` against step (with a moving average) — what people look at first."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for key in keys:
        points = [(r["step"], r[key]) for r in records if r.get(key) is not None]
        if not points:
            continue
        steps, values = map(list, zip(*points))
        window = max(1, len(values) // 8)
        if window == 1:  # sparse series (e.g. periodic evals): points joined, nothing to smooth
            ax.plot(steps, values, marker="o", label=key)
            continue
        line, = ax.plot(steps, values, alpha=0.35, label=f"{key} (per step)")
        smooth = [sum(values[max(0, i - window + 1): i + 1]) / len(values[max(0, i - window + 1): i + 1]) for i in range(len(values))]
        ax.plot(steps, smooth, color=line.get_color(), label=f"{key} (moving avg {window})")
    ax.set_xlabel("step")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)

"""Peak memory and seconds per Diffusion-DPO step for each backward schedule, and the report's claims.

    python -m bench.dpo_memory [--quick] [--repeats 3] [--threads 1]

Each mode (`algorithms.dpo.dpo_step`: standard, decoupled, sequential) runs in its OWN fresh
process (forked from a server that imported torch and diffusers once) on the same Wan transformer
(diffusers `WanTransformer3DModel`, few parameters, many tokens, so activations dominate) and the
same batch, for equal and for unequal winner/loser lengths. The processes stay up and are timed
in interleaved rounds, so a load change on a shared machine touches every mode alike. Memory is the step's peak above the memory held before it: CUDA max_memory_allocated
on a GPU; on CPU the peak RSS (VmHWM, reset through /proc/self/clear_refs) minus the RSS before
the step, measured while glibc returns every block over 64 KiB to the OS at once. Time is
measured in later steps with glibc caching freed memory instead, as PyTorch's CUDA allocator
does, so neither mode pays page faults the other does not: wall seconds on a GPU, the process's
CPU seconds on CPU (the work done, unaffected by other jobs on a shared machine).

Report §6.2 claims decoupled backpropagation brings peak memory from O(L_w + L_l) to
O(max(L_w, L_l)) with zero computational overhead. A claim is judged held when the measured
memory ratio to standard lies closer to max/(sum) than to 1, and when time is within 10 %.
"""

from __future__ import annotations

import argparse
import copy
import ctypes
import gc
import itertools
import multiprocessing
import re
import statistics
import time
from dataclasses import dataclass

import torch

from algorithms.dpo import MODES, dpo_step, make_preference_batch

TIME_TOLERANCE = 0.10


@dataclass(frozen=True)
class Setup:
    """Model and batch sizes; latent frames per branch are the L_w, L_l of §6.2."""

    heads: int
    head_dim: int
    layers: int
    ffn_dim: int
    channels: int
    size: int  # latent height = width
    frames: int  # latent frames of the longer clip
    batch: int = 1
    text_length: int = 16
    text_dim: int = 32


FULL = Setup(heads=4, head_dim=32, layers=4, ffn_dim=512, channels=16, size=32, frames=8)
QUICK = Setup(heads=2, head_dim=16, layers=2, ffn_dim=128, channels=8, size=32, frames=4)


def lengths(setup: Setup) -> dict[str, tuple[int, int]]:
    return {"equal": (setup.frames, setup.frames), "unequal": (setup.frames, setup.frames // 2)}


# -- the child process -------------------------------------------------------------------------
def _rss_kib(field: str) -> int:
    return int(re.search(rf"{field}:\s+(\d+) kB", open("/proc/self/status").read()).group(1))


def glibc_returns_memory(at_once: bool) -> None:
    """mallopt: at once = blocks over 64 KiB mmapped and unmapped on free (RSS tracks live tensors);
    otherwise freed memory stays cached in the heap (no page faults while timing)."""
    libc = ctypes.CDLL("libc.so.6")
    m_trim_threshold, m_mmap_threshold = -1, -3
    libc.mallopt(m_mmap_threshold, 64 * 1024 if at_once else 32 * 1024 * 1024)
    libc.mallopt(m_trim_threshold, 0 if at_once else 2**30)
    if at_once:
        libc.malloc_trim(0)


class PeakMeter:
    """Peak bytes above the level at start(); CUDA allocator stats or Linux VmHWM."""

    def __init__(self, device: torch.device):
        self.device = device

    def start(self) -> None:
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
        else:
            with open("/proc/self/clear_refs", "w") as handle:
                handle.write("5")  # resets VmHWM to the current RSS
            self.base = _rss_kib("VmRSS") * 1024
            if _rss_kib("VmHWM") * 1024 > self.base + 2**20:
                raise RuntimeError("writing 5 to /proc/self/clear_refs did not reset VmHWM; this kernel cannot measure a step's peak")

    def peak_bytes(self) -> int:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            return torch.cuda.max_memory_allocated() - self.base
        return _rss_kib("VmHWM") * 1024 - self.base


def serve_mode(connection, mode: str, setup: Setup, threads: int) -> None:
    """A mode's own process: build the model and batches, then answer ("memory" | "time", lengths)
    requests with the peak bytes or seconds of one step, until it receives None."""
    from diffusers import WanTransformer3DModel

    torch.set_num_threads(threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    model = WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=setup.heads, attention_head_dim=setup.head_dim,
        in_channels=setup.channels, out_channels=setup.channels, text_dim=setup.text_dim, freq_dim=64,
        ffn_dim=setup.ffn_dim, num_layers=setup.layers,
    ).to(device)
    reference = copy.deepcopy(model).requires_grad_(False)
    with torch.no_grad():  # a reference that differs from the policy, as after Stage II
        for param in reference.parameters():
            param.mul_(1.01)

    def velocity(module):
        return lambda x, sigma, text: module(x, sigma * 1000, text, return_dict=False)[0]

    batches = {}
    for name, (frames_w, frames_l) in lengths(setup).items():
        generator = torch.Generator().manual_seed(0)
        shape = (setup.batch, setup.channels)
        winner = torch.randn(*shape, frames_w, setup.size, setup.size, generator=generator).to(device)
        loser = torch.randn(*shape, frames_l, setup.size, setup.size, generator=generator).to(device)
        text = torch.randn(setup.batch, setup.text_length, setup.text_dim, generator=generator).to(device)
        batches[name] = make_preference_batch(winner, loser, text, generator, shift=3.0)

    def step(name: str) -> None:
        model.zero_grad(set_to_none=False)  # .grad buffers persist, as in training
        dpo_step(velocity(model), velocity(reference), batches[name], 5000.0, mode)
        if device.type == "cuda":
            torch.cuda.synchronize()

    meter, caching, warmed = PeakMeter(device), None, set()
    clock = time.perf_counter if device.type == "cuda" else time.process_time
    while (request := connection.recv()) is not None:
        kind, name = request
        if device.type == "cpu" and caching != (kind == "time"):
            caching = kind == "time"
            glibc_returns_memory(at_once=not caching)
        if (kind, name) not in warmed:  # .grad, lazy state and (when timing) the cached heap
            step(name)
            warmed.add((kind, name))
        if kind == "memory":
            meter.start()
            step(name)
            connection.send(meter.peak_bytes())
        else:
            started = clock()
            step(name)
            connection.send(clock() - started)


# -- the parent --------------------------------------------------------------------------------
def run(setup: Setup, repeats: int, threads: int) -> dict[str, dict]:
    """Peak bytes and median step seconds per mode and lengths, plus the device."""
    # A fork server that imported torch and diffusers once starts each mode's fresh process;
    # plain spawn would pay the ~4 s import three times.
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["torch", "diffusers.models.transformers.transformer_wan", "algorithms.dpo"])
    connections, processes = {}, []
    try:
        for mode in MODES:
            connections[mode], child = context.Pipe()
            processes.append(context.Process(target=serve_mode, args=(child, mode, setup, threads), daemon=True))
            processes[-1].start()

        def ask(mode: str, kind: str, name: str) -> float:
            connections[mode].send((kind, name))
            return connections[mode].recv()

        results = {mode: {name: {} for name in lengths(setup)} for mode in MODES}
        for mode, name in itertools.product(MODES, lengths(setup)):
            results[mode][name]["peak_bytes"] = ask(mode, "memory", name)
        seconds = {key: [] for key in itertools.product(MODES, lengths(setup))}
        for _ in range(repeats):
            for name, mode in itertools.product(lengths(setup), MODES):
                seconds[mode, name].append(ask(mode, "time", name))
        for (mode, name), values in seconds.items():
            results[mode][name]["step_seconds"] = statistics.median(values)
        results["device"] = "cuda" if torch.cuda.is_available() else "cpu"
        return results
    finally:
        for connection in connections.values():
            connection.send(None)
        for process in processes:
            process.join()


def verdicts(results: dict, setup: Setup) -> list[str]:
    lines = []
    for name, (frames_w, frames_l) in lengths(setup).items():
        predicted = max(frames_w, frames_l) / (frames_w + frames_l)
        base = results["standard"][name]
        for mode in ("decoupled", "sequential"):
            memory = results[mode][name]["peak_bytes"] / base["peak_bytes"]
            slowdown = results[mode][name]["step_seconds"] / base["step_seconds"]
            memory_held = memory < (1 + predicted) / 2
            time_held = slowdown <= 1 + TIME_TOLERANCE
            lines.append(
                f"claim {mode:<10} {name:<7} O(L_w+L_l)->O(max): {'holds' if memory_held else 'does not hold'} "
                f"(memory x{memory:.2f}, O(max) predicts x{predicted:.2f}); zero overhead: "
                f"{'holds' if time_held else 'does not hold'} (time x{slowdown:.2f})"
            )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a small model (seconds; used by tests)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    setup, repeats = (QUICK, 3) if args.quick else (FULL, args.repeats)
    results = run(setup, repeats, args.threads)
    tokens = setup.size**2 // 4
    print(f"\nDiffusion-DPO step on {results['device']}: Wan transformer {setup.layers} layers x "
          f"dim {setup.heads * setup.head_dim}, batch {setup.batch}, {tokens} tokens per latent frame, {repeats} repeat(s)")
    print(f"{'lengths':<16} {'mode':<11} {'peak MiB':>9} {'x standard':>10} {'step s':>8} {'x standard':>10}"
          f"   (step s: {'wall' if results['device'] == 'cuda' else 'CPU'} seconds)")
    for name, (frames_w, frames_l) in lengths(setup).items():
        base = results["standard"][name]
        for mode in MODES:
            row = results[mode][name]
            print(f"{f'{name} {frames_w}/{frames_l}':<16} {mode:<11} {row['peak_bytes'] / 2**20:9.1f} "
                  f"{row['peak_bytes'] / base['peak_bytes']:10.2f} {row['step_seconds']:8.3f} "
                  f"{row['step_seconds'] / base['step_seconds']:10.2f}")
    print()
    for line in verdicts(results, setup):
        print(line)


if __name__ == "__main__":
    main()

"""GPU smoke benchmark: two GRPO steps of the real driver on a Wan2.1-1.3B-shaped model.

    python -m bench.gpu_smoke [--out runs/gpu_smoke]      # one NVIDIA GPU, nothing to download
    python -m bench.gpu_smoke --tiny                       # the same path on the CPU (make test runs it)

On a GPU: a Wan2.1-T2V-1.3B-shaped transformer (random init, bf16, LoRA, gradient
checkpointing), the full-size Wan VAE (random init) and a one-layer UMT5 encoder of Wan's 4096
width, through two GRPO steps of `cluster.grpo.GRPODriver` with `pool.accelerator: GPU` at 17
frames 240×416 — rollout, reward and learner colocated on the one GPU and multiplexed (every role
not in the current phase offloads to pinned host memory), with the learner's weight average
(`grpo.ema_decay`) and a fixed-seed eval that samples it. `--tiny` swaps in the tiny preset at
5×24×24 and the CPU pool, so this file cannot rot between GPU runs.

Prints seconds per phase, the accelerator memory each role holds while idle next to its peak,
and the transformer forward's achieved TFLOP/s (FLOPs counted by torch's FlopCounterMode on one
forward at the rollout's batch and latent shape, divided by its measured time). Writes the
figures to `<out>/gpu_smoke.json`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from cluster.config import parse_config

PROMPTS = Path(__file__).resolve().parents[1] / "configs" / "prompts" / "wan_t2v_train.txt"


def smoke_config(tiny: bool, run_dir: str) -> dict:
    """The config both modes run: they differ in model size, clip and pool only."""
    policy = {"dtype": "bfloat16", "trainable": "lora", "lora_rank": 16, "lora_alpha": 16, "gradient_checkpointing": True}
    if tiny:
        policy.update(preset="tiny", model_path=None)
        clip, pool = {"num_frames": 5, "height": 24, "width": 24}, {"num_bundles": 1}
    else:
        policy.update(preset="wan2.1-t2v-1.3b", random_init=True, text_encoder_layers=1, torch_threads=4)
        clip, pool = {"num_frames": 17, "height": 240, "width": 416}, {"num_bundles": 1, "accelerator": "GPU", "cpus_per_bundle": 4}
    return {
        "run_dir": run_dir,
        "clip": clip,
        "prompts": {"source": "file", "path": str(PROMPTS)},
        "policy": policy,
        "sampling": {"num_steps": 8, "shift": 3.0, "noise_level": 0.7},
        "rewards": {
            "critics": [{"name": "motion"}, {"name": "perceptual"}],
            "components": {"motion": {"score": "motion.temporal_smoothness"}, "sharpness": {"score": "perceptual.sharpness"}},
        },
        "pool": pool,
        "grpo": {"steps": 2, "prompts_per_step": 1, "group_size": 4, "prompt_pool": 2, "learning_rate": 1e-4,
                 "clip_range": 1e-3, "kl_beta": 0.01, "timestep_fraction": 0.5, "eval_every": 2, "checkpoint_every": 2,
                 "ema_decay": 0.9},  # the weight average on the device: kept, offloaded, shipped for the eval, checkpointed
    }


def transformer_tflops(config, batch: int) -> dict[str, float]:
    """Achieved TFLOP/s of one transformer forward at the rollout's batch and latent shape."""
    from torch.utils.flop_counter import FlopCounterMode

    from policy.wan import load_policy

    device = torch.device("cuda" if config.pool.accelerator == "GPU" else "cpu")
    policy, _ = load_policy(config.policy, seed=config.seed, device=device)
    latents = torch.randn(batch, *policy.latent_shape(*config.clip.shape), device=device)
    text = policy.encode_prompts(["a smoke test"] * batch).to(device)
    sigma = torch.tensor(0.5, device=device)
    with torch.no_grad():
        policy.velocity(latents, sigma, text)  # warm-up (kernels, caches)
        with FlopCounterMode(display=False) as counter:
            policy.velocity(latents, sigma, text)
        times = []
        for _ in range(3):
            if device.type == "cuda":
                torch.cuda.synchronize()
            started = time.perf_counter()
            policy.velocity(latents, sigma, text)
            if device.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - started)
    seconds = statistics.median(times)
    flops = counter.get_total_flops()
    return {"forward_seconds": seconds, "forward_tflop": flops / 1e12, "tflops_per_second": flops / seconds / 1e12,
            "tokens": latents[0, 0].numel() // 4}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="tiny preset on the CPU (the test suite's mode)")
    parser.add_argument("--out", default=None, help="run directory (default: a temporary one)")
    args = parser.parse_args(argv)
    if not args.tiny and not torch.cuda.is_available():
        raise SystemExit("bench.gpu_smoke needs an NVIDIA GPU; use --tiny for the CPU path")
    from cluster import grpo

    with tempfile.TemporaryDirectory() as scratch:
        run_dir = args.out or scratch
        config = parse_config(smoke_config(args.tiny, run_dir))
        started = time.perf_counter()
        records = [r for r in grpo.run(config) if "reward_mean" in r]
        total = time.perf_counter() - started
        flops = transformer_tflops(config, config.grpo.prompts_per_step * config.grpo.group_size)
        device = torch.cuda.get_device_name() if config.pool.accelerator == "GPU" else "cpu"
        result = {
            "device": device, "steps": len(records), "total_seconds": total, **flops,
            "seconds": {phase: [r[f"seconds/{phase}"] for r in records] for phase in ("sample", "evaluate", "update")},
            "memory_bytes": {key.split("/", 1)[1]: records[-1][key] for key in records[-1] if key.startswith("memory/")},
            "final_reward": records[-1]["reward_mean"], "weights_version": records[-1]["weights_version"],
        }
        Path(run_dir).mkdir(parents=True, exist_ok=True)
        (Path(run_dir) / "gpu_smoke.json").write_text(json.dumps(result, indent=1))
    print(f"\nGRPO smoke on {device}: {len(records)} steps in {total:.1f} s (actor start-up included)")
    for phase, seconds in result["seconds"].items():
        print(f"  {phase:<9} " + "  ".join(f"{s:7.2f} s" for s in seconds))
    for role in sorted({key.split("/")[0] for key in result["memory_bytes"]}):
        held = {k.split("/")[1]: v for k, v in result["memory_bytes"].items() if k.startswith(role + "/")}
        print(f"  {role:<9} idle {held.get('idle_bytes', 0) / 2**30:6.2f} GiB   peak {held.get('peak_bytes', 0) / 2**30:6.2f} GiB")
    print(f"  transformer forward: {flops['forward_tflop']:.2f} TFLOP in {flops['forward_seconds'] * 1e3:.1f} ms "
          f"= {flops['tflops_per_second']:.1f} TFLOP/s ({flops['tokens']} tokens per video)")
    return result


if __name__ == "__main__":
    main()

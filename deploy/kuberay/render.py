"""Render one KubeRay RayJob per stage from raycluster.yaml's cluster spec.

    python -m deploy.kuberay.render     # rewrites deploy/kuberay/rayjob-{sft,grpo,dpo,eval}.yaml

Each RayJob brings up its own copy of the RayCluster, runs `python -m cluster.jobs.<stage>` (with
`--resume` for the training stages: a retried job continues from the stage's last checkpoint on the
shared `runs` volume), and tears the cluster down when the job ends. A test checks the files are current.
"""

from __future__ import annotations

from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
CONFIG = "/app/configs/wan2.1-t2v-1.3b.yaml"
STAGES = {
    "sft": "Stage I: supervised fine-tuning with structure-aware weights and the motion branch",
    "grpo": "Stage II: GRPO (sample -> evaluate -> update) with the grouped joint reward under MPS",
    "dpo": "Stage III: Diffusion-DPO with decoupled gradient backpropagation",
    "eval": "Evaluation of a stage's checkpoint (GSB, flow metrics, report)",
}
RESUMABLE = ("sft", "grpo", "dpo")  # training stages checkpoint; a retried job resumes
RUNTIME_ENV = {"env_vars": {"OMP_NUM_THREADS": "4", "RAY_DEDUP_LOGS": "0"}}


class _Dumper(yaml.SafeDumper):
    """Multi-line strings (runtimeEnvYAML) as literal blocks, as one writes them by hand."""


_Dumper.add_representer(str, lambda dumper, text: dumper.represent_scalar(
    "tag:yaml.org,2002:str", text, style="|" if "\n" in text else None))


def rayjob(stage: str) -> dict:
    cluster = yaml.safe_load((HERE / "raycluster.yaml").read_text())
    return {
        "apiVersion": "ray.io/v1",
        "kind": "RayJob",
        "metadata": {"name": f"teleboost-{stage}", "labels": {"app.kubernetes.io/part-of": "teleboost",
                                                             "teleboost.io/stage": stage}},
        "spec": {
            "entrypoint": f"python -m cluster.jobs.{stage} --config {CONFIG} --set run_dir=/runs/wan2.1-{stage}"
                          + (" --resume" if stage in RESUMABLE else ""),
            "runtimeEnvYAML": yaml.safe_dump(RUNTIME_ENV, sort_keys=False),
            # The driver records the stage's metrics and starts the MPS daemon: it must run on a GPU pod.
            "entrypointResources": '{"teleboost_driver": 1}',
            "submissionMode": "K8sJobMode",
            "shutdownAfterJobFinishes": True,
            "ttlSecondsAfterFinished": 600,
            "backoffLimit": 2,
            "rayClusterSpec": cluster["spec"],
        },
    }


def rendered() -> dict[Path, str]:
    return {HERE / f"rayjob-{stage}.yaml":
            f"# kubectl apply -f deploy/kuberay/rayjob-{stage}.yaml  -- {title}.\n"
            "# Rendered by `python -m deploy.kuberay.render` from raycluster.yaml (read its comments); edit those.\n"
            + yaml.dump(rayjob(stage), Dumper=_Dumper, sort_keys=False, width=120)
            for stage, title in STAGES.items()}


def main() -> None:
    for path, text in rendered().items():
        path.write_text(text)
        print(path)


if __name__ == "__main__":
    main()

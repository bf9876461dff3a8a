"""Where actors compute: the one device rule, and the placement each actor reports."""

import pytest
import torch

from actors.device import device_for, tensor_devices


def test_a_gpu_share_means_the_first_visible_gpu_and_no_share_means_the_cpu():
    assert device_for([], cuda_available=True) == torch.device("cpu")  # a GPU node, but no share for this actor
    assert device_for([], cuda_available=False) == torch.device("cpu")
    assert device_for(["3"], cuda_available=True) == torch.device("cuda:0")  # Ray set CUDA_VISIBLE_DEVICES=3


def test_a_gpu_share_without_cuda_is_an_error_not_a_silent_cpu_run():
    with pytest.raises(RuntimeError, match=r"assigned GPU\(s\) \['0'\] .* cannot use CUDA"):
        device_for(["0"], cuda_available=False)


def test_tensor_devices_names_every_device_of_a_group():
    assert tensor_devices(a=[torch.zeros(1)], b=[], c=[torch.zeros(1, device="meta"), torch.zeros(1)]) == {"a": "cpu", "c": "cpu,meta"}


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU")
def test_actors_on_a_gpu_bundle_hold_everything_on_the_gpu(ray_cluster):
    """On a GPU pool (a cluster with GPU resources) every role's tensors are on cuda."""
    from actors.learner import Learner, OptimizerSpec
    from actors.objectives.grpo import GRPOObjective
    from actors.rollout import RolloutActor
    from policy.config import ClipConfig, PolicyConfig, SamplingConfig

    ray = ray_cluster
    if ray.cluster_resources().get("GPU", 0) < 1:
        pytest.skip("the session's Ray cluster has no GPU resource")
    policy = PolicyConfig(dtype="bfloat16", trainable="lora")
    objective = GRPOObjective(group_size=2, clip_range=0.2, kl_beta=0.01)
    learner = ray.remote(Learner).options(num_gpus=0.3).remote(policy, OptimizerSpec(1e-4), objective)
    rollout = ray.remote(RolloutActor).options(num_gpus=0.3).remote(policy, SamplingConfig(num_steps=2), ClipConfig(num_frames=5, height=24, width=24))
    assert ray.get(learner.placement.remote())["transformer"] == "cuda"
    assert ray.get(rollout.placement.remote()) == {"device": "cuda:0", "transformer": "cuda", "vae": "cuda"}

"""cluster.tracking: TensorBoard scalars and clips, W&B offline, writes off the caller's thread."""

import time

import numpy as np
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from cluster import tracking
from cluster.tracking import ExperimentTracker, TensorBoardBackend, wandb_configured

CLIPS = np.random.default_rng(0).integers(0, 255, (6, 5, 8, 8, 3), dtype=np.uint8)


@pytest.fixture(autouse=True)
def no_wandb(monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)


def events(run_dir, stage="grpo"):
    accumulator = EventAccumulator(str(run_dir / "tensorboard" / stage), size_guidance={"images": 0, "tensors": 0})
    accumulator.Reload()
    return accumulator


def test_scalars_and_clips_reach_tensorboard(tmp_path):
    tracker = ExperimentTracker(tmp_path, "grpo", clip_every=2, max_clips=4)
    for step in (1, 2, 3):
        tracker.log(step, {"step": step, "reward_mean": 0.1 * step, "update/kl": 0.5, "mps_status": "cpu-threads"})
        if tracker.wants_clips(step):
            tracker.log_clips(step, CLIPS, [f"prompt {i}" for i in range(6)])
    tracker.close()
    accumulator = events(tmp_path)
    assert [(e.step, round(e.value, 6)) for e in accumulator.Scalars("reward_mean")] == [(1, 0.1), (2, 0.2), (3, 0.3)]
    assert "update/kl" in accumulator.Tags()["scalars"] and "mps_status" not in accumulator.Tags()["scalars"]
    (image,) = accumulator.Images("samples/clips")
    assert image.step == 2 and image.encoded_image_string.startswith(b"GIF89a")
    assert (image.height, image.width) == (8, 4 * 8)  # the first 4 clips side by side
    (text,) = accumulator.Tensors("samples/prompts/text_summary")
    prompts = text.tensor_proto.string_val[0]
    assert b"3. prompt 3" in prompts and b"prompt 4" not in prompts


def test_log_never_waits_for_a_slow_backend(tmp_path, monkeypatch):
    monkeypatch.setattr(TensorBoardBackend, "scalars", lambda self, step, values: time.sleep(0.1))
    tracker = ExperimentTracker(tmp_path, "sft")
    started = time.perf_counter()
    for step in range(5):
        tracker.log(step, {"loss": 1.0})
    assert time.perf_counter() - started < 0.1
    tracker.close()


def test_a_failing_backend_is_switched_off_and_the_others_keep_writing(tmp_path):
    class Broken:
        def scalars(self, step, values):
            raise OSError("disk full")

        def close(self):
            pass

    tracker = ExperimentTracker(tmp_path, "dpo")
    tracker.backends.insert(0, Broken())
    tracker.log(1, {"loss": 0.5})
    tracker.log(2, {"loss": 0.4})
    tracker.close()
    assert [type(b) for b in tracker.backends] == [TensorBoardBackend]
    assert [e.step for e in events(tmp_path, "dpo").Scalars("loss")] == [1, 2]


@pytest.mark.slow
def test_videos_may_be_a_ray_object_ref(ray_cluster, tmp_path):
    tracker = ExperimentTracker(tmp_path, "grpo", clip_every=1, max_clips=2)
    tracker.log_clips(1, ray_cluster.put(CLIPS), list("abcdef"))  # fetched on the tracking thread
    tracker.close()
    (image,) = events(tmp_path).Images("samples/clips")
    assert image.width == 2 * 8


def test_wandb_only_when_installed_and_configured(tmp_path, monkeypatch):
    assert not wandb_configured()
    monkeypatch.setenv("WANDB_MODE", "disabled")
    monkeypatch.setenv("WANDB_API_KEY", "x")
    assert not wandb_configured()
    monkeypatch.setattr(tracking, "WandbBackend", lambda *args: pytest.fail("W&B used while not configured"))
    monkeypatch.delenv("WANDB_API_KEY")
    monkeypatch.delenv("WANDB_MODE")
    ExperimentTracker(tmp_path, "grpo").close()


def test_wandb_offline_run_gets_scalars_and_clips(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    tracker = ExperimentTracker(tmp_path, "grpo", config={"seed": 0}, clip_every=1)
    assert [type(b).__name__ for b in tracker.backends] == ["TensorBoardBackend", "WandbBackend"]
    tracker.log(1, {"reward_mean": 0.5})
    tracker.log_clips(1, CLIPS, ["a"])
    tracker.close()
    (run,) = (tmp_path / "wandb").glob("offline-run-*")
    assert list(run.glob("run-*.wandb"))
    assert list(run.glob("files/media/videos/samples/clips_1_*.gif"))

"""eval.json schema (EvalResults) and the GIF writer."""

import math

import numpy as np
import pytest
import torch
from PIL import Image
from pydantic import ValidationError

from evaluation.results import EvalResults, write_gif


def results(**overrides) -> dict:
    data = {
        "prompts": ["p0", "p1"],
        "seeds": [0, 1, 2],
        "stages": ["base", "grpo"],
        "metrics": {"grpo": {"color": {"mean": 0.5, "low": 0.4, "high": 0.6, "values": [0.4, 0.5, math.nan]}}},
        "gsb": {"grpo_vs_base": {"overall": {"good": 3, "same": 1, "bad": 2}}},
        "clips": {stage: [f"clips/{stage}/{i}.gif" for i in range(6)] for stage in ("base", "grpo")},
    }
    return {**data, **overrides}


def test_round_trip_keeps_nan(tmp_path):
    loaded = EvalResults.load(EvalResults.model_validate(results()).save(tmp_path / "eval" / "eval.json"))
    assert math.isnan(loaded.metrics["grpo"]["color"].values[2])
    assert loaded.gsb["grpo_vs_base"]["overall"].good == 3
    assert loaded.clips["grpo"][loaded.clip_index(1, 2)] == "clips/grpo/5.gif"  # prompt-major


@pytest.mark.parametrize("overrides, match", [
    ({"stages": ["grpo", "base"]}, "pipeline order"),
    ({"stages": ["base", "ppo"]}, "accepted"),
    ({"stages": ["base", "grpo", "grpo"]}, "distinct"),
    ({"gsb": {"grpo_vs_sft": {}}}, "grpo_vs_sft"),
    ({"gsb": {"grpo-base": {}}}, "<stage>_vs_<other stage>"),
    ({"gsb": {"grpo_vs_base": {"sharpness": {"good": 1, "same": 0, "bad": 0}}}}, "sharpness"),
    ({"gsb": {"grpo_vs_base": {"overall": {"good": -1, "same": 0, "bad": 0}}}}, "good"),
    ({"clips": {"base": ["a.gif"] * 5}}, "clips.base has 5 paths; expected .* = 6"),
    ({"clips": {"base": ["/tmp/a.gif"] * 6}}, "relative path"),
    ({"clips": {"base": ["../a.gif"] * 6}}, "relative path"),
    ({"metrics": {"dpo": {}}}, "metrics has stages \\['dpo'\\]"),
    ({"metrics": {"grpo": {"color": {"mean": 0.5, "low": None, "high": None, "values": [0.5]}}}}, "metrics.grpo.color.values"),
    ({"metrics": {"grpo": {"color": {"mean": 0.5, "low": 0, "high": 1, "values": [1, 2, 3], "std": 1}}}}, "std"),
])
def test_schema_errors_name_the_field(overrides, match):
    with pytest.raises(ValidationError, match=match):
        EvalResults.model_validate(results(**overrides))


def test_write_gif_enlarges_with_nearest_neighbour(tmp_path):
    clip = np.zeros((3, 32, 32, 3), np.uint8)
    clip[:, :, :16] = (230, 25, 25)  # left half red, right half black
    clip[1, :, 16:] = 255  # frame 1: right half white
    path = write_gif(clip, tmp_path / "clips" / "a.gif", fps=10)
    with Image.open(path) as image:
        assert (image.size, image.n_frames, image.info["loop"], image.info["duration"]) == ((128, 128), 3, 0, 100)
        image.seek(1)
        frame = np.asarray(image.convert("RGB"))
    assert (frame[:, :64] == (230, 25, 25)).all() and (frame[:, 64:] == 255).all()  # a hard edge at 16 x 4 px


def test_write_gif_accepts_float_in_range_only(tmp_path):
    clip = torch.full((2, 24, 40, 3), 0.5)
    with Image.open(write_gif(clip, tmp_path / "f.gif")) as image:
        assert image.size == (240, 144)  # factor ceil(128 / 24) = 6
        assert np.asarray(image.convert("RGB"))[0, 0].tolist() == [128, 128, 128]
    with pytest.raises(ValueError, match="\\[0, 1\\]"):
        write_gif(clip * 3, tmp_path / "g.gif")
    with pytest.raises(ValueError, match="T, H, W, 3"):
        write_gif(clip[0], tmp_path / "h.gif")

"""flow_errors (report Table 2) on hand-computed flows, and on a toy pan with exact flow."""

import numpy as np
import pytest
import torch

from evaluation.flow_metrics import flow_errors
from evaluation.vbench import farneback_video_flow
from toyworld.world import SceneSpec, render


def flows(vectors: list[tuple[float, float]]) -> np.ndarray:
    """[2, 1, N] flow, one pixel per vector (channel 0 = x)."""
    return np.array(vectors, np.float64).T[:, None, :]


def test_hand_computed_errors():
    gt = flows([(0, 0)] * 4)
    pred = flows([(0.5, 0), (0, 1.5), (3, 4), (0, 0)])  # errors 0.5, 1.5, 5, 0
    errors = flow_errors(pred, gt)
    assert errors == pytest.approx({"epe": 7.0 / 4, "px1": 0.5, "px3": 0.25, "f1_all": 0.25})
    assert all(type(v) is float for v in errors.values())


def test_fl_all_needs_both_absolute_and_relative_error():
    gt = flows([(100, 0), (40, 0), (0, 0), (0, 2)])
    # error 4 px: < 5 % of 100 px (not an outlier), > 5 % of 40 px (outlier); error exactly 3 px: not > 3
    pred = flows([(104, 0), (44, 0), (3, 0), (0, 2.5)])
    errors = flow_errors(torch.tensor(pred), torch.tensor(gt))
    assert errors["px3"] == pytest.approx(0.5)
    assert errors["f1_all"] == pytest.approx(0.25)
    assert errors["px1"] == pytest.approx(0.75)
    assert errors["epe"] == pytest.approx((4 + 4 + 3 + 0.5) / 4)


def test_channel_zero_is_x_and_leading_dims_pool():
    gt = np.zeros((2, 2, 2, 3))  # [T, 2, H, W]
    pred = gt.copy()
    pred[0, 0, 1, 2] = 2.0  # x error of 2 px at one pixel of frame 0
    pred[1, 1, 0, 0] = 4.0  # y error of 4 px at one pixel of frame 1
    errors = flow_errors(pred, gt)
    assert errors == pytest.approx({"epe": 6.0 / 12, "px1": 2 / 12, "px3": 1 / 12, "f1_all": 1 / 12})
    valid = np.ones((2, 2, 3), bool)
    valid[1] = False  # frame 1 unscored
    assert flow_errors(pred, gt, valid=valid) == pytest.approx({"epe": 2 / 6, "px1": 1 / 6, "px3": 0.0, "f1_all": 0.0})


@pytest.mark.parametrize("pred_shape, gt_shape, match", [
    ((3, 4, 4), (3, 4, 4), "2, H, W"), ((2, 4, 4), (2, 4, 5), "differs"),
])
def test_shape_errors(pred_shape, gt_shape, match):
    with pytest.raises(ValueError, match=match):
        flow_errors(np.zeros(pred_shape), np.zeros(gt_shape))


def test_empty_valid_mask_is_refused():
    with pytest.raises(ValueError, match="no pixel"):
        flow_errors(np.zeros((2, 2, 2)), np.zeros((2, 2, 2)), valid=np.zeros((2, 2), bool))


def test_farneback_on_a_toy_pan_matches_the_exact_flow():
    clip = render(SceneSpec("pan", "square", "yellow", "navy", "left"), num_frames=4, seed=3)
    estimate = farneback_video_flow(clip.video)
    interior = np.zeros(estimate.shape[:1] + estimate.shape[2:], bool)
    interior[:, 6:-6, 6:-6] = True  # content entering at the border has no match
    good = flow_errors(estimate, clip.flow, valid=interior)
    assert good["epe"] < 0.5 and good["px3"] == 0.0
    flipped = flow_errors(estimate[:, ::-1], clip.flow, valid=interior)  # x and y swapped
    assert flipped["epe"] > 1.0

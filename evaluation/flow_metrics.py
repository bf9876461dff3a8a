"""Optical-flow error metrics of report Table 2 (EPE, >1px, >3px, Fl-all).

Flows are [..., 2, H, W] in pixels, channel 0 = x (+right), channel 1 = y (+down) — the convention
of `toyworld.world` and `reward_services.critics.motion`. Every statistic is a fraction or a pixel
value averaged over all pixels of all leading dimensions (frames, batch) at once, as KITTI pools
pixels over a test set. Reports render the fractions as %.
"""

from __future__ import annotations

import numpy as np
import torch

KITTI_ABSOLUTE_PX = 3.0  # Fl-all: an outlier is off by more than 3 px ...
KITTI_RELATIVE = 0.05  # ... AND by more than 5 % of the true flow's magnitude


def _as_flow(name: str, flow) -> np.ndarray:
    array = flow.detach().cpu().double().numpy() if isinstance(flow, torch.Tensor) else np.asarray(flow, np.float64)
    if array.ndim < 3 or array.shape[-3] != 2:
        raise ValueError(f"{name} must be a flow shaped [..., 2, H, W] (channel 0 = x), got shape {array.shape}")
    return array


def flow_errors(pred, gt, valid=None) -> dict[str, float]:
    """{"epe", "px1", "px3", "f1_all"} of a predicted flow against the reference (report Table 2).

    epe     mean end-point error |pred − gt| in pixels;
    px1/px3 fraction (0–1) of pixels whose end-point error is > 1 / > 3 px;
    f1_all  KITTI Fl-all as a fraction: error > 3 px AND > 5 % of |gt| (a 4 px error on a 100 px
            motion is not an outlier).
    `valid` ([..., H, W] bool, optional) restricts every statistic to the pixels where the reference
    is defined (KITTI's sparse ground truth; occlusions in rendered flow).
    """
    pred, gt = _as_flow("pred", pred), _as_flow("gt", gt)
    if pred.shape != gt.shape:
        raise ValueError(f"pred shape {pred.shape} differs from gt shape {gt.shape}")
    epe = np.linalg.norm(pred - gt, axis=-3)
    magnitude = np.linalg.norm(gt, axis=-3)
    if valid is not None:
        mask = valid.detach().cpu().numpy() if isinstance(valid, torch.Tensor) else np.asarray(valid)
        if mask.shape != epe.shape:
            raise ValueError(f"valid must be shaped {epe.shape} (flow without its channel axis), got {mask.shape}")
        mask = mask.astype(bool)
        epe, magnitude = epe[mask], magnitude[mask]
    if epe.size == 0:
        raise ValueError("no pixel to evaluate: the flows are empty or `valid` is all False")
    outlier = (epe > KITTI_ABSOLUTE_PX) & (epe > KITTI_RELATIVE * magnitude)
    return {
        "epe": float(epe.mean()),
        "px1": float((epe > 1.0).mean()),
        "px3": float((epe > 3.0).mean()),
        "f1_all": float(outlier.mean()),
    }

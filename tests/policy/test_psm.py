"""ViPO's perceptual structuring module with both backbones (a tiny random Dinov2Model from a path)."""

import torch
from transformers import Dinov2Config, Dinov2Model

from policy.psm import PerceptualStructuringModule


def group_with_one_local_defect(size=32):
    videos = torch.full((4, 5, size, size, 3), 0.3)
    videos[:, :, 8:16, 8:16] = torch.tensor([0.9, 0.1, 0.1])  # the same red square everywhere
    videos[2, 2:, 20:28, 20:28] = 1.0  # one video: a white patch appears bottom-right
    return videos


def test_pixel_backbone_lights_up_the_local_defect():
    maps = PerceptualStructuringModule("pixel", patch=4).advantage_maps(group_with_one_local_defect(), 4, 1.0, (3, 16, 16))
    assert maps.shape == (4, 3, 16, 16)
    torch.testing.assert_close(maps.mean(dim=(1, 2, 3)), torch.ones(4))
    defect = maps[2, 1:, 10:14, 10:14].mean()
    assert defect > 2 * maps[2, 1:, :6, :6].mean()
    assert defect > 2 * maps[0, 1:, 10:14, 10:14].mean()


def test_reward_aligned_maps_credit_where_the_reward_was_decided():
    """Two defects in one group: the white patch (bottom-right, video 2) and a dimmed square
    (video 0). Only the patch decides the advantages, so only the patch gets the credit."""
    videos = group_with_one_local_defect()
    videos[0, :, 8:16, 8:16] *= 0.5
    advantages = torch.tensor([0.0, 1.0, -3.0, 1.0]) / 3**0.5  # video 2 lost, the patch is why
    psm = PerceptualStructuringModule("pixel", patch=4)
    maps = psm.advantage_maps(videos, 4, 1.0, (3, 16, 16), advantages)
    torch.testing.assert_close(maps.mean(dim=(1, 2, 3)), torch.ones(4))
    patch, square = maps[:, 1:, 10:14, 10:14].mean(), maps[:, 1:, 4:8, 4:8].mean()
    assert patch > 3 * square
    blind = psm.advantage_maps(videos, 4, 1.0, (3, 16, 16))  # the deviation map also lights the square
    assert blind[0, 1:, 4:8, 4:8].mean() > 3 * maps[0, 1:, 4:8, 4:8].mean()


def test_dinov2_backbone_from_a_path(tmp_path):
    torch.manual_seed(0)
    Dinov2Model(Dinov2Config(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                             patch_size=8, image_size=32)).save_pretrained(tmp_path / "dinov2")
    psm = PerceptualStructuringModule("dinov2", str(tmp_path / "dinov2"))
    features = psm.features(group_with_one_local_defect())
    assert features.shape == (4, 5, 4, 4, 32)
    maps = psm.advantage_maps(group_with_one_local_defect(), 4, 0.5, (3, 16, 16))
    assert maps.shape == (4, 3, 16, 16) and torch.isfinite(maps).all()
    assert maps.min() >= 0.5 - 1e-5  # lam = 0.5 mixes with a uniform map of ones

"""Small assertions shared by test modules."""

import torch


def assert_close(actual, expected, rtol=1e-6, atol=1e-7):
    """torch.allclose with a readable failure (torch.testing's first call costs ~0.3 s)."""
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    assert torch.allclose(actual, expected, rtol=rtol, atol=atol), (actual - expected).abs().max()

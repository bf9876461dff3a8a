"""Temporal multiplexing: release() really gives accelerator memory back, wake() takes it again."""

import pytest
import torch
from torch import nn

from actors.offload import Offloader


def trained(device="cpu"):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.Linear(16, 2)).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model(torch.randn(4, 8, device=device)).sum().backward()
    optimizer.step()
    return model, optimizer


def test_bookkeeping_covers_parameters_buffers_and_optimizer_state_once():
    model, optimizer = trained()
    offloader = Offloader(torch.device("cpu")).manage(model, optimizer, None)
    params = sum(p.numel() * p.element_size() for p in model.parameters())
    buffers = sum(b.numel() * b.element_size() for b in model.buffers())
    state = sum(v.numel() * v.element_size() for s in optimizer.state.values() for v in s.values() if torch.is_tensor(v))
    assert offloader.managed_bytes() == params + buffers + state  # each tensor counted once
    assert len(list(offloader.tensors())) == len(list(model.parameters())) + len(list(model.buffers())) + sum(
        len(s) for s in optimizer.state.values())
    assert offloader.device_bytes() == 0  # a CPU device holds no accelerator memory


def test_release_drops_gradients_and_training_resumes_exactly_after_wake():
    model, optimizer = trained()
    twin, twin_optimizer = trained()
    offloader = Offloader(torch.device("cpu")).manage(model, optimizer)
    assert offloader.release() == 0 and not offloader.awake  # nothing leaves a CPU device
    assert all(p.grad is None for p in model.parameters())  # dead between updates: dropped, not copied
    assert offloader.release() == 0  # idempotent
    offloader.wake()
    batch = torch.randn(4, 8, generator=torch.Generator().manual_seed(1))
    for m, opt in ((model, optimizer), (twin, twin_optimizer)):
        opt.zero_grad()
        m(batch).sum().backward()
        opt.step()
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), twin.state_dict().values()))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU")
def test_release_moves_everything_to_pinned_host_memory_and_back():
    model, optimizer = trained("cuda")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    offloader = Offloader(torch.device("cuda")).manage(model, optimizer)
    held = offloader.device_bytes()
    allocated = torch.cuda.memory_allocated()
    assert offloader.release() == held > 0
    assert torch.cuda.memory_allocated() <= allocated - held  # the memory really went back
    assert all(t.device.type == "cpu" and t.is_pinned() for t in offloader.tensors())
    assert offloader.wake() == held and offloader.device_bytes() == held
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU")
def test_a_weight_average_is_released_and_woken_with_its_model():
    from diffusers.training_utils import EMAModel

    model, optimizer = trained("cuda")
    average = EMAModel(list(model.parameters()), decay=0.9, foreach=True)
    shadow = [t.clone() for t in average.shadow_params]
    offloader = Offloader(torch.device("cuda")).manage(model, optimizer, average)
    offloader.release()
    assert all(t.device.type == "cpu" and t.is_pinned() for t in average.shadow_params)
    offloader.wake()
    assert all(t.is_cuda and torch.equal(t, s) for t, s in zip(average.shadow_params, shadow))
    average.step(list(model.parameters()))  # still usable after the round trip

import torch

from policy.checkpoint import list_checkpoints, load_checkpoint, load_latest, save_checkpoint


def _save(root, step, value):
    return save_checkpoint(root, step, {"policy": {"w": torch.full((3,), float(value))}},
                           {"learner": {"version": step}}, {"note": value}, keep=5)


def test_round_trip_and_atomic_layout(tmp_path):
    path = _save(tmp_path, 1, 1.5)
    tensors, objects, state = load_checkpoint(path)
    assert torch.equal(tensors["policy"]["w"], torch.full((3,), 1.5))
    assert objects["learner"] == {"version": 1} and state == {"step": 1, "note": 1.5}
    assert not list(tmp_path.glob("*.tmp"))


def test_corrupt_newest_falls_back_to_previous(tmp_path):
    _save(tmp_path, 1, 1.0)
    newest = _save(tmp_path, 2, 2.0)
    blob = newest / "policy.safetensors"
    data = bytearray(blob.read_bytes())
    data[-1] ^= 0xFF
    blob.write_bytes(bytes(data))
    tensors, _, state = load_latest(tmp_path)
    assert state["step"] == 1 and torch.equal(tensors["policy"]["w"], torch.ones(3))


def test_partial_write_is_ignored_and_pruning_keeps_newest(tmp_path):
    for step in range(1, 6):
        save_checkpoint(tmp_path, step, {"policy": {"w": torch.zeros(1)}}, keep=2)
    (tmp_path / "step_00000009.tmp").mkdir()  # a writer killed mid-checkpoint
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_00000004", "step_00000005"]
    assert load_latest(tmp_path)[2]["step"] == 5
    assert load_latest(tmp_path / "missing") is None

"""Checkpoints: exact roundtrip (weights, optimizer, RNG, ties) and located errors."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from caramba.errors import CheckpointError
from caramba.manifest.schema import TrainConfig
from caramba.training.checkpoint import (
    CheckpointManager,
    TrainingState,
    load_checkpoint,
    load_model_weights,
    save_checkpoint,
)
from caramba.training.objectives import NextTokenCrossEntropy
from caramba.training.optim import build_adamw
from caramba.training.rng import capture_rng_state, restore_rng_state

sys.path.insert(0, str(Path(__file__).parent))
from training_worker import ByteData, make_model  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

CPU = torch.device("cpu")


def _trained(steps: int = 3, seed: int = 0, **model_kwargs: object):
    model = make_model(seed, **model_kwargs)
    optimizer = build_adamw(model, TrainConfig(lr=1e-2), CPU)
    data, loss_fn = ByteData(), NextTokenCrossEntropy()
    for step in range(steps):
        x, y = data.train.batch(4, 16, torch.Generator().manual_seed(step))
        loss_fn(model(x), y).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return model, optimizer


def _state(step: int = 3, plan_hash: str = "p1") -> TrainingState:
    return TrainingState(step, step * 64, 1.5, "run-a", plan_hash, capture_rng_state(),
                         {"note": "kept"})


@pytest.fixture
def saved(tmp_path: Path):
    model, optimizer = _trained()
    path = save_checkpoint(tmp_path / "step_00000003", model, optimizer, _state())
    return path, model, optimizer


def test_roundtrip_restores_weights_optimizer_and_state(saved) -> None:
    path, model, optimizer = saved
    fresh = make_model(seed=99)
    fresh_opt = build_adamw(fresh, TrainConfig(lr=1e-2), CPU)
    state = load_checkpoint(path, fresh, fresh_opt, plan_hash="p1")

    assert (state.step, state.tokens_seen, state.elapsed_s) == (3, 192, 1.5)
    assert state.extra == {"note": "kept"}
    for name, a in model.state_dict().items():
        assert torch.equal(a, fresh.state_dict()[name]), name
    names = {id(p): n for n, p in model.named_parameters()}
    fresh_params = dict(fresh.named_parameters())
    for param, slots in optimizer.state.items():
        other = fresh_opt.state[fresh_params[names[id(param)]]]
        assert slots.keys() == other.keys()
        for key in slots:
            assert torch.equal(slots[key], other[key]), (names[id(param)], key)
    for old, new in zip(optimizer.param_groups, fresh_opt.param_groups, strict=True):
        assert {k: v for k, v in old.items() if k != "params"} == {
            k: v for k, v in new.items() if k != "params"}

    # The next step is identical: nothing the optimizer depends on was lost.
    x, y = ByteData().train.batch(4, 16, torch.Generator().manual_seed(7))
    for m, opt in ((model, optimizer), (fresh, fresh_opt)):
        m.eval()
        NextTokenCrossEntropy()(m(x), y).backward()
        opt.step()
    for a, b in zip(model.parameters(), fresh.parameters(), strict=True):
        assert torch.equal(a, b)


def test_tied_weights_are_stored_once_and_stay_tied(saved) -> None:
    path, model, _ = saved
    with safe_open(str(path / "model.safetensors"), framework="pt") as handle:
        keys = set(handle.keys())
        aliases = json.loads(handle.metadata()["caramba_aliases"])
    assert "tok.weight" in keys and "head.weight" not in keys
    assert aliases == {"head.weight": "tok.weight"}
    fresh = make_model(seed=5)
    load_model_weights(fresh, path)
    assert fresh.head.weight is fresh.tok.weight
    assert torch.equal(fresh.head.weight, model.tok.weight)


def test_untied_model_roundtrips_too(tmp_path: Path) -> None:
    model, optimizer = _trained(tie=False)
    path = save_checkpoint(tmp_path / "c", model, optimizer, _state())
    fresh = make_model(seed=1, tie=False)
    load_checkpoint(path, fresh, build_adamw(fresh, TrainConfig(), CPU))
    assert torch.equal(fresh.head.weight, model.head.weight)


def test_rng_state_roundtrips_through_json() -> None:
    torch.manual_seed(11)
    snapshot = json.loads(json.dumps(capture_rng_state()))
    expected = torch.rand(5)
    torch.manual_seed(12)
    restore_rng_state(snapshot)
    assert torch.equal(torch.rand(5), expected)


def test_loading_never_unpickles(saved, monkeypatch: pytest.MonkeyPatch) -> None:
    path, _, _ = saved

    def forbidden(*args: object, **kwargs: object) -> None:
        raise AssertionError("torch.load must not be used")

    monkeypatch.setattr(torch, "load", forbidden)
    fresh = make_model(seed=3)
    load_checkpoint(path, fresh, build_adamw(fresh, TrainConfig(), CPU))


def _load_fresh(path: Path, **model_kwargs: object) -> None:
    fresh = make_model(seed=2, **model_kwargs)
    load_checkpoint(path, fresh, build_adamw(fresh, TrainConfig(), CPU), plan_hash="p1")


@pytest.mark.parametrize("name", ["model.safetensors", "optimizer.safetensors", "state.json"])
def test_truncated_file_names_the_file(saved, name: str) -> None:
    path, _, _ = saved
    data = (path / name).read_bytes()
    (path / name).write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=name) as info:
        _load_fresh(path)
    assert "truncated or corrupt" in str(info.value)
    assert "--resume" in str(info.value)


@pytest.mark.parametrize("name", ["model.safetensors", "optimizer.safetensors", "state.json"])
def test_missing_file_names_the_file(saved, name: str) -> None:
    path, _, _ = saved
    (path / name).unlink()
    with pytest.raises(CheckpointError, match=f"{name} is missing"):
        _load_fresh(path)


def test_flipped_byte_is_detected_by_digest(saved) -> None:
    path, _, _ = saved
    data = bytearray((path / "model.safetensors").read_bytes())
    data[-3] ^= 0xFF
    (path / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="SHA-256"):
        _load_fresh(path)


def test_truncated_bare_safetensors_is_a_checkpoint_error(saved) -> None:
    path, _, _ = saved
    file = path / "model.safetensors"
    file.write_bytes(file.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="model.safetensors is truncated or corrupt"):
        load_model_weights(make_model(), file)


def test_shape_mismatch_names_the_tensor(saved) -> None:
    path, _, _ = saved
    with pytest.raises(CheckpointError, match=r"'tok.weight' has shape \(256, 32\)"):
        _load_fresh(path, d_model=16)


def test_architecture_mismatch_names_missing_and_unexpected(saved) -> None:
    path, _, _ = saved
    model = make_model()
    model.mix = torch.nn.Identity()  # checkpoint has mix.weight / mix.bias
    with pytest.raises(CheckpointError, match="unexpected tensor.*'mix.bias'"):
        load_model_weights(model, path)
    model = make_model()
    model.extra = torch.nn.Linear(2, 2)
    with pytest.raises(CheckpointError, match="missing tensor.*'extra.weight'"):
        load_model_weights(model, path)


def test_optimizer_for_other_parameters_is_refused(saved) -> None:
    path, _, _ = saved
    model = make_model()
    model.norm.weight.requires_grad_(False)  # same weights, but the optimizer skips it
    with pytest.raises(CheckpointError, match="optimizer param group 1 holds .*'norm.weight'"):
        load_checkpoint(path, model, build_adamw(model, TrainConfig(), CPU))


def test_plan_hash_mismatch_is_refused(saved) -> None:
    path, _, _ = saved
    fresh = make_model()
    with pytest.raises(CheckpointError, match="different plan"):
        load_checkpoint(path, fresh, plan_hash="other")


def test_manager_keeps_last_two_and_points_latest_at_newest(tmp_path: Path) -> None:
    model, optimizer = _trained(steps=1)
    manager = CheckpointManager(tmp_path / "run-a", keep=2)
    assert manager.latest() is None
    for step in (5, 10, 15, 20):
        manager.save(model, optimizer, _state(step))
    assert manager.steps() == [15, 20]
    assert manager.latest() == manager.step_dir(20)
    # Resumed from 15 and saved 16: step 20 is an abandoned timeline and goes.
    manager.save(model, optimizer, _state(16))
    assert manager.steps() == [15, 16]
    assert manager.latest() == manager.step_dir(16)
    assert load_model_weights(make_model(seed=4), manager.root).parent == manager.step_dir(16)


def test_manager_reports_corrupt_or_dangling_latest(tmp_path: Path) -> None:
    manager = CheckpointManager(tmp_path)
    (tmp_path / "latest.json").write_text('{"step": 3, "di')
    with pytest.raises(CheckpointError, match="latest.json is truncated or corrupt"):
        manager.latest()
    (tmp_path / "latest.json").write_text('{"step": 3, "dir": "step_00000003"}')
    with pytest.raises(CheckpointError, match="does not exist"):
        manager.latest()

"""The standard trainer in-process: learning, accumulation, NaN, resume, cadence."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from caramba.errors import CheckpointError, InputError, TrainingError
from caramba.training.metrics import read_records
from caramba.training.standard import StandardTrainer

sys.path.insert(0, str(Path(__file__).parent))
from training_worker import ByteData, make_context, make_model, make_run  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


def _train(run_dir: Path, steps: int = 20, *, run_kwargs: dict | None = None, **ctx_kwargs):
    ctx = make_context(run_dir, **ctx_kwargs)
    return ctx, StandardTrainer(ctx).run(make_run(steps=steps, **(run_kwargs or {})))


def test_loss_falls_on_real_text_and_result_is_consistent(tmp_path: Path) -> None:
    ctx, result = _train(tmp_path, steps=60, eval_every=10)
    records = read_records(tmp_path / "metrics.jsonl")
    evals = [r for r in records if r.get("kind") == "eval"]
    train = [r for r in records if "kind" not in r]
    assert [r["step"] for r in evals] == [10, 20, 30, 40, 50, 60]
    assert evals[-1]["val_loss"] < evals[0]["val_loss"] - 1.0
    assert result.final_val_loss == evals[-1]["val_loss"]
    assert result.last_train_loss == train[-1]["loss"] and train[-1]["step"] == 60
    assert result.tokens_seen == 60 * 4 * 32 == train[-1]["tokens"]
    assert result.checkpoint == tmp_path / "checkpoints" / "tiny" / "step_00000060"
    assert result.resumed_from_step is None and result.tokens_per_s > 0
    assert result.wall_s >= train[-1]["elapsed_s"] > 0


class _Cycling:
    """Hands out the same 8 windows in order, however they are split into micro-batches."""

    def __init__(self) -> None:
        text = ByteData().train
        self.x, self.y = text.iter_eval_batches(8, 32, 1).__next__()
        self.cursor = 0

    def __len__(self) -> int:
        return 8 * 32

    def batch(self, batch_size: int, block_size: int, generator: torch.Generator):
        rows = torch.arange(self.cursor, self.cursor + batch_size) % 8
        self.cursor += batch_size
        return self.x[rows], self.y[rows]


def test_grad_accumulation_matches_one_large_batch(tmp_path: Path) -> None:
    outcomes = []
    for batch_size, accum in ((8, 1), (4, 2)):
        data = ByteData()
        data.train = _Cycling()
        run_dir = tmp_path / f"b{batch_size}"
        ctx, result = _train(run_dir, steps=6, model=make_model(dropout=0.0), data=data,
                             log_every=1, run_kwargs={"batch_size": batch_size,
                                                      "grad_accum": accum, "grad_clip": 0.0})
        records = [r for r in read_records(run_dir / "metrics.jsonl") if "kind" not in r]
        outcomes.append((ctx.model, records, result))
    (model_a, rec_a, res_a), (model_b, rec_b, res_b) = outcomes
    assert res_a.tokens_seen == res_b.tokens_seen == 6 * 8 * 32
    for a, b in zip(rec_a, rec_b, strict=True):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-4)
    for name, a in model_a.state_dict().items():
        torch.testing.assert_close(a, model_b.state_dict()[name], rtol=1e-4, atol=1e-5, msg=name)


def test_nan_loss_stops_with_the_step_and_advice(tmp_path: Path) -> None:
    ctx = make_context(tmp_path, log_every=10)
    calls = 0
    base = ctx.objective

    def poisoned(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        nonlocal calls
        calls += 1
        loss = base(logits, targets)
        return loss * float("nan") if calls >= 3 else loss

    ctx.objective = poisoned
    with pytest.raises(TrainingError, match="became nan at step 3") as info:
        StandardTrainer(ctx).run(make_run(steps=20))
    assert "lower train.lr" in str(info.value)
    assert not (tmp_path / "checkpoints" / "tiny" / "latest.json").exists()


class _Crash(Exception):
    pass


def test_crash_then_resume_matches_uninterrupted_run(tmp_path: Path) -> None:
    _, reference = _train(tmp_path / "ref", steps=24, save_every=5, eval_every=6)

    ctx = make_context(tmp_path / "crash", save_every=5, eval_every=6)
    original = ctx.data.train.batch
    calls = 0

    def dies_at_step_13(*args, **kwargs):
        nonlocal calls
        calls += 1
        if calls == 13:
            raise _Crash
        return original(*args, **kwargs)

    ctx.data.train.batch = dies_at_step_13
    with pytest.raises(_Crash):
        StandardTrainer(ctx).run(make_run(steps=24))

    resumed_ctx = make_context(tmp_path / "crash", model=make_model(seed=7), resume=True,
                               save_every=5, eval_every=6)
    resumed = StandardTrainer(resumed_ctx).run(make_run(steps=24))
    assert resumed.resumed_from_step == 10
    for field in ("last_train_loss", "final_train_loss", "final_val_loss", "tokens_seen"):
        assert getattr(resumed, field) == getattr(reference, field), field
    ref_model = make_model(seed=8)
    from caramba.training.checkpoint import load_model_weights

    load_model_weights(ref_model, reference.checkpoint)
    resumed_weights = resumed_ctx.model.state_dict()
    for name, a in ref_model.state_dict().items():
        assert torch.equal(a, resumed_weights[name]), name
    records = read_records(tmp_path / "crash" / "metrics.jsonl")
    ref_records = read_records(tmp_path / "ref" / "metrics.jsonl")
    key = lambda r: (r.get("kind", "train"), r["step"])  # noqa: E731
    assert len({key(r) for r in records}) == len(records)  # no duplicate steps
    assert [(key(r), r.get("loss", r.get("val_loss"))) for r in records] == [
        (key(r), r.get("loss", r.get("val_loss"))) for r in ref_records]


def test_resuming_a_finished_run_returns_its_result_without_training(tmp_path: Path) -> None:
    ctx, first = _train(tmp_path, steps=8)
    again = make_context(tmp_path, model=make_model(seed=3), resume=True)

    def no_training(*args, **kwargs):
        raise AssertionError("a finished run must not train again")

    again.data.train.batch = no_training
    second = StandardTrainer(again).run(make_run(steps=8))
    assert second.resumed_from_step == 8
    assert (second.final_train_loss, second.final_val_loss, second.wall_s) == (
        first.final_train_loss, first.final_val_loss, first.wall_s)
    for a, b in zip(ctx.model.parameters(), again.model.parameters(), strict=True):
        assert torch.equal(a, b)  # the trained weights are loaded for sampling


def test_resume_refuses_a_checkpoint_of_another_plan(tmp_path: Path) -> None:
    _train(tmp_path, steps=6, save_every=3)
    ctx = make_context(tmp_path, resume=True, plan_hash="changed")
    with pytest.raises(CheckpointError, match="different plan"):
        StandardTrainer(ctx).run(make_run(steps=6))


def test_fresh_start_replaces_earlier_checkpoints_and_metrics(tmp_path: Path) -> None:
    _train(tmp_path, steps=12, save_every=4)
    _, result = _train(tmp_path, steps=6, save_every=4)
    ckpt = tmp_path / "checkpoints" / "tiny"
    assert sorted(p.name for p in ckpt.iterdir()) == ["latest.json", "step_00000004",
                                                       "step_00000006"]
    steps = [r["step"] for r in read_records(tmp_path / "metrics.jsonl") if "kind" not in r]
    assert steps == [5, 6]
    assert result.resumed_from_step is None


def test_resume_without_checkpoint_starts_from_scratch(tmp_path: Path) -> None:
    _, result = _train(tmp_path, steps=4, resume=True)
    assert result.resumed_from_step is None and result.steps == 4


def test_checkpoint_and_eval_cadence(tmp_path: Path) -> None:
    _train(tmp_path, steps=10, save_every=4, eval_every=5)
    ckpt = tmp_path / "checkpoints" / "tiny"
    assert sorted(p.name for p in ckpt.glob("step_*")) == ["step_00000008", "step_00000010"]
    evals = [r["step"] for r in read_records(tmp_path / "metrics.jsonl") if r.get("kind")]
    assert evals == [5, 10]


def test_plain_instrument_prints_every_log_every_steps(tmp_path: Path,
                                                       capsys: pytest.CaptureFixture) -> None:
    _train(tmp_path, steps=10, log_every=5, instrument="plain")
    err = capsys.readouterr().err.splitlines()
    assert [line.split()[1:3] for line in err if " loss " in line] == [
        ["step", "5/10"], ["step", "10/10"]]


def test_other_phase_is_refused(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="train.phase"):
        _train(tmp_path, steps=2, run_kwargs={"phase": "blockwise"})


def test_compile_failure_on_first_step_is_explained(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    def broken_compile(model: torch.nn.Module):
        def forward(x: torch.Tensor) -> torch.Tensor:
            raise RuntimeError("inductor: no C++ compiler")
        return forward

    monkeypatch.setattr(torch, "compile", broken_compile)
    with pytest.raises(TrainingError, match="train.compile") as info:
        _train(tmp_path, steps=2, run_kwargs={"compile": True})
    assert "no C++ compiler" in str(info.value)


def test_compile_traces_the_model_and_trains_like_eager(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """train.compile goes through torch.compile for real (dynamo tracing); the "eager"
    backend skips C++ code generation so the test stays fast on a CPU-only machine."""
    real_compile = torch.compile
    compiled = []

    def eager_compile(model: torch.nn.Module, **kwargs: object):
        compiled.append(model)
        return real_compile(model, backend="eager")

    _, eager = _train(tmp_path / "eager", steps=4, model=make_model(dropout=0.0))
    monkeypatch.setattr(torch, "compile", eager_compile)
    _, traced = _train(tmp_path / "compiled", steps=4, model=make_model(dropout=0.0),
                       run_kwargs={"compile": True})
    assert len(compiled) == 1
    assert traced.last_train_loss == pytest.approx(eager.last_train_loss, rel=1e-5)

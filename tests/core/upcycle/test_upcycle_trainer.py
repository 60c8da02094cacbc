"""trainer.upcycle on a two-block SmolLM2 (real weights) and real English text: both phases,
convergence mode, exact resume after a crash in either phase, and bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from smollm import english, save_truncated_teacher, student

from caramba.errors import CheckpointError, DataError, InputError
from caramba.manifest.schema import RunSpec, RuntimeConfig, TrainConfig
from caramba.registry import TRAINERS
from caramba.training.evaluate import evaluate
from caramba.training.metrics import read_records
from caramba.training.objectives import NextTokenCrossEntropy
from caramba.training.standard import TrainerContext
from caramba.upcycle.blockwise import TeacherActivations


class _Crash(Exception):
    pass


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_truncated_teacher(2, tmp_path_factory.mktemp("teacher") / "smollm2-2-blocks")


def _context(run_dir: Path, model: torch.nn.Module, *, resume: bool = False,
             data: object = None) -> TrainerContext:
    return TrainerContext(
        model=model, objective=NextTokenCrossEntropy(), data=data or english(),
        runtime=RuntimeConfig(save_every=2, eval_every=0, eval_batches=1, log_every=1),
        run_dir=run_dir, plan_hash="upcycle-test", resume=resume, instrument="none")


def _runs(teacher: Path, blockwise_steps: int = 4, **blockwise: object) -> list[RunSpec]:
    common = {"teacher": str(teacher), "batch_size": 2, "block_size": 32}
    return [
        RunSpec(id="blockwise", seed=3, steps=blockwise_steps, train=TrainConfig(
            phase="blockwise", blockwise_batches=2, lr=3e-3, **common, **blockwise)),
        RunSpec(id="global", seed=3, steps=4, train=TrainConfig(
            phase="global", lr=1e-4, distill_weight=0.5, distill_temperature=2.0,
            blockwise_batches=1, **common)),
    ]


def _train(run_dir: Path, runs: list[RunSpec], model: torch.nn.Module | None = None,
           resume: bool = False) -> tuple[object, list[object], torch.nn.Module]:
    model = model if model is not None else student(2)
    trainer = TRAINERS.get("trainer.upcycle")(_context(run_dir, model, resume=resume))
    return trainer, [trainer.run(run) for run in runs], model


def test_blockwise_then_global_learns_and_reports(tmp_path: Path, teacher_dir: Path) -> None:
    trainer, (blockwise, final), model = _train(tmp_path, _runs(teacher_dir, 12))
    assert trainer.surgery is not None and len(trainer.surgery.layers) == 2
    assert blockwise.steps == 24 and final.steps == 4
    records = read_records(tmp_path / "metrics.jsonl")
    for block in ("topology.layers.0.layers.0.layers.1", "topology.layers.0.layers.2.layers.1"):
        l1 = [r["l1"] for r in records if r.get("kind") == "blockwise" and r["block"] == block]
        assert len(l1) == 12 and sum(l1[-3:]) < sum(l1[:3])  # each block learns
    # A two-block cut of a 30-block model is a poor language model; the student must match
    # it, not beat it: same held-out windows, nearly the same loss.
    teacher_loss = evaluate(trainer.teacher, NextTokenCrossEntropy(), english().val,
                            batch_size=2, block_size=32, max_batches=1,
                            device=torch.device("cpu"), dtype=torch.float32)
    assert abs(final.final_val_loss - teacher_loss) < 0.5
    assert trainer.teacher is not None and not any(
        p.requires_grad for p in trainer.teacher.parameters())
    assert all(p.requires_grad for p in model.parameters())


def test_convergence_mode_stops_each_block_at_its_target(tmp_path: Path,
                                                         teacher_dir: Path) -> None:
    runs = _runs(teacher_dir, 50, blockwise_target_loss=100.0)[:1]
    _, (result,), _ = _train(tmp_path, runs)
    assert result.steps == 20  # 2 blocks x the first convergence check (10 steps)
    state = json.loads((tmp_path / "checkpoints" / "blockwise" / "step_00000020"
                        / "state.json").read_text())
    assert [b["steps"] for b in state["extra"]["blocks"]] == [10, 10]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory, teacher_dir: Path
                  ) -> tuple[Path, list[object], torch.nn.Module]:  # fmt: skip
    """(run folder, results, model) of the run that both crash tests must reproduce: it is the
    same run for both, so it is trained once."""
    run_dir = tmp_path_factory.mktemp("uninterrupted")
    _, results, model = _train(run_dir, _runs(teacher_dir))
    return run_dir, results, model


@pytest.mark.parametrize("phase", ["blockwise", "global"])
def test_crash_then_resume_matches_the_uninterrupted_run(tmp_path: Path, teacher_dir: Path,
                                                         monkeypatch: pytest.MonkeyPatch,
                                                         phase: str, uninterrupted) -> None:
    runs = _runs(teacher_dir)
    ref_dir, reference, ref_model = uninterrupted

    calls = 0
    if phase == "blockwise":  # dies in step 7 of 8: block 2, after the checkpoint at step 6
        original = TeacherActivations.batch

        def dies(self, *args, **kwargs):
            nonlocal calls
            calls += 1
            if calls == 7:
                raise _Crash
            return original(self, *args, **kwargs)

        monkeypatch.setattr(TeacherActivations, "batch", dies)
    else:  # dies in step 4 of the global phase (its checkpoint at step 2 survives)
        split = english().train
        original_batch = split.batch

        def dies_later(*args, **kwargs):
            nonlocal calls
            calls += 1
            if calls == 2 + 4:  # 2 batches for the blockwise cache, then global steps 1..4
                raise _Crash
            return original_batch(*args, **kwargs)

        monkeypatch.setattr(split, "batch", dies_later)
    with pytest.raises(_Crash):
        _train(tmp_path / "crash", runs)
    monkeypatch.undo()

    _, resumed, model = _train(tmp_path / "crash", runs, student(2, seed=9), resume=True)
    crashed_run = 0 if phase == "blockwise" else 1
    assert resumed[crashed_run].resumed_from_step == (6 if phase == "blockwise" else 2)
    for a, b in zip(reference, resumed, strict=True):
        for field in ("final_train_loss", "last_train_loss", "final_val_loss", "tokens_seen"):
            assert getattr(a, field) == getattr(b, field), field
    for (name, a), b in zip(ref_model.state_dict().items(), model.state_dict().values(),
                            strict=True):
        assert torch.equal(a, b), name
    ref_records = read_records(ref_dir / "metrics.jsonl")
    records = read_records(tmp_path / "crash" / "metrics.jsonl")
    strip = lambda r: {k: v for k, v in r.items() if k not in ("elapsed_s", "tokens_per_s")}  # noqa: E731
    assert sorted(map(json.dumps, map(strip, records))) == sorted(
        map(json.dumps, map(strip, ref_records)))


def test_missing_teacher_file_is_an_input_error(tmp_path: Path) -> None:
    runs = _runs(tmp_path / "no-such-teacher.gguf")
    with pytest.raises(InputError, match="no-such-teacher.gguf"):
        _train(tmp_path, runs[:1])


def test_unsupported_teacher_architecture_is_named(tmp_path: Path, teacher_dir: Path) -> None:
    other = tmp_path / "mistral"
    shutil.copytree(teacher_dir, other)
    config = json.loads((other / "config.json").read_text())
    (other / "config.json").write_text(json.dumps({**config, "model_type": "mistral"}))
    with pytest.raises(CheckpointError, match="model_type 'mistral' is not supported"):
        _train(tmp_path / "run", _runs(other)[:1])


def test_student_that_does_not_match_the_teacher_names_the_tensor(tmp_path: Path,
                                                                  teacher_dir: Path) -> None:
    with pytest.raises(CheckpointError, match=r"model\.layers\.1\..*has no place"):
        _train(tmp_path, _runs(teacher_dir)[:1], model=student(1))


def test_data_from_another_tokenizer_is_refused(tmp_path: Path, teacher_dir: Path) -> None:
    from caramba.data.tokens import TokenDatasetSource

    bpe = TokenDatasetSource.open({"path": "corpus:english"}, Path("."))
    trainer = TRAINERS.get("trainer.upcycle")(_context(tmp_path, student(2), data=bpe))
    with pytest.raises(DataError, match="data.config.tokenizer"):
        trainer.run(_runs(teacher_dir)[0])

"""Metrics JSONL: flushed per record, rewritten on resume without duplicate steps."""

import json
from pathlib import Path

from caramba.training.metrics import MetricsWriter, read_records


def _train(writer: MetricsWriter, step: int) -> None:
    writer.log_train(step=step, loss=1.0 / step, lr=1e-3, grad_norm=0.5, tokens_per_s=100.0,
                     tokens=step * 64, elapsed_s=step * 0.1)


def test_records_are_readable_before_close(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    writer = MetricsWriter(path, "a")
    _train(writer, 1)
    writer.log_eval(step=1, val_loss=2.0, val_ppl=7.389)
    lines = path.read_text().splitlines()  # not closed yet: flushed on every write
    assert json.loads(lines[0]) == {"run": "a", "step": 1, "loss": 1.0, "lr": 1e-3,
                                    "grad_norm": 0.5, "tokens_per_s": 100.0, "tokens": 64,
                                    "elapsed_s": 0.1}
    assert json.loads(lines[1]) == {"kind": "eval", "run": "a", "step": 1, "val_loss": 2.0,
                                    "val_ppl": 7.389}
    writer.close()


def test_truncate_after_drops_only_this_runs_later_records(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    with MetricsWriter(path, "a") as a, MetricsWriter(path, "b") as b:
        for step in range(1, 7):
            _train(a, step)
            _train(b, step)
        a.log_eval(step=6, val_loss=1.0, val_ppl=2.7)
    with open(path, "a") as handle:
        handle.write('{"run": "a", "step": 7, "lo')  # killed mid-line

    with MetricsWriter(path, "a") as a:
        a.truncate_after(4)
        expected = [(run, s) for s in range(1, 7) for run in ("a", "b") if run == "b" or s <= 4]
        assert [(r["run"], r["step"]) for r in read_records(path)] == expected
        _train(a, 5)
    steps_a = [r["step"] for r in read_records(path) if r["run"] == "a"]
    assert steps_a == [1, 2, 3, 4, 5]
    assert all(line.strip() for line in path.read_text().splitlines())


def test_truncate_to_zero_removes_run_and_missing_file_is_fine(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    MetricsWriter(path, "a").truncate_after(0)  # no file yet
    assert not path.exists()
    with MetricsWriter(path, "a") as a:
        _train(a, 1)
        a.truncate_after(0)
    assert read_records(path) == []


def test_append_after_partial_line_starts_a_new_line(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"run": "a", "step": 1, "loss": 2.0}\n{"run": "a", "st')
    with MetricsWriter(path, "a") as a:
        _train(a, 2)
    assert [r["step"] for r in read_records(path)] == [1, 2]

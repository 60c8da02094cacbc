"""The resume guarantee: a run SIGKILLed mid-way and resumed ends bit-identical on CPU.

Three processes train the same tiny run on real text: one uninterrupted, one killed (SIGKILL,
no chance to clean up) after its second checkpoint, and one resuming the killed run's
directory. Final losses must be equal as floats and every saved tensor (weights and AdamW
moments) equal bit for bit.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from caramba.training.metrics import read_records

WORKER = Path(__file__).with_name("training_worker.py")
STEPS, SAVE_EVERY = 40, 5

pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs POSIX signals")


def _start(run_dir: Path, *extra: str) -> subprocess.Popen[bytes]:
    command = [sys.executable, str(WORKER), "--run-dir", str(run_dir),
               "--result", str(run_dir / "result.json"), "--steps", str(STEPS),
               "--save-every", str(SAVE_EVERY), "--eval-every", "10", *extra]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _finish(process: subprocess.Popen[bytes], run_dir: Path) -> dict:
    _, err = process.communicate(timeout=120)
    assert process.returncode == 0, err.decode()
    return json.loads((run_dir / "result.json").read_text())


def _latest_step(run_dir: Path) -> int:
    pointer = run_dir / "checkpoints" / "tiny" / "latest.json"
    return json.loads(pointer.read_text())["step"] if pointer.exists() else 0


def _final_tensors(run_dir: Path) -> dict[str, torch.Tensor]:
    step_dir = run_dir / "checkpoints" / "tiny" / f"step_{STEPS:08d}"
    tensors = {f"model:{k}": v for k, v in load_file(step_dir / "model.safetensors").items()}
    tensors.update({f"optimizer:{k}": v
                    for k, v in load_file(step_dir / "optimizer.safetensors").items()})
    return tensors


def test_sigkill_then_resume_is_bit_identical(tmp_path: Path) -> None:
    straight_dir, killed_dir = tmp_path / "straight", tmp_path / "killed"
    straight = _start(straight_dir)
    victim = _start(killed_dir, "--delay", "0.03")  # slow enough to be caught mid-run

    deadline = time.monotonic() + 90
    while _latest_step(killed_dir) < 2 * SAVE_EVERY:
        assert victim.poll() is None, victim.communicate()[1].decode()
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.005)
    os.kill(victim.pid, signal.SIGKILL)
    victim.communicate()
    assert victim.returncode == -signal.SIGKILL
    killed_at = _latest_step(killed_dir)
    assert 2 * SAVE_EVERY <= killed_at < STEPS
    assert not (killed_dir / "result.json").exists()

    expected = _finish(straight, straight_dir)
    resumed = _finish(_start(killed_dir, "--resume"), killed_dir)

    assert resumed["resumed_from_step"] == killed_at
    for field in ("last_train_loss", "final_train_loss", "final_val_loss", "tokens_seen"):
        assert resumed[field] == expected[field], field
    want, got = _final_tensors(straight_dir), _final_tensors(killed_dir)
    assert want.keys() == got.keys()
    for name in want:
        assert torch.equal(want[name], got[name]), name

    # metrics.jsonl: the steps redone after the resume are recorded once, with equal losses.
    def losses(run_dir: Path) -> list[tuple[str, int, float]]:
        return [(r.get("kind", "train"), r["step"], r.get("loss", r.get("val_loss")))
                for r in read_records(run_dir / "metrics.jsonl")]

    assert losses(killed_dir) == losses(straight_dir)

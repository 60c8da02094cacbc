"""Run one run's `verify:` blocks and decide whether the pipeline goes on."""

from __future__ import annotations

from typing import Any

import torch

from caramba.errors import InputError, TrainingError
from caramba.manifest.schema import RunSpec
from caramba.verify.checks import Verification, compare, evaluate_cases, fidelity


class VerificationError(TrainingError):
    """A verification with `fail_fast: true` failed its thresholds."""


def verify_run(run: RunSpec, *, student: torch.nn.Module, teacher: torch.nn.Module | None,
               data: Any, tokenizer: Any, device: torch.device) -> list[Verification]:
    """Every verify block of `run`, in order. A failed block with fail_fast raises
    VerificationError after its result is complete; otherwise failures are only reported."""
    results = []
    for block in run.verify:
        batch = getattr(block, "batch_size", None) or run.train.batch_size
        block_size = getattr(block, "block_size", None) or run.train.block_size
        if block.type == "eval":
            if tokenizer is None:
                raise InputError(
                    f"run {run.id!r}: verify type eval needs a tokenizer, and the dataset has "
                    "none.", hint="set data.config.tokenizer.")
            result = evaluate_cases(block, run.id, teacher, student, tokenizer, device=device)
        else:
            if teacher is None:
                raise InputError(f"run {run.id!r}: verify type {block.type!r} needs a teacher, "
                                 "and this run's trainer has none.",
                                 hint="use trainer.upcycle with train.teacher.")
            check = compare if block.type == "compare" else fidelity
            result = check(block, run.id, teacher, student, data, batch_size=batch,
                           block_size=block_size, device=device)  # type: ignore[arg-type]
        results.append(result)
        if block.fail_fast and not result.passed:
            raise VerificationError(
                f"run {run.id!r}: verification {block.type!r} failed: "
                + "; ".join(result.failures) + ".",
                hint="relax the thresholds, train longer, or set fail_fast: false to report "
                     "and continue.")
    return results

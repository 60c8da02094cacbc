"""Errors a user can act on.

Every error raised for bad input derives from `CarambaError`; the CLI prints its message as
one paragraph (no traceback unless `--debug`) and exits with `exit_code`.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class CarambaError(Exception):
    """Base of all user-facing errors: the message already says what to do."""

    exit_code = 1

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        self.message = message
        self.hint = hint
        super().__init__(message if hint is None else f"{message}\n  hint: {hint}")


class InputError(CarambaError):
    """Bad input from the user: a missing file, a wrong argument, a malformed file."""

    exit_code = 2


class DataError(InputError):
    """A dataset file or corpus is missing, empty or in the wrong format."""


class CheckpointError(InputError):
    """A checkpoint is missing, truncated, corrupt or does not match the model."""


class RegistryError(InputError):
    """A name (layer type, trainer, dataset, ...) is not registered, or registered twice."""


class TrainingError(CarambaError):
    """The job itself failed (for example the loss became NaN)."""


def did_you_mean(name: str, candidates: Iterable[str]) -> str | None:
    """The closest candidate to a misspelled `name`, or None if nothing is close."""
    pool = list(candidates)
    match = difflib.get_close_matches(name, pool, n=1, cutoff=0.6)
    if not match:
        lowered = {c.lower(): c for c in pool}
        match = difflib.get_close_matches(name.lower(), list(lowered), n=1, cutoff=0.6)
        match = [lowered[m] for m in match]
    return match[0] if match else None

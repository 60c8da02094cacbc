"""The teacher of an upcycle: a pretrained model loaded once per process, and the checks
that the student's data and shapes belong to it."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import torch

from caramba.errors import DataError
from caramba.loaders.pretrained import Pretrained

_LOADED: dict[tuple[str, str], Pretrained] = {}
SCHEMES = ("pkg:", "hf://")


def resolve_ref(ref: str, base_dir: Path | None) -> str:
    """A relative file or folder reference resolves against the manifest's folder."""
    if ref.startswith(SCHEMES) or base_dir is None:
        return ref
    path = Path(ref).expanduser()
    if not path.is_absolute() and (base_dir / path).exists():
        return str(base_dir / path)
    return ref


def load_teacher(ref: str, base_dir: Path | None = None,
                 dtype: torch.dtype = torch.float32) -> Pretrained:
    """`load_pretrained(ref)`, frozen and in eval mode; one copy per (ref, dtype) per process."""
    from caramba.loaders.load import load_pretrained

    key = (resolve_ref(ref, base_dir), str(dtype))
    if key not in _LOADED:
        pretrained = load_pretrained(key[0], dtype)
        pretrained.model.eval().requires_grad_(False)
        _LOADED[key] = pretrained
    return _LOADED[key]


def tokenizer_digest(tokenizer: Any) -> str:
    return hashlib.sha256(tokenizer.to_json().encode()).hexdigest()


def check_data(pretrained: Pretrained, data: Any, ref: str) -> None:
    """The training data must be token ids of the teacher's own tokenizer."""
    vocab = pretrained.architecture.vocab_size
    if data.vocab_size is not None and data.vocab_size > vocab:
        raise DataError(
            f"the dataset's vocabulary ({data.vocab_size} tokens) is larger than the teacher's "
            f"({vocab}, {ref}): the data was tokenized with another tokenizer.",
            hint=f"set data.config.tokenizer: {ref}")
    tokenizer = getattr(data, "tokenizer", None)
    if tokenizer is not None and tokenizer_digest(tokenizer) != tokenizer_digest(
            pretrained.tokenizer):
        raise DataError(
            f"the dataset was tokenized with a tokenizer other than the teacher's ({ref}); "
            "an upcycled student must read the teacher's token ids.",
            hint=f"set data.config.tokenizer: {ref}")

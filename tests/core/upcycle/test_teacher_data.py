"""dataset.tokens with `tokenizer:` a pretrained model: corpora encoded with the teacher's
tokenizer (cached by its hash), as an upcycled student must read the teacher's ids."""

from __future__ import annotations

from pathlib import Path

import pytest
from smollm import REF, english, smollm

from caramba.data.build import tokenizer_digest
from caramba.data.corpora import load_corpus
from caramba.data.tokens import TokenDatasetSource, load_tokenizer
from caramba.errors import DataError


def test_corpus_is_encoded_with_the_teachers_tokenizer() -> None:
    data = english()
    assert data.vocab_size == 49152
    assert tokenizer_digest(data.tokenizer) == tokenizer_digest(smollm().tokenizer)
    assert "-tok" in data.description
    text = load_corpus("english").val[0].text  # Ruth, the first held-out document
    assert data.tokenizer.decode(data.val.data[:200].tolist()) == smollm().tokenizer.decode(
        smollm().tokenizer.encode(text)[:200])
    assert data.meta["tokenizer"].startswith("given tokenizer, sha256")
    # About 2.4M SmolLM2 tokens of training text, 0.19M held out.
    assert 2_000_000 < len(data.train) < 3_000_000 and 150_000 < len(data.val) < 250_000


def test_the_cached_dataset_is_reused(tmp_path: Path) -> None:
    folder = Path(english().description.split(": ")[0].split(", ")[-1])
    before = (folder / "train.npy").stat().st_mtime_ns
    again = TokenDatasetSource.open({"path": "corpus:english", "tokenizer": REF}, tmp_path)
    assert (folder / "train.npy").stat().st_mtime_ns == before
    assert len(again.train) == len(english().train)


def test_vocab_size_does_not_combine_with_a_tokenizer(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="vocab_size does not apply"):
        TokenDatasetSource.open({"path": "corpus:english", "tokenizer": REF,
                                 "vocab_size": 8192}, tmp_path)


def test_tokenizer_references_resolve_or_say_what_is_missing(tmp_path: Path) -> None:
    assert load_tokenizer(REF, tmp_path).vocab_size == 49152
    with pytest.raises(DataError, match="missing.gguf"):
        load_tokenizer("missing.gguf", tmp_path)

"""The offline byte-level BPE tokenizer, on real text."""

import hashlib
import subprocess
import sys

import pytest
import tokenizers

from caramba.data.build import ensure_corpus_dataset
from caramba.data.corpora import load_corpus
from caramba.data.tokenizer import EOS_TOKEN, Tokenizer, train_bpe
from caramba.errors import DataError


@pytest.fixture(scope="module")
def english_tokenizer() -> Tokenizer:
    """The tokenizer of the shared, cached `english` dataset (built once per cache)."""
    return Tokenizer.load(ensure_corpus_dataset("english", 8192, quiet=True))


@pytest.fixture(scope="module")
def small_text() -> list[str]:
    corpus = load_corpus("kjv")
    return [d.text for d in corpus.train[:3]]  # Genesis, Exodus, Leviticus: ~490 KB


_TRAIN_AND_HASH = """
import hashlib
from caramba.data.corpora import load_corpus
from caramba.data.tokenizer import train_bpe
texts = [d.text for d in load_corpus("kjv").train[:3]]
print(hashlib.sha256(train_bpe(texts, 1000).to_json().encode()).hexdigest())
"""


def test_bpe_training_is_deterministic_within_and_across_processes(small_text):
    first = train_bpe(small_text, 1000).to_json()
    assert train_bpe(small_text, 1000).to_json() == first
    # Another process has another hash seed: the merges must not depend on it.
    other = subprocess.run(
        [sys.executable, "-c", _TRAIN_AND_HASH], capture_output=True, text=True, check=True
    )
    assert other.stdout.strip() == hashlib.sha256(first.encode()).hexdigest()


def test_trained_tokenizer_has_eos_zero_and_the_requested_size(small_text):
    tok = train_bpe(small_text, 1000)
    assert tok.vocab_size == 1000
    assert tok.eos_id == 0 and tok.inner.id_to_token(0) == EOS_TOKEN
    assert tok.bos_id is None


def test_roundtrip_is_exact_on_real_verses_and_lines(english_tokenizer):
    corpus = load_corpus("english")
    lines = [line for d in corpus.val for line in d.text.splitlines()[:200]]
    assert len(lines) > 1000
    for line in lines:
        assert english_tokenizer.decode(english_tokenizer.encode(line)) == line
    whole = corpus.val[0].text  # all of Ruth, newlines included
    assert english_tokenizer.decode(english_tokenizer.encode(whole)) == whole


def test_any_unicode_and_the_eos_token_roundtrip(english_tokenizer):
    text = f"naïve café — 東京 🙂\tend{EOS_TOKEN}next"
    ids = english_tokenizer.encode(text)
    assert english_tokenizer.eos_id in ids
    assert english_tokenizer.decode(ids) == text


def test_bpe_compresses_held_out_english(english_tokenizer):
    # Measured: 3.41 characters per token on the whole validation split, 3.8-4.1 on the KJV
    # books, 3.0-3.1 on the plays (names, short verse lines). Without merges it would be 1.
    val = load_corpus("english").val
    chars = sum(len(d.text) for d in val)
    tokens = sum(len(english_tokenizer.encode(d.text)) for d in val)
    assert chars / tokens > 3.3
    for doc in val:
        assert len(doc.text) / len(english_tokenizer.encode(doc.text)) > 2.9, doc.name


def test_encode_batch_matches_encode(english_tokenizer):
    texts = ["In the beginning God created the heaven and the earth.", "To be, or not to be"]
    assert english_tokenizer.encode_batch(texts) == [english_tokenizer.encode(t) for t in texts]


def test_save_and_load_preserve_encoding(tmp_path, small_text):
    tok = train_bpe(small_text, 600)
    tok.save(tmp_path / "tokenizer.json")
    for source in (tmp_path / "tokenizer.json", tmp_path):  # the file, or its folder
        loaded = Tokenizer.load(source)
        assert loaded.to_json() == tok.to_json()
        assert loaded.eos_id == 0
        assert loaded.encode(small_text[0][:5000]) == tok.encode(small_text[0][:5000])


def test_foreign_tokenizer_eos_is_found_among_special_tokens():
    inner = tokenizers.Tokenizer(tokenizers.models.WordLevel({"<s>": 0, "</s>": 1, "a": 2}))
    inner.add_special_tokens(["<s>", "</s>"])
    tok = Tokenizer(inner)
    assert (tok.bos_id, tok.eos_id) == (0, 1)


def test_missing_tokenizer_file_names_the_path(tmp_path):
    with pytest.raises(DataError, match=str(tmp_path / "nope.json")):
        Tokenizer.load(tmp_path / "nope.json")


def test_malformed_tokenizer_file_names_the_path(tmp_path):
    bad = tmp_path / "tokenizer.json"
    bad.write_text("{not json")
    with pytest.raises(DataError, match=str(bad)):
        Tokenizer.load(bad)


def test_vocab_smaller_than_the_byte_alphabet_is_refused(small_text):
    with pytest.raises(DataError, match="at least 257"):
        train_bpe(small_text, 200)

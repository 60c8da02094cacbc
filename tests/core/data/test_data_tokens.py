"""dataset.tokens: config, path resolution, a DataError naming the path for each bad input."""

import shutil

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from caramba.data.build import ensure_corpus_dataset
from caramba.data.tokenfile import write_tokens
from caramba.data.tokens import TokenData, TokenDatasetSource
from caramba.errors import DataError
from caramba.registry import DATASETS


@pytest.fixture(scope="module")
def english_dir():
    return ensure_corpus_dataset("english", 8192, quiet=True)


def test_registered_as_dataset_tokens():
    assert DATASETS.get("dataset.tokens") is TokenDatasetSource


def test_config_is_strict_frozen_and_documented():
    Config = TokenDatasetSource.Config
    assert all(f.description for f in Config.model_fields.values())
    with pytest.raises(ValidationError):
        Config(path="x.npy", vocab=10)
    config = Config(path="x.npy")
    with pytest.raises(ValidationError):
        config.path = "y.npy"
    assert (config.vocab_size, config.val_frac, config.tokenizer) == (8192, 0.05, None)


def test_corpus_source_opens_the_cached_english_dataset(tmp_path, english_dir):
    data = TokenDatasetSource.open({"path": "corpus:english"}, tmp_path)
    assert isinstance(data, TokenData)
    assert data.vocab_size == 8192 and data.tokenizer is not None
    assert data.tokenizer.eos_id == 0
    assert data.train.source == str(english_dir / "train.npy")
    assert len(data.train) > 2_000_000 and len(data.val) > 150_000
    assert data.meta["corpus"] == "english"
    assert "english" in data.description
    data.check_block_size(1024)


def test_dataset_folder_resolves_against_the_manifest_folder(tmp_path, english_dir):
    shutil.copytree(english_dir, tmp_path / "data" / "english")
    config = TokenDatasetSource.Config(path="data/english")
    data = TokenDatasetSource.open(config, tmp_path)
    assert data.train.source == str(tmp_path / "data" / "english" / "train.npy")
    assert data.vocab_size == 8192


def test_npy_and_tokens_files_give_the_same_data(tmp_path, english_dir):
    ids = np.load(english_dir / "val.npy")[:20_000]
    np.save(tmp_path / "ids.npy", ids)
    write_tokens(tmp_path / "ids.tokens", ids, comment="first 20k val tokens")
    tok = str(english_dir / "tokenizer.json")
    a = TokenDatasetSource.open({"path": "ids.npy", "tokenizer": tok, "val_frac": 0.1}, tmp_path)
    b = TokenDatasetSource.open({"path": "ids.tokens", "tokenizer": tok, "val_frac": 0.1}, tmp_path)
    assert np.array_equal(a.train.data, b.train.data) and np.array_equal(a.val.data, b.val.data)
    assert len(a.val) == 2000 and a.vocab_size == b.vocab_size == 8192
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    assert torch.equal(a.train.batch(4, 64, g1)[0], b.train.batch(4, 64, g2)[0])


def test_single_file_without_tokenizer_has_unknown_vocab(tmp_path):
    np.save(tmp_path / "ids.npy", np.arange(1000, dtype=np.uint16))
    data = TokenDatasetSource.open({"path": str(tmp_path / "ids.npy")}, tmp_path / "elsewhere")
    assert data.tokenizer is None and data.vocab_size is None
    assert (len(data.train), len(data.val)) == (950, 50)


def test_block_size_check_names_split_and_sizes(tmp_path):
    np.save(tmp_path / "ids.npy", np.arange(1000, dtype=np.uint16))
    data = TokenDatasetSource.open({"path": "ids.npy"}, tmp_path)
    data.check_block_size(49)
    with pytest.raises(DataError, match=r"validation split .*ids\.npy.* 50 tokens.* 51"):
        data.check_block_size(50)
    with pytest.raises(DataError, match="ids.npy"):
        TokenDatasetSource.open({"path": "ids.npy", "block_size": 64}, tmp_path)


# --- every bad input is a DataError that names the path --------------------------------------


def test_missing_file_names_the_path_and_the_key(tmp_path):
    with pytest.raises(DataError, match="data.config.path") as info:
        TokenDatasetSource.open({"path": "nope/train.npy"}, tmp_path)
    assert str(tmp_path / "nope" / "train.npy") in str(info.value)


@pytest.mark.parametrize(
    "name, write, match",
    [
        ("empty.npy", lambda p: p.touch(), "is empty"),
        ("empty.tokens", lambda p: p.write_text("# nothing\n"), "no tokens"),
        ("zero.npy", lambda p: np.save(p, np.zeros(0, dtype=np.uint16)), "no tokens"),
        ("float.npy", lambda p: np.save(p, np.ones(100, dtype=np.float32)), "float32"),
        ("grid.npy", lambda p: np.save(p, np.zeros((10, 10), dtype=np.uint16)), "2-D"),
        ("neg.npy", lambda p: np.save(p, np.arange(-5, 95)), "negative"),
        ("words.tokens", lambda p: p.write_text("12 thirteen 14"), "not a token id"),
        ("ids.txt", lambda p: p.write_text("1 2 3"), "neither a .npy nor a .tokens"),
        ("short.npy", lambda p: np.save(p, np.arange(10, dtype=np.uint16)), "too few to split"),
    ],
)
def test_bad_files_raise_data_error_naming_the_path(tmp_path, name, write, match):
    path = tmp_path / name
    write(path)
    with pytest.raises(DataError, match=match) as info:
        TokenDatasetSource.open({"path": name}, tmp_path)
    assert str(path) in str(info.value)


def test_ids_outside_the_tokenizer_vocabulary_are_refused(tmp_path, english_dir):
    np.save(tmp_path / "ids.npy", np.full(1000, 9000, dtype=np.uint16))
    config = {"path": "ids.npy", "tokenizer": str(english_dir / "tokenizer.json")}
    with pytest.raises(DataError, match=r"token id 9000.* 8192") as info:
        TokenDatasetSource.open(config, tmp_path)
    assert str(tmp_path / "ids.npy") in str(info.value)


def test_folder_without_train_split_names_the_folder(tmp_path):
    (tmp_path / "ds").mkdir()
    np.save(tmp_path / "ds" / "val.npy", np.arange(100, dtype=np.uint16))
    with pytest.raises(DataError, match=r"has no train\.npy") as info:
        TokenDatasetSource.open({"path": "ds"}, tmp_path)
    assert str(tmp_path / "ds") in str(info.value)


def test_missing_tokenizer_file_names_the_key_and_path(tmp_path):
    np.save(tmp_path / "ids.npy", np.arange(1000, dtype=np.uint16))
    with pytest.raises(DataError, match="data.config.tokenizer") as info:
        TokenDatasetSource.open({"path": "ids.npy", "tokenizer": "tok.json"}, tmp_path)
    assert str(tmp_path / "tok.json") in str(info.value)


def test_vocab_size_on_a_file_source_is_refused(tmp_path):
    np.save(tmp_path / "ids.npy", np.arange(1000, dtype=np.uint16))
    with pytest.raises(DataError, match="only applies to corpus: sources"):
        TokenDatasetSource.open({"path": "ids.npy", "vocab_size": 4096}, tmp_path)


def test_unknown_corpus_suggests_a_name(tmp_path):
    with pytest.raises(DataError, match="did you mean 'corpus:shakespeare'"):
        TokenDatasetSource.open({"path": "corpus:shakespear"}, tmp_path)


def test_invalid_config_mapping_is_a_data_error_naming_the_key(tmp_path):
    with pytest.raises(DataError, match=r"data\.config\.val_frac"):
        TokenDatasetSource.open({"path": "ids.npy", "val_frac": 1.5}, tmp_path)
    with pytest.raises(DataError, match=r"data\.config\.shuffle"):
        TokenDatasetSource.open({"path": "ids.npy", "shuffle": True}, tmp_path)

"""TokenArray: random batches from a given generator, deterministic evaluation windows."""

import numpy as np
import pytest
import torch

from caramba.data.arrays import TokenArray
from caramba.data.build import ensure_corpus_dataset
from caramba.data.tokenizer import Tokenizer
from caramba.errors import DataError


@pytest.fixture(scope="module")
def english_dir():
    return ensure_corpus_dataset("english", 8192, quiet=True)


@pytest.fixture(scope="module")
def train(english_dir) -> TokenArray:
    return TokenArray.load(english_dir / "train.npy")


@pytest.fixture(scope="module")
def val(english_dir) -> TokenArray:
    return TokenArray.load(english_dir / "val.npy")


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_npy_is_memory_mapped_not_loaded(train):
    assert isinstance(train.data, np.memmap)


def test_batch_is_x_and_y_shifted_by_one(train):
    x, y = train.batch(8, 64, _gen(0))
    assert x.shape == y.shape == (8, 64)
    assert x.dtype == y.dtype == torch.int64
    assert torch.equal(x[:, 1:], y[:, :-1])
    assert 0 <= int(x.min()) and int(y.max()) < 8192


def test_batch_rows_are_contiguous_windows_of_the_array(train):
    x, y = train.batch(4, 32, _gen(1))
    offsets = torch.randint(0, len(train) - 32, (4,), generator=_gen(1))
    for row, offset in enumerate(offsets.tolist()):
        window = torch.from_numpy(train.data[offset : offset + 33].astype(np.int64))
        assert torch.equal(x[row], window[:-1]) and torch.equal(y[row], window[1:])


def test_batches_depend_only_on_the_given_generator(train):
    torch.manual_seed(123)
    a = train.batch(4, 128, _gen(7))
    torch.manual_seed(456)  # global RNG state must not matter
    b = train.batch(4, 128, _gen(7))
    c = train.batch(4, 128, _gen(8))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])


def test_generator_state_sequence_gives_resumable_order(train):
    g = _gen(3)
    first, second = train.batch(2, 16, g), train.batch(2, 16, g)
    g2 = _gen(3)
    state_after_first = (train.batch(2, 16, g2), g2.get_state())[1]
    resumed = torch.Generator()
    resumed.set_state(state_after_first)
    assert torch.equal(train.batch(2, 16, resumed)[0], second[0])
    assert not torch.equal(first[0], second[0])


def test_batches_decode_to_real_english(train, english_dir):
    tok = Tokenizer.load(english_dir)
    x, _ = train.batch(16, 64, _gen(0))
    text = " ".join(tok.decode(row.tolist()) for row in x)
    words = text.lower().split()
    assert sum(w in {"the", "and", "of", "to", "i", "my", "that", "in"} for w in words) > 40


def test_eval_batches_are_deterministic_disjoint_windows_spread_over_the_split(val):
    T = 128
    batches = list(val.iter_eval_batches(8, T, max_batches=5))
    assert len(batches) == 5
    again = list(val.iter_eval_batches(8, T, max_batches=5))
    assert all(torch.equal(a[0], b[0]) for a, b in zip(batches, again, strict=True))
    for x, y in batches:
        assert x.shape == (8, T) and torch.equal(x[:, 1:], y[:, :-1])
    rows = torch.cat([x for x, _ in batches])
    n_windows = (len(val) - 1) // T
    starts = (np.arange(40) * n_windows) // 40 * T  # evenly spaced grid windows, distinct
    assert len(set(starts.tolist())) == 40
    for row, start in zip(rows, starts, strict=True):
        assert torch.equal(row, torch.from_numpy(val.data[start : start + T].astype(np.int64)))
    assert starts[-1] > len(val) * 0.9  # the Shakespeare half of the split is evaluated too


def test_eval_batches_without_limit_cover_every_window_once(val):
    T = 1024
    batches = list(val.iter_eval_batches(16, T))
    n_windows = (len(val) - 1) // T
    assert sum(x.shape[0] for x, _ in batches) == n_windows
    assert batches[-1][0].shape[0] == n_windows % 16 or n_windows % 16 == 0
    x = torch.cat([b[0] for b in batches]).reshape(-1)
    assert torch.equal(x, torch.from_numpy(val.data[: n_windows * T].astype(np.int64)))


def test_split_takes_the_tail_as_validation():
    array = TokenArray(np.arange(100, dtype=np.uint16), "mem")
    head, tail = array.split(0.1)
    assert head.data.tolist() == list(range(90)) and tail.data.tolist() == list(range(90, 100))


def test_block_size_larger_than_the_data_names_both_sizes():
    array = TokenArray(np.arange(10, dtype=np.uint16), "tiny.npy")
    with pytest.raises(DataError, match=r"tiny\.npy.* 10 tokens.*block_size \+ 1 = 11"):
        array.batch(2, 10, _gen(0))
    x, _ = array.batch(2, 9, _gen(0))  # exactly one window fits
    assert x[0].tolist() == list(range(9))


@pytest.mark.parametrize(
    "array, match",
    [
        (np.zeros((4, 4), dtype=np.uint16), "2-D array"),
        (np.ones(8, dtype=np.float32), "float32 values"),
        (np.ones(8, dtype=bool), "bool values"),
        (np.zeros(0, dtype=np.uint16), "no tokens"),
        (np.array([1, -1, 2], dtype=np.int32), "negative token id -1"),
    ],
)
def test_bad_arrays_raise_data_error_with_the_path(tmp_path, array, match):
    path = tmp_path / "bad.npy"
    np.save(path, array)
    with pytest.raises(DataError, match=match) as info:
        TokenArray.load(path)
    assert str(path) in str(info.value)


def test_unreadable_npy_files_raise_data_error_with_the_path(tmp_path):
    empty = tmp_path / "empty.npy"
    empty.touch()
    garbage = tmp_path / "garbage.npy"
    garbage.write_bytes(b"not an array at all")
    pickled = tmp_path / "pickled.npy"
    np.save(pickled, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    for path in (empty, garbage, pickled):
        with pytest.raises(DataError, match=str(path)):
            TokenArray.load(path)


def test_signed_integer_arrays_are_accepted(tmp_path):
    path = tmp_path / "ids.npy"
    np.save(path, np.arange(50, dtype=np.int64))
    x, y = TokenArray.load(path).batch(2, 8, _gen(0))
    assert torch.equal(x + 1, y)

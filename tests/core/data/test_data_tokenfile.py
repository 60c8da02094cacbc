"""The .tokens plain-text format."""

import numpy as np
import pytest

from caramba.data.tokenfile import read_tokens, write_tokens
from caramba.errors import DataError


def test_write_then_read_roundtrips_with_comment(tmp_path):
    ids = [644, 263, 2904, 0, 7, 8191]
    path = tmp_path / "x.tokens"
    write_tokens(path, ids, comment="tokens of a verse\nsecond comment line", per_line=4)
    text = path.read_text()
    assert text.startswith("# tokens of a verse\n# second comment line\n644 263 2904 0\n")
    out = read_tokens(path)
    assert out.tolist() == ids and out.dtype == np.uint16


def test_any_whitespace_separates_and_comment_lines_are_skipped(tmp_path):
    path = tmp_path / "x.tokens"
    path.write_text("  # header\n1\t2  3\n\n   # indented comment\n4\r\n5")
    assert read_tokens(path).tolist() == [1, 2, 3, 4, 5]


def test_ids_beyond_uint16_are_read_as_uint32(tmp_path):
    path = tmp_path / "x.tokens"
    write_tokens(path, [1, 70000])
    out = read_tokens(path)
    assert out.dtype == np.uint32 and out.tolist() == [1, 70000]


@pytest.mark.parametrize("bad", ["1 2 -3", "1 2.5", "1 two", "1 # inline comment", "0x10"])
def test_non_integer_token_names_file_and_line(tmp_path, bad):
    path = tmp_path / "bad.tokens"
    path.write_text(f"# ok\n5 6\n{bad}\n")
    with pytest.raises(DataError, match=rf"{path}:3: "):
        read_tokens(path)


def test_id_too_large_for_uint32_is_refused(tmp_path):
    path = tmp_path / "big.tokens"
    path.write_text("1 4294967296")
    with pytest.raises(DataError, match="2\\*\\*32"):
        read_tokens(path)


def test_binary_file_is_refused_with_its_path(tmp_path):
    path = tmp_path / "bin.tokens"
    path.write_bytes(b"\xff\xfe\x00\x01")
    with pytest.raises(DataError, match=str(path)):
        read_tokens(path)


def test_writer_refuses_negative_or_2d_ids(tmp_path):
    with pytest.raises(DataError):
        write_tokens(tmp_path / "x.tokens", [1, -2])
    with pytest.raises(DataError):
        write_tokens(tmp_path / "x.tokens", np.zeros((2, 2), dtype=np.int64))

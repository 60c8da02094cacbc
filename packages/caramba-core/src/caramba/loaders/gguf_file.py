"""The GGUF container, read with `struct` over one memory map: metadata values and views of
the tensor data.

Why not `gguf.GGUFReader`: it makes a numpy view for every part of every field, about a
million of them for a 49k-token vocabulary and its merges, and takes 1.3-1.8 s (more under
load) to open SmolLM2-135M; this reads the same header in about 0.2 s. The `gguf` package
stays the codec: its tensor type enum, block sizes and `gguf.quants.dequantize`.

Layout (little-endian, GGUF v2/v3): magic "GGUF", u32 version, u64 tensor count, u64 key
count; the keys (string name, u32 value type, value); the tensor infos (string name, u32
dims, u64 per dim, fastest first, u32 type, u64 offset); then the data, from the header's end
rounded up to `general.alignment` (32 by default), each tensor at its offset from there.
"""

from __future__ import annotations

import math
import mmap
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

GGUF_MAGIC = b"GGUF"
DEFAULT_ALIGNMENT = 32

# Value types: scalar struct codes by type id; 8 is a string, 9 an array.
_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q",
            12: "d"}  # fmt: skip
_STRING, _ARRAY = 8, 9
# Element dtypes of unquantized tensor types (GGMLQuantizationType values); the rest are
# blocks, viewed as bytes per row as GGUFReader does.
_PLAIN = {0: np.float32, 1: np.float16, 24: np.int8, 25: np.int16, 26: np.int32, 27: np.int64,
          28: np.float64}  # fmt: skip


class HeaderError(ValueError):
    """The header cannot be parsed: cut off or holding an impossible value."""


class StringError(ValueError):
    """A metadata string is not UTF-8 (the key is named)."""

    def __init__(self, key: str, cause: UnicodeDecodeError) -> None:
        super().__init__(str(cause))
        self.key = key


class TruncatedError(ValueError):
    """A tensor's data runs past the end of the file (the first such tensor is named)."""

    def __init__(self, name: str, end: int) -> None:
        super().__init__(f"tensor {name!r} ends at byte {end:,}")
        self.name, self.end = name, end


@dataclass(frozen=True)
class GGUFTensor:
    """One tensor: its type, its shape in GGUF order (fastest dimension first), and a read-only
    view of its bytes in the file (elements for float/int types, bytes per row for blocks)."""

    name: str
    tensor_type: Any  # gguf.GGMLQuantizationType
    shape: tuple[int, ...]
    data: np.ndarray


@dataclass(frozen=True)
class GGUFFile:
    """A parsed GGUF file. `metadata` holds every key/value (strings decoded, arrays as lists)."""

    path: Path
    version: int
    metadata: dict[str, Any]
    tensors: list[GGUFTensor]


class _Cursor:
    """Reads little-endian values from the map, failing past its end instead of short-reading."""

    def __init__(self, buffer: mmap.mmap, offset: int) -> None:
        self.buffer, self.offset, self.size = buffer, offset, len(buffer)

    def unpack(self, code: str) -> Any:
        fmt = "<" + code
        end = self.offset + struct.calcsize(fmt)
        if end > self.size:
            raise HeaderError(f"the header runs past the end of the file at byte {self.offset:,}")
        (value,) = struct.unpack_from(fmt, self.buffer, self.offset)
        self.offset = end
        return value

    def raw_string(self) -> bytes:
        n = self.unpack("Q")
        if self.offset + n > self.size:
            raise HeaderError(f"a {n:,}-byte string at byte {self.offset:,} runs past the end")
        data = self.buffer[self.offset : self.offset + n]
        self.offset += n
        return data

    def string(self, key: str) -> str:
        raw = self.raw_string()
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise StringError(key, exc) from exc

    def value(self, kind: int, key: str) -> Any:
        if kind in _SCALARS:
            return self.unpack(_SCALARS[kind])
        if kind == _STRING:
            return self.string(key)
        if kind == _ARRAY:
            item, count = self.unpack("I"), self.unpack("Q")
            if item in _SCALARS:  # one unpack for the whole array
                code = _SCALARS[item]
                width = struct.calcsize("<" + code)
                if self.offset + count * width > self.size:
                    raise HeaderError(f"array {key!r} runs past the end of the file")
                values = list(struct.unpack_from(f"<{count}{code}", self.buffer, self.offset))
                self.offset += count * width
                return values
            return [self.value(item, key) for _ in range(count)]
        raise HeaderError(f"key {key!r} has unknown value type {kind}")


def read_gguf(path: Path, types: Any, quant_sizes: dict[Any, tuple[int, int]]) -> GGUFFile:
    """Parse `path` (whose magic the caller checked). `types` is gguf.GGMLQuantizationType,
    `quant_sizes` gguf.GGML_QUANT_SIZES.

    Raises HeaderError for a header that cannot be parsed, StringError for a metadata string
    that is not UTF-8 and TruncatedError for tensor data cut off by the end of the file.
    """
    with path.open("rb") as handle:
        buffer = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
    cursor = _Cursor(buffer, len(GGUF_MAGIC))
    version = cursor.unpack("I")
    if version & 0xFFFF == 0:
        raise HeaderError("it is a big-endian GGUF file, which caramba does not read")
    n_tensors, n_keys = cursor.unpack("Q"), cursor.unpack("Q")
    meta: dict[str, Any] = {}
    for _ in range(n_keys):
        key = cursor.string("a key name")
        meta[key] = cursor.value(cursor.unpack("I"), key)
    infos = []
    for _ in range(n_tensors):
        name = cursor.string("a tensor name")
        dims = tuple(cursor.unpack("Q") for _ in range(cursor.unpack("I")))
        infos.append((name, dims, cursor.unpack("I"), cursor.unpack("Q")))
    alignment = int(meta.get("general.alignment", DEFAULT_ALIGNMENT))
    if alignment <= 0:
        raise HeaderError(f"general.alignment is {alignment}")
    start = -(-cursor.offset // alignment) * alignment

    tensors, seen = [], set()
    for name, dims, raw_type, offset in infos:
        if name in seen:
            raise HeaderError(f"tensor {name!r} appears twice")
        seen.add(name)
        try:
            kind = types(raw_type)
        except ValueError as exc:
            raise HeaderError(f"tensor {name!r} has unknown type {raw_type}") from exc
        block, type_size = quant_sizes[kind]
        n = math.prod(dims)  # Python ints: a corrupt dim cannot wrap around
        n_bytes = n * type_size // block
        first = start + offset
        if first + n_bytes > len(buffer):
            raise TruncatedError(name, first + n_bytes)
        shape = tuple(reversed(dims))  # numpy order, slowest first
        if raw_type in _PLAIN:
            data = np.frombuffer(buffer, _PLAIN[raw_type], n, first).reshape(shape)
        else:
            rows = shape[:-1] + (shape[-1] * type_size // block,) if shape else (n_bytes,)
            data = np.frombuffer(buffer, np.uint8, n_bytes, first).reshape(rows)
        tensors.append(GGUFTensor(name, kind, dims, data))
    return GGUFFile(path, version, meta, tensors)

"""Kernel ops over KV caches: storage formats, the pure-torch reference, and backend dispatch.

`get_backend(device)` returns the fastest installed backend (C++ on CPU, Triton on CUDA) or the
reference; every backend is tested against the functions exported here.
"""

from caramba.kernels.decode import dba_decode_attention, decode_attention
from caramba.kernels.dispatch import get_backend, reference
from caramba.kernels.formats import FORMATS, NF4_CODEBOOK, Format, bytes_per_row, get_format
from caramba.kernels.merge import merge_partials
from caramba.kernels.quant import append, dequantize, quantize

__all__ = [
    "FORMATS",
    "NF4_CODEBOOK",
    "Format",
    "append",
    "bytes_per_row",
    "dba_decode_attention",
    "decode_attention",
    "dequantize",
    "get_backend",
    "get_format",
    "merge_partials",
    "quantize",
    "reference",
]

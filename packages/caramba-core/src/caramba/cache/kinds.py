"""Cache kinds: the user-facing names of KV-cache storage formats.

A kind names how one cached tensor (keys, values, DBA's semantic or geometric keys) is
stored. It maps onto a `caramba.kernels` format, whose block layout every kernel backend
shares:

    kind   format  bytes per 32 values   note
    fp32   f32     128                   exact
    fp16   f16      64                   rounding to half precision
    q8_0   q8_0     34                   GGML block_q8_0
    q4_0   q4_0     18                   GGML block_q4_0
    nf4    nf4      17                   QLoRA NormalFloat-4, one scale per 64 values
"""

from __future__ import annotations

from caramba.errors import InputError, did_you_mean
from caramba.kernels.formats import Format, get_format

KIND_TO_FORMAT: dict[str, str] = {
    "fp32": "f32",
    "fp16": "f16",
    "q8_0": "q8_0",
    "q4_0": "q4_0",
    "nf4": "nf4",
}
KINDS: tuple[str, ...] = tuple(KIND_TO_FORMAT)
QUANTIZED_KINDS: tuple[str, ...] = ("q8_0", "q4_0", "nf4")


class CacheKindError(InputError, ValueError):
    """An unknown cache kind, or one that cannot store rows of the requested width."""


def check_kind(kind: object, *, what: str = "cache_kind") -> str:
    """`kind` if it names a cache kind, else a CacheKindError with a close match."""
    if isinstance(kind, str) and kind in KIND_TO_FORMAT:
        return kind
    close = did_you_mean(str(kind), KINDS)
    raise CacheKindError(
        f"{what}: unknown cache kind {kind!r}" + (f" — did you mean {close!r}?" if close else "")
        + f" Known: {', '.join(KINDS)}.",
        hint="use fp16 for a safe default, q8_0 for ~2x less memory, or auto to measure.",
    )


def kind_format(kind: str) -> Format:
    """The kernel storage format of a cache kind."""
    return get_format(KIND_TO_FORMAT[check_kind(kind)])


# Per-head widths below this are stored one row per token whatever the kind: the decode
# kernels read a token's row of all KV heads in one contiguous pass, while per-head rows of
# 4 or 8 values leave most SIMD lanes idle (C++ CPU backend, DBA at the Llama-3.2-1B widths,
# 8k tokens, fp16: 0.5 ms in the token layout, 5.4 ms per head).
NARROW_HEAD = 32


def row_layout(kind: str, heads: int, head_dim: int, *, what: str = "cache") -> str:
    """How a tensor of `heads` x `head_dim` values per token is stored in `kind`.

    "head": one row per (token, head), for heads of NARROW_HEAD values or more that fill
    whole blocks. "token": one row per token spanning all heads, for narrower heads (DBA's
    per-head semantic and geometric keys are often 4-16 values) and for widths below a
    block. Both are layouts the decode kernels read. A CacheKindError when neither fills
    whole blocks.
    """
    block = kind_format(kind).block
    token_fits = (heads * head_dim) % block == 0
    if heads > 1 and head_dim < NARROW_HEAD and token_fits:
        return "token"
    if head_dim % block == 0:
        return "head"
    if token_fits:
        return "token"
    raise CacheKindError(
        f"{what}: cache kind {kind!r} stores blocks of {block} values, but a token has "
        f"{heads} head(s) x {head_dim} = {heads * head_dim} values here, not a multiple of "
        f"{block}.",
        hint="pick fp16 or fp32 for this tensor (per-path kinds), or widen it.",
    )


def supports(kind: str, heads: int, head_dim: int) -> bool:
    """Whether `kind` can store a tensor of this shape at all."""
    try:
        row_layout(kind, heads, head_dim)
    except CacheKindError:
        return False
    return True

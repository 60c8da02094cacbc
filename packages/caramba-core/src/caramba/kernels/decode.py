"""Reference decode attention over (quantized) KV caches: the answer every fast path must give.

One query token per sequence attends over cache positions 0 .. lengths[b]-1. Caches are
dequantized to float32 and the math is plain float32 torch. With num_splits > 1 the sequence is
cut into equal chunks, each chunk keeps (max score, sum of exp, weighted values) and the chunks
are merged by log-sum-exp — the flash-decoding scheme, kept here so split-K kernels have a
reference whose only difference from the unsplit answer is float32 rounding.

Shapes (GQA: query head h reads KV head h // (Hq / Hkv)):
    q (B, Hq, D) float            k (B, Hkv, S_max, storage_width(k_format, D))
    v (B, Hkv, S_max, storage_width(v_format, Dv))        lengths int32 (B,), 1 <= len <= S_max
    -> (B, Hq, Dv) float32
DBA: score = (q_sem . k_sem) * scale_sem + (q_geo . k_geo) * scale_geo, one softmax.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from caramba.kernels.formats import get_format, logical_width
from caramba.kernels.quant import _check_lengths, dequantize


@dataclass(frozen=True)
class DecodeShape:
    """Sizes of one decode call, after validation."""

    B: int
    Hq: int
    Hkv: int
    S_max: int
    Dv: int

    @property
    def group(self) -> int:
        return self.Hq // self.Hkv


def _tensor(x: object, argument: str, dims: int) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{argument}: expected a torch.Tensor, got {type(x).__name__}")
    if x.dim() != dims:
        raise ValueError(f"{argument}: expected {dims} dimensions, got shape {tuple(x.shape)}")
    return x


def _check_query(q: object, argument: str) -> torch.Tensor:
    q = _tensor(q, argument, 3)
    if not q.is_floating_point():
        raise ValueError(f"{argument}: expected a floating-point tensor, got {q.dtype}")
    if q.shape[0] == 0 or q.shape[1] == 0:
        raise ValueError(f"{argument}: batch and heads must be non-empty, got {tuple(q.shape)}")
    return q


def _check_cache(
    x: object, argument: str, kind: str, fmt_argument: str, like: torch.Tensor, D: int | None
) -> int:
    """Validate one cache tensor against the query `like`; return its logical row width."""
    fmt = get_format(kind, argument=fmt_argument)
    x = _tensor(x, argument, 4)
    if x.dtype != fmt.dtype:
        raise ValueError(f"{argument}: a {kind} cache holds {fmt.dtype}, got {x.dtype}")
    if x.device != like.device:
        raise ValueError(f"{argument}: on {x.device}, but the query is on {like.device}")
    B, Hq = like.shape[:2]
    if x.shape[0] != B:
        raise ValueError(f"{argument}: batch {x.shape[0]} does not match the query's {B}")
    if x.shape[1] == 0 or Hq % x.shape[1]:
        raise ValueError(f"{argument}: {x.shape[1]} KV heads do not divide the query's {Hq} heads")
    if x.shape[2] == 0:
        raise ValueError(f"{argument}: the cache is empty (S_max = 0)")
    width = logical_width(kind, x.shape[3], argument=argument)
    if D is not None:
        if D % fmt.block:
            raise ValueError(
                f"{argument}: head dim {D} is not a multiple of the {kind} block size {fmt.block}"
            )
        if width != D:
            raise ValueError(
                f"{argument}: rows hold {width} values in {kind}, but the query has head dim {D}"
            )
    return width


def _check_scale(scale: object, argument: str) -> float:
    if isinstance(scale, torch.Tensor) and scale.numel() == 1:
        scale = scale.item()
    if isinstance(scale, bool) or not isinstance(scale, (int, float)):
        raise ValueError(f"{argument}: expected a float, got {type(scale).__name__}")
    if not math.isfinite(scale):
        raise ValueError(f"{argument}: expected a finite float, got {scale}")
    return float(scale)


def _check_splits(num_splits: object) -> int:
    if num_splits is None:
        return 1
    if isinstance(num_splits, bool) or not isinstance(num_splits, int) or num_splits < 1:
        raise ValueError(f"num_splits: expected an int >= 1 or None, got {num_splits!r}")
    return num_splits


def check_decode_args(
    queries: list[tuple[str, object]],
    keys: list[tuple[str, object, str, str]],
    v: object,
    v_format: str,
    lengths: object,
) -> DecodeShape:
    """Validate a decode call: queries [(name, q)], keys [(name, k, kind, fmt_name)] paired."""
    qs = [_check_query(q, name) for name, q in queries]
    first = qs[0]
    for name, q in queries[1:]:
        assert isinstance(q, torch.Tensor)
        if q.shape[:2] != first.shape[:2]:
            raise ValueError(
                f"{name}: batch and heads {tuple(q.shape[:2])} do not match "
                f"{queries[0][0]}'s {tuple(first.shape[:2])}"
            )
        if q.device != first.device:
            raise ValueError(f"{name}: on {q.device}, but {queries[0][0]} is on {first.device}")
    S_max = Hkv = None
    for q, (name, k, kind, fmt_arg) in zip(qs, keys, strict=True):
        _check_cache(k, name, kind, fmt_arg, q, q.shape[-1])
        assert isinstance(k, torch.Tensor)
        if S_max is None:
            Hkv, S_max = k.shape[1], k.shape[2]
        elif (k.shape[1], k.shape[2]) != (Hkv, S_max):
            raise ValueError(
                f"{name}: (heads, S_max) = {tuple(k.shape[1:3])} does not match "
                f"{keys[0][0]}'s {(Hkv, S_max)}"
            )
    Dv = _check_cache(v, "v", v_format, "v_format", first, None)
    assert isinstance(v, torch.Tensor) and Hkv is not None and S_max is not None
    if (v.shape[1], v.shape[2]) != (Hkv, S_max):
        raise ValueError(
            f"v: (heads, S_max) = {tuple(v.shape[1:3])} does not match the keys' {(Hkv, S_max)}"
        )
    B, Hq = first.shape[:2]
    _check_lengths(lengths, B, S_max)
    return DecodeShape(B=B, Hq=Hq, Hkv=Hkv, S_max=S_max, Dv=Dv)


def _scores(q: torch.Tensor, k: torch.Tensor, kind: str, shape: DecodeShape, S: int):
    """(B, Hkv, group, S) float32 dot products of each query head with its KV head's keys."""
    kd = dequantize(kind, k[:, :, :S], q.shape[-1])
    qg = q.to(torch.float32).reshape(shape.B, shape.Hkv, shape.group, q.shape[-1])
    return qg @ kd.transpose(-1, -2)


def _attend(
    scores: torch.Tensor,
    v: torch.Tensor,
    v_format: str,
    lengths: torch.Tensor,
    shape: DecodeShape,
    num_splits: int,
) -> torch.Tensor:
    """Masked softmax(scores) @ V, unsplit or split-K with a log-sum-exp merge."""
    S = scores.shape[-1]
    vd = dequantize(v_format, v[:, :, :S], shape.Dv)  # (B, Hkv, S, Dv)
    pos = torch.arange(S, device=scores.device)
    valid = pos[None, :] < lengths.to(scores.device, torch.long)[:, None]  # (B, S)
    scores = scores.masked_fill(~valid[:, None, None, :], float("-inf"))
    # Slots past a length may hold anything (an uninitialised cache, NaN bytes): 0 * NaN is NaN.
    vd = vd.masked_fill(~valid[:, None, :, None], 0.0)
    if num_splits == 1:
        out = torch.softmax(scores, dim=-1) @ vd
    else:
        chunk = -(-S // num_splits)
        pad = chunk * num_splits - S
        s = torch.nn.functional.pad(scores, (0, pad), value=float("-inf"))
        s = s.reshape(*s.shape[:-1], num_splits, chunk)  # (B, Hkv, G, P, C)
        vc = torch.nn.functional.pad(vd, (0, 0, 0, pad)).reshape(
            shape.B, shape.Hkv, num_splits, chunk, shape.Dv
        )
        m = s.amax(dim=-1)  # -inf for a chunk with no valid position
        m_safe = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
        p = torch.exp(s - m_safe[..., None])
        l_part = p.sum(dim=-1)
        o_part = torch.einsum("bhgpc,bhpcd->bhgpd", p, vc)
        m_all = m.amax(dim=-1, keepdim=True)  # finite: every length >= 1
        w = torch.exp(m - m_all)  # 0 for empty chunks
        out = (w[..., None] * o_part).sum(dim=-2) / (w * l_part).sum(dim=-1)[..., None]
    return out.reshape(shape.B, shape.Hq, shape.Dv)


def decode_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    lengths: torch.Tensor,
    scale: float,
    k_format: str,
    v_format: str,
    *,
    num_splits: int | None = None,
) -> torch.Tensor:
    """Standard / GQA decode attention: softmax(q . k * scale) @ v over each sequence's prefix."""
    shape = check_decode_args([("q", q)], [("k", k, k_format, "k_format")], v, v_format, lengths)
    scale = _check_scale(scale, "scale")
    splits = _check_splits(num_splits)
    S = int(lengths.max())
    scores = _scores(q, k, k_format, shape, S) * scale
    return _attend(scores, v, v_format, lengths, shape, splits)


def dba_decode_attention(
    q_sem: torch.Tensor,
    q_geo: torch.Tensor,
    k_sem: torch.Tensor,
    k_geo: torch.Tensor,
    v: torch.Tensor,
    lengths: torch.Tensor,
    scale_sem: float,
    scale_geo: float,
    k_sem_format: str,
    k_geo_format: str,
    v_format: str,
    *,
    num_splits: int | None = None,
) -> torch.Tensor:
    """Decoupled (DBA) decode: semantic and geometric scores summed before one softmax."""
    shape = check_decode_args(
        [("q_sem", q_sem), ("q_geo", q_geo)],
        [
            ("k_sem", k_sem, k_sem_format, "k_sem_format"),
            ("k_geo", k_geo, k_geo_format, "k_geo_format"),
        ],
        v,
        v_format,
        lengths,
    )
    scale_sem = _check_scale(scale_sem, "scale_sem")
    scale_geo = _check_scale(scale_geo, "scale_geo")
    splits = _check_splits(num_splits)
    S = int(lengths.max())
    scores = (
        _scores(q_sem, k_sem, k_sem_format, shape, S) * scale_sem
        + _scores(q_geo, k_geo, k_geo_format, shape, S) * scale_geo
    )
    return _attend(scores, v, v_format, lengths, shape, splits)

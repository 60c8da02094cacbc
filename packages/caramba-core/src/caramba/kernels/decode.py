"""Reference decode attention over (quantized) KV caches: the answer every fast path must give.

One query token per sequence attends over cache positions 0 .. lengths[b]-1. Caches are
dequantized to float32 and the math is plain float32 torch. With num_splits > 1 the sequence is
cut into equal chunks, each chunk keeps (max score, sum of exp, weighted values) and the chunks
are merged by log-sum-exp — the flash-decoding scheme, kept here so split-K kernels have a
reference whose only difference from the unsplit answer is float32 rounding.

Shapes (GQA: query head h reads KV head h // (Hq / Hkv)):
    q (B, Hq, D) float         lengths int32 (B,), 1 <= len <= S_max
    each cache tensor, independently, in one of two layouts (W = storage width of a row):
      head   (B, Hkv, S_max, W)  one row of D values per (token, KV head)
      token  (B, 1, S_max, W)    one row of Hkv x D values per token, KV head g at values
                                 [g D, (g + 1) D) — rows may straddle block boundaries. Used
                                 for per-head widths narrower than a quantization block.
    Hkv is shape[1] of a head-layout key, row_values // D of a token-layout one; a
    token-layout value tensor has Dv = row_values // Hkv. shape[1] == 1 with Hkv == 1 reads
    the same either way.
    -> (B, Hq, Dv) float32, and with return_lse also lse (B, Hq) float32 = log sum_s
       exp(score_s) over the attended positions, so partial results over disjoint key sets
       merge exactly (`caramba.kernels.merge.merge_partials`).
DBA: score = (q_sem . k_sem) * scale_sem + (q_geo . k_geo) * scale_geo, one softmax.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from caramba.kernels.formats import get_format, logical_width
from caramba.kernels.quant import _check_lengths, dequantize


@dataclass(frozen=True)
class CacheArg:
    """One validated cache tensor: its per-head width and whether it is token-layout."""

    name: str
    tensor: torch.Tensor
    kind: str
    dim: int  # values per KV head
    token: bool


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


def _check_storage(
    x: object, argument: str, kind: str, fmt_argument: str, like: torch.Tensor
) -> tuple[torch.Tensor, int]:
    """Checks every layout shares; returns the tensor and the values one row holds."""
    fmt = get_format(kind, argument=fmt_argument)
    x = _tensor(x, argument, 4)
    if x.dtype != fmt.dtype:
        raise ValueError(f"{argument}: a {kind} cache holds {fmt.dtype}, got {x.dtype}")
    if x.device != like.device:
        raise ValueError(f"{argument}: on {x.device}, but the query is on {like.device}")
    if x.shape[0] != like.shape[0]:
        raise ValueError(f"{argument}: batch {x.shape[0]} does not match the query's "
                         f"{like.shape[0]}")
    if x.shape[1] == 0:
        raise ValueError(f"{argument}: no KV heads (shape[1] = 0)")
    if x.shape[2] == 0:
        raise ValueError(f"{argument}: the cache is empty (S_max = 0)")
    return x, logical_width(kind, x.shape[3], argument=argument)


def _check_key(
    x: object, argument: str, kind: str, fmt_argument: str, q: torch.Tensor
) -> tuple[CacheArg, int]:
    """A key tensor read by query q (B, Hq, D); returns it and the KV heads it implies."""
    x, row = _check_storage(x, argument, kind, fmt_argument, q)
    D, Hq, block = q.shape[-1], q.shape[1], get_format(kind).block
    if x.shape[1] == 1 and row != D:  # token layout: one row holds every KV head's D values
        if row % D:
            raise ValueError(
                f"{argument}: a token-layout row (shape[1] = 1) holds {row} {kind} values, "
                f"not a whole number of the query's head dim {D}"
            )
        Hkv, token = row // D, True
    else:
        Hkv, token = x.shape[1], False
    if Hq % Hkv:
        raise ValueError(f"{argument}: {Hkv} KV heads do not divide the query's {Hq} heads")
    if not token:
        if D % block:
            raise ValueError(
                f"{argument}: head dim {D} is not a multiple of the {kind} block size {block}"
            )
        if row != D:
            raise ValueError(
                f"{argument}: rows hold {row} values in {kind}, but the query has head dim {D}"
            )
    return CacheArg(argument, x, kind, D, token), Hkv


def _check_value(
    x: object, kind: str, like: torch.Tensor, Hkv: int, S_max: int
) -> CacheArg:
    x, row = _check_storage(x, "v", kind, "v_format", like)
    if x.shape[2] != S_max or x.shape[1] not in (Hkv, 1):
        raise ValueError(
            f"v: (heads, S_max) = {tuple(x.shape[1:3])} does not match the keys' "
            f"{(Hkv, S_max)} (or (1, {S_max}) in the token layout)"
        )
    token = x.shape[1] != Hkv
    if token and row % Hkv:
        raise ValueError(
            f"v: a token-layout row holds {row} {kind} values, not a whole number of the "
            f"keys' {Hkv} KV heads"
        )
    return CacheArg("v", x, kind, row // Hkv if token else row, token)


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
) -> tuple[DecodeShape, list[CacheArg], CacheArg]:
    """Validate a decode call: queries [(name, q)], keys [(name, k, kind, fmt_name)] paired.

    Returns the sizes, the keys and the values with their layouts."""
    qs = [_check_query(q, name) for name, q in queries]
    first = qs[0]
    for (name, _), q in zip(queries[1:], qs[1:], strict=True):
        if q.shape[:2] != first.shape[:2]:
            raise ValueError(
                f"{name}: batch and heads {tuple(q.shape[:2])} do not match "
                f"{queries[0][0]}'s {tuple(first.shape[:2])}"
            )
        if q.device != first.device:
            raise ValueError(f"{name}: on {q.device}, but {queries[0][0]} is on {first.device}")
    checked: list[CacheArg] = []
    Hkv = S_max = 0
    for q, (name, k, kind, fmt_arg) in zip(qs, keys, strict=True):
        arg, heads = _check_key(k, name, kind, fmt_arg, q)
        if not checked:
            Hkv, S_max = heads, arg.tensor.shape[2]
        elif (heads, arg.tensor.shape[2]) != (Hkv, S_max):
            raise ValueError(
                f"{name}: (heads, S_max) = {(heads, arg.tensor.shape[2])} does not match "
                f"{keys[0][0]}'s {(Hkv, S_max)}"
            )
        checked.append(arg)
    value = _check_value(v, v_format, first, Hkv, S_max)
    B, Hq = first.shape[:2]
    _check_lengths(lengths, B, S_max)
    return DecodeShape(B=B, Hq=Hq, Hkv=Hkv, S_max=S_max, Dv=value.dim), checked, value


def _read(arg: CacheArg, shape: DecodeShape, S: int) -> torch.Tensor:
    """The first S positions of a cache tensor as (B, Hkv, S, d) float32, either layout."""
    if not arg.token:
        return dequantize(arg.kind, arg.tensor[:, :, :S], arg.dim)
    rows = dequantize(arg.kind, arg.tensor[:, :, :S], shape.Hkv * arg.dim)  # (B, 1, S, Hkv d)
    return rows.reshape(shape.B, S, shape.Hkv, arg.dim).transpose(1, 2)


def _scores(q: torch.Tensor, k: CacheArg, shape: DecodeShape, S: int) -> torch.Tensor:
    """(B, Hkv, group, S) float32 dot products of each query head with its KV head's keys."""
    qg = q.to(torch.float32).reshape(shape.B, shape.Hkv, shape.group, q.shape[-1])
    return qg @ _read(k, shape, S).transpose(-1, -2)


def _attend(
    scores: torch.Tensor,
    v: CacheArg,
    lengths: torch.Tensor,
    shape: DecodeShape,
    num_splits: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Masked softmax(scores) @ V and the log-sum-exp of the scores, unsplit or split-K."""
    S = scores.shape[-1]
    vd = _read(v, shape, S)  # (B, Hkv, S, Dv)
    pos = torch.arange(S, device=scores.device)
    valid = pos[None, :] < lengths.to(scores.device, torch.long)[:, None]  # (B, S)
    scores = scores.masked_fill(~valid[:, None, None, :], float("-inf"))
    # Slots past a length may hold anything (an uninitialised cache, NaN bytes): 0 * NaN is NaN.
    vd = vd.masked_fill(~valid[:, None, :, None], 0.0)
    if num_splits == 1:
        out = torch.softmax(scores, dim=-1) @ vd
        lse = torch.logsumexp(scores, dim=-1)
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
        total = (w * l_part).sum(dim=-1)
        out = (w[..., None] * o_part).sum(dim=-2) / total[..., None]
        lse = m_all[..., 0] + torch.log(total)
    return out.reshape(shape.B, shape.Hq, shape.Dv), lse.reshape(shape.B, shape.Hq)


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
    return_lse: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Standard / GQA decode attention: softmax(q . k * scale) @ v over each sequence's prefix
    (and its log-sum-exp with `return_lse`)."""
    shape, (key,), value = check_decode_args(
        [("q", q)], [("k", k, k_format, "k_format")], v, v_format, lengths
    )
    scale = _check_scale(scale, "scale")
    splits = _check_splits(num_splits)
    S = int(lengths.max())
    scores = _scores(q, key, shape, S) * scale
    out, lse = _attend(scores, value, lengths, shape, splits)
    return (out, lse) if return_lse else out


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
    return_lse: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Decoupled (DBA) decode: semantic and geometric scores summed before one softmax."""
    shape, (sem, geo), value = check_decode_args(
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
        _scores(q_sem, sem, shape, S) * scale_sem + _scores(q_geo, geo, shape, S) * scale_geo
    )
    out, lse = _attend(scores, value, lengths, shape, splits)
    return (out, lse) if return_lse else out

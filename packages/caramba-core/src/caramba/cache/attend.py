"""The exact attention path: queries over all held keys through SDPA, GQA and causal masking.

Used for training, for prefill and multi-token chunks (speculative verification), and for
single-token decode when kernels are off. `partial_attention` is the small exact piece of a
kernel decode step: the newest, still full-precision tokens, with their log-sum-exp.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def exact_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    scale: float | None = None,
    causal: bool = True,
    dropout_p: float = 0.0,
    length: int | None = None,
) -> torch.Tensor:
    """softmax(q k^T * scale + mask) v for q (B, Hq, T, D), k (B, Hkv, S, D), v (B, Hkv, S, Dv).

    The first `length` keys are real (all S if None); the rest are padding from decode-plan
    bucketing and are masked. The T queries are the newest tokens, at positions length - T ..
    length - 1, so with `causal` query i sees keys 0 .. length - T + i. Query head h reads
    KV head h // (Hq / Hkv), as in Llama 2. scale None means 1/sqrt(D).
    """
    T, S = q.shape[2], k.shape[2]
    n = S if length is None else length
    past = n - T
    if k.shape[1] != q.shape[1]:
        group = q.shape[1] // k.shape[1]
        if T == 1 and not dropout_p:
            return _grouped_decode(q, k, v, group, scale, n)
        k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
    mask = None
    is_causal = causal and past == 0 and T > 1 and n == S
    if causal and T > 1 and not is_causal:
        # Query i sits at cache position past + i and sees keys 0 .. past + i.
        mask = torch.ones(T, S, dtype=torch.bool, device=q.device).tril(diagonal=past)
    if n < S:
        valid = torch.arange(S, device=q.device) < n
        mask = valid.expand(T, S) if mask is None else mask & valid
    return F.scaled_dot_product_attention(
        q, k, v, attn_mask=mask, dropout_p=dropout_p, is_causal=is_causal, scale=scale
    )


def _grouped_decode(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, group: int,
                    scale: float | None, n: int) -> torch.Tensor:
    """One query per head under GQA: stack a KV head's `group` queries as rows of one head
    instead of repeating its keys and values `group` times (no K/V copy at long context)."""
    B, Hq, _, D = q.shape
    Hkv, S = k.shape[1], k.shape[2]
    mask = (torch.arange(S, device=q.device) < n).expand(group, S) if n < S else None
    out = F.scaled_dot_product_attention(q.reshape(B, Hkv, group, D), k, v, attn_mask=mask,
                                         scale=scale)
    return out.reshape(B, Hq, 1, v.shape[-1])


def dba_qk(
    q_sem: torch.Tensor,
    q_geo: torch.Tensor,
    k_sem: torch.Tensor,
    k_geo: torch.Tensor,
    scale_sem: float,
    scale_geo: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One (q, k) pair whose dot product with scale 1 is DBA's two-path score.

    [q_sem * s_sem, q_geo * s_geo] . [k_sem, k_geo] = (q_sem . k_sem) s_sem + (q_geo . k_geo)
    s_geo, so SDPA (and its fused kernels) computes the decoupled score exactly.
    """
    q = torch.cat((q_sem * scale_sem, q_geo * scale_geo), dim=-1)
    k = torch.cat((k_sem, k_geo), dim=-1)
    return q, k


def partial_attention(
    qs: list[torch.Tensor], ks: list[torch.Tensor], scales: list[float], v: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """One query per head over a few keys, all attended: (out (B, Hq, Dv), lse (B, Hq)),
    float32, in the decode kernels' return_lse convention so the two merge exactly.

    qs[i] (B, Hq, D_i) with ks[i] (B, Hkv, T, D_i) and scales[i]: score = sum_i scale_i
    q_i . k_i (one pair: standard attention; two: DBA). v (B, Hkv, T, Dv). GQA: query head
    h reads KV head h // (Hq / Hkv).
    """
    B, Hq = qs[0].shape[:2]
    Hkv, T = v.shape[1], v.shape[2]
    scores = torch.zeros(B, Hkv, Hq // Hkv, T, device=v.device, dtype=torch.float32)
    for q, k, scale in zip(qs, ks, scales, strict=True):
        qg = q.to(torch.float32).reshape(B, Hkv, Hq // Hkv, q.shape[-1])
        scores = scores + (qg @ k.to(torch.float32).transpose(-1, -2)) * scale
    lse = torch.logsumexp(scores, dim=-1)
    out = torch.softmax(scores, dim=-1) @ v.to(torch.float32)
    return out.reshape(B, Hq, v.shape[-1]), lse.reshape(B, Hq)

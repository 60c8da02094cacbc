"""The exact attention path: queries over all held keys through SDPA, GQA and causal masking.

Used for training, for prefill and multi-token chunks (speculative verification), and for
single-token decode whenever a cache cannot be read by the decode kernels directly.
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
    span: int | None = None,
) -> torch.Tensor:
    """softmax(q k^T * scale + mask) v for q (B, Hq, T, D), k (B, Hkv, S, D), v (B, Hkv, S, Dv).

    The T queries sit at positions S - T .. S - 1 (the newest tokens), so with `causal`
    query i sees keys 0 .. S - T + i. Query head h reads KV head h // (Hq / Hkv), as in
    Llama 2. `span` > S pads the keys to that length and masks the padding (decode-plan
    bucketing: same result, fewer distinct shapes). scale None means 1/sqrt(D).
    """
    T, S = q.shape[2], k.shape[2]
    past = S - T
    if k.shape[1] != q.shape[1]:
        group = q.shape[1] // k.shape[1]
        k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
    mask = None
    is_causal = causal and past == 0 and T > 1
    if causal and past > 0 and T > 1:
        # Query i sits at cache position past + i and sees keys 0 .. past + i.
        mask = torch.ones(T, S, dtype=torch.bool, device=q.device).tril(diagonal=past)
    if span is not None and span > S:
        k = F.pad(k, (0, 0, 0, span - S))
        v = F.pad(v, (0, 0, 0, span - S))
        valid = torch.arange(span, device=q.device) < S
        if is_causal:
            mask = torch.ones(T, S, dtype=torch.bool, device=q.device).tril(diagonal=past)
            is_causal = False
        mask = valid.expand(T, span) if mask is None else F.pad(mask, (0, span - S))
    return F.scaled_dot_product_attention(
        q, k, v, attn_mask=mask, dropout_p=dropout_p, is_causal=is_causal, scale=scale
    )


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

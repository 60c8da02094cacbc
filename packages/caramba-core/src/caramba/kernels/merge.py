"""Merging attention over disjoint key sets: the one place that does it.

A decode kernel's partial result over some keys is (out, lse): the softmax-weighted values and
lse = log sum exp(score) over those keys. Two partials over disjoint keys combine into exactly
the attention over their union — what split-K kernels do inside, and what a cache does to
join a kernel's answer over its quantized prefix with the exact full-precision tail.
"""

from __future__ import annotations

import torch


def merge_partials(
    out1: torch.Tensor, lse1: torch.Tensor, out2: torch.Tensor, lse2: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(out, lse) of attention over both key sets, float32.

    out* (..., Dv), lse* (...). A partial over no keys has lse = -inf and weighs nothing; at
    least one of the two must have attended to a key (else the result is NaN).
    """
    if out1.shape != out2.shape or lse1.shape != lse2.shape or out1.shape[:-1] != lse1.shape:
        raise ValueError(
            f"merge_partials: shapes out {tuple(out1.shape)} / {tuple(out2.shape)}, lse "
            f"{tuple(lse1.shape)} / {tuple(lse2.shape)} do not pair as (..., Dv) and (...)"
        )
    l1, l2 = lse1.to(torch.float32), lse2.to(torch.float32)
    m = torch.maximum(l1, l2)
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    w1, w2 = torch.exp(l1 - m), torch.exp(l2 - m)
    total = w1 + w2
    out = (out1.to(torch.float32) * w1[..., None] + out2.to(torch.float32) * w2[..., None])
    return out / total[..., None], m + torch.log(total)

"""The float64 decode-attention reference the CPU kernel tests compare against.

One copy for test_cpu_decode and test_cpu_token_layout: scores, softmax, output and log-sum-exp
in float64, plus the error scale `sigma` and the key-quantization error propagated to the scores
that the tolerances are derived from.
"""

from __future__ import annotations

import numpy as np


def reference(qs, ks, scales, v, lengths):
    """float64 (out (B, Hq, Dv), lse (B, Hq), Sigma): qs (B, Hq, d_i), ks/v (B, Hkv, S, ·)."""
    B, Hq = qs[0].shape[:2]
    Hkv, S = v.shape[1:3]
    G = Hq // Hkv
    s = 0.0
    sigma = 0.0
    for q, k, scale in zip(qs, ks, scales, strict=True):
        qg = q.astype(np.float64).reshape(B, Hkv, G, -1)
        s = s + scale * np.einsum("bhgd,bhsd->bhgs", qg, k)
        sigma = sigma + abs(scale) * np.einsum("bhgd,bhsd->bhgs", np.abs(qg), np.abs(k))
    valid = np.arange(S)[None, :] < lengths[:, None]
    s = np.where(valid[:, None, None, :], s, -np.inf)
    m = s.max(axis=-1, keepdims=True)
    p = np.exp(s - m)
    total = p.sum(axis=-1, keepdims=True)
    out = np.einsum("bhgs,bhsd->bhgd", p / total, v).reshape(B, Hq, -1)
    lse = (m + np.log(total)).reshape(B, Hq)
    sigma = float(np.where(valid[:, None, None, :], sigma, 0).max())
    return out, lse, sigma


def propagated(qs, dks, scales, lengths) -> float:
    """max_t sum_paths |scale| sum_d |q_d| delta_k(t, d) over valid positions."""
    B, Hq = qs[0].shape[:2]
    Hkv, S = dks[0].shape[1:3]
    total = 0.0
    for q, dk, scale in zip(qs, dks, scales, strict=True):
        qg = np.abs(q.astype(np.float64)).reshape(B, Hkv, Hq // Hkv, -1)
        total = total + abs(scale) * np.einsum("bhgd,bhsd->bhgs", qg, dk)
    valid = np.arange(S)[None, :] < lengths[:, None]
    return float(np.where(valid[:, None, None, :], total, 0).max())

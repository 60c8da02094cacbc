"""Bad token-layout caches and lse arguments raise ValueError / TypeError naming the argument.

The token layout (B, 1, S_max, row) infers Hkv = row values / the query's head dim, so a row
that does not divide, KV-head counts that disagree between tensors, a value row that does not
split into the keys' heads and lse buffers of the wrong shape, type or place must be refused
before C++ reads a byte.
"""

from __future__ import annotations

import re

import numpy as np
import pytest

cpu = pytest.importorskip(
    "caramba_kernels.cpu",
    reason="caramba_kernels is not installed (pip install ./packages/caramba-kernels)",
)
backend = cpu.backend

B, HQ, HKV, S = 2, 16, 8, 8
D_SEM, D_GEO, DV = 4, 8, 32


def q8(*shape: int) -> np.ndarray:
    x = np.random.default_rng(sum(shape)).standard_normal(shape).astype(np.float32)
    return backend.quantize("q8_0", x)


def good() -> dict:
    rng = np.random.default_rng(0)
    return dict(
        q=rng.standard_normal((B, HQ, D_SEM)).astype(np.float32),
        k=q8(B, 1, S, HKV * D_SEM),  # token layout: 8 heads x 4 values = one q8_0 block
        v=q8(B, HKV, S, DV),  # head layout
        lengths=np.array([3, S], np.int32),
        scale=0.5,
        k_format="q8_0",
        v_format="q8_0",
    )


def call(**changes):
    args = good()
    args.update(changes)
    return backend.decode_attention(
        args.pop("q"), args.pop("k"), args.pop("v"), args.pop("lengths"), **args
    )


def test_the_good_call_works() -> None:
    out, lse = call(return_lse=True)
    assert out.shape == (B, HQ, DV) and lse.shape == (B, HQ) and np.isfinite(lse).all()


@pytest.mark.parametrize(
    ("changes", "error", "message"),
    [
        (
            dict(q=np.zeros((B, HQ, 12), np.float32)),
            ValueError,
            "k: a token-layout row (shape[1] == 1) holds 32 values, not a whole number of the "
            "query's head dim 12",
        ),
        (
            dict(q=np.zeros((B, 12, D_SEM), np.float32)),
            ValueError,
            "k: 8 KV heads do not divide the query's 12 heads",
        ),
        (dict(v=q8(B, 4, S, DV)), ValueError, "v: 4 KV heads do not match k's 8"),
        (
            dict(v=np.zeros((B, 1, S, 12), np.float16), v_format="f16"),
            ValueError,
            "v: a token-layout row (shape[1] == 1) holds 12 values, which do not split into k's "
            "8 KV heads",
        ),
        (
            dict(v=q8(B, 1, S - 1, HKV * 4)),
            ValueError,
            "v: (heads, S_max) = (8, 7) does not match k's (8, 8)",
        ),
        (
            dict(k=np.zeros((B, 1, S, 30), np.uint8)),
            ValueError,
            "k: last dimension 30 is not a whole number of q8_0 blocks",
        ),
        (
            dict(k=q8(B, 1, S, 32)[:, :, :, :17].copy()),
            ValueError,
            "k: last dimension 17 is not a whole number",
        ),
        (dict(return_lse="yes"), TypeError, "return_lse: expected a bool"),
        (
            dict(lse_out=np.zeros((B, HQ), np.float32)),
            ValueError,
            "lse_out: given, but return_lse is False",
        ),
        (
            dict(return_lse=True, lse_out=np.zeros((B, HQ + 1), np.float32)),
            ValueError,
            "lse_out: expected shape (2, 16), got (2, 17)",
        ),
        (
            dict(return_lse=True, lse_out=np.zeros((B, HQ), np.float64)),
            TypeError,
            "lse_out: expected dtype float32, got float64",
        ),
        (
            dict(return_lse=True, lse_out=np.zeros((B, 2 * HQ), np.float32)[:, ::2]),
            ValueError,
            "lse_out: must be C-contiguous",
        ),
    ],
)
def test_bad_token_layout_and_lse_arguments_name_the_argument(changes, error, message) -> None:
    with pytest.raises(error, match=re.escape(message)):
        call(**changes)


def test_lse_may_not_alias_out_or_an_input() -> None:
    args = good()
    out = np.zeros((B, HQ, DV), np.float32)
    with pytest.raises(ValueError, match="lse overlaps out in memory"):
        call(out=out, return_lse=True, lse_out=out.reshape(-1)[: B * HQ].reshape(B, HQ))
    q = args["q"]
    with pytest.raises(ValueError, match="lse overlaps q in memory"):
        call(q=q, return_lse=True, lse_out=q.reshape(-1)[: B * HQ].reshape(B, HQ))


def test_read_only_lse_out_is_refused() -> None:
    lse = np.zeros((B, HQ), np.float32)
    lse.flags.writeable = False
    with pytest.raises(ValueError, match="lse_out: the array is read-only"):
        call(return_lse=True, lse_out=lse)


def test_dba_kv_head_counts_must_agree_between_tensors() -> None:
    rng = np.random.default_rng(1)
    q_sem = rng.standard_normal((B, HQ, D_SEM)).astype(np.float32)
    q_geo = rng.standard_normal((B, HQ, D_GEO)).astype(np.float32)
    k_sem = q8(B, 1, S, HKV * D_SEM)
    k_geo = q8(B, 1, S, HKV * D_GEO)
    v = q8(B, HKV, S, DV)
    lengths = np.array([1, S], np.int32)
    kw = dict(
        scale_sem=0.5, scale_geo=0.35, k_sem_format="q8_0", k_geo_format="q8_0", v_format="q8_0"
    )
    out, lse = backend.dba_decode_attention(
        q_sem, q_geo, k_sem, k_geo, v, lengths, return_lse=True, **kw
    )
    assert out.shape == (B, HQ, DV) and lse.shape == (B, HQ)
    bad = [
        (
            (q_sem, q_geo, k_sem, q8(B, 1, S, 32), v),
            "k_geo: 4 KV heads (token layout: 32 values per row / head dim 8) do not match "
            "k_sem's 8",
        ),
        (
            (q_sem, q_geo[..., :4].copy(), k_sem, q8(B, 2, S, 32), v),
            "k_geo: head dim 4 is not a multiple of the q8_0 block size 32",
        ),
        (
            (q_sem, np.zeros((B, HQ, 32), np.float32), k_sem, q8(B, 2, S, 32), v),
            "k_geo: 2 KV heads do not match k_sem's 8",
        ),
        (
            (q_sem, q_geo, k_sem, k_geo[:, :, :5].copy(), v),
            "k_geo: (heads, S_max) = (8, 5) does not match k_sem's (8, 8)",
        ),
        ((q_sem, q_geo, k_sem, k_geo, q8(B, 2, S, DV)), "v: 2 KV heads do not match k_sem's 8"),
    ]
    for args, message in bad:
        with pytest.raises(ValueError, match=re.escape(message)):
            backend.dba_decode_attention(*args, lengths, **kw)
    message = (
        "v: a token-layout row (shape[1] == 1) holds 20 values, which do not split into "
        "k_sem's 8 KV heads"
    )
    with pytest.raises(ValueError, match=re.escape(message)):
        backend.dba_decode_attention(
            q_sem,
            q_geo,
            k_sem,
            k_geo,
            np.zeros((B, 1, S, 20), np.float16),
            lengths,
            **{**kw, "v_format": "f16"},
        )

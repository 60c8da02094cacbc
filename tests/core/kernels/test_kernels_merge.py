"""merge_partials: two decode results over disjoint keys equal one over their union."""

from __future__ import annotations

import pytest
import torch

from caramba.kernels import decode_attention, merge_partials


@pytest.mark.parametrize("cut", [1, 7, 20, 29])
def test_merging_a_split_cache_equals_attending_the_whole(cut: int) -> None:
    gen = torch.Generator().manual_seed(cut)
    B, Hkv, group, S, D = 3, 2, 3, 30, 32
    q = torch.randn(B, Hkv * group, D, generator=gen) * 2
    k = torch.randn(B, Hkv, S, D, generator=gen)
    v = torch.randn(B, Hkv, S, 16, generator=gen)
    whole = decode_attention(q, k, v, torch.full((B,), S, dtype=torch.int32), 0.2, "f32", "f32",
                             return_lse=True)
    first = decode_attention(q, k[:, :, :cut], v[:, :, :cut],
                             torch.full((B,), cut, dtype=torch.int32), 0.2, "f32", "f32",
                             return_lse=True)
    rest = decode_attention(q, k[:, :, cut:], v[:, :, cut:],
                            torch.full((B,), S - cut, dtype=torch.int32), 0.2, "f32", "f32",
                            return_lse=True)
    for a, b in ((first, rest), (rest, first)):  # symmetric
        out, lse = merge_partials(*a, *b)
        torch.testing.assert_close(out, whole[0], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(lse, whole[1], rtol=1e-6, atol=1e-5)


def test_a_partial_over_no_keys_weighs_nothing() -> None:
    out, lse = torch.randn(2, 4, 8), torch.randn(2, 4)
    empty = (torch.zeros_like(out), torch.full_like(lse, float("-inf")))
    for merged in (merge_partials(out, lse, *empty), merge_partials(*empty, out, lse)):
        torch.testing.assert_close(merged[0], out)
        torch.testing.assert_close(merged[1], lse)


def test_large_scores_do_not_overflow() -> None:
    out1, out2 = torch.ones(1, 1, 2), torch.zeros(1, 1, 2)
    lse1, lse2 = torch.tensor([[1000.0]]), torch.tensor([[1000.0 + torch.log(torch.tensor(3.0))]])
    out, lse = merge_partials(out1, lse1, out2, lse2)
    torch.testing.assert_close(out, torch.full((1, 1, 2), 0.25))
    torch.testing.assert_close(lse, torch.tensor([[1000.0 + float(torch.log(torch.tensor(4.0)))]]))


def test_mismatched_shapes_are_a_value_error() -> None:
    with pytest.raises(ValueError, match=r"merge_partials: shapes"):
        merge_partials(torch.zeros(2, 4, 8), torch.zeros(2, 4), torch.zeros(2, 4, 8),
                       torch.zeros(2, 3))

"""CUDA-graph decode steps (caramba.cache.graphs): the masked fixed-size tail merge equals the
exact tail + log-sum-exp merge (CPU, fuzzed shapes), which caches qualify, and on CUDA a
cache decoding through graphs gives the eager path's outputs step for step."""

import math

import pytest
import torch

from caramba.cache import CacheSpec, DecodePlan
from caramba.cache.attend import partial_attention
from caramba.cache.graphs import ENV, graph_mode, graphs_enabled, masked_tail_merge
from caramba.kernels.merge import merge_partials


@pytest.mark.parametrize("seed", range(6))
def test_masked_tail_merge_equals_partial_attention_and_merge(seed):
    g = torch.Generator().manual_seed(seed)

    def pick(lo: int, hi: int) -> int:
        return int(torch.randint(lo, hi, (1,), generator=g))

    B, Hkv = pick(1, 4), pick(1, 4)
    Hq, R, Dv = Hkv * pick(1, 4), pick(1, 40), pick(1, 20)
    pending = pick(0, R + 1)
    widths = [pick(1, 17) for _ in range(pick(1, 3))]
    qs = [torch.randn(B, Hq, d, generator=g, dtype=torch.float64) for d in widths]
    ks = [torch.randn(B, Hkv, R, d, generator=g, dtype=torch.float64) for d in widths]
    scales = [1 / math.sqrt(d) for d in widths]
    v = torch.randn(B, Hkv, R, Dv, generator=g, dtype=torch.float64)
    out_p = torch.randn(B, Hq, Dv, generator=g, dtype=torch.float64)
    lse_p = torch.randn(B, Hq, generator=g, dtype=torch.float64) * 3
    got = masked_tail_merge(out_p, lse_p, qs, ks, scales, v,
                            torch.tensor(pending, dtype=torch.int32))
    if pending:
        tail = partial_attention(qs, [k[:, :, :pending] for k in ks], scales, v[:, :, :pending])
        want, _ = merge_partials(out_p, lse_p, *tail)
    else:
        want = out_p.to(torch.float32)
    torch.testing.assert_close(got, want.to(got.dtype), rtol=1e-5, atol=1e-5)


def test_masked_tail_merge_ignores_rows_past_pending():
    qs, ks = [torch.randn(1, 2, 4)], [torch.randn(1, 1, 8, 4)]
    v, out, lse = torch.randn(1, 1, 8, 3), torch.randn(1, 2, 3), torch.zeros(1, 2)
    pending = torch.tensor(5, dtype=torch.int32)
    a = masked_tail_merge(out, lse, qs, ks, [0.5], v, pending)
    ks[0][:, :, 5:] = 1e4  # stale rows of the fixed buffer: finite, and weigh nothing
    v[:, :, 5:] = 123.0
    torch.testing.assert_close(masked_tail_merge(out, lse, qs, ks, [0.5], v, pending), a)


def test_graph_mode_is_cuda_only_and_needs_one_tail_scheme(monkeypatch):
    spec = CacheSpec(kind="q8_0")
    cache = spec.make({"k": (2, 32), "v": (2, 32)}, 1, torch.device("cpu"), torch.float32)
    assert graph_mode(cache.tensors) is None  # CPU: never graphed
    monkeypatch.setenv(ENV, "0")
    assert not graphs_enabled()
    monkeypatch.setenv(ENV, "1")
    assert graphs_enabled()


CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _pair(decoupled: bool, kind: str, dtype: torch.dtype, batch: int):
    # DBA at the benchmark's per-head widths (token layout); standard GQA in head layout.
    shapes = ({"k_sem": (8, 4), "k_geo": (8, 8), "v": (8, 32)} if decoupled
              else {"k": (4, 64), "v": (4, 64)})
    made = []
    for graphs in (True, False):
        spec = CacheSpec(kind=kind, plan=DecodePlan("auto"), cuda_graphs=graphs)
        made.append(spec.make(shapes, batch, torch.device("cuda"), dtype))
    return shapes, made


def _attend(cache, decoupled, qs):
    if decoupled:
        return cache.attend(qs[0], qs[1], scale_sem=0.3, scale_geo=0.2)
    return cache.attend(qs[0], scale=0.125)


@CUDA
@pytest.mark.parametrize("kind", ["fp16", "q8_0", "q4_0"])
@pytest.mark.parametrize("decoupled", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_graph_decode_equals_eager(kind, decoupled, dtype):
    torch.manual_seed(0)
    batch = 3
    shapes, (graphed, eager) = _pair(decoupled, kind, dtype, batch)
    prompt = [torch.randn(batch, h, 45, d, device="cuda", dtype=dtype)
              for h, d in shapes.values()]
    graphed.append(*prompt)
    eager.append(*prompt)
    q_heads = 16 if decoupled else 8
    q_widths = [4, 8] if decoupled else [64]
    # 120 steps: through several tail blocks and at least one capacity growth (new graph).
    for _ in range(120):
        new = [torch.randn(batch, h, 1, d, device="cuda", dtype=dtype)
               for h, d in shapes.values()]
        graphed.append(*new)
        eager.append(*new)
        qs = [torch.randn(batch, q_heads, 1, d, device="cuda", dtype=dtype) for d in q_widths]
        a, b = _attend(graphed, decoupled, qs), _attend(eager, decoupled, qs)
        tol = 1e-5 if dtype == torch.float32 else 1.6e-2
        torch.testing.assert_close(a, b, rtol=tol, atol=tol)
    assert graphed.graphs.replays == 120 and graphed.graphs.captures >= 2
    assert eager.graphs.replays == 0

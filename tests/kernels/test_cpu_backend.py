"""The C++ CPU backend as caramba sees it: entry points, dispatch, and what it reports."""

from __future__ import annotations

import importlib.metadata as metadata

import numpy as np
import pytest

cpu = pytest.importorskip(
    "caramba_kernels.cpu",
    reason="caramba_kernels is not installed (pip install ./packages/caramba-kernels)",
)


def entry_point(group: str, name: str) -> metadata.EntryPoint:
    found = [ep for ep in metadata.entry_points(group=group) if ep.name == name]
    assert found, f"no entry point {name!r} in group {group!r}"
    return found[0]


def test_cpu_backend_is_registered_under_caramba_kernels() -> None:
    ep = entry_point("caramba.kernels", "cpu")
    assert ep.value == "caramba_kernels.cpu:backend"
    assert ep.load() is cpu.backend


def test_cmake_root_entry_point_names_the_package() -> None:
    assert entry_point("cmake.root", "caramba_kernels").value == "caramba_kernels"


def test_caramba_dispatch_picks_the_cpu_backend() -> None:
    torch = pytest.importorskip("torch")
    kernels = pytest.importorskip("caramba.kernels", reason="caramba-core is not installed")
    dispatch = pytest.importorskip("caramba.kernels.dispatch")
    dispatch.reset()
    try:
        backend = kernels.get_backend("cpu")
        assert getattr(backend, "name", None) == "cpu"
        assert getattr(backend, "missing", ()) == ()  # serves every op itself
        x = torch.randn(3, 64)
        assert torch.equal(backend.quantize("q4_0", x), kernels.quantize("q4_0", x))
    finally:
        dispatch.reset()


def test_backend_reports_its_simd_path_and_threads() -> None:
    b = cpu.backend
    assert b.simd in ("avx512", "avx2", "neon", "none")
    assert b.paths[:2] == ("auto", "scalar")
    assert ("simd" in b.paths) == (b.simd != "none")
    assert b.default_num_threads >= 1
    assert b.supports("cpu") and not b.supports("cuda")
    assert "cpu" in repr(b)
    assert b.formats == ("f32", "f16", "q8_0", "q4_0", "nf4")


def test_every_path_is_callable_or_refused_by_name() -> None:
    x = np.random.default_rng(0).standard_normal((4, 64)).astype(np.float32)
    for path in cpu.PATHS:
        if path not in cpu.backend.paths:
            with pytest.raises(ValueError, match=f"path: '{path}' is not available"):
                cpu.backend.quantize("q8_0", x, path=path)
            continue
        for kind in cpu.FORMATS:
            a = cpu.backend.quantize(kind, x, path="scalar")
            b = cpu.backend.quantize(kind, x, path=path)
            assert np.array_equal(a.view(np.uint8), b.view(np.uint8))


def test_torch_tensors_cross_in_place_whatever_their_view() -> None:
    """CPU torch tensors reach C++ as views of their own memory: an append writes into the
    torch cache itself, a torch `out` is filled in place, and a tensor whose negation is still
    pending (raw memory holds -x) crosses with its values, not its raw memory."""
    torch = pytest.importorskip("torch")
    backend = cpu.backend
    gen = torch.Generator().manual_seed(3)
    cache = torch.zeros(1, 2, 4, 34, dtype=torch.uint8)
    rows = torch.randn(1, 2, 32, generator=gen)
    backend.append("q8_0", cache, rows, torch.tensor([1], dtype=torch.int32))
    assert torch.equal(cache[:, :, 1], backend.quantize("q8_0", rows))
    assert int(cache[:, :, [0, 2, 3]].abs().sum()) == 0

    q = torch.randn(1, 4, 32, generator=gen)
    k = backend.quantize("q8_0", torch.randn(1, 2, 9, 32, generator=gen))
    v = backend.quantize("q8_0", torch.randn(1, 2, 9, 32, generator=gen))
    lengths = torch.tensor([9], dtype=torch.int32)
    out = torch.empty(1, 4, 32)
    got = backend.decode_attention(q, k, v, lengths, 0.2, "q8_0", "q8_0", out=out)
    assert got.data_ptr() == out.data_ptr()
    negated = torch._neg_view(-q)  # the same values as q, with the negation still pending
    assert negated.is_neg()
    same = backend.decode_attention(negated, k, v, lengths, 0.2, "q8_0", "q8_0")
    torch.testing.assert_close(same, out, rtol=0, atol=0)


def test_pool_threads_sleep_between_calls() -> None:
    """Helpers spin only while a call runs and ~30 us after it: between the layers of a model
    they must leave the cores to torch (a helper spinning on would take a core for good)."""
    import time

    rng = np.random.default_rng(3)
    b = cpu.backend
    q = rng.standard_normal((1, 8, 64), dtype=np.float32)
    k = b.quantize("q8_0", rng.standard_normal((1, 2, 4096, 64), dtype=np.float32))
    v = b.quantize("q8_0", rng.standard_normal((1, 2, 4096, 64), dtype=np.float32))
    lengths = np.array([4096], np.int32)
    for _ in range(3):  # starts the pool's helpers
        b.decode_attention(q, k, v, lengths, 0.125, "q8_0", "q8_0", num_threads=4, num_splits=8)
    time.sleep(0.01)
    cpu_before = time.process_time()
    time.sleep(0.2)
    idle_cpu = time.process_time() - cpu_before
    assert idle_cpu < 0.05, f"{idle_cpu * 1e3:.1f} ms of CPU time in 200 ms between calls"

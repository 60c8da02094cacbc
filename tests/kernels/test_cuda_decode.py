"""The tensor-core CUDA decode kernel (csrc/cuda, caramba_kernels.cuda) against float64.

The library is built with caramba-kernels wherever CMake finds a CUDA compiler. What it serves
(`caramba_cuda_decode_supported`) is host code and is checked wherever the library exists; the
kernel itself runs where there is a GPU, over 1,000+ fuzzed problems: DBA and standard, q8_0 and
q4_0 per tensor, head and token layouts, ragged lengths, split counts. Its numerics are the
all-heads Triton kernel's (fp16 query and dequantized keys, fp16 weights p * d, fp32
accumulation), so the fp16 tolerances derived in test_triton_layouts.py apply.
"""

from __future__ import annotations

import os

import pytest
import torch

from caramba_kernels import cuda
from test_triton_layouts import exact, randint, store, tolerances
from triton_backend import ON_GPU, backend, ops

LIB = cuda.load()
pytestmark = pytest.mark.skipif(LIB is None, reason="libcaramba_kernels_cuda is not built here")
CASES = int(os.environ.get("CARAMBA_CUDA_FUZZ", 1200))
gpu = pytest.mark.skipif(not ON_GPU, reason="needs a CUDA GPU")


def host_params(formats, qs, ks, v) -> cuda.Params:
    """The library's parameters for this call, for its host checks (no pointer is read)."""
    dev = "cuda" if ON_GPU else "cpu"
    pairs = enumerate(zip(ks, formats, strict=False))
    keys = [(k.to(dev), f"k{i}", f, f"f{i}") for i, (k, f) in pairs]
    kviews, vview, Hkv, _ = backend._views([q.to(dev) for q in qs], keys, v.to(dev), formats[-1])
    B = qs[0].shape[0]
    return cuda.params(qs, kviews, vview, [1.0] * len(qs), torch.empty(B), None, Hkv, 32, 1)


def served(formats, qs, ks, v) -> bool:
    """Whether the CUDA kernel takes this call (and not the Triton fallback)."""
    return cuda.supported(host_params(formats, qs, ks, v))


def draw(gen: torch.Generator, dba: bool):
    """A problem the kernel serves: q8_0/q4_0 keys (both key tensors alike) and values, even key
    dims (at most 8 groups of 8 values), value dims 32/64/128, up to 8 query heads per KV head,
    each tensor in the head or token layout."""
    B, Hkv, group = randint(gen, 1, 8), randint(gen, 1, 8), randint(gen, 1, 8)
    S = randint(gen, 1, 700)
    lengths = torch.randint(1, S + 1, (B,), generator=gen, dtype=torch.int32)
    lengths[0] = S if randint(gen, 0, 1) else max(1, S - randint(gen, 0, 40))
    key, value = (("q8_0", "q4_0")[randint(gen, 0, 1)] for _ in range(2))
    formats = (key, key, value) if dba else (key, value)
    if dba:
        sem = key_layout(gen, Hkv, 32)
        layouts = [sem, key_layout(gen, Hkv, 64 - 8 * -(-sem[0] // 8))]  # 8 groups of 8 at most
    else:
        layouts = [key_layout(gen, Hkv, 64)]
    dv = 32 * (1, 2, 4)[randint(gen, 0, 2)]
    layouts.append((dv, Hkv > 1 and bool(randint(gen, 0, 1))))
    dims = [d for d, _ in layouts]
    tensors = []
    for kind, (d, token) in zip(formats, layouts, strict=True):
        tensors.append(store(kind, torch.randn(B, Hkv, S, d, generator=gen) * 2, token))
    qs = [torch.randn(B, Hkv * group, d, generator=gen) for d in dims[:-1]]
    scales = [float(torch.empty(1).uniform_(0.5, 2.0, generator=gen)) / d**0.5 for d in dims[:-1]]
    return formats, (qs, tensors[:-1], tensors[-1], lengths, scales, dims, Hkv)


def key_layout(gen: torch.Generator, Hkv: int, most: int) -> tuple[int, bool]:
    """(dim, token layout?) of a key tensor of at most `most` values per head: rows are whole
    32-value blocks, so a head layout has dim 32 or 64, a token layout any even dim whose Hkv
    heads fill whole blocks."""
    if Hkv > 1 and randint(gen, 0, 1):
        options = [d for d in range(2, most + 1, 2) if (Hkv * d) % 32 == 0]
        if options:
            return options[randint(gen, 0, len(options) - 1)], True
    options = [d for d in (32, 64) if d <= most]
    return options[randint(gen, 0, len(options) - 1)], False


def call(formats, problem, num_splits):
    qs, ks, v, lengths, scales, _, _ = problem
    dev = [t.cuda() for t in (*qs, *ks, v, lengths)]
    n = len(qs)
    if n == 1:
        return backend.decode_attention(dev[0], dev[1], dev[2], dev[3], scales[0], *formats,
                                        num_splits=num_splits, return_lse=True)  # fmt: skip
    return backend.dba_decode_attention(*dev[:2], *dev[2:4], dev[4], dev[5], *scales, *formats,
                                        num_splits=num_splits, return_lse=True)  # fmt: skip


@pytest.fixture
def launches(monkeypatch):
    """Counts the CUDA kernel's launches (so a test knows it did not fall back to Triton)."""
    count = [0]
    real = cuda.launch

    def counted(p, stream):
        count[0] += 1
        real(p, stream)

    monkeypatch.setattr(cuda, "launch", counted)
    monkeypatch.setitem(ops.TUNING, "cuda", True)
    return count


def with_query_type(problem, case: int):
    """The problem with its queries in float32, float16 or bfloat16 by case number: the kernel
    reads each type as it is (the float64 reference takes the same rounded values)."""
    dtype = (torch.float32, torch.float16, torch.bfloat16)[case % 3]
    return ([q.to(dtype) for q in problem[0]], *problem[1:])


def check(formats, problem, num_splits) -> None:
    qs, ks, v, lengths, scales, dims, Hkv = problem
    want, want_lse, sigma, vmax = exact(formats, qs, ks, v, lengths, scales, dims, Hkv)
    out, lse = call(formats, problem, num_splits)
    tol, tol_lse = tolerances(sigma, vmax, max(dims[:-1]), v.shape[2], fp16=True)
    err = float((out.cpu().double() - want).abs().max())
    err_lse = float((lse.cpu().double() - want_lse).abs().max())
    what = (f"{formats} keys {[tuple(k.shape) for k in ks]} v {tuple(v.shape)} "
            f"q {tuple(qs[0].shape)} lengths {lengths.tolist()} splits {num_splits}")  # fmt: skip
    assert err <= tol, f"{what}: out error {err:.3g} > {tol:.3g}"
    assert err_lse <= tol_lse, f"{what}: lse error {err_lse:.3g} > {tol_lse:.3g}"


@gpu
@pytest.mark.parametrize("dba", [True, False], ids=["dba", "standard"])
def test_fuzzed_problems_match_float64(dba, launches) -> None:
    gen = torch.Generator().manual_seed(1234 + dba)
    cases = CASES if dba else CASES // 2
    for case in range(cases):
        formats, problem = draw(gen, dba)
        problem = with_query_type(problem, case)
        S = problem[2].shape[2]
        check(formats, problem, num_splits=[None, 1, 2, 3, 7, S, S + 5][case % 7])
    assert launches[0] == cases


def draw_rows(gen: torch.Generator, dba: bool = True):
    """A problem for the row kernel at Llama-3.2-1B widths (32 query / 8 KV heads): the DBA
    cache (sem 4 + geo 8 keys per KV head in token rows, 32 values per head) or standard
    attention (head dim 64, keys in the head layout, 64 values per head; with the values in
    the head layout too, 2, 4 or 8 KV heads and head dim 64 or 128, Llama-3-8B's), the values
    in the head or token layout, any q8_0/q4_0 key and value formats, batch 1-8, ragged
    lengths. Capacities are multiples of 8 positions: every tensor's sequences (and heads) then
    start on 16 bytes, as the kernel's asynchronous copies need."""
    B, group, S = randint(gen, 1, 8), 4, 8 * randint(gen, 1, 190)
    value_tokens = bool(randint(gen, 0, 1))
    Hkv = 8 if dba or value_tokens else (2, 4, 8)[randint(gen, 0, 2)]
    lengths = torch.randint(1, S + 1, (B,), generator=gen, dtype=torch.int32)
    lengths[0] = S if randint(gen, 0, 1) else max(1, S - randint(gen, 0, 40))
    key, value = (("q8_0", "q4_0")[randint(gen, 0, 1)] for _ in range(2))
    D = 64 if dba or value_tokens else (64, 128)[randint(gen, 0, 1)]
    key_dims, dv = ((4, 8), 32) if dba else ((D,), D)
    ks = [store(key, torch.randn(B, Hkv, S, d, generator=gen) * 2, dba) for d in key_dims]
    v = store(value, torch.randn(B, Hkv, S, dv, generator=gen) * 2, value_tokens)
    qs = [torch.randn(B, Hkv * group, d, generator=gen) for d in key_dims]
    scales = [float(torch.empty(1).uniform_(0.5, 2.0, generator=gen)) / d**0.5 for d in key_dims]
    formats = (key, key, value) if dba else (key, value)
    return formats, (qs, ks, v, lengths, scales, [*key_dims, dv], Hkv)


def split_shape(formats, qs, ks, v, kernel: str = "rows") -> tuple[int, int]:
    """(warps, positions) per (sequence, split) of the kernel that serves this call when
    `kernel` ("auto", "heads", "rows") is asked for."""
    p = host_params(formats, qs, ks, v)
    p.kernel = cuda.KERNELS[kernel]
    return cuda.split_shape(p)


@pytest.fixture
def rows(launches, monkeypatch):
    """The row kernel wherever it applies (small problems too), launches counted."""
    monkeypatch.setitem(ops.TUNING, "cuda_kernel", "rows")
    return launches


@gpu
@pytest.mark.parametrize("dba", [True, False], ids=["dba", "standard"])
def test_row_kernel_fuzzed_problems_match_float64(rows, dba) -> None:
    """The row kernel (16-position steps of every KV head of a group) over its instances'
    shapes."""
    gen = torch.Generator().manual_seed(77 + dba)
    cases = max(1, CASES // 3)
    for case in range(cases):
        formats, problem = draw_rows(gen, dba)
        problem = with_query_type(problem, case)
        qs, ks, v = problem[:3]
        warps, positions = split_shape(formats, qs, ks, v)
        assert positions == 128 and warps % 4 == 0, (warps, positions)
        S = v.shape[2]
        check(formats, problem, num_splits=[None, 1, 2, 3, 7, S, S + 5][case % 7])
    assert rows[0] == cases


@gpu
@pytest.mark.parametrize("dba", [True, False], ids=["dba", "standard"])
def test_row_kernel_never_reads_slots_past_the_length(rows, dba) -> None:
    gen = torch.Generator().manual_seed(9)
    formats, problem = draw_rows(gen, dba)
    qs, ks, v, _, scales, dims, Hkv = problem
    B, S = v.shape[0], v.shape[2]
    lengths = torch.randint(1, S + 1, (B,), generator=gen, dtype=torch.int32)
    problem = (qs, ks, v, lengths, scales, dims, Hkv)
    want = exact(formats, *problem)[0]
    for x in (*ks, v):
        for b, n in enumerate(lengths.tolist()):
            x[b, :, n:] = 0xFF  # fp16 NaN scales and junk values past the length
    for splits in (None, 1, 5):
        out, _ = call(formats, problem, splits)
        assert torch.isfinite(out).all()
        torch.testing.assert_close(out.cpu().double(), want, rtol=0, atol=5e-2)
    assert rows[0] == 3


@gpu
def test_llama_dba_cache_with_long_context_and_many_splits(launches) -> None:
    """The benchmark's cache: 8 KV heads, sem 4 / geo 8 token layout, v 32 head layout."""
    gen = torch.Generator().manual_seed(5)
    B, Hkv, group, S = 2, 8, 4, 5000
    lengths = torch.tensor([S, 1234], dtype=torch.int32)
    for kind in ("q4_0", "q8_0"):
        ks = [store(kind, torch.randn(B, Hkv, S, d, generator=gen), True) for d in (4, 8)]
        v = store(kind, torch.randn(B, Hkv, S, 32, generator=gen), False)
        qs = [torch.randn(B, Hkv * group, d, generator=gen) for d in (4, 8)]
        problem = (qs, ks, v, lengths, [0.5, 0.35], [4, 8, 32], Hkv)
        for splits in (None, 1, 40):
            check((kind, kind, kind), problem, splits)
        # The default split plan fills the GPU with one wave of the variant's resident warps.
        p = host_params((kind,) * 3, qs, ks, v)
        assert cuda.supported(p)
        per_sm, (warps, _) = cuda.warps_per_sm(p), cuda.split_shape(p)
        assert per_sm > 0 and per_sm % warps == 0, (per_sm, warps)  # whole blocks
    assert launches[0] == 6


@gpu
@pytest.mark.parametrize("kernel", ["rows", "heads"])
def test_merge_as_a_dependent_launch_gives_the_same_bits(launches, monkeypatch, kernel) -> None:
    """The split merge launched as a programmatic dependent of the kernel (sm_90+: it starts
    while the kernel's last blocks run and waits for their partials in the kernel) computes
    exactly what a plain launch after the kernel does, over many splits."""
    monkeypatch.setitem(ops.TUNING, "cuda_kernel", kernel)
    gen = torch.Generator().manual_seed(21)
    for dba in (True, False):
        formats, problem = draw_rows(gen, dba)
        S = problem[2].shape[2]
        got = {}
        for pdl in (False, True):
            monkeypatch.setitem(ops.TUNING, "merge_pdl", pdl)
            got[pdl] = [x.cpu() for x in call(formats, problem, num_splits=max(2, S // 64))]
        assert all(torch.equal(a, b) for a, b in zip(got[False], got[True], strict=True))
    assert launches[0] == 4


@gpu
def test_slots_past_the_length_are_never_read(launches) -> None:
    gen = torch.Generator().manual_seed(8)
    ks = [store("q4_0", torch.randn(2, 2, 70, d, generator=gen), False) for d in (32, 32)]
    v = store("q8_0", torch.randn(2, 2, 70, 64, generator=gen), False)
    qs = [torch.randn(2, 8, 32, generator=gen) for _ in range(2)]
    lengths = torch.tensor([33, 70], dtype=torch.int32)
    problem = (qs, ks, v, lengths, [0.2, 0.1], [32, 32, 64], 2)
    want = exact(("q4_0", "q4_0", "q8_0"), *problem)[0]
    for x in (*ks, v):
        x[0, :, 33:] = 0xFF  # fp16 NaN scales and junk values past the length
    out, _ = call(("q4_0", "q4_0", "q8_0"), problem, 3)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out.cpu().double(), want, rtol=0, atol=5e-3)
    assert launches[0] == 1


@gpu
def test_shapes_it_does_not_serve_fall_back_to_triton(launches) -> None:
    gen = torch.Generator().manual_seed(2)
    q = torch.randn(1, 16, 64, generator=gen)
    k = store("q4_0", torch.randn(1, 1, 40, 64, generator=gen), False)
    v = store("q4_0", torch.randn(1, 1, 40, 96, generator=gen), False)  # 16 heads / KV head
    lengths = torch.tensor([40], dtype=torch.int32)
    problem = ([q], [k], v, lengths, [0.125], [64, 96], 1)
    want = exact(("q4_0", "q4_0"), *problem)[0]
    out, _ = call(("q4_0", "q4_0"), problem, None)
    torch.testing.assert_close(out.cpu().double(), want, rtol=0, atol=5e-3)
    assert launches[0] == 0


def test_the_library_says_what_it_serves() -> None:
    """Host-side checks: runs wherever the library is built, GPU or not."""
    gen = torch.Generator().manual_seed(4)
    ok = 0
    for _ in range(50):
        dba = bool(randint(gen, 0, 1))
        formats, (qs, ks, v, *_rest) = draw(gen, dba)
        ok += served(formats, qs, ks, v)
    assert ok == 50  # every problem `draw` makes is one the kernel serves
    q = torch.randn(1, 16, 64)
    k = store("q4_0", torch.randn(1, 1, 8, 64), False)
    assert not served(("q4_0", "q4_0"), [q], [k], store("q4_0", torch.randn(1, 1, 8, 96), False))
    assert not served(("q4_0", "q4_0"), [q], [k], store("q4_0", torch.randn(1, 1, 8, 32), False))
    q = torch.randn(1, 8, 64)
    assert served(("q4_0", "q4_0"), [q], [k], store("q4_0", torch.randn(1, 1, 8, 32), False))
    assert not served(("f16", "q4_0"), [q], [torch.randn(1, 1, 8, 64).half()],
                      store("q4_0", torch.randn(1, 1, 8, 32), False))  # fmt: skip
    v = store("q4_0", torch.randn(1, 1, 8, 32), False)
    ks = [store(kind, torch.randn(1, 1, 8, 32), False) for kind in ("q4_0", "q8_0")]
    assert not served(("q4_0", "q8_0", "q4_0"), [q[..., :32], q[..., :32]], ks, v)
    q = torch.randn(1, 8, 96)
    assert not served(("q4_0", "q4_0"), [q], [store("q4_0", torch.randn(1, 1, 8, 96), False)],
                      store("q4_0", torch.randn(1, 1, 8, 32), False))  # fmt: skip


def test_row_kernel_instances_take_their_calls() -> None:
    """Which kernel serves a call (host checks): the row kernel only for its instances."""
    gen = torch.Generator().manual_seed(6)
    formats, (qs, ks, v, *_rest) = draw_rows(gen)
    assert split_shape(formats, qs, ks, v) == (8, 128)  # 4 teams of 2 warps
    B, S = v.shape[0], v.shape[2]
    head_keys = [store(formats[0], torch.randn(B, 8, S, 32), False) for _ in ks]
    wide = [torch.randn(q.shape[0], q.shape[1], 32) for q in qs]
    assert split_shape(formats, wide, head_keys, v) == (8, 32)  # per-KV-head kernel
    fewer = [q[:, :16] for q in qs]  # 2 query heads per KV head: no instance
    assert split_shape(formats, fewer, ks, v) == (8, 32)
    # A capacity of 13 positions: sequences start off 16-byte boundaries, no asynchronous copies.
    odd = [store(formats[0], torch.randn(B, 8, 13, d), True) for d in (4, 8)]
    odd_v = store(formats[2], torch.randn(B, 8, 13, 32), False)
    assert split_shape(formats, qs, odd, odd_v) == (8, 32)
    # "auto" takes the row kernel from 64k cached positions per call (batch * capacity), and
    # at any size where every tensor is q4_0.
    assert split_shape(formats, qs, ks, v, "heads") == (8, 32)
    small = B * S < 65536 and set(formats) != {"q4_0"}
    assert split_shape(formats, qs, ks, v, "auto") == ((8, 32) if small else (8, 128))
    for kind, shape in (("q4_0", (8, 128)), ("q8_0", (8, 32))):
        few = [store(kind, torch.randn(1, 8, 64, d), True) for d in (4, 8)]
        few_v = store(kind, torch.randn(1, 8, 64, 32), False)
        assert split_shape((kind,) * 3, [q[:1] for q in qs], few, few_v, "auto") == shape
    big = [store(formats[0], torch.randn(1, 8, 65536, d), True) for d in (4, 8)]
    big_v = store(formats[2], torch.randn(1, 8, 65536, 32), False)
    one = [q[:1] for q in qs]
    assert split_shape(formats, one, big, big_v, "auto") == (8, 128)
    cut = [k[:, :, :65528] for k in big]
    want = (8, 128) if set(formats) == {"q4_0"} else (8, 32)
    assert split_shape(formats, one, cut, big_v[:, :, :65528], "auto") == want
    # Standard attention at Llama-3.2-1B widths (head dim 64, head-layout keys) has an instance;
    # head dim 32 has none.
    # Head-layout keys and values: 4 warps per 2 KV heads, and "auto" takes them at any size.
    formats, (qs, ks, v, *_rest) = draw_rows(gen, dba=False)
    Hkv = ks[0].shape[1]
    assert split_shape(formats, qs, ks, v) == (4 if v.shape[1] == 1 else 2 * Hkv, 128)
    heads_v = store(formats[1], torch.randn(1, 8, 64, 64), False)
    heads_k = [store(formats[0], torch.randn(1, 8, 64, 64), False)]
    assert split_shape(formats, [torch.randn(1, 32, 64)], heads_k, heads_v, "auto") == (16, 128)
    narrow = [store(formats[0], torch.randn(v.shape[0], 8, v.shape[2], 32), False)]
    assert split_shape(formats, [qs[0][..., :32]], narrow, v) == (8, 32)
    # Head dim 128 in the head layout: the row kernel only (the per-KV-head kernel's keys stop
    # at 64 values), and not with token-layout values.
    wide_k = [store(formats[0], torch.randn(1, 8, 64, 128), False)]
    wide_v = store(formats[1], torch.randn(1, 8, 64, 128), False)
    wide_q = [torch.randn(1, 32, 128)]
    for kernel in ("auto", "rows"):
        assert split_shape(formats, wide_q, wide_k, wide_v, kernel) == (16, 128)
    assert split_shape(formats, wide_q, wide_k, wide_v, "heads") == (0, 0)  # unserved
    wide_tokens = store(formats[1], torch.randn(1, 8, 64, 128), True)
    assert split_shape(formats, wide_q, wide_k, wide_tokens) == (0, 0)

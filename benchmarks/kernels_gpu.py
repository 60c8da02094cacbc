"""Fused DBA decode over q8_0 / q4_0 caches (Triton, CUDA) vs torch SDPA fp16 decode (GPU).

One decode step of one attention layer, Llama-3.2-1B shape, d_model 2048 for both:

  standard  32 query heads, 8 KV heads, head dim 64; K and V fp16: 2048 bytes/token.
  DBA       32 query heads, 8 KV heads (group 4); per KV head: semantic key 4, geometric key
            8, value 32, i.e. the seed's totals sem 128 / geo 256 over the 32 query heads
            and 8 x 32 = 256 values per token. The keys are in the token layout (one row of
            8 x 4 = 32 semantic and 8 x 8 = 64 geometric values per token: a per-head width
            under a 32-value block can only be quantized that way), the values in the head
            layout (one 32-value block per KV head and token), as caramba.cache stores them.
            Bytes/token: f16 704, q8_0 34 + 68 + 272 = 374, q4_0 18 + 36 + 144 = 198.

Every row of the table is timed in the same run: CUDA graphs of one pass over enough copies of
the inputs to overflow L2 (so the cache is read from HBM, as in real decode), replayed many
times, median of 7 trials. "GB/s" counts the bytes a kernel must read (cache rows up to the
length, the query) and write (the output); split-K partials are not counted. "% peak" divides
it by the GPU's datasheet HBM bandwidth (HBM_PEAKS: H100 SXM 3.35 TB/s, H200 4.8 TB/s; a GPU
not in the table uses the measured copy's); "% copy" by a device-to-device copy measured in the
same run
(bytes read + written). Ratios are SDPA's time over each kernel's time (> 1: faster than SDPA).
The read_dba_* rows are a floor, not a kernel: a plain streaming read (a Triton kernel that loads
and XORs 32-bit words, the fastest of a few launch shapes) of as many bytes as the DBA cache of
that format holds, timed the same way. It is not the hardware's floor: on an H100 a CUDA read
with 16-byte streaming loads took 9% less (benchmarks/results/decode_rows_slots.md, "H100
profile"; benchmarks/gpu_read_floor.py times it).

    python benchmarks/kernels_gpu.py [--batches 1 8] [--contexts 4096 ... 65536] [--out DIR]
    python benchmarks/kernels_gpu.py --sweep   # launch-parameter sweep, printed only
    python benchmarks/kernels_gpu.py --std-head-dim 128 --out DIR  # Llama-3-8B's standard heads
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
for src in ("packages/caramba-core/src", "packages/caramba-kernels/src"):
    if str(ROOT / src) not in sys.path:
        sys.path.append(str(ROOT / src))

from caramba.kernels import reference  # noqa: E402
from caramba.kernels.formats import storage_width  # noqa: E402
from caramba_kernels.triton import backend, ops, tuning  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
STD = dict(Hq=32, Hkv=8, D=64)
DBA = dict(Hq=32, Hkv=8, Ds=4, Dg=8, Dv=32)
# HBM peak bytes/s from the datasheets, by a word of the device name (first match wins).
HBM_PEAKS = (("H200", 4.8e12), ("H100 NVL", 3.9e12), ("H100 PCIe", 2.0e12), ("H100", 3.35e12),
             ("A100-SXM4-80GB", 2.039e12), ("A100", 1.555e12))  # fmt: skip


def hbm_peak(name: str) -> float | None:
    """The datasheet HBM bandwidth of a GPU named `name`, or None when it is not in the table."""
    return next((peak for word, peak in HBM_PEAKS if word in name), None)


DEVICE = "cuda"
SDPA_BACKENDS = ("FLASH_ATTENTION", "EFFICIENT_ATTENTION", "CUDNN_ATTENTION")
IMPLS = ("triton_std_f16", "triton_std_q8_0", "triton_std_q4_0",
         "triton_dba_f16", "triton_dba_q8_0", "triton_dba_q4_0",
         "triton_dba_q4_0_perhead")  # fmt: skip
# The tensor-core CUDA kernels (caramba_kernels.cuda), where the package was built with them:
# cuda_* as dispatched (TUNING cuda_kernel "auto": the row kernel for the DBA cache from 64k
# cached positions per call or when it is all q4_0, for standard attention always),
# cudaheads_* the per-KV-head kernel and cudarows_* the row kernel on the same cache (the
# figures AUTO's threshold comes from).
CUDA_IMPLS = ("cuda_std_q8_0", "cuda_std_q4_0", "cuda_dba_q8_0", "cuda_dba_q4_0",
              "cudaheads_std_q8_0", "cudaheads_std_q4_0",
              "cudaheads_dba_q8_0", "cudaheads_dba_q4_0",
              "cudarows_std_q8_0", "cudarows_std_q4_0",
              "cudarows_dba_q8_0", "cudarows_dba_q4_0")  # fmt: skip


def impls_here() -> tuple[str, ...]:
    from caramba_kernels import cuda

    return IMPLS + (CUDA_IMPLS if cuda.load() is not None else ())


def at_seed_widths() -> bool:
    """Whether standard attention has the DBA cache's model width (head dim 64). At another
    head dim the DBA rows and their read floor would be set against another width's SDPA, and
    the per-KV-head CUDA kernel (keys up to 64 wide) would time the Triton fallback."""
    return STD["D"] == 64


def impls_timed() -> tuple[str, ...]:
    """What the table times: everything at the seed's widths, else the standard rows whose
    kernel serves them (at_seed_widths says why)."""
    if at_seed_widths():
        return impls_here()
    return tuple(n for n in impls_here() if "_std_" in n and not n.startswith("cudaheads"))


def with_kernel(impl: str, call):
    """`call` run with the CUDA kernels on (impl "cuda": as dispatched; "cudaheads": the
    per-KV-head kernel; "cudarows": the row kernel) or off (impl "triton")."""

    def run():
        saved = ops.TUNING["cuda"], ops.TUNING["cuda_kernel"]
        ops.TUNING["cuda"] = impl.startswith("cuda")
        ops.TUNING["cuda_kernel"] = {"cudaheads": "heads", "cudarows": "rows"}.get(impl, "auto")
        try:
            return call()
        finally:
            ops.TUNING["cuda"], ops.TUNING["cuda_kernel"] = saved

    return run


def cache(kind: str, shape: tuple[int, ...], gen: torch.Generator) -> torch.Tensor:
    """A cache of random rows in format `kind` on the GPU, quantized by the Triton backend."""
    x = torch.randn(*shape, generator=gen, device=DEVICE)
    return backend.quantize(kind, x) if kind not in ("f16", "f32") else x.to(torch.float16)


def row_bytes(kind: str, values: int) -> int:
    return storage_width(kind, values) * (2 if kind == "f16" else 1)


def dba_tensors(B: int, S: int, kind: str, gen: torch.Generator):
    """q_sem, q_geo, k_sem (token layout), k_geo (token layout), v (head layout), lengths."""
    Hq, Hkv, Ds, Dg, Dv = DBA["Hq"], DBA["Hkv"], DBA["Ds"], DBA["Dg"], DBA["Dv"]
    qs = torch.randn(B, Hq, Ds, generator=gen, device=DEVICE).half()
    qg = torch.randn(B, Hq, Dg, generator=gen, device=DEVICE).half()
    ks = cache(kind, (B, 1, S, Hkv * Ds), gen)
    kg = cache(kind, (B, 1, S, Hkv * Dg), gen)
    v = cache(kind, (B, Hkv, S, Dv), gen)
    lengths = torch.full((B,), S, dtype=torch.int32, device=DEVICE)
    return qs, qg, ks, kg, v, lengths


def dba_row_bytes(kind: str) -> tuple[int, int, int]:
    """Bytes a position of the DBA cache's k_sem, k_geo and v rows (every KV head)."""
    Hkv = DBA["Hkv"]
    return tuple(row_bytes(kind, Hkv * DBA[d]) for d in ("Ds", "Dg", "Dv"))


def dba_bytes_per_token(kind: str) -> int:
    return sum(dba_row_bytes(kind))


def make_problem(name: str, B: int, S: int, gen: torch.Generator):
    """(callable running one decode step, bytes it must move) for implementation `name`."""
    lengths = torch.full((B,), S, dtype=torch.int32, device=DEVICE)
    if name.startswith("sdpa"):
        q = torch.randn(B, STD["Hq"], 1, STD["D"], generator=gen, device=DEVICE).half()
        k = torch.randn(B, STD["Hkv"], S, STD["D"], generator=gen, device=DEVICE).half()
        v = torch.randn(B, STD["Hkv"], S, STD["D"], generator=gen, device=DEVICE).half()
        sdpa_backend = name.split(":", 1)[1] if ":" in name else None

        def run():
            if sdpa_backend is None:
                return F.scaled_dot_product_attention(q, k, v, enable_gqa=True)
            kind = getattr(torch.nn.attention.SDPBackend, sdpa_backend)
            with torch.nn.attention.sdpa_kernel([kind]):
                return F.scaled_dot_product_attention(q, k, v, enable_gqa=True)

        moved = 2 * k.numel() * 2 + q.numel() * 2 + B * STD["Hq"] * STD["D"] * 2
        return run, moved, (q, k, v, lengths)
    impl, shape, kind = name.split("_", 2)
    if shape == "std":
        Hq, Hkv, D = STD["Hq"], STD["Hkv"], STD["D"]
        q = torch.randn(B, Hq, D, generator=gen, device=DEVICE).half()
        k, v = cache(kind, (B, Hkv, S, D), gen), cache(kind, (B, Hkv, S, D), gen)

        run = with_kernel(
            impl, lambda: backend.decode_attention(q, k, v, lengths, D**-0.5, kind, kind)
        )
        moved = B * Hkv * S * 2 * row_bytes(kind, D) + q.numel() * 2 + B * Hq * D * 4
        return run, moved, (q, k, v, lengths)
    perhead = kind.endswith("_perhead")
    kind = kind.removesuffix("_perhead")
    qs, qg, ks, kg, v, lengths = dba_tensors(B, S, kind, gen)
    scale_sem, scale_geo = DBA["Ds"] ** -0.5, DBA["Dg"] ** -0.5

    def dba():
        fused = ops.TUNING["fused"]
        ops.TUNING["fused"] = fused and not perhead
        try:
            return backend.dba_decode_attention(
                qs, qg, ks, kg, v, lengths, scale_sem, scale_geo, kind, kind, kind
            )
        finally:
            ops.TUNING["fused"] = fused

    run = with_kernel(impl, dba)
    moved = B * S * dba_bytes_per_token(kind) + (qs.numel() + qg.numel()) * 2
    moved += B * DBA["Hq"] * DBA["Dv"] * 4
    return run, moved, (qs, qg, ks, kg, v, lengths)


def time_per_call(calls, trials: int = 7) -> float:
    """Median microseconds per call of a CUDA graph holding one pass over `calls`."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for call in calls:  # compile and warm up outside the capture
            call()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for call in calls:
            call()
    graph.replay()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    graph.replay()
    end.record()
    torch.cuda.synchronize()
    reps = max(3, int(20.0 / max(start.elapsed_time(end), 1e-3)))  # about 20 ms a trial
    times = []
    for _ in range(trials):
        start.record()
        for _ in range(reps):
            graph.replay()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) * 1e3 / (reps * len(calls)))
    del graph
    return statistics.median(times)


def measure(name: str, B: int, S: int, l2_bytes: int, copy_bps: float, peak_bps: float = 1.0
            ) -> dict:  # fmt: skip
    gen = torch.Generator(device=DEVICE).manual_seed(B * 1_000_003 + S)
    run, moved, _ = make_problem(name, B, S, gen)
    copies = [run]
    # Enough independent input sets that one pass overflows L2 three times.
    while len(copies) * moved < 3 * l2_bytes and len(copies) < 64:
        copies.append(make_problem(name, B, S, gen)[0])
    us = time_per_call(copies)
    del copies
    torch.cuda.empty_cache()
    return result_row(name, B, S, us, moved, copy_bps, peak_bps)


def result_row(impl: str, B: int, S: int, us: float, moved: int, copy_bps: float,
               peak_bps: float) -> dict:  # fmt: skip
    """One row of the table: time per call and the bandwidth on the bytes moved."""
    bps = moved / (us * 1e-6)
    return {"impl": impl, "batch": B, "context": S, "us": us, "bytes": moved,
            "GBps": bps / 1e9, "pct_hbm_peak": 100 * bps / peak_bps,
            "pct_copy": 100 * bps / copy_bps}  # fmt: skip


def read_floor(B: int, S: int, kind: str, l2_bytes: int, copy_bps: float, peak_bps: float
               ) -> dict:  # fmt: skip
    """A row like measure()'s for a plain read of the bytes of a DBA cache in format `kind`."""
    import triton

    from read_kernel import read_words

    moved = B * S * dba_bytes_per_token(kind)
    n = moved // 4
    buffers = [torch.empty(n, dtype=torch.int32, device=DEVICE).fill_(i)
               for i in range(max(1, -(-3 * l2_bytes // moved)))]  # fmt: skip
    us = float("inf")
    for block, iters in ((1024, 8), (1024, 16), (1024, 32), (4096, 32)):
        grid = triton.cdiv(n, block * iters)
        sink = torch.empty(grid * block, dtype=torch.int32, device=DEVICE)
        calls = [lambda x=x, sink=sink, block=block, iters=iters, grid=grid: read_words[(grid,)](
            x, sink, n, BLOCK=block, ITERS=iters, num_warps=8) for x in buffers]  # fmt: skip
        us = min(us, time_per_call(calls))
    del buffers
    torch.cuda.empty_cache()
    return result_row(f"read_dba_{kind}", B, S, us, moved, copy_bps, peak_bps)


def copy_bandwidth() -> float:
    """Bytes/s (read + written) of a 2 GiB device-to-device copy, best of 10."""
    src = torch.empty(2**30, dtype=torch.uint8, device=DEVICE)
    dst = torch.empty_like(src)
    dst.copy_(src)
    best = float("inf")
    for _ in range(10):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        dst.copy_(src)
        end.record()
        torch.cuda.synchronize()
        best = min(best, start.elapsed_time(end) * 1e-3)
    del src, dst
    torch.cuda.empty_cache()
    return 2 * 2**30 / best


def _dba_reference(qs, qg, ks, kg, v, lengths, kind):
    """The caramba-core reference on float32 head-layout copies of the same quantized rows."""
    B, Hkv, S = v.shape[0], DBA["Hkv"], v.shape[2]

    def heads(x, d):
        rows = reference.dequantize(kind, x, Hkv * d if x.shape[1] == 1 else d)
        if x.shape[1] == 1:
            rows = rows[:, 0].reshape(B, S, Hkv, d).permute(0, 2, 1, 3)
        return rows.float().contiguous()

    return reference.dba_decode_attention(
        qs, qg, heads(ks, DBA["Ds"]), heads(kg, DBA["Dg"]), heads(v, DBA["Dv"]), lengths,
        DBA["Ds"] ** -0.5, DBA["Dg"] ** -0.5, "f32", "f32", "f32",
    )  # fmt: skip


def check_correctness(B: int, S: int) -> dict:
    """Max |error| of each Triton path against the caramba-core reference (and SDPA's)."""
    out = {}
    gen = torch.Generator(device=DEVICE).manual_seed(0)
    for name in impls_here():
        run, _, tensors = make_problem(name, B, S, gen)
        got = run()
        kind = name.split("_", 2)[2].removesuffix("_perhead")
        if "_std_" in name:
            q, k, v, lengths = tensors
            want = reference.decode_attention(q, k, v, lengths, STD["D"] ** -0.5, kind, kind)
        else:
            want = _dba_reference(*tensors, kind)
        out[name] = float((got - want).abs().max())
    run, _, (q, k, v, lengths) = make_problem("sdpa", B, S, gen)
    want = reference.decode_attention(q[:, :, 0], k, v, lengths, STD["D"] ** -0.5, "f16", "f16")
    out["sdpa"] = float((run()[:, :, 0].float() - want).abs().max())
    return out


def sdpa_backends_that_run() -> list[str]:
    ok = []
    for name in SDPA_BACKENDS:
        run, _, _ = make_problem(f"sdpa:{name}", 1, 256, torch.Generator(device=DEVICE))
        try:
            run()
            torch.cuda.synchronize()
            ok.append(name)
        except RuntimeError:
            pass
    return ok


def autotune(l2: int) -> list:
    """Pick the all-heads kernel's launch variant on DBA q4_0 at 32k (batch 1 + batch 8)."""
    base = dict(ops.TUNING)
    # fused_q4_0 {}: the trials' keys must reach the q4_0 calls they time.
    base_fused = dict(fused_prefetch=False, fused_num_stages=None, fused_maxnreg=None,
                      fused_head_groups=1, fused_q4_0={})  # fmt: skip
    trials = []
    variants = [dict(fused_grouped=True, fused_block_n=64, fused_num_warps=4)]
    shapes = ((64, 4), (128, 4), (128, 8), (256, 8))  # (tokens per step, warps)
    variants += [dict(fused_grouped=False, fused_block_n=n, fused_num_warps=w, fused_head_groups=g)
                 for g in (1, 2, 4) for n, w in shapes]  # fmt: skip
    # Earlier H100 runs also tried register caps (maxnreg 128/168), num_stages 1/2 and
    # prefetching the next step's tiles: none was faster (see the git history of this list).
    # Session 27's kernel was faster for q4_0 at 64 positions under maxnreg 128 (ops.TUNING's
    # fused_q4_0), so the picked launch goes to q4_0 calls only.
    for shape in variants:
        for waves in (2, 4):
            variant = dict(base_fused, **shape, fused_waves=waves)
            ops.TUNING.update(base, **variant)
            try:
                us = [measure("triton_dba_q4_0", B, 32768, l2, 1.0)["us"] for B in (1, 8)]
            except Exception as exc:  # a variant that does not compile is a result too
                us = [float("inf"), float("inf")]
                variant["error"] = f"{type(exc).__name__}: {exc}"[:200]
            trials.append({**variant, "us_b1": us[0], "us_b8": us[1]})
            print("autotune", trials[-1], flush=True)
    best = min(trials, key=lambda r: r["us_b1"] + r["us_b8"])
    picked = {k: v for k, v in best.items() if k in tuning._FUSED_LAUNCH_KEYS}
    ops.TUNING.update(base, **{k: v for k, v in best.items() if k.startswith("fused_")})
    ops.TUNING.update({k: base[k] for k in picked}, fused_q4_0=picked)
    print("autotune picked", best, flush=True)
    return trials


def benchmark(batches, contexts, out_dir: Path, tune: bool) -> None:
    props = torch.cuda.get_device_properties(0)
    l2 = getattr(props, "L2_cache_size", 50 * 2**20)
    copy_bps = copy_bandwidth()
    peak_bps = hbm_peak(props.name) or copy_bps
    print(f"device: {props.name}, {props.multi_processor_count} SMs, L2 {l2 / 2**20:.0f} MiB, "
          f"copy {copy_bps / 1e9:.0f} GB/s (read + write)", flush=True)  # fmt: skip
    committed = dict(ops.TUNING)
    trials = autotune(l2) if tune else []
    errors = check_correctness(2, 3000)
    print("max |error| vs caramba reference:", errors, flush=True)
    if any(e > 5e-3 for name, e in errors.items() if not name.startswith("sdpa")):
        print("the tuned variant is wrong on this GPU; back to the committed tuning", flush=True)
        ops.TUNING.clear()
        ops.TUNING.update(committed)
        errors = check_correctness(2, 3000)
        trials.append({"rejected": "max |error| > 5e-3 after autotune", "errors": errors})
    sdpa = sdpa_backends_that_run()
    print("SDPA backends that run decode with enable_gqa:", sdpa)
    impls = [f"sdpa:{b}" for b in sdpa] + list(impls_timed())
    rows = []
    meta = dict(errors=errors, sdpa=sdpa, props=props, copy_bps=copy_bps, peak_bps=peak_bps,
                autotune=trials)  # fmt: skip
    for B in batches:
        for S in contexts:
            group = [measure(name, B, S, l2, copy_bps, peak_bps) for name in impls]
            if at_seed_widths():  # the floor of the DBA cache
                group += [read_floor(B, S, kind, l2, copy_bps, peak_bps)
                          for kind in ("q8_0", "q4_0")]  # fmt: skip
            base = min((r for r in group if r["impl"].startswith("sdpa")), key=lambda r: r["us"])
            for r in group:
                r["vs_sdpa"] = base["us"] / r["us"]
                r["sdpa_baseline"] = base["impl"]
            rows += group
            line = "  ".join(f"{r['impl']}={r['us']:.1f}us" for r in group)
            print(f"B={B} S={S}: {line}", flush=True)
            write_results(rows, meta, out_dir, echo=False)
    write_results(rows, meta, out_dir)


def write_results(rows, meta, out_dir: Path, echo=True) -> None:
    import triton

    props = meta["props"]
    info = {
        "device": props.name,
        "sms": props.multi_processor_count,
        "torch": torch.__version__,
        "triton": triton.__version__,
        "python": platform.python_version(),
        "standard_shape": STD,
        "dba_shape": DBA,
        "dba_layouts": "k_sem, k_geo token layout (B, 1, S, Hkv*d); v head layout (B, Hkv, S, dv)",
        "tuning": ops.TUNING,
        "sdpa_backends_run": meta["sdpa"],
        "max_abs_error_vs_reference": meta["errors"],
        "hbm_peak_Bps": meta["peak_bps"],
        "copy_Bps_read_plus_write": meta["copy_bps"],
        "method": "CUDA graph over >= 3x L2 of input copies, median of 7 trials",
        "autotune_trials": meta["autotune"],
    }
    width_note = [] if at_seed_widths() else [
        f"At head dim {STD['D']} the table has the standard rows only: the DBA cache keeps head "
        "dim 64's model width, and the per-KV-head CUDA kernel takes keys up to 64 wide (the "
        "row kernel serves these calls).", ""]  # fmt: skip
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "kernels_gpu.json").write_text(json.dumps({"meta": info, "rows": rows}, indent=2))
    lines = [
        "# Fused decode attention: caramba (Triton, CUDA) vs torch SDPA, one layer, one token",
        "",
        f"{props.name}, torch {torch.__version__}, triton {triton.__version__}. "
        f"Standard: 32 q heads / 8 KV heads / dim {STD['D']}, fp16. DBA: 32 q heads / 8 KV heads, "
        "per KV head sem 4 + geo 8 (keys in the token layout: rows of 32 + 64 values) and "
        "v 32 (head layout). triton_std_* and triton_dba_* run the all-heads kernel (fused.py; "
        "a head-layout cache gets one KV head per program); triton_dba_q4_0_perhead the "
        "per-KV-head kernel (kernels.py) on the same cache; cuda_* the tensor-core CUDA kernels "
        "as dispatched (libcaramba_kernels_cuda: the DBA cache from 64k cached positions per "
        "call or when all q4_0, and standard attention always, go to the row kernel, "
        "csrc/cuda/decode_rows.cu, 16 positions of every KV head a "
        "step, each DBA step shared by a team of 2 warps, all-q4_0 DBA caches staged 2 steps at "
        "a time; the rest to the per-KV-head kernel, "
        "csrc/cuda/decode_mma.cu); read_dba_* a plain read of the DBA cache's bytes (a floor); "
        "cudaheads_* the per-KV-head kernel and cudarows_* the row kernel on the same cache. "
        "Time per call (us), speed-up over the fastest SDPA backend, bandwidth on bytes moved: "
        f"% of the {meta['peak_bps'] / 1e12:.2f} TB/s HBM peak and of a measured "
        "device-to-device copy "
        f"({meta['copy_bps'] / 1e9:.0f} GB/s, read + write).",
        "",
        *width_note,
        "| batch | context | impl | us | vs SDPA | GB/s | % peak | % copy |",
        "|---:|---:|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['batch']} | {r['context']} | {r['impl']} | {r['us']:.1f} | "
            f"{r['vs_sdpa']:.2f}x | {r['GBps']:.0f} | {r['pct_hbm_peak']:.0f} | "
            f"{r['pct_copy']:.0f} |"
        )
    lines += ["", f"Max |error| against the caramba-core reference (B=2, S=3000): {meta['errors']}"]
    lines += [f"Tuning: {ops.TUNING}", ""]
    (out_dir / "kernels_gpu.md").write_text("\n".join(lines))
    if echo:
        print("\n".join(lines))


def sweep(contexts) -> None:
    """Time launch variants of the all-heads kernel on a few decode problems (not saved)."""
    props = torch.cuda.get_device_properties(0)
    l2 = getattr(props, "L2_cache_size", 50 * 2**20)
    base = dict(ops.TUNING)
    # Around the committed launch (128 positions a step, 4 warps, 2 waves): smaller steps
    # take fewer registers and so fit more programs an SM (benchmarks/triton_sass.py).
    variants = [dict(fused_block_n=n, fused_num_warps=w, fused_waves=v, fused_q4_0={})
                for n in (32, 64, 128) for w in (4, 8) for v in (2, 3, 4)]  # fmt: skip
    problems = [(name, B, S) for name in ("triton_dba_q4_0", "triton_dba_q8_0")
                for B in (1, 8) for S in contexts]  # fmt: skip
    for variant in variants:
        ops.TUNING.clear()
        ops.TUNING.update(base, **variant)
        cells = []
        for name, B, S in problems:
            try:
                cells.append(f"{measure(name, B, S, l2, 1.0)['us']:8.1f}")
            except Exception as exc:  # a variant that does not compile is a result too
                cells.append(f"{type(exc).__name__:>8}")
        print(f"{json.dumps(variant):70s}", " ".join(cells), flush=True)
    ops.TUNING.clear()
    ops.TUNING.update(base)
    print("columns:", [f"{n} B={B} S={S}" for n, B, S in problems])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--contexts", type=int, nargs="+",
                        default=[4096, 8192, 16384, 32768, 65536])  # fmt: skip
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--sweep", action="store_true", help="time launch variants instead")
    parser.add_argument(
        "--std-head-dim", type=int, default=STD["D"], choices=(64, 128),
        help="head dim of the standard-attention rows (128: Llama-3-8B)",
    )  # fmt: skip
    parser.add_argument(
        "--autotune", action="store_true", help="first pick the all-heads kernel's launch variant"
    )
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("kernels_gpu.py needs a CUDA GPU (and triton); nothing was measured.")
    torch.backends.cuda.matmul.allow_tf32 = False
    STD["D"] = args.std_head_dim
    if args.sweep:
        sweep(args.contexts)
    else:
        benchmark(args.batches, args.contexts, args.out, args.autotune)


if __name__ == "__main__":
    main()

"""Fused C++ decode over q8_0 / q4_0 KV caches vs torch dequantize-then-SDPA, and bandwidth.

For each format, attention layout and context length (1k .. 32k cached tokens, one sequence):
standard decode (GQA 32q/8kv and MHA 8q/8kv, head dim 128) and DBA decode at the
Llama-3.2-1B widths (32 query heads, 8 KV heads; per head 4 semantic and 8 geometric key
values, 32 values), with the keys in the token layout (one row per token spanning all KV
heads: 4 x 8 = 32 and 8 x 8 = 64 values, narrower than a block per head) and the values in
the head layout, as caramba's cache stores them;

- fused:  caramba_kernels.cpu decode_attention, reading the quantized blocks in place;
- torch:  dequantize the whole K and V cache to float32 with vectorized torch ops, then
          F.scaled_dot_product_attention (enable_gqa) — what a torch-only runtime would do
          (DBA: the two key paths concatenated, each query path pre-multiplied by its scale);
- effective bandwidth: bytes of quantized K+V cache (DBA: k_sem + k_geo + v) the fused call
          reads, per second of its
  median time, against memcpy bandwidth measured in the same run (memmove of a 256 MiB
  array on one thread and on the kernel's threads, the faster; bytes copied per second, each
  byte read once and written once).

Targets: fused >= 5x faster than torch; effective bandwidth >= 70% of memcpy. Both sides use
all CPUs (torch.get_num_threads(), the backend's default thread count).

    python benchmarks/kernels_cpu.py [--contexts 1024,2048,...] [--quick]

Writes benchmarks/results/kernels_cpu.json and kernels_cpu.md (--name picks another stem).
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import platform
import statistics
import threading
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from caramba_kernels.cpu import backend

RESULTS = Path(__file__).resolve().parent / "results"
BLOCK_BYTES = {"q8_0": 34, "q4_0": 18}
LAYOUTS = {  # name -> (query heads, KV heads, head dim)
    "gqa 32q/8kv d128": (32, 8, 128),
    "mha 8q/8kv d128": (8, 8, 128),
}
DBA_LAYOUT = "dba 32q/8kv sem4+geo8 token v32"
DBA = (32, 8, 4, 8, 32)  # query heads, KV heads, per-head sem, geo, value widths


def timeit(fn, min_reps: int = 5, budget_s: float = 0.6) -> tuple[float, float]:
    """(median, best) wall time of fn() over at least min_reps calls, after two warm-ups."""
    fn()
    fn()
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < min_reps or (time.perf_counter() - start < budget_s and len(times) < 200):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), min(times)


def memcpy_bandwidth(nbytes: int = 256 << 20) -> tuple[float, float]:
    """(median, best) bytes copied per second by memmove of an nbytes array: the faster of one
    thread and of the kernel's threads (each copying its own slice), since the fused kernel runs
    on all of them and one thread may not reach the machine's bandwidth."""
    src = np.ones(nbytes, np.uint8)
    dst = np.zeros_like(src)
    figures = []
    for threads in sorted({1, max(1, backend.default_num_threads)}):
        cuts = [nbytes * i // threads for i in range(threads + 1)]
        pairs = list(zip(cuts, cuts[1:], strict=False))

        def copy(lo: int, hi: int) -> None:  # ctypes.memmove releases the GIL
            ctypes.memmove(dst.ctypes.data + lo, src.ctypes.data + lo, hi - lo)

        def run(pairs=pairs, copy=copy) -> None:
            workers = [threading.Thread(target=copy, args=pair) for pair in pairs[1:]]
            for worker in workers:
                worker.start()
            copy(*pairs[0])
            for worker in workers:
                worker.join()

        t, best = timeit(run, min_reps=5, budget_s=0.3)
        figures.append((nbytes / t, nbytes / best))
    return max(figures)


def torch_dequantize(kind: str, blocks: torch.Tensor, D: int) -> torch.Tensor:
    b = blocks.view(*blocks.shape[:-1], D // 32, BLOCK_BYTES[kind])
    d = b[..., :2].contiguous().view(torch.float16).to(torch.float32)
    body = b[..., 2:]
    if kind == "q8_0":
        vals = body.contiguous().view(torch.int8).to(torch.float32)
    else:
        vals = torch.cat((body & 15, body >> 4), dim=-1).to(torch.float32) - 8.0
    return (vals * d).reshape(*blocks.shape[:-1], D)


def compare(kind: str, S: int, fused, torch_path, out: np.ndarray, cache_bytes: int) -> dict:
    """Times both sides (torch on all threads and on one, the faster kept) and the figures."""
    with torch.inference_mode():
        t_fused, best_fused = timeit(fused)
        # torch on all threads and on one: its thread pool suffers most on a busy machine, so
        # the faster of the two is the baseline (the conservative speedup).
        threads = torch.get_num_threads()
        torch_times = {threads: timeit(torch_path, min_reps=3)}
        torch.set_num_threads(1)
        try:
            torch_times[1] = timeit(torch_path, min_reps=3)
        finally:
            torch.set_num_threads(threads)
        torch_threads = min(torch_times, key=lambda n: torch_times[n][0])
        t_torch, best_torch = torch_times[torch_threads]
        err = float(np.abs(torch_path()[:, :, 0].numpy() - out).max())
    return {
        "format": kind,
        "context": S,
        "fused_ms": t_fused * 1e3,
        "torch_ms": t_torch * 1e3,
        "torch_threads_used": torch_threads,
        "torch_ms_by_threads": {str(n): t[0] * 1e3 for n, t in torch_times.items()},
        "fused_best_ms": best_fused * 1e3,
        "torch_best_ms": best_torch * 1e3,
        "speedup": t_torch / t_fused,
        "speedup_best": best_torch / best_fused,
        "cache_bytes": cache_bytes,
        "effective_GBps": cache_bytes / t_fused / 1e9,
        "effective_best_GBps": cache_bytes / best_fused / 1e9,
        "max_abs_diff_vs_torch": err,
    }


def bench_dba(kind: str, S: int, rng: np.random.Generator) -> dict:
    """DBA decode, token-layout keys (B, 1, S, 8 heads x width) and head-layout values."""
    Hq, Hkv, d_sem, d_geo, dv = DBA
    q_sem = rng.standard_normal((1, Hq, d_sem), dtype=np.float32)
    q_geo = rng.standard_normal((1, Hq, d_geo), dtype=np.float32)
    k_sem = backend.quantize(kind, rng.standard_normal((1, 1, S, Hkv * d_sem), dtype=np.float32))
    k_geo = backend.quantize(kind, rng.standard_normal((1, 1, S, Hkv * d_geo), dtype=np.float32))
    v = backend.quantize(kind, rng.standard_normal((1, Hkv, S, dv), dtype=np.float32))
    lengths = np.array([S], np.int32)
    s_sem, s_geo = d_sem**-0.5, d_geo**-0.5
    out = np.empty((1, Hq, dv), np.float32)

    def fused():
        backend.dba_decode_attention(
            q_sem, q_geo, k_sem, k_geo, v, lengths, s_sem, s_geo, kind, kind, kind, out=out
        )

    q_cat = torch.cat((torch.from_numpy(q_sem) * s_sem, torch.from_numpy(q_geo) * s_geo), dim=-1)
    ks_t, kg_t, v_t = torch.from_numpy(k_sem), torch.from_numpy(k_geo), torch.from_numpy(v)

    def heads(x: torch.Tensor, d: int) -> torch.Tensor:  # (1, S, Hkv*d) -> (1, Hkv, S, d)
        return x.reshape(1, S, Hkv, d).transpose(1, 2)

    def torch_path():
        K = torch.cat(
            (heads(torch_dequantize(kind, ks_t, Hkv * d_sem)[:, 0], d_sem),
             heads(torch_dequantize(kind, kg_t, Hkv * d_geo)[:, 0], d_geo)), dim=-1,
        )  # fmt: skip
        V = torch_dequantize(kind, v_t, dv)
        q4d = q_cat[:, :, None, :]
        return F.scaled_dot_product_attention(q4d, K, V, scale=1.0, enable_gqa=True)

    return compare(kind, S, fused, torch_path, out, k_sem.nbytes + k_geo.nbytes + v.nbytes)


def bench_one(kind: str, Hq: int, Hkv: int, D: int, S: int, rng: np.random.Generator) -> dict:
    q = rng.standard_normal((1, Hq, D), dtype=np.float32)
    k = backend.quantize(kind, rng.standard_normal((1, Hkv, S, D), dtype=np.float32))
    v = backend.quantize(kind, rng.standard_normal((1, Hkv, S, D), dtype=np.float32))
    lengths = np.array([S], np.int32)
    scale = D**-0.5
    out = np.empty((1, Hq, D), np.float32)

    def fused():
        backend.decode_attention(
            q, k, v, lengths, scale=scale, k_format=kind, v_format=kind, out=out
        )

    qt, kt, vt = torch.from_numpy(q), torch.from_numpy(k), torch.from_numpy(v)

    def torch_path():
        K = torch_dequantize(kind, kt, D)
        V = torch_dequantize(kind, vt, D)
        return F.scaled_dot_product_attention(qt[:, :, None, :], K, V, scale=scale, enable_gqa=True)

    return compare(kind, S, fused, torch_path, out, k.nbytes + v.nbytes)


def fused_call(layout: str, kind: str, S: int, rng: np.random.Generator):
    """(call(num_threads), cache bytes) of the fused op for one layout, format and context."""
    lengths = np.array([S], np.int32)

    def quant(*shape: int) -> np.ndarray:
        return backend.quantize(kind, rng.standard_normal(shape, dtype=np.float32))

    if layout == DBA_LAYOUT:
        Hq, Hkv, d_sem, d_geo, dv = DBA
        q_sem = rng.standard_normal((1, Hq, d_sem), dtype=np.float32)
        q_geo = rng.standard_normal((1, Hq, d_geo), dtype=np.float32)
        k_sem, k_geo = quant(1, 1, S, Hkv * d_sem), quant(1, 1, S, Hkv * d_geo)
        v = quant(1, Hkv, S, dv)
        out = np.empty((1, Hq, dv), np.float32)

        def call(threads: int) -> None:
            backend.dba_decode_attention(
                q_sem, q_geo, k_sem, k_geo, v, lengths, d_sem**-0.5, d_geo**-0.5, kind, kind,
                kind, out=out, num_threads=threads,
            )  # fmt: skip

        return call, k_sem.nbytes + k_geo.nbytes + v.nbytes
    Hq, Hkv, D = LAYOUTS[layout]
    q = rng.standard_normal((1, Hq, D), dtype=np.float32)
    k, v = quant(1, Hkv, S, D), quant(1, Hkv, S, D)
    out = np.empty((1, Hq, D), np.float32)

    def call(threads: int) -> None:
        backend.decode_attention(
            q, k, v, lengths, D**-0.5, kind, kind, out=out, num_threads=threads
        )

    return call, k.nbytes + v.nbytes


def compute_rate(layout: str, kind: str, S: int, rng: np.random.Generator) -> float:
    """Bytes per second of CPU time of one thread running the fused op (the calling thread
    itself: num_threads=1 uses no pool). CPU time leaves out the time other jobs hold the
    core, so this is the kernel's arithmetic ceiling per core on this machine; a cache-resident
    S (L2) against a DRAM-sized one shows whether memory stalls add to it."""
    call, nbytes = fused_call(layout, kind, S, rng)
    call(1)
    best = float("inf")
    for _ in range(max(12, min(200, (1 << 25) // nbytes))):
        t0 = time.thread_time()
        call(1)
        best = min(best, time.thread_time() - t0)
    return nbytes / best if best > 0 else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--contexts", default="1024,2048,4096,8192,16384,32768")
    parser.add_argument("--quick", action="store_true", help="1k and 4k only")
    parser.add_argument(
        "--name", default="kernels_cpu",
        help="results file stem under benchmarks/results/ (another host's run keeps its own)",
    )  # fmt: skip
    parser.add_argument(
        "--layouts", default=",".join([*LAYOUTS, DBA_LAYOUT]),
        help="comma-separated subset of: " + ", ".join([*LAYOUTS, DBA_LAYOUT]),
    )  # fmt: skip
    args = parser.parse_args()
    contexts = [1024, 4096] if args.quick else [int(c) for c in args.contexts.split(",")]
    rng = np.random.default_rng(0)

    load_before = os.getloadavg()
    memcpy, _ = memcpy_bandwidth()
    rows = []
    chosen = [name.strip() for name in args.layouts.split(",") if name.strip()]
    unknown = [name for name in chosen if name not in LAYOUTS and name != DBA_LAYOUT]
    if unknown:
        parser.error(f"--layouts: unknown {unknown}; known: {[*LAYOUTS, DBA_LAYOUT]}")
    for layout in chosen:
        for kind in ("q8_0", "q4_0"):
            for S in contexts:
                if layout == DBA_LAYOUT:
                    row = {"layout": layout, **bench_dba(kind, S, rng)}
                else:
                    Hq, Hkv, D = LAYOUTS[layout]
                    row = {"layout": layout, **bench_one(kind, Hq, Hkv, D, S, rng)}
                # memcpy again beside each row: a shared machine's load changes during the run
                median_bw, best_bw = memcpy_bandwidth()
                row["memcpy_GBps"] = median_bw / 1e9
                row["memcpy_best_GBps"] = best_bw / 1e9
                row["fraction_of_memcpy"] = row["effective_GBps"] / row["memcpy_GBps"]
                best = row["effective_best_GBps"] / row["memcpy_best_GBps"]
                row["best_fraction_of_memcpy"] = best
                rows.append(row)
                print(
                    f"{layout:18s} {kind:5s} S={S:6d}  fused {row['fused_ms']:8.3f} ms  "
                    f"torch {row['torch_ms']:8.2f} ms ({row['torch_threads_used']}t)  "
                    f"x{row['speedup']:6.1f} (best x{row['speedup_best']:.1f})  "
                    f"{row['effective_GBps']:6.2f} GB/s = "
                    f"{row['fraction_of_memcpy']:5.1%} of memcpy "
                    f"({row['memcpy_GBps']:.1f} GB/s; best {row['best_fraction_of_memcpy']:.0%})",
                    flush=True,
                )
    memcpy_after, _ = memcpy_bandwidth()
    # On some VMs memcpy flips between two speeds within a run (a 2-core Zen 5: 21-22 and 38-41
    # GB/s on two threads, same buffers), so a row's own memcpy may be the slow one. The run's
    # fastest median is what the machine showed it can copy: the conservative reference.
    peak = max([memcpy, memcpy_after, *(row["memcpy_GBps"] * 1e9 for row in rows)])
    ceilings = []
    for layout in chosen:
        for kind in ("q8_0", "q4_0"):
            # the longest power-of-two context whose cache fits in ~768 KiB (L2s are 1-2 MiB)
            per_token = fused_call(layout, kind, 1, rng)[1]
            small = max(256, 1 << int(np.log2(max(1, (768 << 10) // per_token))))
            row = {
                "layout": layout, "format": kind, "S_in_cache": small,
                "GBps_per_core_in_cache": compute_rate(layout, kind, small, rng) / 1e9,
                "GBps_per_core_S32768": compute_rate(layout, kind, 32768, rng) / 1e9,
                "cache_MB_S32768": per_token * 32768 / 1e6,
            }  # fmt: skip
            ceilings.append(row)
            print(
                f"{layout:18s} {kind:5s} one thread, CPU time: "
                f"{row['GBps_per_core_in_cache']:.2f} GB/s (S={small}, in cache), "
                f"{row['GBps_per_core_S32768']:.2f} GB/s (S=32768)",
                flush=True,
            )
    result = {
        "machine": {
            "cpu": _cpu_name(),
            "caches": _cache_sizes(),
            "logical_cpus": os.cpu_count(),
            "simd": backend.simd,
            "kernel_threads": backend.default_num_threads,
            "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "python": platform.python_version(),
            "loadavg_before": load_before,
            "loadavg_after": os.getloadavg(),
        },
        "memcpy_GBps": memcpy / 1e9,
        "memcpy_GBps_after": memcpy_after / 1e9,
        "memcpy_peak_GBps": peak / 1e9,
        "targets": {"speedup": 5.0, "fraction_of_memcpy": 0.70},
        "rows": rows,
        "per_core_compute": ceilings,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{args.name}.json").write_text(json.dumps(result, indent=2) + "\n")
    (RESULTS / f"{args.name}.md").write_text(markdown(result))
    print(
        f"memcpy {memcpy / 1e9:.2f} GB/s (after: {memcpy_after / 1e9:.2f}); "
        f"wrote {RESULTS}/{args.name}.{{json,md}}"
    )


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _cache_sizes() -> str:
    """The first CPU's caches as sysfs reports them ("L1d 48K, L2 2048K, L3 491520K"): a VM
    can move to another host between runs, and the per-core ceilings depend on them."""
    found = []
    for index in sorted(Path("/sys/devices/system/cpu/cpu0/cache").glob("index*")):
        try:
            level, kind, size = (
                (index / name).read_text().strip() for name in ("level", "type", "size")
            )
        except OSError:
            continue
        if kind != "Instruction":
            found.append(f"L{level}{'d' if kind == 'Data' else ''} {size}")
    return ", ".join(found) or "unknown"


def markdown(result: dict) -> str:
    m = result["machine"]
    threads = m["kernel_threads"]
    peak = result.get("memcpy_peak_GBps", result["memcpy_GBps"])  # runs before it had none
    lines = [
        "# CPU decode kernels: fused C++ vs torch dequantize + SDPA",
        "",
        f"{m['cpu']} (caches {m.get('caches', 'unknown')}), {m['logical_cpus']} logical CPUs, "
        f"SIMD {m['simd']}, kernel threads "
        f"{m['kernel_threads']}, torch {m['torch']} on {m['torch_threads']} threads. Load average "
        f"{m['loadavg_before'][0]:.1f} before, {m['loadavg_after'][0]:.1f} after (a shared machine "
        "adds noise). memcpy (memmove of 256 MiB on 1 thread and on the kernel's threads, the "
        "faster; bytes copied per second): "
        f"{result['memcpy_GBps']:.2f} GB/s "
        f"(again after the run: {result['memcpy_GBps_after']:.2f}).",
        "",
        "One sequence, K and V in the same format; effective bandwidth = quantized K+V bytes / "
        "fused "
        "time. Targets: speedup >= 5x, effective >= 70% of memcpy. The DBA rows use the "
        "Llama-3.2-1B widths (32 query / 8 KV heads, per head 4 semantic + 8 geometric key values "
        "in the token layout, 32 values in the head layout); their bytes are k_sem + k_geo + v.",
        "",
        "Times are medians, best in brackets; torch is the faster of all threads and one thread "
        "(the 't' column). memcpy is re-measured beside each row; '% of memcpy' is median over "
        "median, bracketed best over best. '% of peak memcpy' divides by the fastest memcpy "
        f"median of the run ({peak:.2f} GB/s), which a row's own memcpy can fall well short of "
        "on a host whose copy speed flips (a VM's cores scheduled apart or together).",
        "",
        "| layout | format | context | fused ms | torch ms | t | speedup (best) | effective GB/s "
        "| memcpy GB/s | % of memcpy (best) | % of peak memcpy |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in result["rows"]:
        lines.append(
            f"| {r['layout']} | {r['format']} | {r['context']} | {r['fused_ms']:.3f} "
            f"({r['fused_best_ms']:.3f}) | {r['torch_ms']:.2f} ({r['torch_best_ms']:.2f}) | "
            f"{r['torch_threads_used']} | {r['speedup']:.1f}x ({r['speedup_best']:.1f}x) | "
            f"{r['effective_GBps']:.2f} | {r['memcpy_GBps']:.2f} | "
            f"{r['fraction_of_memcpy']:.0%} ({r['best_fraction_of_memcpy']:.0%}) | "
            f"{r['effective_GBps'] / peak:.0%} |"
        )
    lines += [
        "",
        "Per-core ceiling: bytes per second of *CPU time* of one thread (num_threads=1) running "
        "the fused op, so time-sharing with other jobs is left out; the small S keeps the cache "
        "in L2 (~768 KiB; it includes the fixed per-call cost of a few us); S=32768 is the "
        "longest context above (its cache size in the last column; the caches are in the first "
        "paragraph). "
        "Equal figures mean the kernel is bound by its arithmetic, not memory: two such threads "
        "cannot exceed twice this rate. The last column is that ceiling for all the kernel's "
        f"threads ({threads} x the faster per-core rate) as a fraction of the run's peak memcpy: "
        "a row whose ceiling is near or under the 70% target cannot meet it on this machine, "
        "whatever the threading.",
        "",
        "| layout | format | in-cache S | GB/s per core, in cache | GB/s per core, S=32768 "
        f"| cache MB at S=32768 | {threads} cores' ceiling, % of memcpy |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for c in result.get("per_core_compute", []):
        per_core = max(c["GBps_per_core_in_cache"], c["GBps_per_core_S32768"])
        lines.append(
            f"| {c['layout']} | {c['format']} | {c['S_in_cache']} | "
            f"{c['GBps_per_core_in_cache']:.2f} | {c['GBps_per_core_S32768']:.2f} | "
            f"{c['cache_MB_S32768']:.1f} | {threads * per_core / peak:.0%} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()

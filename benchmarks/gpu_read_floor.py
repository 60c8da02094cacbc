"""How fast the GPU can read the DBA cache's bytes, next to the CUDA row kernel (needs cupy).

kernels_gpu.py's read_dba_* rows are a Triton read of 4-byte words; a CUDA read with 16-byte
loads is faster (H100: 9%), so it is the better floor for the row kernel. Two CUDA reads of
the three DBA tensors' bytes (k_sem, k_geo and v rows of B sequences, the q8_0 or q4_0 widths of
kernels_gpu.py), each the best of a few launch shapes:

  linear     one pass over the bytes, 16-byte `__ldcs` loads, 4 a thread
  row order  the row kernel's order: blocks of 4 teams of 64 threads, a sequence's 16-position
             slots of the three tensors dealt to its 4 x splits teams in turn, one or two slots
             in flight a team, 16-byte `__ldcs` loads into registers (no shared memory);
             again with `__ldcg` (L2's normal eviction policy, which the kernel's cp.async
             copies have)

and, in the same run, SDPA fp16 decode (the fastest backend that runs) and the CUDA kernel
as dispatched (cuda_dba_*), timed as kernels_gpu.py times them (CUDA graphs over enough input
copies to overflow L2). Each row prints µs, % of HBM peak on the cache's bytes (the kernel's
query and output bytes are not counted here) and SDPA's time over it.

    python benchmarks/gpu_read_floor.py [--batches 8] [--contexts 32768 65536] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import kernels_gpu as kg  # noqa: E402

# The row-order reads timed: (slots in flight a team, load, row name).
ROW_READS = ((1, "__ldcs", "row order"), (2, "__ldcs", "row order"),
             (1, "__ldcg", "row order, __ldcg"))  # fmt: skip

LINEAR = r"""
extern "C" __global__ void read_linear(const uint4* __restrict__ x, unsigned* sink, long long n16) {
    long long i = (long long)blockIdx.x * blockDim.x * 4 + threadIdx.x;
    uint4 acc = make_uint4(0, 0, 0, 0);
    #pragma unroll
    for (int u = 0; u < 4; ++u) {
        long long j = i + (long long)u * blockDim.x;
        if (j < n16) {
            uint4 v = __ldcs(x + j);
            acc.x ^= v.x; acc.y ^= v.y; acc.z ^= v.z; acc.w ^= v.w;
        }
    }
    unsigned r = acc.x ^ acc.y ^ acc.z ^ acc.w;
    if (r == 0x12345678u) sink[0] = r;
}
"""

# XR0..XR2: bytes a position of each tensor (so a 16-position slot is XR0 + XR1 + XR2 16-byte
# pieces); XU: slots whose loads a team issues before it uses any; XLOAD: __ldcs (L2 evicts
# the lines first) or __ldcg (L2's normal policy, as cp.async.cg and bulk copies have).
ROW_ORDER = r"""
extern "C" __global__ void read_rows(const unsigned char* t0, const unsigned char* t1,
                                     const unsigned char* t2, unsigned* sink, int S, int nsplit) {
    const int b = blockIdx.x / nsplit, split = blockIdx.x % nsplit;
    const int team = split * 4 + threadIdx.x / 64, tl = threadIdx.x % 64, teams = 4 * nsplit;
    const int slots = S / 16;
    constexpr int P = XR0 + XR1 + XR2, PER = (P + 63) / 64;
    unsigned acc = 0;
    for (int k = team; k < slots; k += XU * teams) {
        uint4 v[XU][PER];
        #pragma unroll
        for (int u = 0; u < XU; ++u) {
            const long long pos = (long long)b * S + 16LL * (k + u * teams);
            #pragma unroll
            for (int j = 0; j < PER; ++j) {
                const int i = tl + 64 * j;
                v[u][j] = make_uint4(0, 0, 0, 0);
                if (k + u * teams < slots && i < P) {
                    const uint4* src = i < XR0 ? (const uint4*)(t0 + pos * XR0) + i
                                     : i < XR0 + XR1 ? (const uint4*)(t1 + pos * XR1) + (i - XR0)
                                     : (const uint4*)(t2 + pos * XR2) + (i - XR0 - XR1);
                    v[u][j] = XLOAD(src);
                }
            }
        }
        #pragma unroll
        for (int u = 0; u < XU; ++u)
            #pragma unroll
            for (int j = 0; j < PER; ++j) acc ^= v[u][j].x ^ v[u][j].y ^ v[u][j].z ^ v[u][j].w;
    }
    if (acc == 0x12345678u) sink[0] = acc;
}
"""


def _launcher(cp, fn, grid: int, threads: int, args_of):
    """A call running `fn` on torch's current stream with the arguments args_of(inputs)."""

    def call(inputs) -> None:
        stream = cp.cuda.ExternalStream(torch.cuda.current_stream().cuda_stream)
        with stream:
            fn((grid,), (threads,), args_of(inputs))

    return call


def reads(B: int, S: int, kind: str, l2: int) -> dict[str, float]:
    """Best µs of the linear and the row-order read of B x S positions of `kind` rows."""
    import cupy as cp

    rows = kg.dba_row_bytes(kind)
    moved = B * S * sum(rows)
    copies = max(1, -(-3 * l2 // moved))
    sink = torch.zeros(1, dtype=torch.int32, device="cuda")
    sets = [[torch.ones(B * S * r // 4, dtype=torch.int32, device="cuda") for r in rows]
            for _ in range(copies)]  # fmt: skip
    best = dict.fromkeys(("linear", *(row for *_, row in ROW_READS)), float("inf"))
    # The linear read takes the three tensors one after the other (3 launches a pass).
    fn = cp.RawModule(code=LINEAR).get_function("read_linear")
    for threads in (256, 512, 1024):
        calls = []
        for tensors in sets:
            for t in tensors:
                n16 = t.numel() // 4
                launch = _launcher(
                    cp, fn, -(-n16 // (threads * 4)), threads,
                    lambda x, n16=n16: (x.data_ptr(), sink.data_ptr(), cp.int64(n16)),
                )  # fmt: skip
                calls.append(lambda launch=launch, t=t: launch(t))
        best["linear"] = min(best["linear"], kg.time_per_call(calls) * len(sets[0]))
    for unroll, load, row in ROW_READS:
        mod = cp.RawModule(code=ROW_ORDER, options=(
            f"-DXU={unroll}", f"-DXLOAD={load}", *(f"-DXR{i}={r}" for i, r in enumerate(rows))))
        fn = mod.get_function("read_rows")
        for nsplit in (32, 64, 128):
            if S % (16 * 4 * nsplit):
                continue
            launch = _launcher(cp, fn, B * nsplit, 256, lambda ts, nsplit=nsplit: (
                *(t.data_ptr() for t in ts), sink.data_ptr(), cp.int32(S), cp.int32(nsplit)))
            calls = [lambda launch=launch, ts=ts: launch(ts) for ts in sets]
            best[row] = min(best[row], kg.time_per_call(calls))
    del sets
    torch.cuda.empty_cache()
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[8])
    parser.add_argument("--contexts", type=int, nargs="+", default=[32768, 65536])
    parser.add_argument("--out", type=Path, help="also write the rows as JSON here")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("gpu_read_floor.py needs a CUDA GPU; nothing was measured.")
    try:
        import cupy  # noqa: F401
    except ImportError:
        sys.exit("gpu_read_floor.py compiles its reads with cupy (pip install cupy-cuda12x); "
                 "nothing was measured.")  # fmt: skip
    l2 = torch.cuda.get_device_properties(0).L2_cache_size
    name = torch.cuda.get_device_name()
    peak = kg.hbm_peak(name) or kg.copy_bandwidth()
    sdpa = [f"sdpa:{b}" for b in kg.sdpa_backends_that_run()] or ["sdpa"]
    print(f"{name}, HBM peak {peak / 1e12:.2f} TB/s")
    print("| batch | context | format | read | us | % peak | vs SDPA |")
    print("|---:|---:|---|---|---:|---:|---:|")
    rows = []
    for B in args.batches:
        for S in args.contexts:
            base = min(kg.measure(b, B, S, l2, 1.0)["us"] for b in sdpa)  # the fastest
            for kind in ("q8_0", "q4_0"):
                moved = B * S * kg.dba_bytes_per_token(kind)
                timed = {**reads(B, S, kind, l2),
                         f"cuda_dba_{kind}": kg.measure(f"cuda_dba_{kind}", B, S, l2, 1.0)["us"]}
                for read, us in timed.items():
                    rows.append({"batch": B, "context": S, "format": kind, "read": read, "us": us,
                                 "pct_peak": 100 * moved / (us * 1e-6) / peak, "sdpa_us": base})
                    r = rows[-1]
                    print(f"| {B} | {S} | {kind} | {read} | {us:.1f} | {r['pct_peak']:.1f} | "
                          f"{base / us:.2f}x |")
    if args.out:
        args.out.write_text(json.dumps({"device": name, "peak_Bps": peak, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()

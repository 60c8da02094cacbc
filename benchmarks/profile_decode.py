"""Profile one attention layer's decode step on CUDA (torch.profiler, CPU + CUDA activity):
kernel launches, graph launches, host syncs and allocations per step, and where host time
goes, for standard fp16 and the headline DBA q8_0 cache, with nothing, the cache's attention
or the whole layer step captured as a CUDA graph.

    python benchmarks/profile_decode.py --batch 32 --context 8192

Writes benchmarks/results/decode_profile_cuda.md (and .json).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from decode import HEADLINE, RESULTS, layer_for, prepare_case

CASES = [("standard", "fp16"), (HEADLINE, "fp16"), (HEADLINE, "q8_0")]
LAUNCH = ("cudaLaunchKernel", "cuLaunchKernel", "cuLaunchKernelEx", "cudaLaunchKernelExC")
SYNC = ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize",
        "aten::_local_scalar_dense", "aten::item", "aten::nonzero")
ALLOC = ("cudaMalloc", "cudaFree")


def count(events, names) -> int:
    return sum(e.count for e in events if e.key in names)


@torch.no_grad()
def profile_case(arch: str, kind: str, mode: str, args, device) -> dict:
    layer = layer_for(arch, device, torch.bfloat16)
    case = prepare_case(layer, arch, kind, args.context, args.context + 4 * args.steps + 64,
                        device, torch.bfloat16, 32, args.batch, mode)
    case.run(40, torch.cuda.synchronize)  # warm-up: compile, capture, cross a tail block
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        case.run(args.steps, torch.cuda.synchronize)
    events = prof.key_averages()
    per = 1 / args.steps
    kernels = sum(e.count for e in events if e.device_type.name == "CUDA")
    top = sorted((e for e in events if e.device_type.name == "CPU" and e.key.startswith("aten")),
                 key=lambda e: e.self_cpu_time_total, reverse=True)[:6]
    return {"arch": arch, "kind": kind, "mode": mode, "steps": args.steps,
            "launches_per_step": count(events, LAUNCH) * per,
            "graph_launches_per_step": count(events, ("cudaGraphLaunch",)) * per,
            "gpu_kernels_per_step": kernels * per,
            "syncs_per_step": count(events, SYNC) * per,
            "allocs_per_step": count(events, ALLOC) * per,
            "graph_replays": case.cache.graphs.replays + case.steps.replays,
            "top_host_ops": [(e.key, round(e.self_cpu_time_total * per, 1), e.count // args.steps)
                             for e in top]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--context", type=int, default=8192)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    device = torch.device("cuda")
    rows = [profile_case(arch, kind, mode, args, device)
            for arch, kind in CASES for mode in ("eager", "attention", "step")]
    md = [f"# Decode step profile ({torch.cuda.get_device_name(device)})", "",
          f"One attention layer step, batch {args.batch}, context {args.context}, bfloat16, "
          f"torch {torch.__version__}; per step, averaged over {args.steps} profiled steps "
          "after 40 warm-up steps. Syncs count device-to-host reads (item, nonzero, "
          "stream/device synchronize) inside the steps.", "",
          "| arch | cache | captured | kernel launches | graph launches | GPU kernels | syncs | "
          "cudaMalloc/Free | top host ops (self us, calls) |",
          "|---|---|---|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        top = "; ".join(f"{k} {t} ({c})" for k, t, c in r["top_host_ops"][:4])
        md.append(f"| {r['arch']} | {r['kind']} | {r['mode']} | "
                  f"{r['launches_per_step']:.1f} | {r['graph_launches_per_step']:.1f} | "
                  f"{r['gpu_kernels_per_step']:.1f} | {r['syncs_per_step']:.1f} | "
                  f"{r['allocs_per_step']:.1f} | {top} |")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "decode_profile_cuda.json").write_text(json.dumps(rows, indent=2) + "\n")
    (args.out / "decode_profile_cuda.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

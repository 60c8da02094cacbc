"""Compile the Triton all-heads decode kernel for an NVIDIA GPU without one; print what it costs.

For the DBA cache of benchmarks/kernels_gpu.py (Llama-3.2-1B widths, keys in the token layout,
values in the head layout), or its standard attention (`--attention std`: head layout, 32/8
heads of 64), and the launch that tuning.TUNING gives it, this compiles
`fused_decode_kernel` for the chosen architecture (ptxas and cuobjdump come with triton's
wheel) and prints the registers a thread takes, the bytes it spills to its stack, and the
SASS instructions of the main loop (one step of BLOCK_N positions, per warp), by opcode, and
how many programs an SM holds at once (registers, warps, shared memory).

The main loop is issue-bound on an H100 (benchmarks/results/decode_rows_slots.md): fewer
instructions a position, and registers low enough for one more program per SM, are what a
change must show before it is worth a GPU run. A static count is not a timing: latency,
memory and the pipes each opcode uses decide the time, so a change still needs
kernels_gpu.py on the GPU.

    python benchmarks/triton_sass.py [--attention dba|std] [--format q4_0] [--block-n 128]
                                     [--num-warps 4] [--maxnreg N] [--arch 90] [--sass FILE]
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "packages/caramba-kernels/src"))
os.environ.pop("TRITON_INTERPRET", None)  # a real compile, not the interpreter

import torch  # noqa: E402
import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from caramba_kernels.triton import fused, plan  # noqa: E402
from kernels_gpu import DBA, STD  # noqa: E402  (the benchmark's shapes)

POINTERS = {"q1_ptr": "*fp16", "q2_ptr": "*fp16", "len_ptr": "*i32", "m_ptr": "*fp32",
            "l_ptr": "*fp32", "o_ptr": "*fp32", "lse_ptr": "*fp32"}  # fmt: skip
INSTRUCTION = re.compile(r"\s+/\*([0-9a-f]+)\*/\s+(.*?)\s*;")
BRANCH_BACK = re.compile(r"BRA\b.*?0x([0-9a-f]+)")
TENSOR_CORE_OPS = ("HMMA", "HGMMA")  # mma.sync; Hopper's warpgroup wgmma


# Per-SM limits of the compute capabilities this script targets (CUDA C++ Programming Guide,
# "Technical Specifications per Compute Capability"): registers, warps, resident blocks, shared
# memory bytes an SM. Registers go to a warp in units of 256; each block also takes 1 KiB of
# shared memory for the system.
SM_LIMITS = {80: (65536, 64, 32, 164 * 1024), 86: (65536, 48, 16, 100 * 1024),
             89: (65536, 48, 24, 100 * 1024), 90: (65536, 64, 32, 228 * 1024)}  # fmt: skip


def programs_per_sm(arch: int, regs: int, shared: int, warps: int) -> dict[str, int] | None:
    """Resident programs an SM as each limit allows (None for an architecture not in SM_LIMITS):
    the smallest decides how many programs hide each other's latency."""
    if arch not in SM_LIMITS:
        return None
    register_file, max_warps, max_blocks, shared_bytes = SM_LIMITS[arch]
    warp_registers = -(-regs * 32 // 256) * 256
    return {
        "registers": register_file // warp_registers // warps,
        "warps": max_warps // warps,
        "shared memory": shared_bytes // (shared + 1024),
        "blocks": max_blocks,
    }


def shape(attention: str, kind: str) -> tuple[dict[str, int], list[SimpleNamespace], int]:
    """(head counts, the caches as ops sees them: keys then values, KV-head groups).

    The caches are stand-ins with the fields ops reads to pick the kernel's instance (kind,
    width, layout): DBA keys in the token layout and values in the head layout; standard
    attention's caches all in the head layout."""
    if attention == "dba":
        heads = dict(Hq=DBA["Hq"], Hkv=DBA["Hkv"])
        caches = [(DBA["Ds"], True), (DBA["Dg"], True), (DBA["Dv"], False)]
    else:
        heads = dict(Hq=STD["Hq"], Hkv=STD["Hkv"])
        caches = [(STD["D"], False), (STD["D"], False)]
    views = [SimpleNamespace(kind=kind, d=d, token=token) for d, token in caches]
    return heads, views, plan._head_groups(heads["Hkv"], views)


def default_launch(attention: str, kind: str) -> tuple[int, dict[str, int]]:
    """(positions a step, compile options) as plan.plan_fused picks them for these caches (fewer
    positions for wide tiles; q4_0 caches take TUNING's fused_q4_0 entries)."""
    heads, caches, groups = shape(attention, kind)
    tuning = plan.fused_tuning(caches[:-1], caches[-1])
    columns = plan._fused_columns(heads["Hkv"], caches[:-1], caches[-1], groups)
    launch = plan.plan_fused(1, 4096, torch.device("cpu"), None, groups, columns, tuning)
    return launch.block_n, {"num_warps": launch.num_warps, **dict(launch.options)}


def constexprs(attention: str, kind: str, block_n: int) -> dict[str, object]:
    """The kernel's compile-time arguments as ops._launch_fused picks them."""
    heads, caches, groups = shape(attention, kind)
    return plan.fused_constexprs(
        heads["Hq"], heads["Hkv"], caches[:-1], caches[-1], groups, block_n,
        single=False, return_lse=False, wide=False,
    )  # fmt: skip


def compile_kernel(attention: str, kind: str, block_n: int, options: dict[str, int], arch: int):
    """The compiled kernel (its cubin in .asm["cubin"])."""
    fn = fused.fused_decode_kernel
    const = constexprs(attention, kind, block_n)
    storage = "*fp16" if kind == "f16" else "*u8"
    signature = {}
    for name in fn.arg_names:
        if name in const:
            signature[name] = "constexpr"
        elif name in POINTERS or name.endswith("_ptr"):
            signature[name] = POINTERS.get(name, storage)
        else:
            signature[name] = "fp32" if name.startswith("scale") else "i32"
    source = ASTSource(
        fn=fn,
        signature=signature,
        constexprs={(fn.arg_names.index(k),): v for k, v in const.items()},
    )
    return triton.compile(source, target=GPUTarget("cuda", arch, 32), options=options)


def cuobjdump(cubin: bytes, flag: str) -> str:
    tool = Path(triton.__file__).parent / "backends/nvidia/bin/cuobjdump"
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        return subprocess.run(
            [str(tool), flag, f.name], capture_output=True, text=True, check=True
        ).stdout


def main_loop(sass: str) -> list[str]:
    """Instructions of the longest backward branch's body: the loop over positions."""
    instructions = [(int(m.group(1), 16), m.group(2)) for m in INSTRUCTION.finditer(sass)]
    index = {address: i for i, (address, _) in enumerate(instructions)}
    best: list[str] = []
    for i, (address, text) in enumerate(instructions):
        m = BRANCH_BACK.search(text)
        target = int(m.group(1), 16) if m else None
        if target is not None and target < address and target in index:
            body = [t for _, t in instructions[index[target] : i + 1]]
            best = body if len(body) > len(best) else best
    return best


def opcode(text: str) -> str:
    return re.sub(r"^@!?U?P\w+\s+", "", text).split()[0].split(".")[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--attention",
        choices=("dba", "std"),
        default="dba",
        help="the DBA cache or standard attention's (head layout, d64)",
    )
    parser.add_argument("--format", choices=sorted(plan.FUSED_FORMATS), default="q4_0")
    parser.add_argument("--block-n", type=int, help="positions a step (default: as planned)")
    parser.add_argument("--num-warps", type=int, help="warps a program (default: as planned)")
    parser.add_argument("--maxnreg", type=int, help="register cap a thread (default: as planned)")
    parser.add_argument("--arch", type=int, default=90, help="compute capability, 90: H100/H200")
    parser.add_argument("--sass", type=Path, help="also write the whole SASS listing here")
    args = parser.parse_args()
    planned_block_n, options = default_launch(args.attention, args.format)
    if args.num_warps:
        options["num_warps"] = args.num_warps
    if args.maxnreg:
        options["maxnreg"] = args.maxnreg
    block_n = args.block_n or planned_block_n
    if block_n < 16 or block_n & (block_n - 1):
        sys.exit(f"--block-n {block_n}: expected a power of two >= 16 (tl.dot's smallest tile).")
    try:
        kernel = compile_kernel(args.attention, args.format, block_n, options, args.arch)
        cubin = kernel.asm["cubin"]
        usage = re.search(r"REG:(\d+) STACK:(\d+) SHARED:(\d+)", cuobjdump(cubin, "-res-usage"))
        sass = cuobjdump(cubin, "-sass")
    except subprocess.CalledProcessError as exc:
        sys.exit(f"triton's cuobjdump could not read the sm_{args.arch} kernel: "
                 f"{exc.stderr.strip() or exc}")  # fmt: skip
    except OSError as exc:
        sys.exit(f"triton's cuobjdump did not run ({exc}): this needs a triton wheel with the "
                 "NVIDIA backend tools (Linux x86-64 or aarch64).")  # fmt: skip
    except Exception as exc:  # triton's compile errors carry the kernel source position
        sys.exit(f"triton {triton.__version__} could not compile fused_decode_kernel for "
                 f"sm_{args.arch} ({args.attention} {args.format}, BLOCK_N {block_n}, "
                 f"{options}): {type(exc).__name__}: {str(exc)[-2000:]}")  # fmt: skip
    if args.sass:
        args.sass.write_text(sass)
    loop = main_loop(sass)
    mix = collections.Counter(opcode(t) for t in loop).most_common(16)
    cap = f", maxnreg {options['maxnreg']}" if "maxnreg" in options else ""
    print(f"triton {triton.__version__}, sm_{args.arch}, {args.attention} {args.format}, "
          f"BLOCK_N {block_n}, {options['num_warps']} warps{cap}")  # fmt: skip
    if usage:
        regs, stack, shared = map(int, usage.groups())
        print(
            f"registers a thread {regs}, stack (spills) {stack} bytes, static shared {shared} bytes"
        )
        limits = programs_per_sm(args.arch, regs, kernel.metadata.shared, options["num_warps"])
        if limits:
            binding = min(limits, key=limits.get)
            print(f"programs an SM {limits[binding]} (bound by {binding}; "
                  + ", ".join(f"{k} {v}" for k, v in limits.items())
                  + f"; shared {kernel.metadata.shared} bytes a program)")  # fmt: skip
    per_position = len(loop) * options["num_warps"] / block_n
    print(f"main loop: {len(loop)} instructions a warp a step ({per_position:.1f} a position)")
    print("  " + ", ".join(f"{name} {count}" for name, count in mix))
    mma = collections.Counter(op for op in map(opcode, loop) if op in TENSOR_CORE_OPS)
    print(
        "tensor-core instructions in the loop: "
        + (", ".join(f"{k} {v}" for k, v in sorted(mma.items())) or "none")
    )


if __name__ == "__main__":
    main()

"""The all-heads Triton kernel compiles for an H100 (sm_90), here, without a GPU.

The other Triton tests run the kernels under TRITON_INTERPRET=1 on a CPU-only machine, which
never lowers them to PTX: a change that interprets correctly but does not compile for a GPU
would pass them. benchmarks/triton_sass.py compiles the kernel with triton's own ptxas for the
DBA cache of kernels_gpu.py and for its standard attention (head layout); this runs it (in a
subprocess, where the interpreter is off) and checks the build: the scores and values are
tensor-core products (HMMA, or Hopper's warpgroup HGMMA, in the main loop), and a thread fits
the register file.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

# find_spec, not importorskip: importing triton here, before the interpreter tests' modules set
# TRITON_INTERPRET=1, would leave their kernels compiled for a GPU in this process.
pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("triton") is None,
    reason="triton is not installed (pip install triton)",
)

SCRIPT = Path(__file__).parents[2] / "benchmarks" / "triton_sass.py"


@pytest.mark.parametrize("kind", ["f16", "q8_0", "q4_0"])
@pytest.mark.parametrize("attention", ["dba", "std"])
def test_fused_kernel_compiles_for_sm90_on_tensor_cores(attention: str, kind: str) -> None:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    run = subprocess.run(
        [sys.executable, str(SCRIPT), "--attention", attention, "--format", kind, "--arch", "90"],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, (
        f"triton_sass.py --attention {attention} --format {kind} failed:\n{run.stderr[-3000:]}"
    )
    registers = re.search(r"registers a thread (\d+)", run.stdout)
    loop = re.search(r"main loop: (\d+) instructions", run.stdout)
    assert registers and loop, f"unexpected output:\n{run.stdout}"
    assert int(registers.group(1)) <= 255
    programs = re.search(r"programs an SM (\d+) \(bound by", run.stdout)
    assert programs and int(programs.group(1)) >= 1, f"no program fits an SM:\n{run.stdout}"
    assert int(loop.group(1)) > 0
    mma = re.search(r"tensor-core instructions in the loop: (.*)", run.stdout)
    assert mma and mma.group(1) != "none", f"no tensor-core products in the loop:\n{run.stdout}"

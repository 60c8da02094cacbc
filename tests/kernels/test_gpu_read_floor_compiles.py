"""benchmarks/gpu_read_floor.py's CUDA reads compile (nvcc, no GPU needed).

The script compiles them with cupy (NVRTC) on the GPU machine, where a syntax error would cost
a device run; nvcc here catches it first, for every define set the script passes.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[2] / "benchmarks"))
import gpu_read_floor  # noqa: E402
import kernels_gpu  # noqa: E402

NVCC = shutil.which("nvcc")
needs_nvcc = pytest.mark.skipif(NVCC is None, reason="nvcc is not installed here")


def compile_cuda(source: str, defines: list[str], tmp_path: Path) -> None:
    src = tmp_path / "read.cu"
    src.write_text(source)
    result = subprocess.run(
        [NVCC, "-arch=sm_80", "-c", str(src), "-o", str(tmp_path / "read.o"), *defines],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]


@needs_nvcc
def test_linear_read_compiles(tmp_path: Path) -> None:
    compile_cuda(gpu_read_floor.LINEAR, [], tmp_path)


@needs_nvcc
@pytest.mark.parametrize("kind", ["q8_0", "q4_0"])
@pytest.mark.parametrize("unroll,load", sorted({(u, ld) for u, ld, _ in gpu_read_floor.ROW_READS}))
def test_row_order_read_compiles(kind, unroll, load, tmp_path: Path) -> None:
    rows = kernels_gpu.dba_row_bytes(kind)
    defines = [f"-DXU={unroll}", f"-DXLOAD={load}", *(f"-DXR{i}={r}" for i, r in enumerate(rows))]
    compile_cuda(gpu_read_floor.ROW_ORDER, defines, tmp_path)


def test_the_dba_rows_are_the_seed_caches() -> None:
    """k_sem, k_geo and v bytes a position at Llama-3.2-1B widths (kernels_gpu.py's docstring)."""
    assert kernels_gpu.dba_row_bytes("q8_0") == (34, 68, 272)
    assert kernels_gpu.dba_row_bytes("q4_0") == (18, 36, 144)

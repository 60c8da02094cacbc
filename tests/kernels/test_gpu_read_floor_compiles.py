"""benchmarks/gpu_read_floor.py's CUDA reads compile (nvcc, no GPU needed).

The script compiles them with cupy (NVRTC) on the GPU machine, where a syntax error would cost
a device run; nvcc here catches it first, for every define set the script passes.
"""

from __future__ import annotations

import ast
import shutil
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parents[2] / "benchmarks" / "gpu_read_floor.py"
NVCC = shutil.which("nvcc")


def kernel_sources() -> dict[str, str]:
    """The module-level CUDA source strings of the script, read without importing it (it
    imports torch and the benchmark helpers)."""
    tree = ast.parse(SCRIPT.read_text())
    return {
        node.targets[0].id: node.value.value
        for node in tree.body
        if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name)
        and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)
    }  # fmt: skip


def compile_cuda(source: str, defines: list[str], tmp_path: Path) -> None:
    src = tmp_path / "read.cu"
    src.write_text(source)
    result = subprocess.run(
        [NVCC, "-arch=sm_80", "-c", str(src), "-o", str(tmp_path / "read.o"), *defines],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]


@pytest.mark.skipif(NVCC is None, reason="nvcc is not installed here")
def test_linear_read_compiles(tmp_path: Path) -> None:
    compile_cuda(kernel_sources()["LINEAR"], [], tmp_path)


@pytest.mark.skipif(NVCC is None, reason="nvcc is not installed here")
@pytest.mark.parametrize("rows", [(34, 68, 272), (18, 36, 144)])
@pytest.mark.parametrize("unroll,load", [(1, "__ldcs"), (2, "__ldcs"), (1, "__ldcg")])
def test_row_order_read_compiles(rows, unroll, load, tmp_path: Path) -> None:
    defines = [f"-DXU={unroll}", f"-DXLOAD={load}", *(f"-DXR{i}={r}" for i, r in enumerate(rows))]
    compile_cuda(kernel_sources()["ROW_ORDER"], defines, tmp_path)


def test_the_script_passes_the_formats_it_compiles_here() -> None:
    """The row widths above are the script's: a change there must show up here."""
    tree = ast.parse(SCRIPT.read_text())
    widths = next(
        ast.literal_eval(node.value) for node in tree.body
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "ROW_BYTES"
    )  # fmt: skip
    assert widths == {"q8_0": (34, 68, 272), "q4_0": (18, 36, 144)}

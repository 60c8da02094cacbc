"""The CUDA library's C API, host side, from the wheel: csrc/tests/test_cuda_api.c compiled as C
against the installed header and libcaramba_kernels_cuda, and run (no GPU needed: it checks
what the library serves, which kernel and split shape it picks, and the refusals that come
back before any CUDA call). ctest runs the same program where csrc/ is built with CUDA."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from caramba_kernels import cuda
from commands import run

CSRC_TEST = Path(__file__).resolve().parents[2] / "csrc" / "tests" / "test_cuda_api.c"


def test_c_api_host_checks_pass_against_the_installed_library(tmp_path: Path) -> None:
    lib = cuda._library_path()
    if lib is None or not lib.exists():
        pytest.skip("libcaramba_kernels_cuda is not built here")
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        pytest.skip("no C compiler")
    include = lib.parent.parent / "include"
    if not (include / "caramba" / "cuda.h").is_file():
        pytest.skip(f"no include/caramba/cuda.h beside {lib} (a library built apart, as "
                    "CARAMBA_KERNELS_CUDA_LIB may name)")  # fmt: skip
    exe = tmp_path / "test_cuda_api"
    run(compiler, "-std=c11", "-Wall", "-Werror", f"-I{include}", CSRC_TEST, "-o", exe, lib,
        f"-Wl,-rpath,{lib.parent}")  # fmt: skip
    out = run(exe)
    assert out.strip().endswith("ok"), out

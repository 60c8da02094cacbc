"""The C++ library as a CMake package: build + ctest + install csrc/, then a downstream project.

tests/kernels/consumer does find_package(caramba_kernels) and links caramba::kernels; it runs
one decode and checks it against plain loops. It is built twice: against a fresh
`cmake --install` of csrc/ into a temporary prefix, and against the package the installed
wheel carries (the `cmake.root` entry point / caramba_kernels.cmake_dir()).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from commands import generator, run

REPO = Path(__file__).resolve().parents[2]
CSRC = REPO / "csrc"
CONSUMER = Path(__file__).resolve().parent / "consumer"
CMAKE = shutil.which("cmake")
CTEST = shutil.which("ctest")

pytestmark = pytest.mark.skipif(CMAKE is None, reason="cmake is not installed")


def _avx512_runs_here() -> bool:
    """Whether the AVX-512 kernels run on this CPU, as the library's own run-time check finds
    (the installed wheel's `backend.paths`); True where caramba_kernels is not installed."""
    try:
        from caramba_kernels.cpu import backend
    except ImportError:
        return True
    return "avx512" in backend.paths


def build_consumer(build: Path, *defines: str) -> str:
    run(CMAKE, "-S", CONSUMER, "-B", build, *generator(), "-DCMAKE_BUILD_TYPE=Release", *defines)
    run(CMAKE, "--build", build)
    exe = build / ("consumer.exe" if os.name == "nt" else "consumer")
    return run(exe)


def test_install_csrc_run_ctest_and_build_a_consumer(tmp_path: Path) -> None:
    build, prefix = tmp_path / "build", tmp_path / "prefix"
    # The CPU library alone (half the build time here): the CUDA library is built with the
    # wheel, whose package the next test links against, and run on a GPU by test_cuda_decode.
    # Without AVX-512 on this CPU ctest cannot run those kernels: their file (35 s of compiling
    # on a 2-core host) builds as stubs; the wheel's build still compiles it whole.
    avx512 = "ON" if _avx512_runs_here() else "OFF"
    run(CMAKE, "-S", CSRC, "-B", build, *generator(), "-DCMAKE_BUILD_TYPE=Release",
        "-DCARAMBA_KERNELS_CUDA=OFF", f"-DCARAMBA_KERNELS_AVX512={avx512}")  # fmt: skip
    run(CMAKE, "--build", build, "--parallel", str(os.cpu_count() or 2))
    if CTEST is not None:
        out = run(CTEST, "--test-dir", build, "--output-on-failure")
        assert "100% tests passed" in out, out
    run(CMAKE, "--install", build, "--prefix", prefix)
    config = list(prefix.rglob("caramba_kernelsConfig.cmake"))
    assert config, f"no caramba_kernelsConfig.cmake under {prefix}"
    assert list(prefix.rglob("caramba_kernelsConfigVersion.cmake"))
    assert (prefix / "include" / "caramba" / "attention.h").is_file()
    assert (prefix / "include" / "caramba" / "version.h").is_file()
    out = build_consumer(tmp_path / "consumer", f"-DCMAKE_PREFIX_PATH={prefix}")
    assert "consumer: ok" in out, out


def test_consumer_builds_against_the_cmake_package_in_the_wheel(tmp_path: Path) -> None:
    kernels = pytest.importorskip(
        "caramba_kernels",
        reason="caramba_kernels is not installed (pip install ./packages/caramba-kernels)",
    )
    try:
        cmake_dir = kernels.cmake_dir()
    except FileNotFoundError as exc:
        pytest.skip(f"the installed caramba_kernels carries no CMake package: {exc}")
    out = build_consumer(tmp_path / "consumer", f"-Dcaramba_kernels_DIR={cmake_dir}")
    assert "consumer: ok" in out, out

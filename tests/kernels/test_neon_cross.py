"""The NEON path, off ARM hardware: csrc/ and its ctest suite cross-built for AArch64 and run
under QEMU's user-mode emulator.

The ctest suite checks every path the library reports available against the scalar reference
(fuzzed shapes, every format); built for AArch64 those paths are scalar and NEON, so this runs
simd_neon.cpp's arithmetic for real. The compiler is Debian's aarch64-linux-gnu cross g++ (the
binaries link statically) and the emulator qemu-aarch64-static; scripts/setup.sh unpacks both
into the venv on Linux x86-64 hosts with apt, and ones installed system-wide serve as well.
Elsewhere, or where either is missing, the test skips and says which. CARAMBA_CPP_FUZZ=N
(passed through to the suite) runs N random problems per fuzz loop instead of this test's 200.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

from commands import generator, run

ROOT = Path(__file__).resolve().parents[2]
CROSS = Path(sys.prefix) / "cross"  # where scripts/setup.sh unpacks the cross tools
TARGET = "aarch64-linux-gnu"


def _cross_gxx() -> str | None:
    """The aarch64-linux-gnu g++: scripts/setup.sh's wrapper (which sets the library path its
    unpacked binutils need), else one on PATH. Its gcc sits beside it."""
    bundled = CROSS / "bin" / f"{TARGET}-g++"
    return str(bundled) if bundled.exists() else shutil.which(f"{TARGET}-g++")


def _qemu() -> str | None:
    bundled = CROSS / "qemu-aarch64-static"
    if bundled.exists():
        return str(bundled)
    return shutil.which("qemu-aarch64-static") or shutil.which("qemu-aarch64")


def _toolchain(tmp: Path, gxx: str, qemu: str) -> Path:
    """A CMake toolchain file: the cross gcc and g++, static links, and the emulator that ctest
    runs the test executables under."""
    toolchain = tmp / "aarch64.cmake"
    toolchain.write_text(
        "set(CMAKE_SYSTEM_NAME Linux)\n"
        "set(CMAKE_SYSTEM_PROCESSOR aarch64)\n"
        f"set(CMAKE_C_COMPILER {gxx[: -len('g++')]}gcc)\n"
        f"set(CMAKE_CXX_COMPILER {gxx})\n"
        "set(CMAKE_EXE_LINKER_FLAGS_INIT -static)\n"
        f"set(CMAKE_CROSSCOMPILING_EMULATOR {qemu})\n"
    )
    return toolchain


def test_ctest_suite_passes_on_aarch64_with_neon(tmp_path: Path) -> None:
    gxx, qemu = _cross_gxx(), _qemu()
    if gxx is None:
        pytest.skip(
            f"no {TARGET}-g++ cross compiler (scripts/setup.sh unpacks Debian's on "
            "Linux x86-64 with apt; or apt-get install g++-aarch64-linux-gnu)"
        )
    if qemu is None:
        pytest.skip("no qemu-aarch64 emulator (scripts/setup.sh unpacks Debian's qemu-user-static)")
    cmake, ctest = shutil.which("cmake"), shutil.which("ctest")
    if cmake is None or ctest is None:
        pytest.skip("cmake and ctest are needed to cross-build csrc/")
    env = dict(os.environ)
    # Under the emulator a problem costs ~10x its native time: 200 of each fuzz loop (the native
    # suite's 600 decode and 300 DBA problems took 54 of this test's ~100 s); set
    # CARAMBA_CPP_FUZZ for more.
    env.setdefault("CARAMBA_CPP_FUZZ", "200")
    build = tmp_path / "build"
    run(cmake, "-S", ROOT / "csrc", "-B", build, *generator(),
        f"-DCMAKE_TOOLCHAIN_FILE={_toolchain(tmp_path, gxx, qemu)}",
        "-DCMAKE_BUILD_TYPE=Release", "-DCARAMBA_KERNELS_BUILD_TESTS=ON",
        "-DCARAMBA_KERNELS_CUDA=OFF", "-DCARAMBA_KERNELS_INSTALL=OFF", env=env)  # fmt: skip
    run(cmake, "--build", build, "--parallel", str(os.cpu_count() or 2), env=env)
    # The suite must see NEON: a build that fell back to scalar alone would pass vacuously.
    # test_api prints the paths it found ("simd: neon, ..., paths: auto simd scalar neon").
    probe = run(qemu, build / "tests" / "test_api", env=env, timeout=120)
    paths = next((line.split("paths:", 1)[1].split() for line in probe.splitlines()
                  if "paths:" in line), [])  # fmt: skip
    assert "neon" in paths, f"the AArch64 build reports paths {paths}, not NEON:\n{probe}"
    out = run(ctest, "--test-dir", build, "--output-on-failure", env=env)
    assert "100% tests passed" in out, out[-4000:]

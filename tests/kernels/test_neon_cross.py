"""The NEON path, off ARM hardware: csrc/ and its ctest suite cross-built for AArch64 and run
under QEMU's user-mode emulator.

The ctest suite checks every path the library reports available against the scalar reference
(fuzzed shapes, every format); built for AArch64 those paths are scalar and NEON, so this runs
simd_neon.cpp's arithmetic for real. The compiler is zig (the `ziglang` wheel: a clang that
targets aarch64-linux-musl with its own libc and libc++, so the binaries are static) and the
emulator qemu-aarch64-static; scripts/setup.sh puts both in the venv on Linux x86-64 hosts.
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
CROSS = Path(sys.prefix) / "cross"  # where scripts/setup.sh unpacks the emulator
TARGET = "aarch64-linux-musl"


def _zig() -> str | None:
    try:
        import ziglang
    except ImportError:
        return shutil.which("zig")
    found = Path(ziglang.__file__).parent / "zig"
    return str(found) if found.exists() else shutil.which("zig")


def _qemu() -> str | None:
    bundled = CROSS / "qemu-aarch64-static"
    if bundled.exists():
        return str(bundled)
    return shutil.which("qemu-aarch64-static") or shutil.which("qemu-aarch64")


def _toolchain(tmp: Path, zig: str, qemu: str) -> Path:
    """A CMake toolchain file: zig's C and C++ compilers for TARGET, static links, and the
    emulator that ctest runs the test executables under."""
    wrappers = {}
    for lang, driver in (("C", "cc"), ("CXX", "c++")):
        path = tmp / f"zig-{driver}"
        path.write_text(f'#!/bin/sh\nexec "{zig}" {driver} -target {TARGET} "$@"\n')
        path.chmod(0o755)
        wrappers[lang] = path
    toolchain = tmp / "aarch64.cmake"
    toolchain.write_text(
        "set(CMAKE_SYSTEM_NAME Linux)\n"
        "set(CMAKE_SYSTEM_PROCESSOR aarch64)\n"
        f"set(CMAKE_C_COMPILER {wrappers['C']})\n"
        f"set(CMAKE_CXX_COMPILER {wrappers['CXX']})\n"
        "set(CMAKE_EXE_LINKER_FLAGS_INIT -static)\n"
        f"set(CMAKE_CROSSCOMPILING_EMULATOR {qemu})\n"
    )
    return toolchain


def test_ctest_suite_passes_on_aarch64_with_neon(tmp_path: Path) -> None:
    zig, qemu = _zig(), _qemu()
    if zig is None:
        pytest.skip("no zig compiler (scripts/setup.sh installs the ziglang wheel on Linux x86-64)")
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
    # zig builds musl and libc++ for the target once (about a minute); later runs reuse them.
    env.setdefault("ZIG_GLOBAL_CACHE_DIR", str(CROSS / "zig-cache"))
    build = tmp_path / "build"
    run(cmake, "-S", ROOT / "csrc", "-B", build, *generator(),
        f"-DCMAKE_TOOLCHAIN_FILE={_toolchain(tmp_path, zig, qemu)}",
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

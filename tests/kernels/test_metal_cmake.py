"""metal/CMakeLists.txt and the embedded library source, checked on Linux.

Nothing Metal can be built here; what can be checked is the build logic: the backend is off by
default, forcing it on outside Apple is a configure error, an Apple configuration (APPLE faked,
any Objective-C++ compiler standing in) declares the library and its smoke test both through
csrc's CARAMBA_KERNELS_METAL hook and standalone, and the source string the host glue compiles at
run time is the kernels, whole, and compiles against the shim.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
METAL = REPO / "metal"
MSL_SOURCES = [
    METAL / "kernels" / f for f in ("params.h", "blocks.h", "quant.metal", "decode.metal")
]

cmake = shutil.which("cmake")
pytestmark = pytest.mark.skipif(cmake is None, reason="cmake is not installed")


def configure(src: Path, build: Path, *options: str) -> subprocess.CompletedProcess:
    generator = ["-G", "Ninja"] if shutil.which("ninja") else []
    cmd = [cmake, "-S", str(src), "-B", str(build), *generator, *options]
    return subprocess.run(cmd, capture_output=True, text=True)


def test_the_backend_is_off_by_default(tmp_path: Path) -> None:
    proc = configure(METAL, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "Metal backend off" in proc.stdout


def test_forcing_it_on_outside_apple_is_a_configure_error(tmp_path: Path) -> None:
    proc = configure(METAL, tmp_path, "-DCARAMBA_METAL=ON")
    assert proc.returncode != 0
    assert "builds only on Apple platforms" in proc.stderr


def objcxx_compiler(tmp_path: Path) -> str | None:
    """A compiler that accepts Objective-C++ (configure only: nothing is compiled with it)."""
    probe = tmp_path / "probe.mm"
    probe.write_text("int main() { return 0; }\n")
    for cxx in ("clang++", "g++"):
        path = shutil.which(cxx)
        if path is None:
            continue
        cmd = [path, "-x", "objective-c++", "-c", str(probe), "-o", str(tmp_path / "probe.o")]
        if subprocess.run(cmd, capture_output=True).returncode == 0:
            return path
    return None


@pytest.mark.parametrize("via", ["csrc", "standalone"])
def test_an_apple_configuration_declares_the_library_and_its_smoke_test(
    tmp_path: Path, via: str
) -> None:
    compiler = objcxx_compiler(tmp_path)
    if compiler is None:
        pytest.skip("no Objective-C++ compiler (apt install gobjc++) to stand in for Apple clang")
    fake_apple = ["-DAPPLE=ON", f"-DCMAKE_OBJCXX_COMPILER={compiler}"]
    build = tmp_path / "build"
    if via == "csrc":
        proc = configure(REPO / "csrc", build, "-DCARAMBA_KERNELS_METAL=ON", *fake_apple)
    else:
        proc = configure(METAL, build, "-DCARAMBA_METAL=ON", *fake_apple)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    cache = (build / "CMakeCache.txt").read_text()
    assert "CARAMBA_METAL:BOOL=ON" in cache
    generated = "".join(p.read_text() for p in build.rglob("*.ninja")) or "".join(
        p.read_text() for p in build.rglob("Makefile")
    )
    for name in ("caramba_metal.mm", "smoke_test.mm", "caramba_metal_library.h", "embed_msl.cmake"):
        assert name in generated, name


def embed(tmp_path: Path) -> str:
    out = tmp_path / "caramba_metal_library.h"
    sources = "|".join(str(p) for p in MSL_SOURCES)
    cmd = [
        cmake,
        f"-DSOURCES={sources}",
        f"-DOUTPUT={out}",
        "-P",
        str(METAL / "cmake/embed_msl.cmake"),
    ]
    subprocess.run(cmd, check=True, capture_output=True)
    header = out.read_text()
    match = re.search(r'R"caramba_msl\(\n(.*)\)caramba_msl"', header, re.S)
    assert match, header[:200]
    return match.group(1)


def test_the_embedded_source_is_every_kernel_file_without_local_includes(tmp_path: Path) -> None:
    source = embed(tmp_path)
    assert not re.search(r'^#include "', source, re.M)
    assert source.index("#include <metal_stdlib>") < source.index("uint32_t")
    for path in MSL_SOURCES:
        body = re.sub(r'(?m)^#include ".*$', "", path.read_text())
        assert body.strip().splitlines()[-1] in source
    # every pipeline the host glue asks for is a kernel in the library
    kernels = set(re.findall(r"kernel void (\w+)\(", source))
    wanted = set(
        re.findall(r'pipeline\(ctx, "(\w+)"', (METAL / "host/caramba_metal.mm").read_text())
    )
    assert wanted and wanted <= kernels, wanted - kernels


def test_the_embedded_source_compiles_as_one_unit_against_the_shim(tmp_path: Path) -> None:
    gxx = shutil.which("g++")
    if gxx is None:
        pytest.skip("g++ is not installed")
    msl = tmp_path / "library.metal"
    msl.write_text(embed(tmp_path))
    shim = METAL / "shim" / "metal_shim.h"
    cmd = [gxx, "-std=c++17", "-fsyntax-only", "-Wall", "-Wextra", "-Wno-attributes",
           "-include", str(shim), "-x", "c++", str(msl)]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 0 and not proc.stderr, proc.stderr

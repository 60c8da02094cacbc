"""caramba kernels: fused decode attention over quantized KV caches.

Backends (each registered in the entry point group `caramba.kernels`):

- `caramba_kernels.cpu` — the C++ library (csrc/) through a nanobind extension;
- `caramba_kernels.triton` — Triton kernels for CUDA (imports torch; triton on first use).

Importing this package loads neither. The C++ library is also installed as a CMake package:
`find_package(caramba_kernels)` with `cmake_dir()` on CMAKE_PREFIX_PATH (or automatically in a
scikit-build-core build that lists caramba-kernels in its build requirements).
"""

from __future__ import annotations

from pathlib import Path

__version__ = "0.1.0"


def cmake_dir() -> str:
    """The directory holding caramba_kernelsConfig.cmake (for -Dcaramba_kernels_DIR=...)."""
    path = Path(__file__).resolve().parent / "lib" / "cmake" / "caramba_kernels"
    if not (path / "caramba_kernelsConfig.cmake").is_file():
        raise FileNotFoundError(
            f"{path}: no CMake package here (an editable install does not carry one; "
            "install the wheel, or build csrc/ with CMake and install it)"
        )
    return str(path)


__all__ = ["__version__", "cmake_dir"]

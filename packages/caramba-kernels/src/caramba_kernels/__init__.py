"""caramba kernels: fused decode attention over quantized KV caches.

Backends (each registered in the entry point group `caramba.kernels`):

- `caramba_kernels.cpu` — the C++ library (csrc/) through a nanobind extension;
- `caramba_kernels.triton` — Triton kernels for CUDA (imports torch; triton on first use),
  which hand the calls it serves to `caramba_kernels.cuda` (the CUDA C++ tensor-core kernel of
  csrc/cuda, where the wheel was built with nvcc).

Importing this package loads neither. The C++ library is also installed as a CMake package:
`find_package(caramba_kernels)` with `cmake_dir()` on CMAKE_PREFIX_PATH (or automatically in a
scikit-build-core build that lists caramba-kernels in its build requirements).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

__version__ = "0.1.0"


def cmake_dir() -> str:
    """The directory holding caramba_kernelsConfig.cmake (for -Dcaramba_kernels_DIR=...)."""
    roots = [Path(__file__).resolve().parent]
    spec = importlib.util.find_spec("caramba_kernels._ext")  # an editable install keeps it apart
    if spec is not None and spec.origin:
        roots.append(Path(spec.origin).resolve().parent)
    for root in roots:
        path = root / "lib" / "cmake" / "caramba_kernels"
        if (path / "caramba_kernelsConfig.cmake").is_file():
            return str(path)
    raise FileNotFoundError(
        f"no caramba_kernelsConfig.cmake under {', '.join(map(str, roots))}: install the wheel "
        "(pip install ./packages/caramba-kernels), or build csrc/ with CMake and install it"
    )


__all__ = ["__version__", "cmake_dir"]

"""Triton kernels for decode attention over quantized KV caches.

They run on CUDA tensors, and on CPU tensors under TRITON_INTERPRET=1.

`backend` is what caramba's dispatch loads through the entry point
`[project.entry-points."caramba.kernels"] triton = "caramba_kernels.triton:backend"`.
Importing this package does not import triton; the first kernel call does.
"""

from caramba_kernels.triton.ops import TritonBackend, backend
from caramba_kernels.triton.plan import plan_decode

__all__ = ["TritonBackend", "backend", "plan_decode"]

"""A plain streaming read for kernels_gpu.py's floor rows: the fastest a kernel reads N bytes.

Each program loads ITERS blocks of BLOCK 32-bit words and XORs them together (so the loads
cannot be dropped), then stores one block: reads dominate by a factor of ITERS.
"""

import triton
import triton.language as tl


@triton.jit
def read_words(x_ptr, sink_ptr, n, BLOCK: tl.constexpr, ITERS: tl.constexpr):
    program = tl.program_id(0)
    acc = tl.zeros([BLOCK], dtype=tl.int32)
    first = program * BLOCK * ITERS
    for i in range(ITERS):
        offsets = first + i * BLOCK + tl.arange(0, BLOCK)
        acc ^= tl.load(x_ptr + offsets, mask=offsets < n, other=0)
    tl.store(sink_ptr + program * BLOCK + tl.arange(0, BLOCK), acc)

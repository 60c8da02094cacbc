// The row kernel (decode_rows.cu): decode over caches whose KV heads are narrow enough that
// one warp takes a whole token row of every KV head. decode_mma.cu's C API dispatches to it.
#pragma once

#include "caramba/cuda.h"

namespace caramba_cuda {

using DecodeKernel = void (*)(caramba_cuda_decode_params);

constexpr int kRowWarps = 4;                 // warps per block: one (sequence, split)
constexpr int kRowPositions = 32 * kRowWarps;  // positions the block's warps take per round

// The row kernel instance that serves p, or nullptr (the per-KV-head kernel serves it then).
// Host checks only, on top of caramba_cuda_decode_supported's.
DecodeKernel row_kernel(const caramba_cuda_decode_params& p);

}  // namespace caramba_cuda

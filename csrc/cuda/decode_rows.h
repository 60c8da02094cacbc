// The row kernel (decode_rows.cu): decode over caches whose KV heads are narrow enough that
// one warp takes a whole token row of every KV head. decode_mma.cu's C API dispatches to it.
#pragma once

#include "caramba/cuda.h"

namespace caramba_cuda {

using DecodeKernel = void (*)(caramba_cuda_decode_params);

// A block (one per sequence, split and head group) runs kRowRuns teams of 1 or 2 warps; a
// sequence's slots of 16-position steps go to the teams of all its blocks in turn.
constexpr int kRowRuns = 4;
constexpr int kRowPositions = 32 * kRowRuns;  // split plan granularity: two steps a team

// A row kernel instance, the dynamic shared memory it launches with (its per-team rings of
// staged steps), its blocks per (sequence, split) and its warps per block.
struct RowKernel {
    DecodeKernel kernel = nullptr;
    int smem_bytes = 0;
    int head_groups = 1;  // blocks per (sequence, split): groups of the instance's KV heads
    int warps = kRowRuns;  // per block: kRowRuns teams
};

// The row kernel instance that serves p, or {nullptr, 0} (the per-KV-head kernel serves it
// then): an instance's head shape, key rows (every KV head) and value rows dense in memory, and
// every tensor's base and sequence/head strides on 16 bytes. Host checks only, on top of
// caramba_cuda_decode_supported's.
RowKernel row_kernel(const caramba_cuda_decode_params& p);

}  // namespace caramba_cuda

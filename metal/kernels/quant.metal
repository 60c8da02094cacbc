// Row quantization kernels: quantize, dequantize, and quantize-on-append into a KV cache.
//
// The format is a function constant, so each pipeline is specialised for one format. Threads
// are independent (no threadgroup memory, no SIMD-group functions): any threadgroup shape works,
// and the host dispatches an exact grid (dispatchThreads). One thread encodes one block (one
// element for f32/f16) in GGML's operation order, so the bytes equal the reference's.

#include "blocks.h"

constant int caramba_fc_format [[function_constant(CARAMBA_METAL_FC_FORMAT)]];

// x (num_rows, dim) float -> dst (num_rows, row_bytes). Grid: (dim / block_elems, num_rows).
kernel void caramba_quantize_rows(
        constant caramba_metal_rows_args & args [[buffer(0)]],
        device const float               * x    [[buffer(1)]],
        device uchar                     * dst  [[buffer(2)]],
        uint2 tpig [[thread_position_in_grid]]) {
    const uint unit = tpig.x;
    const uint row = tpig.y;
    const uint elems = caramba_metal_block_elems(caramba_fc_format);
    if (unit >= args.dim / elems || row >= args.num_rows) return;
    const uint bytes = caramba_metal_block_bytes(caramba_fc_format);
    quantize_unit(caramba_fc_format, x + (ulong) row * args.dim + unit * elems,
                  dst + (ulong) row * args.row_bytes + unit * bytes);
}

// src (num_rows, row_bytes) -> y (num_rows, dim) float. Grid: (dim, num_rows).
kernel void caramba_dequantize_rows(
        constant caramba_metal_rows_args & args [[buffer(0)]],
        device const uchar               * src  [[buffer(1)]],
        device float                     * y    [[buffer(2)]],
        uint2 tpig [[thread_position_in_grid]]) {
    const uint d = tpig.x;
    const uint row = tpig.y;
    if (d >= args.dim || row >= args.num_rows) return;
    device const uchar * row_bytes = src + (ulong) row * args.row_bytes;
    y[(ulong) row * args.dim + d] = load_element(caramba_fc_format, row_bytes, d);
}

// One new token per sequence: rows (batch, num_heads, dim) float are encoded into
// cache[b, h, lengths[b]]. A length outside [0, max_seq_len) writes nothing (the caller
// validates; this only keeps the kernel memory-safe). Grid: (dim / block_elems, num_heads, batch).
kernel void caramba_append(
        constant caramba_metal_append_args & args    [[buffer(0)]],
        device const float                 * rows    [[buffer(1)]],
        device uchar                       * cache   [[buffer(2)]],
        device const int                   * lengths [[buffer(3)]],
        uint3 tpig [[thread_position_in_grid]]) {
    const uint unit = tpig.x;
    const uint h = tpig.y;
    const uint b = tpig.z;
    const uint elems = caramba_metal_block_elems(caramba_fc_format);
    if (unit >= args.dim / elems || h >= args.num_heads || b >= args.batch) return;
    const int pos = lengths[b];
    if (pos < 0 || (uint) pos >= args.max_seq_len) return;
    const ulong head = (ulong) b * args.num_heads + h;
    quantize_unit(caramba_fc_format,
                  rows + head * args.dim + unit * elems,
                  cache + (head * args.max_seq_len + (uint) pos) * args.row_bytes
                        + unit * caramba_metal_block_bytes(caramba_fc_format));
}

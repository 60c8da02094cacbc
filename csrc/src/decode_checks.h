// Argument checks for the decode entry points: each returns a status naming the argument.
#pragma once

#include "caramba/attention.h"

namespace caramba::detail {

// The bytes [lo, hi) a tensor's elements can touch (strides are checked to be >= 0).
struct Span {
    const char* lo;
    const char* hi;
};

inline bool overlaps(Span a, Span b) { return a.lo < b.hi && b.lo < a.hi; }

caramba_status check_params(const caramba_decode_params* p);
caramba_status check_query(const char* name, const caramba_query_tensor& t, int64_t batch,
                           int64_t heads, Span* span);
// expect_dim < 0: any width that fills whole blocks (the row: num_kv_heads * dim in the token
// layout).
caramba_status check_kv(const char* name, const caramba_kv_tensor& t, int64_t expect_dim,
                        const caramba_decode_params& p, Span* span);
// lse.data is non-null; its (batch, head) entries must be distinct.
caramba_status check_lse(const caramba_lse_tensor& t, const caramba_decode_params& p, Span* span);
// Output rows are written concurrently: they must not overlap one another.
caramba_status check_output(const caramba_output_tensor& o, int64_t dv,
                            const caramba_decode_params& p, Span* span);

}  // namespace caramba::detail

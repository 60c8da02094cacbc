// CPU harness for the Metal kernels: the .metal sources compiled as C++ against metal_shim.h,
// launched over the grids that the host's launch plans (metal/host/plan.h) describe, exactly as
// caramba_metal.mm encodes them. Built as a shared library for ctypes
// (tests/kernels/test_metal_shim.py):
//
//   g++ -std=c++17 -O1 -shared -fPIC -ffp-contract=off -fno-strict-aliasing -Wno-attributes
//       -Icsrc/include metal/shim/harness.cpp -o libcaramba_metal_shim.so
//
// Every buffer a kernel sees is a copy placed against a PROT_NONE guard page (after its end, or
// before its start with cm_set_guard(1)), so an out-of-bounds read or write faults instead of
// passing silently. Outputs, split partials and threadgroup memory start as NaN. Each entry point
// returns 0, or 1 for an invalid argument and 2 for an emulator error (cm_last_error() says which).
// Not thread-safe: function constants are globals here.
#include <sys/mman.h>
#include <unistd.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <limits>
#include <stdexcept>
#include <string>
#include <vector>

#include "../host/plan.h"
#include "grid.h"
#include "metal_shim.h"

#include "../kernels/quant.metal"
#include "../kernels/decode.metal"

namespace {

std::string g_error;
bool g_guard_front = false;

int fail(int code, const std::string& message) {
    g_error = message;
    return code;
}

int fail(const caramba_status& s) { return fail(1, s.message); }

// A copy of n bytes that ends at (or, with the front guard, starts at) an inaccessible page.
class Guarded {
public:
    Guarded(const void* src, size_t n, unsigned char fill = 0) : size_(n) {
        const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
        const size_t body = (n + page - 1) / page * page + page; // room for 16-byte rounding
        total_ = body + page;
        base_ = static_cast<unsigned char*>(
            mmap(nullptr, total_, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
        if (base_ == MAP_FAILED) throw std::runtime_error("mmap failed");
        if (g_guard_front) {
            mprotect(base_, page, PROT_NONE);
            data_ = base_ + page;
        } else {
            mprotect(base_ + body, page, PROT_NONE);
            data_ = base_ + ((body - n) & ~static_cast<size_t>(15));
        }
        if (src) {
            std::memcpy(data_, src, n);
        } else {
            std::memset(data_, fill, n);
        }
    }
    Guarded(const Guarded&) = delete;
    Guarded& operator=(const Guarded&) = delete;
    ~Guarded() { munmap(base_, total_); }

    template <class T>
    T* as() { return reinterpret_cast<T*>(data_); }
    void copy_to(void* dst) const { std::memcpy(dst, data_, size_); }

private:
    unsigned char* base_ = nullptr;
    unsigned char* data_ = nullptr;
    size_t size_ = 0, total_ = 0;
};

constexpr unsigned char kNaNBytes = 0xff; // every float / half made of 0xff bytes is a NaN

template <class F>
int guarded_call(F&& f) {
    try {
        return f();
    } catch (const std::exception& e) {
        return fail(2, e.what());
    }
}

} // namespace

extern "C" {

const char* cm_last_error(void) { return g_error.c_str(); }

void cm_set_guard(int front) { g_guard_front = front != 0; }

void cm_fp32_to_fp16(const float* x, int64_t n, uint16_t* out) {
    for (int64_t i = 0; i < n; ++i) out[i] = half(x[i]).bits;
}

void cm_fp16_to_fp32(const uint16_t* h, int64_t n, float* out) {
    for (int64_t i = 0; i < n; ++i) out[i] = caramba_shim::fp16_to_fp32(h[i]);
}

int cm_quantize(int format, const float* x, int64_t num_rows, int64_t dim, uint8_t* dst) {
    caramba_metal_rows_args args;
    const caramba_status s =
        caramba::metal::plan_rows(static_cast<caramba_format>(format), num_rows, dim, &args);
    if (s.code != CARAMBA_OK) return fail(s);
    return guarded_call([&] {
        Guarded in(x, sizeof(float) * num_rows * dim);
        Guarded out(nullptr, static_cast<size_t>(args.row_bytes) * num_rows, kNaNBytes);
        caramba_fc_format = format;
        const uint32_t units = args.dim / caramba_metal_block_elems(format);
        caramba_shim::run_threads({units, args.num_rows, 1}, [&](caramba_shim::Grid t) {
            caramba_quantize_rows(args, in.as<float>(), out.as<uchar>(), uint2(t.x, t.y));
        });
        out.copy_to(dst);
        return 0;
    });
}

int cm_dequantize(int format, const uint8_t* src, int64_t num_rows, int64_t dim, float* y) {
    caramba_metal_rows_args args;
    const caramba_status s =
        caramba::metal::plan_rows(static_cast<caramba_format>(format), num_rows, dim, &args);
    if (s.code != CARAMBA_OK) return fail(s);
    return guarded_call([&] {
        Guarded in(src, static_cast<size_t>(args.row_bytes) * num_rows);
        Guarded out(nullptr, sizeof(float) * num_rows * dim, kNaNBytes);
        caramba_fc_format = format;
        caramba_shim::run_threads({args.dim, args.num_rows, 1}, [&](caramba_shim::Grid t) {
            caramba_dequantize_rows(args, in.as<uchar>(), out.as<float>(), uint2(t.x, t.y));
        });
        out.copy_to(y);
        return 0;
    });
}

int cm_append(int format, uint8_t* cache, int64_t batch, int64_t num_heads, int64_t max_seq_len,
              int64_t dim, const float* rows, const int32_t* lengths) {
    caramba_metal_append_args args;
    const caramba_status s = caramba::metal::plan_append(
        static_cast<caramba_format>(format), batch, num_heads, max_seq_len, dim, &args);
    if (s.code != CARAMBA_OK) return fail(s);
    return guarded_call([&] {
        const size_t cache_bytes = static_cast<size_t>(args.row_bytes) * batch * num_heads * max_seq_len;
        Guarded c(cache, cache_bytes);
        Guarded r(rows, sizeof(float) * batch * num_heads * dim);
        Guarded len(lengths, sizeof(int32_t) * batch);
        caramba_fc_format = format;
        const uint32_t units = args.dim / caramba_metal_block_elems(format);
        caramba_shim::run_threads({units, args.num_heads, args.batch}, [&](caramba_shim::Grid t) {
            caramba_append(args, r.as<float>(), c.as<uchar>(), len.as<int>(), uint3(t.x, t.y, t.z));
        });
        c.copy_to(cache);
        return 0;
    });
}

// Decode attention (DBA when q_geo is not NULL), as caramba_metal_(dba_)decode_attention
// launches it. plan_out (may be NULL) receives splits, chunk_len, simdgroups, threadgroup bytes,
// the plan's workspace bytes and caramba_metal_decode_workspace_bytes()'s; dry_run: plan only.
int cm_decode(int64_t batch, int64_t num_q_heads, int64_t num_kv_heads, int64_t max_seq_len,
              int32_t num_splits, int32_t simdgroups, const float* q, const float* q_geo,
              const uint8_t* k, int k_format, int64_t dim_k, const uint8_t* k_geo,
              int k_geo_format, int64_t dim_k_geo, const uint8_t* v, int v_format, int64_t dim_v,
              const int32_t* lengths, float scale, float scale_geo, float* out, int reverse,
              int dry_run, int64_t* plan_out) {
    caramba_metal_decode_params p;
    p.batch = batch;
    p.num_q_heads = num_q_heads;
    p.num_kv_heads = num_kv_heads;
    p.max_seq_len = max_seq_len;
    p.num_splits = num_splits;
    p.simdgroups = simdgroups;
    p.workspace = caramba_metal_buffer{nullptr, 0};
    p.workspace_bytes = 0;
    const caramba_format geo = static_cast<caramba_format>(k_geo_format);
    caramba::metal::DecodePlan plan;
    const caramba_status s = caramba::metal::plan_decode(
        &p, static_cast<caramba_format>(k_format), dim_k, q_geo ? &geo : nullptr, dim_k_geo,
        static_cast<caramba_format>(v_format), dim_v, scale, scale_geo, &plan);
    if (s.code != CARAMBA_OK) return fail(s);
    const caramba_metal_decode_args& a = plan.args;
    if (plan_out) {
        plan_out[0] = a.num_splits;
        plan_out[1] = a.chunk_len;
        plan_out[2] = a.simdgroups;
        plan_out[3] = plan.threadgroup_bytes;
        plan_out[4] = static_cast<int64_t>(plan.workspace_bytes);
        uint64_t bytes = 0;
        const caramba_status ws = caramba::metal::workspace_bytes(&p, dim_v, &bytes);
        if (ws.code != CARAMBA_OK) return fail(ws);
        plan_out[5] = static_cast<int64_t>(bytes);
    }
    if (dry_run) return 0;
    for (int64_t b = 0; b < batch; ++b) {
        if (lengths[b] < 1 || lengths[b] > max_seq_len) {
            return fail(1, "lengths: every length must lie in [1, max_seq_len]");
        }
    }
    return guarded_call([&] {
        const size_t rows = static_cast<size_t>(batch) * num_kv_heads * max_seq_len;
        const size_t heads = static_cast<size_t>(batch) * num_q_heads;
        Guarded gq(q, sizeof(float) * heads * a.dim_k);
        Guarded gk(k, rows * a.row_bytes_k);
        Guarded gv(v, rows * a.row_bytes_v);
        Guarded glen(lengths, sizeof(int32_t) * batch);
        Guarded gout(nullptr, sizeof(float) * heads * a.dim_v, kNaNBytes);
        // Without DBA the host binds q and k again in the geometric slots, as here.
        Guarded gq_geo(plan.dba ? q_geo : nullptr, plan.dba ? sizeof(float) * heads * a.dim_k_geo : 4);
        Guarded gk_geo(plan.dba ? k_geo : nullptr, plan.dba ? rows * a.row_bytes_k_geo : 4);
        const float* qg = plan.dba ? gq_geo.as<float>() : gq.as<float>();
        const uchar* kg = plan.dba ? gk_geo.as<uchar>() : gk.as<uchar>();
        Guarded gpart(nullptr, plan.workspace_bytes ? plan.workspace_bytes : 4, kNaNBytes);
        float* partials = plan.workspace_bytes ? gpart.as<float>() : gout.as<float>();

        caramba_fc_k_format = k_format;
        caramba_fc_k_geo_format = plan.dba ? k_geo_format : k_format;
        caramba_fc_v_format = v_format;
        caramba_fc_dba = plan.dba;
        caramba_metal_decode_args args = a;
        std::vector<float> shmem(plan.threadgroup_bytes / sizeof(float));
        caramba_shim::run_threadgroups(
            {plan.groups[0], plan.groups[1], plan.groups[2]}, plan.threads_per_group,
            [&](caramba_shim::Grid g, uint32_t tid) {
                caramba_decode_partial(args, gq.as<float>(), qg, gk.as<uchar>(), kg,
                                       gv.as<uchar>(), glen.as<int>(), gout.as<float>(), partials,
                                       shmem.data(), uint3(g.x, g.y, g.z), tid, tid % 32, tid / 32);
            },
            reverse != 0,
            [&](caramba_shim::Grid) {
                std::fill(shmem.begin(), shmem.end(), std::numeric_limits<float>::quiet_NaN());
            });
        if (a.num_splits > 1) {
            caramba_shim::run_threads({a.dim_v, a.num_q_heads, a.batch}, [&](caramba_shim::Grid t) {
                caramba_decode_merge(args, partials, gout.as<float>(), uint3(t.x, t.y, t.z));
            });
        }
        gout.copy_to(out);
        return 0;
    });
}

// ---- emulator self-tests: kernels that are wrong on a GPU must fail (or differ) here too ----

// which = 0: a SIMD-group function reached by half the lanes (divergent) -> error.
// which = 1: a threadgroup_barrier that thread 0 skips -> deadlock error.
// which = 2 / 3: thread 0 writes threadgroup memory that thread 63 (another SIMD group) reads,
//               without (2) or with (3) a barrier; result[0] = what thread 63 read.
int cm_emulator_selftest(int which, int reverse, float* result) {
    return guarded_call([&] {
        std::vector<float> tg(1, std::numeric_limits<float>::quiet_NaN());
        caramba_shim::run_threadgroups(
            {1, 1, 1}, 64,
            [&](caramba_shim::Grid, uint32_t tid) {
                if (which == 0) {
                    if (tid % 32 < 16) result[0] = simd_sum(1.0f);
                } else if (which == 1) {
                    if (tid != 0) threadgroup_barrier(mem_flags::mem_threadgroup);
                } else {
                    if (tid == 0) tg[0] = 1.0f;
                    if (which == 3) threadgroup_barrier(mem_flags::mem_threadgroup);
                    if (tid == 63) result[0] = tg[0];
                }
            },
            reverse != 0, nullptr);
        return 0;
    });
}

} // extern "C"

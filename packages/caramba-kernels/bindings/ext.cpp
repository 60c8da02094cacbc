// caramba_kernels._ext: the nanobind layer over the C library.
//
// Every argument is checked here, before any pointer reaches C, and each failure raises a
// TypeError (wrong kind of object, wrong dtype) or ValueError (shape, layout, value) naming the
// argument. Outputs are always passed in (`out`); caramba_kernels.cpu allocates them.

#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/vector.h>

#include <cmath>
#include <string>
#include <vector>

#include "arrays.h"
#include "caramba/kernels.h"

namespace nb = nanobind;

namespace {

using namespace caramba_py;

caramba_format parse_format(const std::string& s, const char* name) {
    caramba_format f;
    const caramba_status st = caramba_format_parse(s.c_str(), &f);
    if (st.code != CARAMBA_OK) value_error(fmt("%s: %s", name, st.message));
    return f;
}

caramba_path parse_path(const std::string& s) {
    for (int p = 0; p <= CARAMBA_PATH_NEON; ++p) {
        const caramba_path path = static_cast<caramba_path>(p);
        if (s != caramba_path_name(path)) continue;
        if (!caramba_path_available(path)) {
            value_error(fmt("path: '%s' is not available on this CPU/build (best SIMD here: %s); use "
                            "'auto' or 'scalar'", s.c_str(), caramba_simd_name()));
        }
        return path;
    }
    value_error(fmt("path: expected 'auto', 'scalar', 'simd', 'avx2', 'avx512' or 'neon', got '%s'",
                    s.c_str()));
}

nb::dlpack::dtype storage_dtype(caramba_format f) {
    switch (f) {
        case CARAMBA_FORMAT_F32: return nb::dtype<float>();
        case CARAMBA_FORMAT_F16: return nb::dlpack::dtype{(uint8_t)nb::dlpack::dtype_code::Float, 16, 1};
        default: return nb::dtype<uint8_t>();
    }
}

const char* storage_dtype_name(caramba_format f) {
    return f == CARAMBA_FORMAT_F32 ? "float32" : (f == CARAMBA_FORMAT_F16 ? "float16" : "uint8");
}

// Width D of rows stored `stored` elements wide in format f (f32/f16: stored itself).
int64_t logical_width(caramba_format f, int64_t stored, const char* name) {
    const int64_t be = caramba_format_block_elems(f), bb = caramba_format_block_bytes(f);
    if (be == 1) return stored;
    if (stored % bb != 0) {
        value_error(fmt("%s: last dimension %lld is not a whole number of %s blocks (%lld bytes each)",
                        name, (long long)stored, caramba_format_name(f), (long long)bb));
    }
    return stored / bb * be;
}

void check_width(caramba_format f, int64_t D, const char* name) {
    const int64_t be = caramba_format_block_elems(f);
    if (D % be != 0) {
        value_error(fmt("%s: head dim %lld is not a multiple of the %s block size %lld", name,
                        (long long)D, caramba_format_name(f), (long long)be));
    }
}

// ---- quantize / dequantize ---------------------------------------------------------------

void quantize(const std::string& kind, nb::handle x_obj, nb::handle out_obj, const std::string& path_s) {
    const caramba_format f = parse_format(kind, "kind");
    const caramba_path path = parse_path(path_s);
    RoArray x = as_array<RoArray>(x_obj, "x");
    check_dtype(x, "x", nb::dtype<float>(), "float32");
    if (x.ndim() < 1) value_error("x: expected at least one dimension (the row)");
    check_layout(x, "x");
    const int64_t D = static_cast<int64_t>(x.shape(x.ndim() - 1));
    check_width(f, D, "x");
    int64_t row_bytes = 0;
    check(caramba_row_bytes(f, D, &row_bytes));
    RwArray out = as_array<RwArray>(out_obj, "out");
    check_dtype(out, "out", storage_dtype(f), storage_dtype_name(f));
    check_layout(out, "out");
    const int64_t rows = static_cast<int64_t>(x.size()) / D;
    const int64_t esize = (out.dtype().bits + 7) / 8;
    if (static_cast<int64_t>(out.size()) * esize != rows * row_bytes ||
        static_cast<int64_t>(out.shape(out.ndim() - 1)) * esize != row_bytes) {
        value_error(fmt("out: shape %s does not hold %lld rows of %lld bytes", shape_str(out).c_str(),
                        (long long)rows, (long long)row_bytes));
    }
    const float* src = static_cast<const float*>(x.data());
    uint8_t* dst = static_cast<uint8_t*>(out.data());
    caramba_status st;
    {
        nb::gil_scoped_release release;
        st = caramba_quantize(f, src, rows * D, dst, rows * row_bytes, path);
    }
    check(st);
}

void dequantize(const std::string& kind, nb::handle blocks_obj, int64_t D, nb::handle out_obj,
                const std::string& path_s) {
    const caramba_format f = parse_format(kind, "kind");
    const caramba_path path = parse_path(path_s);
    if (D <= 0) value_error(fmt("D: row width must be positive, got %lld", (long long)D));
    check_width(f, D, "D");
    RoArray b = as_array<RoArray>(blocks_obj, "blocks");
    check_dtype(b, "blocks", storage_dtype(f), storage_dtype_name(f));
    if (b.ndim() < 1) value_error("blocks: expected at least one dimension (the row)");
    check_layout(b, "blocks");
    const int64_t stored = static_cast<int64_t>(b.shape(b.ndim() - 1));
    if (logical_width(f, stored, "blocks") != D) {
        value_error(fmt("D: %lld does not match blocks of width %lld (= %lld %s values)", (long long)D,
                        (long long)stored, (long long)logical_width(f, stored, "blocks"), kind.c_str()));
    }
    RwArray out = as_array<RwArray>(out_obj, "out");
    check_dtype(out, "out", nb::dtype<float>(), "float32");
    check_layout(out, "out");
    const int64_t rows = static_cast<int64_t>(b.size()) / stored;
    if (static_cast<int64_t>(out.size()) != rows * D || static_cast<int64_t>(out.shape(out.ndim() - 1)) != D) {
        value_error(fmt("out: shape %s does not hold %lld rows of %lld values", shape_str(out).c_str(),
                        (long long)rows, (long long)D));
    }
    int64_t row_bytes = 0;
    check(caramba_row_bytes(f, D, &row_bytes));
    const void* src = b.data();
    float* dst = static_cast<float*>(out.data());
    caramba_status st;
    {
        nb::gil_scoped_release release;
        st = caramba_dequantize(f, src, rows * row_bytes, rows * D, dst, path);
    }
    check(st);
}

// ---- decode ------------------------------------------------------------------------------

struct Query {
    RoArray a;
    int64_t B, H, D;
};

Query query(nb::handle h, const char* name) {
    Query q{as_array<RoArray>(h, name), 0, 0, 0};
    check_dtype(q.a, name, nb::dtype<float>(), "float32");
    if (q.a.ndim() != 3) value_error(fmt("%s: expected shape (B, Hq, D), got %s", name, shape_str(q.a).c_str()));
    check_layout(q.a, name);
    q.B = q.a.shape(0);
    q.H = q.a.shape(1);
    q.D = q.a.shape(2);
    return q;
}

// A cache tensor (B, H1, S_max, stored) in format f. H1 > 1: the head layout (H1 KV heads,
// rows of D values). H1 == 1: one row per token of `row` values; with the query's head dim D
// that is Hkv = row / D heads (the token layout; Hkv == 1 reads the same in both layouts).
struct Cache {
    RoArray a;
    caramba_format f;
    int64_t H1 = 0, S = 0, row = 0;  // as stored
    int64_t Hkv = 0, D = 0;          // resolved
    bool token = false;
    caramba_kv_tensor tensor() const {
        const int64_t bytes = static_cast<int64_t>(a.shape(3)) * ((a.dtype().bits + 7) / 8);
        return {a.data(), f, D, H1 * S * bytes, S * bytes, bytes,
                token ? CARAMBA_KV_LAYOUT_TOKEN : CARAMBA_KV_LAYOUT_HEAD};
    }
};

Cache cache(nb::handle h, const char* name, const std::string& kind, const char* kind_name, int64_t B) {
    const caramba_format f = parse_format(kind, kind_name);
    Cache c{as_array<RoArray>(h, name), f};
    check_dtype(c.a, name, storage_dtype(f), storage_dtype_name(f));
    if (c.a.ndim() != 4) {
        value_error(fmt("%s: expected shape (B, Hkv, S_max, %s) or, in the token layout, (B, 1, S_max, "
                        "row), got %s", name,
                        f == CARAMBA_FORMAT_F32 || f == CARAMBA_FORMAT_F16 ? "D" : "bytes_per_row",
                        shape_str(c.a).c_str()));
    }
    if (c.a.shape(2) == 0) value_error(fmt("%s: the cache is empty (S_max = 0)", name));
    check_layout(c.a, name);
    if (static_cast<int64_t>(c.a.shape(0)) != B) {
        value_error(fmt("%s: batch %lld does not match the query's %lld", name, (long long)c.a.shape(0),
                        (long long)B));
    }
    c.H1 = c.a.shape(1);
    c.S = c.a.shape(2);
    c.row = logical_width(f, c.a.shape(3), name);
    return c;
}

// Resolves a key cache against its query's head dim D; Hkv = the heads found so far (0: none).
void resolve_key(Cache& c, const char* name, const std::string& kind, int64_t D, int64_t Hq,
                 int64_t* Hkv, const char** first) {
    if (c.H1 > 1 || c.row == D) {
        check_width(c.f, D, name);
        if (c.row != D) {
            value_error(fmt("%s: rows hold %lld values in %s, the query has head dim %lld", name,
                            (long long)c.row, kind.c_str(), (long long)D));
        }
        c.Hkv = c.H1;
    } else {
        if (c.row % D != 0) {
            value_error(fmt("%s: a token-layout row (shape[1] == 1) holds %lld values, not a whole "
                            "number of the query's head dim %lld; store %s in the head layout "
                            "(B, Hkv, S_max, row) or make the row Hkv x %lld values",
                            name, (long long)c.row, (long long)D, name, (long long)D));
        }
        c.Hkv = c.row / D;
        c.token = true;
    }
    c.D = D;
    if (*Hkv != 0 && c.Hkv != *Hkv) {
        value_error(fmt("%s: %lld KV heads%s do not match %s's %lld", name, (long long)c.Hkv,
                        c.token ? fmt(" (token layout: %lld values per row / head dim %lld)",
                                      (long long)c.row, (long long)D).c_str() : "",
                        *first, (long long)*Hkv));
    }
    if (Hq % c.Hkv != 0) {
        value_error(fmt("%s: %lld KV heads do not divide the query's %lld heads", name, (long long)c.Hkv,
                        (long long)Hq));
    }
    if (*Hkv == 0) {
        *Hkv = c.Hkv;
        *first = name;
    }
}

// The value cache: head layout (shape[1] == Hkv) or token layout (rows of Hkv x dv values).
void resolve_value(Cache& c, int64_t Hkv, const char* keys) {
    if (c.H1 > 1 || Hkv == 1) {
        if (c.H1 != Hkv) {
            value_error(fmt("v: %lld KV heads do not match %s's %lld", (long long)c.H1, keys,
                            (long long)Hkv));
        }
        c.Hkv = c.H1;
        c.D = c.row;
    } else {
        if (c.row % Hkv != 0) {
            value_error(fmt("v: a token-layout row (shape[1] == 1) holds %lld values, which do not "
                            "split into %s's %lld KV heads", (long long)c.row, keys, (long long)Hkv));
        }
        c.Hkv = Hkv;
        c.D = c.row / Hkv;
        c.token = true;
    }
}

void same_length(const Cache& a, const char* an, const Cache& b, const char* bn) {
    if (a.S != b.S) {
        value_error(fmt("%s: (heads, S_max) = (%lld, %lld) does not match %s's (%lld, %lld)", an,
                        (long long)a.Hkv, (long long)a.S, bn, (long long)b.Hkv, (long long)b.S));
    }
}

const int32_t* lengths_ptr(const RoArray& l, int64_t B, int64_t S) {
    check_dtype(l, "lengths", nb::dtype<int32_t>(), "int32");
    if (l.ndim() != 1 || static_cast<int64_t>(l.shape(0)) != B) {
        value_error(fmt("lengths: expected shape (%lld,), got %s", (long long)B, shape_str(l).c_str()));
    }
    check_layout(l, "lengths");
    const int32_t* p = static_cast<const int32_t*>(l.data());
    for (int64_t b = 0; b < B; ++b) {
        if (p[b] < 1) {
            value_error(fmt("lengths[%lld] = %d: every sequence needs at least one cached position "
                            "(an empty cache cannot be attended over)", (long long)b, p[b]));
        }
        if (p[b] > S) {
            value_error(fmt("lengths[%lld] = %d exceeds the cache's S_max = %lld", (long long)b, p[b],
                            (long long)S));
        }
    }
    return p;
}

float finite_scale(double s, const char* name) {
    if (!std::isfinite(s) || std::fabs(s) > 3.4e38) value_error(fmt("%s: expected a finite float, got %g", name, s));
    return static_cast<float>(s);
}

caramba_output_tensor output(nb::handle h, int64_t B, int64_t Hq, int64_t Dv, RwArray* keep) {
    *keep = as_array<RwArray>(h, "out");
    check_dtype(*keep, "out", nb::dtype<float>(), "float32");
    if (keep->ndim() != 3 || (int64_t)keep->shape(0) != B || (int64_t)keep->shape(1) != Hq ||
        (int64_t)keep->shape(2) != Dv) {
        value_error(fmt("out: expected shape (%lld, %lld, %lld), got %s", (long long)B, (long long)Hq,
                        (long long)Dv, shape_str(*keep).c_str()));
    }
    check_layout(*keep, "out");
    return {static_cast<float*>(keep->data()), Dv, Hq * Dv, Dv};
}

caramba_lse_tensor lse_output(nb::handle h, int64_t B, int64_t Hq, RwArray* keep) {
    if (h.is_none()) return {nullptr, 0, 0};
    *keep = as_array<RwArray>(h, "lse_out");
    check_dtype(*keep, "lse_out", nb::dtype<float>(), "float32");
    if (keep->ndim() != 2 || (int64_t)keep->shape(0) != B || (int64_t)keep->shape(1) != Hq) {
        value_error(fmt("lse_out: expected shape (%lld, %lld), got %s", (long long)B, (long long)Hq,
                        shape_str(*keep).c_str()));
    }
    check_layout(*keep, "lse_out");
    return {static_cast<float*>(keep->data()), Hq, 1};
}

caramba_decode_params params(int64_t B, int64_t Hq, int64_t Hkv, int64_t S, int num_splits,
                             int num_threads, const std::string& path) {
    if (num_splits < 0) value_error(fmt("num_splits: expected an int >= 0 (0 = auto), got %d", num_splits));
    if (num_threads < 0) value_error(fmt("num_threads: expected an int >= 0 (0 = auto), got %d", num_threads));
    caramba_decode_params p;
    caramba_decode_params_init(&p);
    p.batch = B;
    p.num_q_heads = Hq;
    p.num_kv_heads = Hkv;
    p.max_seq_len = S;
    p.num_splits = num_splits;
    p.num_threads = num_threads;
    p.path = parse_path(path);
    return p;
}

void decode(nb::handle q_obj, nb::handle k_obj, nb::handle v_obj, nb::handle lengths_obj,
            const std::string& k_format, const std::string& v_format, double scale, int num_splits,
            int num_threads, const std::string& path, nb::handle out_obj, nb::handle lse_obj) {
    const Query q = query(q_obj, "q");
    Cache k = cache(k_obj, "k", k_format, "k_format", q.B);
    Cache v = cache(v_obj, "v", v_format, "v_format", q.B);
    int64_t Hkv = 0;
    const char* first = nullptr;
    resolve_key(k, "k", k_format, q.D, q.H, &Hkv, &first);
    resolve_value(v, Hkv, "k");
    same_length(v, "v", k, "k");
    const float sc = finite_scale(scale, "scale");
    const RoArray l = as_array<RoArray>(lengths_obj, "lengths");
    const int32_t* lengths = lengths_ptr(l, q.B, k.S);
    const caramba_decode_params p = params(q.B, q.H, Hkv, k.S, num_splits, num_threads, path);
    RwArray keep, keep_lse;
    const caramba_output_tensor out = output(out_obj, q.B, q.H, v.D, &keep);
    const caramba_lse_tensor lse = lse_output(lse_obj, q.B, q.H, &keep_lse);
    const caramba_query_tensor qt{static_cast<const float*>(q.a.data()), q.D, q.H * q.D, q.D};
    const caramba_kv_tensor kt = k.tensor(), vt = v.tensor();
    caramba_status st;
    {
        nb::gil_scoped_release release;
        st = caramba_decode_attention_lse(&p, qt, kt, vt, lengths, sc, out, lse);
    }
    check(st);
}

void dba_decode(nb::handle q_sem_obj, nb::handle q_geo_obj, nb::handle k_sem_obj, nb::handle k_geo_obj,
                nb::handle v_obj, nb::handle lengths_obj, const std::string& k_sem_format,
                const std::string& k_geo_format, const std::string& v_format, double scale_sem,
                double scale_geo, int num_splits, int num_threads, const std::string& path,
                nb::handle out_obj, nb::handle lse_obj) {
    const Query qs = query(q_sem_obj, "q_sem");
    const Query qg = query(q_geo_obj, "q_geo");
    if (qg.B != qs.B || qg.H != qs.H) {
        value_error(fmt("q_geo: (B, Hq) = (%lld, %lld) does not match q_sem's (%lld, %lld)", (long long)qg.B,
                        (long long)qg.H, (long long)qs.B, (long long)qs.H));
    }
    Cache ks = cache(k_sem_obj, "k_sem", k_sem_format, "k_sem_format", qs.B);
    Cache kg = cache(k_geo_obj, "k_geo", k_geo_format, "k_geo_format", qs.B);
    Cache v = cache(v_obj, "v", v_format, "v_format", qs.B);
    int64_t Hkv = 0;
    const char* first = nullptr;
    resolve_key(ks, "k_sem", k_sem_format, qs.D, qs.H, &Hkv, &first);
    resolve_key(kg, "k_geo", k_geo_format, qg.D, qs.H, &Hkv, &first);
    same_length(kg, "k_geo", ks, "k_sem");
    resolve_value(v, Hkv, first);
    same_length(v, "v", ks, "k_sem");
    const float ss = finite_scale(scale_sem, "scale_sem");
    const float sg = finite_scale(scale_geo, "scale_geo");
    const RoArray l = as_array<RoArray>(lengths_obj, "lengths");
    const int32_t* lengths = lengths_ptr(l, qs.B, ks.S);
    const caramba_decode_params p = params(qs.B, qs.H, Hkv, ks.S, num_splits, num_threads, path);
    RwArray keep, keep_lse;
    const caramba_output_tensor out = output(out_obj, qs.B, qs.H, v.D, &keep);
    const caramba_lse_tensor lse = lse_output(lse_obj, qs.B, qs.H, &keep_lse);
    const caramba_query_tensor qst{static_cast<const float*>(qs.a.data()), qs.D, qs.H * qs.D, qs.D};
    const caramba_query_tensor qgt{static_cast<const float*>(qg.a.data()), qg.D, qg.H * qg.D, qg.D};
    const caramba_kv_tensor kst = ks.tensor(), kgt = kg.tensor(), vt = v.tensor();
    caramba_status st;
    {
        nb::gil_scoped_release release;
        st = caramba_dba_decode_attention_lse(&p, qst, qgt, kst, kgt, vt, lengths, ss, sg, out, lse);
    }
    check(st);
}

// Quantize rows (B, H, D) into cache (B, H, S_max, stored) at position lengths[b].
void append(const std::string& kind, nb::handle cache_obj, nb::handle rows_obj, nb::handle lengths_obj) {
    const caramba_format f = parse_format(kind, "kind");
    RwArray c = as_array<RwArray>(cache_obj, "cache");
    check_dtype(c, "cache", storage_dtype(f), storage_dtype_name(f));
    if (c.ndim() != 4) value_error(fmt("cache: expected a (B, H, S_max, width) array, got %s", shape_str(c).c_str()));
    check_layout(c, "cache");
    const Query r = query(rows_obj, "rows");
    if (r.B != (int64_t)c.shape(0) || r.H != (int64_t)c.shape(1)) {
        value_error(fmt("rows: expected shape (%lld, %lld, D), got %s", (long long)c.shape(0),
                        (long long)c.shape(1), shape_str(r.a).c_str()));
    }
    check_width(f, r.D, "rows");
    if (logical_width(f, c.shape(3), "cache") != r.D) {
        value_error(fmt("rows: width %lld does not match cache rows of width %lld in %s", (long long)r.D,
                        (long long)c.shape(3), kind.c_str()));
    }
    const RoArray l = as_array<RoArray>(lengths_obj, "lengths");
    check_dtype(l, "lengths", nb::dtype<int32_t>(), "int32");
    if (l.ndim() != 1 || (int64_t)l.shape(0) != r.B) {
        value_error(fmt("lengths: expected shape (%lld,), got %s", (long long)r.B, shape_str(l).c_str()));
    }
    check_layout(l, "lengths");
    const int32_t* pos = static_cast<const int32_t*>(l.data());
    const int64_t S = c.shape(2);
    for (int64_t b = 0; b < r.B; ++b) {
        if (pos[b] < 0 || pos[b] >= S) {
            value_error(fmt("lengths[%lld] = %d: no free slot (need 0 <= length < S_max = %lld)", (long long)b,
                            pos[b], (long long)S));
        }
    }
    int64_t row_bytes = 0;
    check(caramba_row_bytes(f, r.D, &row_bytes));
    uint8_t* base = static_cast<uint8_t*>(c.data());
    const float* src = static_cast<const float*>(r.a.data());
    caramba_status st = {CARAMBA_OK, ""};
    {
        nb::gil_scoped_release release;
        for (int64_t b = 0; b < r.B && st.code == CARAMBA_OK; ++b) {
            for (int64_t h = 0; h < r.H && st.code == CARAMBA_OK; ++h) {
                uint8_t* dst = base + ((b * r.H + h) * S + pos[b]) * row_bytes;
                st = caramba_quantize(f, src + (b * r.H + h) * r.D, r.D, dst, row_bytes, CARAMBA_PATH_AUTO);
            }
        }
    }
    check(st);
}

}  // namespace

NB_MODULE(_ext, m) {
    m.doc() = "caramba_kernels C++ CPU kernels (use caramba_kernels.cpu, which allocates outputs)";
    m.attr("__version__") = CARAMBA_KERNELS_VERSION_STRING;
    m.def("simd_available", [] { return caramba_simd_available() != 0; });
    m.def("simd_name", [] { return std::string(caramba_simd_name()); });
    m.def("available_paths", [] {
        std::vector<std::string> paths;
        for (int p = 0; p <= CARAMBA_PATH_NEON; ++p) {
            if (caramba_path_available(static_cast<caramba_path>(p))) {
                paths.emplace_back(caramba_path_name(static_cast<caramba_path>(p)));
            }
        }
        return paths;
    });
    m.def("default_num_threads", [] { return caramba_default_num_threads(); });
    m.def("format_info", [](const std::string& kind) {
        const caramba_format f = parse_format(kind, "kind");
        return nb::make_tuple(caramba_format_block_elems(f), caramba_format_block_bytes(f));
    }, nb::arg("kind"), "(values per block, bytes per block) of a format");
    m.def("nf4_codebook", [] {
        const float* cb = caramba_nf4_codebook();
        return std::vector<float>(cb, cb + 16);
    });
    m.def("quantize", &quantize, nb::arg("kind"), nb::arg("x"), nb::arg("out"), nb::arg("path"));
    m.def("dequantize", &dequantize, nb::arg("kind"), nb::arg("blocks"), nb::arg("D"), nb::arg("out"),
          nb::arg("path"));
    m.def("decode_attention", &decode, nb::arg("q"), nb::arg("k"), nb::arg("v"), nb::arg("lengths"),
          nb::arg("k_format"), nb::arg("v_format"), nb::arg("scale"), nb::arg("num_splits"),
          nb::arg("num_threads"), nb::arg("path"), nb::arg("out"), nb::arg("lse").none());
    m.def("dba_decode_attention", &dba_decode, nb::arg("q_sem"), nb::arg("q_geo"), nb::arg("k_sem"),
          nb::arg("k_geo"), nb::arg("v"), nb::arg("lengths"), nb::arg("k_sem_format"),
          nb::arg("k_geo_format"), nb::arg("v_format"), nb::arg("scale_sem"), nb::arg("scale_geo"),
          nb::arg("num_splits"), nb::arg("num_threads"), nb::arg("path"), nb::arg("out"),
          nb::arg("lse").none());
    m.def("append", &append, nb::arg("kind"), nb::arg("cache"), nb::arg("rows"), nb::arg("lengths"));
}

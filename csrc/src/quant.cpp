// Public (de)quantization API: argument checks, then the scalar or SIMD codec.

#include <cstring>

#include "caramba/quant.h"
#include "internal.h"

using caramba::detail::make_status;
using caramba::detail::ok_status;

namespace {

bool valid_format(caramba_format format) {
    const int v = caramba::detail::raw(format);
    return v >= 0 && v < CARAMBA_FORMAT_COUNT;
}

caramba_status pick_codec(caramba_path path, const caramba::detail::RowCodec** codec) {
    using namespace caramba::detail;
    if (path_name(raw(path)) == nullptr) {
        return make_status(CARAMBA_ERR_INVALID_ARGUMENT, "path: unknown value %d", raw(path));
    }
    *codec = path_codec(path);
    if (*codec == nullptr) {
        return make_status(CARAMBA_ERR_UNSUPPORTED,
                           "path=%s: not available on this CPU/build (best SIMD here: %s)",
                           path_name(path), simd_isa_name());
    }
    return ok_status();
}

}  // namespace

extern "C" {

const float* caramba_nf4_codebook(void) { return caramba::detail::kNf4Codebook; }

const char* caramba_format_name(caramba_format format) {
    switch (caramba::detail::raw(format)) {
        case CARAMBA_FORMAT_F32: return "f32";
        case CARAMBA_FORMAT_F16: return "f16";
        case CARAMBA_FORMAT_Q8_0: return "q8_0";
        case CARAMBA_FORMAT_Q4_0: return "q4_0";
        case CARAMBA_FORMAT_NF4: return "nf4";
    }
    return nullptr;
}

caramba_status caramba_format_parse(const char* name, caramba_format* format) {
    if (name == nullptr || format == nullptr) {
        return make_status(CARAMBA_ERR_INVALID_ARGUMENT, "format name and output must be non-null");
    }
    for (int f = 0; f < CARAMBA_FORMAT_COUNT; ++f) {
        if (std::strcmp(name, caramba_format_name(static_cast<caramba_format>(f))) == 0) {
            *format = static_cast<caramba_format>(f);
            return ok_status();
        }
    }
    return make_status(CARAMBA_ERR_INVALID_ARGUMENT,
                       "unknown format '%.64s' (expected f32, f16, q8_0, q4_0 or nf4)", name);
}

int64_t caramba_format_block_elems(caramba_format format) {
    switch (caramba::detail::raw(format)) {
        case CARAMBA_FORMAT_F32:
        case CARAMBA_FORMAT_F16: return 1;
        case CARAMBA_FORMAT_Q8_0: return CARAMBA_QK8_0;
        case CARAMBA_FORMAT_Q4_0: return CARAMBA_QK4_0;
        case CARAMBA_FORMAT_NF4: return CARAMBA_QKNF4;
    }
    return 0;
}

int64_t caramba_format_block_bytes(caramba_format format) {
    switch (caramba::detail::raw(format)) {
        case CARAMBA_FORMAT_F32: return 4;
        case CARAMBA_FORMAT_F16: return 2;
        case CARAMBA_FORMAT_Q8_0: return sizeof(caramba_block_q8_0);
        case CARAMBA_FORMAT_Q4_0: return sizeof(caramba_block_q4_0);
        case CARAMBA_FORMAT_NF4: return sizeof(caramba_block_nf4);
    }
    return 0;
}

caramba_status caramba_row_bytes(caramba_format format, int64_t n, int64_t* bytes) {
    if (bytes == nullptr) return make_status(CARAMBA_ERR_INVALID_ARGUMENT, "bytes must be non-null");
    if (!valid_format(format)) {
        return make_status(CARAMBA_ERR_INVALID_ARGUMENT, "format: unknown value %d",
                           caramba::detail::raw(format));
    }
    const int64_t be = caramba_format_block_elems(format);
    if (n <= 0 || n % be != 0) {
        return make_status(CARAMBA_ERR_INVALID_ARGUMENT,
                           "row width %lld is not a positive multiple of the %s block (%lld)",
                           static_cast<long long>(n), caramba_format_name(format),
                           static_cast<long long>(be));
    }
    if (n / be > INT64_MAX / caramba_format_block_bytes(format)) {
        return make_status(CARAMBA_ERR_INVALID_ARGUMENT, "row width %lld overflows",
                           static_cast<long long>(n));
    }
    *bytes = n / be * caramba_format_block_bytes(format);
    return ok_status();
}

caramba_status caramba_quantize(caramba_format format, const float* x, int64_t n, void* dst,
                                int64_t dst_bytes, caramba_path path) {
    int64_t need = 0;
    caramba_status st = caramba_row_bytes(format, n, &need);
    if (st.code != CARAMBA_OK) return st;
    if (x == nullptr || dst == nullptr) {
        return make_status(CARAMBA_ERR_INVALID_ARGUMENT, "x and dst must be non-null");
    }
    if (dst_bytes < need) {
        return make_status(CARAMBA_ERR_INVALID_ARGUMENT,
                           "dst holds %lld bytes, %lld %s values need %lld",
                           static_cast<long long>(dst_bytes), static_cast<long long>(n),
                           caramba_format_name(format), static_cast<long long>(need));
    }
    const caramba::detail::RowCodec* codec = nullptr;
    st = pick_codec(path, &codec);
    if (st.code != CARAMBA_OK) return st;
    codec->quantize(format, x, n, static_cast<uint8_t*>(dst));
    return ok_status();
}

caramba_status caramba_dequantize(caramba_format format, const void* src, int64_t src_bytes,
                                  int64_t n, float* y, caramba_path path) {
    int64_t need = 0;
    caramba_status st = caramba_row_bytes(format, n, &need);
    if (st.code != CARAMBA_OK) return st;
    if (src == nullptr || y == nullptr) {
        return make_status(CARAMBA_ERR_INVALID_ARGUMENT, "src and y must be non-null");
    }
    if (src_bytes < need) {
        return make_status(CARAMBA_ERR_INVALID_ARGUMENT,
                           "src holds %lld bytes, %lld %s values need %lld",
                           static_cast<long long>(src_bytes), static_cast<long long>(n),
                           caramba_format_name(format), static_cast<long long>(need));
    }
    const caramba::detail::RowCodec* codec = nullptr;
    st = pick_codec(path, &codec);
    if (st.code != CARAMBA_OK) return st;
    codec->dequantize(format, static_cast<const uint8_t*>(src), n, y);
    return ok_status();
}

caramba_fp16 caramba_fp32_to_fp16(float x) { return caramba::detail::fp32_to_fp16_ref(x); }

float caramba_fp16_to_fp32(caramba_fp16 h) { return caramba::detail::fp16_to_fp32_ref(h); }

}  // extern "C"

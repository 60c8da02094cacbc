// Array checks for the nanobind layer: each failure raises TypeError / ValueError naming the
// argument (see ext.cpp).
#pragma once

#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>

#include <cstdarg>
#include <cstdint>
#include <cstdio>
#include <stdexcept>
#include <string>
#include <type_traits>

#include "caramba/status.h"

namespace caramba_py {

namespace nb = nanobind;

using RoArray = nb::ndarray<nb::ro>;
using RwArray = nb::ndarray<>;

inline std::string fmt(const char* f, ...) {
    char buf[512];
    va_list args;
    va_start(args, f);
    std::vsnprintf(buf, sizeof buf, f, args);
    va_end(args);
    return buf;
}

[[noreturn]] inline void type_error(const std::string& msg) { throw nb::type_error(msg.c_str()); }
[[noreturn]] inline void value_error(const std::string& msg) { throw nb::value_error(msg.c_str()); }

inline void check(const caramba_status& st) {
    if (st.code == CARAMBA_OK) return;
    if (st.code == CARAMBA_ERR_INVALID_ARGUMENT || st.code == CARAMBA_ERR_UNSUPPORTED) {
        value_error(st.message);
    }
    throw std::runtime_error(std::string(caramba_status_code_name(st.code)) + ": " + st.message);
}

inline std::string object_type_name(nb::handle h) { return nb::type_name(h.type()).c_str(); }

inline std::string dtype_name(nb::dlpack::dtype d) {
    const char* kind = "?";
    switch (static_cast<nb::dlpack::dtype_code>(d.code)) {
        case nb::dlpack::dtype_code::Int: kind = "int"; break;
        case nb::dlpack::dtype_code::UInt: kind = "uint"; break;
        case nb::dlpack::dtype_code::Float: kind = "float"; break;
        case nb::dlpack::dtype_code::Bfloat: kind = "bfloat"; break;
        case nb::dlpack::dtype_code::Complex: kind = "complex"; break;
        case nb::dlpack::dtype_code::Bool: kind = "bool"; break;
    }
    return fmt("%s%d", kind, static_cast<int>(d.bits));
}

template <class A>
A as_array(nb::handle h, const char* name) {
    A a;
    if (!nb::try_cast(h, a, /*convert=*/false)) {
        const bool writable = std::is_same_v<A, RwArray>;
        type_error(fmt("%s: expected a %sarray supporting DLPack (numpy, torch CPU tensor), got %s",
                       name, writable ? "writable " : "", object_type_name(h).c_str()));
    }
    if (a.device_type() != nb::device::cpu::value) {
        value_error(fmt("%s: must be in CPU memory (DLPack device type %d)", name, a.device_type()));
    }
    return a;
}

template <class A>
void check_dtype(const A& a, const char* name, nb::dlpack::dtype want, const char* want_name) {
    if (a.dtype() != want) {
        type_error(fmt("%s: expected dtype %s, got %s", name, want_name, dtype_name(a.dtype()).c_str()));
    }
}

template <class A>
std::string shape_str(const A& a) {
    std::string s = "(";
    for (size_t i = 0; i < a.ndim(); ++i) s += fmt(i ? ", %lld" : "%lld", (long long)a.shape(i));
    if (a.ndim() == 1) s += ",";
    return s + ")";
}

// C-contiguous, naturally aligned, non-empty.
template <class A>
void check_layout(const A& a, const char* name) {
    for (size_t i = 0; i < a.ndim(); ++i) {
        if (a.shape(i) == 0) value_error(fmt("%s: empty array, shape %s", name, shape_str(a).c_str()));
    }
    int64_t expect = 1;
    for (size_t i = a.ndim(); i-- > 0;) {
        if (a.shape(i) != 1 && a.stride(i) != expect) {
            value_error(fmt("%s: must be C-contiguous (shape %s); pass a contiguous copy", name,
                            shape_str(a).c_str()));
        }
        expect *= static_cast<int64_t>(a.shape(i));
    }
    const size_t item = (a.dtype().bits + 7) / 8;
    if (reinterpret_cast<uintptr_t>(a.data()) % item != 0) {
        value_error(fmt("%s: data is not aligned to its %zu-byte elements", name, item));
    }
}

}  // namespace caramba_py

// Runs a compute kernel over its whole grid on the CPU, one thread at a time.
//
// Independent kernels (no threadgroup memory, no SIMD-group functions) are simply called once per
// grid position: run_threads. Cooperative kernels run through run_threadgroups: each
// threadgroup's threads become fibers (ucontext) that run until they reach a SIMD-group function
// or a barrier and then wait there; when every fiber waits, the emulator completes what can be
// completed -- a SIMD group whose 32 lanes all wait at the same simd_sum / simd_max /
// simdgroup_barrier, or a threadgroup_barrier that every thread of the group has reached -- and
// resumes those fibers. So a kernel that forgets a barrier reads stale threadgroup memory here
// too, at least in one of the two scheduling orders (forward, reverse) the tests use.
//
// It is stricter than a GPU in one way: SIMD-group functions must be reached by all 32 lanes of a
// SIMD group (uniform control flow); anything else stops the launch with an error, as does a
// barrier that some threads never reach. Include before metal_shim.h (it uses std headers).
#pragma once

#include <ucontext.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <stdexcept>
#include <string>
#include <vector>

namespace caramba_shim {

enum class Wait : int { running, simd_sum, simd_max, simd_barrier, tg_barrier, done };

struct Fiber {
    ucontext_t context;
    std::vector<char> stack;
    Wait wait = Wait::running;
    float value = 0.0f;  // a lane's argument to a SIMD-group function
    float result = 0.0f; // and what it returns
    uint32_t index = 0;  // thread_index_in_threadgroup
};

struct Emulator {
    static constexpr size_t kStack = 64 * 1024;
    static constexpr uint32_t kSimdWidth = 32;

    std::vector<Fiber> fibers;
    ucontext_t scheduler;
    Fiber* current = nullptr;
    const std::function<void(uint32_t)>* body = nullptr;
};

inline Emulator& emulator() {
    static Emulator e;
    return e;
}

inline Fiber& current_fiber(const char* what) {
    Fiber* f = emulator().current;
    if (!f) {
        std::fprintf(stderr, "metal shim: %s outside run_threadgroups\n", what);
        std::abort();
    }
    return *f;
}

inline float suspend(Wait why, float value, const char* what) {
    Fiber& f = current_fiber(what);
    f.wait = why;
    f.value = value;
    swapcontext(&f.context, &emulator().scheduler);
    return f.result;
}

inline float simd_reduce(int op, float x) {
    return suspend(op == 0 ? Wait::simd_sum : Wait::simd_max, x, "a SIMD-group function");
}

inline void simd_barrier() { suspend(Wait::simd_barrier, 0.0f, "simdgroup_barrier"); }

inline void threadgroup_barrier() { suspend(Wait::tg_barrier, 0.0f, "threadgroup_barrier"); }

inline void fiber_entry() {
    Emulator& e = emulator();
    Fiber& f = *e.current;
    (*e.body)(f.index);
    f.wait = Wait::done;
    swapcontext(&f.context, &e.scheduler);
}

inline const char* wait_name(Wait w) {
    switch (w) {
        case Wait::running: return "running";
        case Wait::simd_sum: return "simd_sum";
        case Wait::simd_max: return "simd_max";
        case Wait::simd_barrier: return "simdgroup_barrier";
        case Wait::tg_barrier: return "threadgroup_barrier";
        case Wait::done: return "returned";
    }
    return "?";
}

// Pairwise (butterfly-order) reduction, as a GPU does it rather than left to right.
inline float reduce_lanes(std::vector<float> v, bool is_max) {
    for (size_t width = v.size(); width > 1; width = (width + 1) / 2) {
        const size_t half = (width + 1) / 2;
        for (size_t i = 0; i + half < width; ++i) {
            v[i] = is_max ? (v[i] > v[i + half] ? v[i] : v[i + half]) : v[i] + v[i + half];
        }
    }
    return v[0];
}

// Completes the SIMD-group operations every lane has reached; throws on divergence.
inline bool release_simdgroups(Emulator& e, uint32_t group_id) {
    bool released = false;
    const uint32_t n = static_cast<uint32_t>(e.fibers.size());
    for (uint32_t first = 0; first < n; first += Emulator::kSimdWidth) {
        const uint32_t last = std::min(n, first + Emulator::kSimdWidth);
        const Wait w = e.fibers[first].wait;
        const bool simd_op = w == Wait::simd_sum || w == Wait::simd_max || w == Wait::simd_barrier;
        bool uniform = true;
        for (uint32_t i = first; i < last; ++i) uniform &= e.fibers[i].wait == w;
        if (!uniform) {
            for (uint32_t i = first; i < last; ++i) {
                const Wait wi = e.fibers[i].wait;
                if (wi == Wait::simd_sum || wi == Wait::simd_max || wi == Wait::simd_barrier) {
                    throw std::runtime_error(
                        "threadgroup " + std::to_string(group_id) + ", SIMD group " +
                        std::to_string(first / Emulator::kSimdWidth) + ": lane " +
                        std::to_string(i - first) + " waits at " + wait_name(wi) +
                        " but lane 0 is at " + wait_name(w) + " (divergent SIMD-group function)");
                }
            }
            continue;
        }
        if (!simd_op) continue;
        std::vector<float> values;
        for (uint32_t i = first; i < last; ++i) values.push_back(e.fibers[i].value);
        const float r = w == Wait::simd_barrier ? 0.0f : reduce_lanes(values, w == Wait::simd_max);
        for (uint32_t i = first; i < last; ++i) {
            e.fibers[i].result = r;
            e.fibers[i].wait = Wait::running;
        }
        released = true;
    }
    return released;
}

// Runs `body(thread_index)` for threads 0 .. threads-1 of one threadgroup as cooperating fibers.
// reverse: resume ready fibers from the last thread to the first.
inline void run_threadgroup(uint32_t threads, const std::function<void(uint32_t)>& body,
                            bool reverse, uint32_t group_id) {
    Emulator& e = emulator();
    if (e.fibers.size() != threads) e.fibers.resize(threads);
    e.body = &body;
    for (uint32_t i = 0; i < threads; ++i) {
        Fiber& f = e.fibers[i];
        if (f.stack.size() != Emulator::kStack) f.stack.resize(Emulator::kStack);
        f.index = i;
        f.wait = Wait::running;
        getcontext(&f.context);
        f.context.uc_stack.ss_sp = f.stack.data();
        f.context.uc_stack.ss_size = f.stack.size();
        f.context.uc_link = nullptr;
        makecontext(&f.context, fiber_entry, 0);
    }
    for (;;) {
        for (uint32_t k = 0; k < threads; ++k) {
            Fiber& f = e.fibers[reverse ? threads - 1 - k : k];
            if (f.wait != Wait::running) continue;
            e.current = &f;
            swapcontext(&e.scheduler, &f.context);
            e.current = nullptr;
        }
        bool all_done = true, all_at_barrier = true;
        for (const Fiber& f : e.fibers) {
            all_done &= f.wait == Wait::done;
            all_at_barrier &= f.wait == Wait::tg_barrier;
        }
        if (all_done) return;
        bool released = release_simdgroups(e, group_id);
        if (all_at_barrier) {
            for (Fiber& f : e.fibers) f.wait = Wait::running;
            released = true;
        }
        if (!released) {
            std::string states;
            for (const Fiber& f : e.fibers) {
                if (f.wait != Wait::done && f.index % Emulator::kSimdWidth == 0) {
                    states += " thread " + std::to_string(f.index) + ": " + wait_name(f.wait) + ";";
                }
            }
            throw std::runtime_error("threadgroup " + std::to_string(group_id) +
                                     ": deadlock (a barrier some threads never reach):" + states);
        }
    }
}

struct Grid {
    uint32_t x, y, z;
};

// A cooperative kernel: body(threadgroup position, thread index in threadgroup) for every
// threadgroup, one after the other; before_group(position) runs first for each (to reset
// threadgroup memory).
inline void run_threadgroups(Grid groups, uint32_t threads_per_group,
                             const std::function<void(Grid, uint32_t)>& body, bool reverse,
                             const std::function<void(Grid)>& before_group) {
    uint32_t id = 0;
    for (uint32_t z = 0; z < groups.z; ++z)
        for (uint32_t y = 0; y < groups.y; ++y)
            for (uint32_t x = 0; x < groups.x; ++x, ++id) {
                const Grid g{x, y, z};
                if (before_group) before_group(g);
                const std::function<void(uint32_t)> thread = [&](uint32_t tid) { body(g, tid); };
                run_threadgroup(threads_per_group, thread, reverse, id);
            }
}

// An independent-thread kernel: body(thread position in grid) for every position.
inline void run_threads(Grid threads, const std::function<void(Grid)>& body) {
    for (uint32_t z = 0; z < threads.z; ++z)
        for (uint32_t y = 0; y < threads.y; ++y)
            for (uint32_t x = 0; x < threads.x; ++x) body(Grid{x, y, z});
}

} // namespace caramba_shim

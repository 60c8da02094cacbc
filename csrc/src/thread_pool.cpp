#include "thread_pool.h"

#include "caramba/cpu.h"

#include <algorithm>
#include <chrono>

#if defined(__unix__) || defined(__APPLE__)
#include <unistd.h>
#endif

namespace caramba::detail {

namespace {

long current_pid() {
#if defined(__unix__) || defined(__APPLE__)
    return static_cast<long>(getpid());
#else
    return 0;
#endif
}

inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    asm volatile("yield");
#endif
}

// How long an idle helper keeps spinning after a run() returns, for the next call: back-to-back
// decode calls then skip the condition-variable wake-up, which on a virtual machine starts a
// helper tens of us late (and the caller runs its share meanwhile). Short on purpose: between
// the layers of a model the helper would spin on a core that torch's own threads need (a
// 200 us linger cost a whole CPU decode step 12%). Timed, not counted: a PAUSE takes 10 ns on
// one CPU and 140 on another.
constexpr int64_t kLingerNs = 30'000;
// How long the caller spins for helpers still on their last task before sleeping: it waits
// on work of its own call, so no other work of this process wants the core.
constexpr int64_t kFinishSpinNs = 2'000'000;

int64_t now_ns() {
    return std::chrono::duration_cast<std::chrono::nanoseconds>(
               std::chrono::steady_clock::now().time_since_epoch())
        .count();
}

// Spins until ready() (returning true) or until keep_spinning(now) is false (returning
// ready()); the clock is read every 32 polls.
template <class Ready, class KeepSpinning>
bool spin_until(Ready ready, KeepSpinning keep_spinning) {
    for (;;) {
        for (int i = 0; i < 32; ++i) {
            if (ready()) return true;
            cpu_relax();
        }
        if (!keep_spinning(now_ns())) return ready();
    }
}

}  // namespace

ThreadPool& ThreadPool::instance() {
    static std::mutex guard;
    static ThreadPool* pool = nullptr;
    static long owner = 0;
    std::lock_guard<std::mutex> lock(guard);
    const long pid = current_pid();
    if (pool == nullptr || owner != pid) {
        pool = new ThreadPool();  // a forked child's old pool (no threads) is leaked on purpose
        owner = pid;
    }
    return *pool;
}

void ThreadPool::drain(int worker) {
    for (;;) {
        const int64_t task = next_.fetch_add(1, std::memory_order_relaxed);
        if (task >= n_tasks_) break;
        fn_(ctx_, task, worker);
    }
}

void ThreadPool::worker_loop(int worker, uint64_t seen) {
    for (;;) {
        // Spin while a run() is in progress (its caller is inside this library: the job this
        // worker just left, or the next one of a decode call) and for kLingerNs after. With
        // more threads in the call than cores, spin yielding, so threads still working get the
        // core (GQA d128 q4_0 at 4k, 8 threads on 2 cores, median us of three runs: 529-674
        // spinning, 487-536 yielding; with 2 threads yielding measured up to 3% slower, hence
        // only then).
        const bool started = spin_until(
            [&] { return generation_.load(std::memory_order_acquire) != seen; },
            [&](int64_t now) {
                if (in_call_.load(std::memory_order_acquire)) {
                    if (oversubscribed_.load(std::memory_order_relaxed)) std::this_thread::yield();
                    return true;
                }
                return now - last_return_ns_.load(std::memory_order_relaxed) < kLingerNs;
            });
        std::unique_lock<std::mutex> lock(mutex_);
        if (!started) {
            wake_.wait(lock, [&] { return generation_.load(std::memory_order_acquire) != seen; });
        }
        seen = generation_.load(std::memory_order_acquire);
        if (worker > participants_ || !open_) continue;
        ++pending_;
        lock.unlock();
        drain(worker);
        lock.lock();
        if (--pending_ == 0) done_.notify_one();
    }
}

void ThreadPool::run(int n_threads, int64_t n_tasks, TaskFn fn, void* ctx) {
    if (n_tasks <= 0) return;
    const int helpers = static_cast<int>(
        std::max<int64_t>(0, std::min<int64_t>(n_threads, n_tasks) - 1));
    if (helpers == 0) {  // single-threaded: no pool state involved
        for (int64_t task = 0; task < n_tasks; ++task) fn(ctx, task, 0);
        return;
    }
    std::lock_guard<std::mutex> call(call_mutex_);
    // In progress until this returns (or throws: a thread that cannot be created).
    struct CallScope {
        ThreadPool& pool;
        explicit CallScope(ThreadPool& p) : pool(p) {
            pool.in_call_.store(true, std::memory_order_release);
        }
        ~CallScope() {
            pool.last_return_ns_.store(now_ns(), std::memory_order_relaxed);
            pool.in_call_.store(false, std::memory_order_release);
        }
    } scope(*this);
    oversubscribed_.store(helpers + 1 > caramba_default_num_threads(), std::memory_order_relaxed);
    while (static_cast<int>(threads_.size()) < helpers) {
        // The new thread must wait for the generation about to start, not read it late.
        const int worker = static_cast<int>(threads_.size()) + 1;
        const uint64_t seen = generation_.load(std::memory_order_relaxed);
        threads_.emplace_back([this, worker, seen] { worker_loop(worker, seen); });
    }
    {
        std::lock_guard<std::mutex> lock(mutex_);
        fn_ = fn;
        ctx_ = ctx;
        n_tasks_ = n_tasks;
        next_.store(0, std::memory_order_relaxed);
        participants_ = helpers;
        open_ = true;
        pending_ = 0;
        generation_.fetch_add(1, std::memory_order_release);
    }
    wake_.notify_all();
    drain(0);
    // Every task is claimed: close the job to latecomers, then wait for those still running,
    // spinning first: a helper's last task usually ends within microseconds, and a caller
    // asleep on the condition variable takes a wake-up (tens of us on a virtual machine) to
    // return.
    {
        std::lock_guard<std::mutex> lock(mutex_);
        open_ = false;
    }
    const int64_t give_up = now_ns() + kFinishSpinNs;
    spin_until([&] { return pending_.load(std::memory_order_acquire) == 0; },
               [&](int64_t now) { return now < give_up; });
    std::unique_lock<std::mutex> lock(mutex_);
    done_.wait(lock, [&] { return pending_.load(std::memory_order_acquire) == 0; });
}

}  // namespace caramba::detail

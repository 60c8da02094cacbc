// A small persistent thread pool for split-K decode: one parallel region at a time.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <thread>
#include <vector>

namespace caramba::detail {

class ThreadPool {
public:
    using TaskFn = void (*)(void* ctx, int64_t task, int worker);

    // The process-wide pool (recreated in a forked child, whose copy has no threads).
    static ThreadPool& instance();

    // Runs fn(ctx, task, worker) for every task in [0, n_tasks) on up to n_threads threads, the
    // caller being worker 0; returns when all tasks are done. Concurrent callers take turns.
    // Workers are started on first need (so a thread that cannot be created throws
    // std::system_error here, before any task runs) and kept for later calls.
    void run(int n_threads, int64_t n_tasks, TaskFn fn, void* ctx);

    ThreadPool() = default;
    ThreadPool(const ThreadPool&) = delete;
    ThreadPool& operator=(const ThreadPool&) = delete;

private:
    void worker_loop(int worker, uint64_t seen);
    void drain(int worker);

    std::mutex call_mutex_;  // serializes run()
    std::mutex mutex_;
    std::condition_variable wake_;
    std::condition_variable done_;
    std::vector<std::thread> threads_;  // never joined: the pool lives until process exit

    std::atomic<uint64_t> generation_{0};
    int participants_ = 0;  // workers 1..participants_ may take part in the current generation
    // A worker joins only while the job is open (the caller has not claimed the last task), so
    // the caller never waits for a worker that the OS has not scheduled yet: on a busy machine
    // it then runs the tasks itself instead of idling.
    bool open_ = false;
    // Workers that joined and have not finished; changed under mutex_, read without it by the
    // caller's spin.
    std::atomic<int> pending_{0};
    TaskFn fn_ = nullptr;
    void* ctx_ = nullptr;
    int64_t n_tasks_ = 0;
    std::atomic<int64_t> next_{0};
    // Whether a run() is in progress, and when the last one returned (steady clock, ns): an
    // idle helper spins while the first holds and briefly after the second.
    std::atomic<bool> in_call_{false};
    std::atomic<int64_t> last_return_ns_{0};
    std::atomic<bool> oversubscribed_{false};  // the call runs more threads than cores
};

}  // namespace caramba::detail

// Persistent spin-then-sleep thread pool used by the matmul kernels.
//
// A job is published through one 64-bit atomic word: [63:32] job generation,
// bit 31 "closed", [30:0] number of workers currently inside the job.  Workers
// join a job with a CAS (only while it is open), the caller closes it with a CAS
// once nobody is inside.  The job function pulls its own work items, so the
// caller never waits for a worker that is still asleep: it simply does the work
// itself and closes the job; a worker that wakes up late finds the job closed.
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <mutex>
#include <thread>
#include <vector>

#include "mlxk_internal.h"

#if MLXK_X86
#include <immintrin.h>
#define MLXK_PAUSE() _mm_pause()
#elif defined(__aarch64__)
#define MLXK_PAUSE() __asm__ __volatile__("yield")
#else
#define MLXK_PAUSE() ((void)0)
#endif

namespace mlxe {
namespace {

constexpr uint64_t kClosed = 1ull << 31;
constexpr uint64_t kCountMask = kClosed - 1;

int env_int(const char* name, int dflt) {
  const char* v = std::getenv(name);
  if (!v || !*v) return dflt;
  char* end = nullptr;
  long x = std::strtol(v, &end, 10);
  if (end == v) return dflt;
  return (int)x;
}

class Pool {
 public:
  Pool() {
    int hc = (int)std::thread::hardware_concurrency();
    if (hc <= 0) hc = 1;
    int n = env_int("MLX_ENGINE_THREADS", hc);
    nthreads_ = n < 1 ? 1 : (n > 256 ? 256 : n);
    spin_us_ = env_int("MLX_ENGINE_SPIN_US", 100);
    if (spin_us_ < 0) spin_us_ = 0;
  }

  int num_threads() {
    return nthreads_.load(std::memory_order_relaxed);
  }

  void set_num_threads(int n) {
    if (n < 1) n = 1;
    if (n > 256) n = 256;
    std::lock_guard<std::mutex> busy(busy_);
    if (n == nthreads_.load()) return;
    stop_workers(true);
    nthreads_ = n;
  }

  void run(void (*fn)(void*), void* ctx, int max_threads) {
    int want = num_threads();
    if (max_threads > 0 && max_threads < want) want = max_threads;
    if (want <= 1) {
      fn(ctx);
      return;
    }
    std::unique_lock<std::mutex> busy(busy_, std::try_to_lock);
    if (!busy.owns_lock()) {  // another caller (or a nested call): run inline
      fn(ctx);
      return;
    }
    ensure_workers();
    if (workers_.empty()) {
      fn(ctx);
      return;
    }
    fn_ = fn;
    ctx_ = ctx;
    max_joiners_ = want - 1;
    const uint64_t gen = (state_.load(std::memory_order_relaxed) >> 32) + 1;
    state_.store(gen << 32, std::memory_order_seq_cst);  // open, nobody inside
    if (sleepers_.load(std::memory_order_seq_cst) > 0) {
      { std::lock_guard<std::mutex> lk(m_); }
      cv_.notify_all();
    }
    fn(ctx);
    // Close the job once no worker is inside it.
    // A worker still inside holds one chunk; if it was descheduled (oversubscribed machine),
    // yielding this core after a short spin lets it finish sooner.
    uint64_t expect = gen << 32;
    for (int iter = 0;; ++iter) {
      if (state_.compare_exchange_weak(expect, (gen << 32) | kClosed, std::memory_order_acq_rel,
                                       std::memory_order_acquire))
        break;
      expect = gen << 32;
      if (iter < 20000)
        MLXK_PAUSE();
      else
        std::this_thread::yield();
    }
  }

 private:
  void ensure_workers() {
    const int n = nthreads_.load();
    if ((int)workers_.size() == n - 1) return;
    stop_workers(true);
    stop_.store(false);
    for (int i = 0; i < n - 1; ++i) workers_.emplace_back([this] { worker_loop(); });
  }

  void stop_workers(bool join) {
    if (workers_.empty()) return;
    stop_.store(true, std::memory_order_seq_cst);
    {
      std::lock_guard<std::mutex> lk(m_);
    }
    cv_.notify_all();
    for (auto& t : workers_) {
      if (join)
        t.join();
      else
        t.detach();
    }
    workers_.clear();
  }

  void worker_loop() {
    uint64_t seen = state_.load(std::memory_order_acquire) >> 32;
    for (;;) {
      // Wait for a new generation: spin first, then sleep.
      uint64_t s = state_.load(std::memory_order_acquire);
      if ((s >> 32) == seen) {
        auto t0 = std::chrono::steady_clock::now();
        const auto spin = std::chrono::microseconds(spin_us_);
        int iter = 0;
        for (;;) {
          if (stop_.load(std::memory_order_relaxed)) return;
          s = state_.load(std::memory_order_acquire);
          if ((s >> 32) != seen) break;
          MLXK_PAUSE();
          if ((++iter & 255) == 0 && std::chrono::steady_clock::now() - t0 > spin) {
            std::unique_lock<std::mutex> lk(m_);
            sleepers_.fetch_add(1, std::memory_order_seq_cst);
            while (!stop_.load(std::memory_order_seq_cst) &&
                   (state_.load(std::memory_order_seq_cst) >> 32) == seen)
              cv_.wait(lk);
            sleepers_.fetch_sub(1, std::memory_order_relaxed);
            t0 = std::chrono::steady_clock::now();
          }
        }
      }
      seen = s >> 32;
      // Try to join the job while it is open.
      for (;;) {
        if ((s >> 32) != seen || (s & kClosed)) break;
        if ((int64_t)(s & kCountMask) >= max_joiners_.load(std::memory_order_relaxed)) break;
        if (state_.compare_exchange_weak(s, s + 1, std::memory_order_acq_rel, std::memory_order_acquire)) {
          fn_(ctx_);
          state_.fetch_sub(1, std::memory_order_release);
          break;
        }
      }
    }
  }

  std::mutex busy_;  // one job at a time
  std::atomic<int> nthreads_{1};
  int spin_us_ = 100;
  std::vector<std::thread> workers_;
  std::atomic<uint64_t> state_{0};
  std::atomic<bool> stop_{false};
  std::atomic<int> sleepers_{0};
  std::atomic<int> max_joiners_{0};
  std::mutex m_;
  std::condition_variable cv_;
  void (*fn_)(void*) = nullptr;
  void* ctx_ = nullptr;
};

Pool& pool() {
  // Leaked on purpose: worker threads may outlive static destruction order.
  static Pool* p = new Pool();
  return *p;
}

}  // namespace

void parallel_run(void (*fn)(void*), void* ctx, int max_threads) { pool().run(fn, ctx, max_threads); }
int pool_num_threads() { return pool().num_threads(); }
void pool_set_num_threads(int n) { pool().set_num_threads(n); }

}  // namespace mlxe

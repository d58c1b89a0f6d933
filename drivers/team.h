// A decode pass's thread team: the threads of one parallel region kept open for the whole pass,
// the helpers spinning between the pass's operators instead of leaving the region after each.
//
// A one-agent decode pass is ~150 small operators. Opening a parallel region for each cost a
// fork and a join apiece, and where libgomp's idle threads had gone to sleep (OMP_WAIT_POLICY,
// libgomp's throttled spinning, a hypervisor descheduling a spinning vCPU) a futex wake-up
// apiece: on the 2-core AVX-512 EPYC a step took 4.7 ms as it came, 4.1 ms with
// OMP_WAIT_POLICY=ACTIVE and 11.6 ms with PASSIVE (bench/barriers.py). ggml (llama.cpp) does
// what this does: one region a graph, its own spinning barriers inside.
//
// Team::lead(pass) runs `pass` on the calling thread with the region's other threads as
// helpers; inside it Team::split hands each operator's range to the team as at::parallel_for
// would (same chunks), and outside a team Team::split is at::parallel_for. Only operators of
// ours may run in a pass: a library's own parallel region (oneDNN, PyTorch's kernels) nested in
// this one runs on one thread while the helpers spin.
#pragma once

#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <exception>
#include <thread>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

namespace llmos {

class Team {
 public:
  template <typename Pass>
  static void lead(const Pass& pass) {
    const int size = at::get_num_threads();
    if (size < 2 || leader_ != nullptr || at::in_parallel_region()) {
      pass();
      return;
    }
    Team team(size);
    at::parallel_for(0, size, 1, [&](int64_t begin, int64_t end) {
      if (begin != 0) {
        if (end - begin == 1) team.serve(begin);
        return;
      }
      // Fewer threads than asked (this thread got several indexes) or helpers that do not come:
      // the pass runs alone, and a helper arriving late finds the team closed.
      if (end - begin != 1 || !team.gathered()) {
        team.close();
        pass();
        return;
      }
      Leading leading(team);
      pass();
    });
  }

  // f(b, e) over [begin, end) in the chunks at::parallel_for makes: on this thread's team where
  // it leads one, else through at::parallel_for.
  template <typename F>
  static void split(int64_t begin, int64_t end, int64_t grain, const F& f) {
    if (leader_ != nullptr) {
      leader_->run(begin, end, grain, f);
    } else {
      at::parallel_for(begin, end, grain, f);
    }
  }

 private:
  using Call = void (*)(const void* f, int64_t begin, int64_t end);
  struct Job {
    const void* f = nullptr;
    Call call = nullptr;
    int64_t begin = 0, end = 0, chunk = 0;
  };

  // While alive, the team is this thread's; at the end (a throw included) the helpers leave.
  struct Leading {
    Team& team;
    explicit Leading(Team& t) : team(t) { leader_ = &t; }
    ~Leading() {
      leader_ = nullptr;
      team.close();
    }
  };

  explicit Team(int size) : size_(size) {}

  // Waits, spinning, then yielding (so that an oversubscribed core still lets the thread being
  // waited for run), until done() holds.
  template <typename Done>
  static void wait_until(const Done& done) {
    for (uint32_t spins = 0; !done(); ++spins) {
      if (spins < SPINS_BEFORE_YIELD) {
#if defined(__x86_64__)
        _mm_pause();
#endif
      } else {
        std::this_thread::yield();
      }
    }
  }

  // Whether every helper arrived within GATHER_WAIT.
  bool gathered() {
    const auto deadline = std::chrono::steady_clock::now() + GATHER_WAIT;
    bool late = false;
    wait_until([&] {
      if (joined_.load(std::memory_order_acquire) == size_ - 1) return true;
      late = std::chrono::steady_clock::now() > deadline;
      return late;
    });
    return !late;
  }

  void close() {
    over_.store(true, std::memory_order_relaxed);
    posted_.fetch_add(1, std::memory_order_release);  // publishes over_
  }

  // A helper's loop: each post is a job (its share of it, then counted) or the close. posted_
  // is 0 at its arrival unless the team was already closed: the leader posts once all arrived.
  void serve(int64_t index) {
    uint64_t seen = 0;
    joined_.fetch_add(1, std::memory_order_release);
    for (;;) {
      uint64_t now = seen;
      wait_until([&] { return (now = posted_.load(std::memory_order_acquire)) != seen; });
      seen = now;
      if (over_.load(std::memory_order_relaxed)) return;
      do_share(index);
      finished_.fetch_add(1, std::memory_order_release);
    }
  }

  template <typename F>
  void run(int64_t begin, int64_t end, int64_t grain, const F& f) {
    if (begin >= end) return;
    const int64_t workers = std::min<int64_t>(size_, (end - begin + grain - 1) / std::max<int64_t>(grain, 1));
    if (workers < 2) {
      f(begin, end);
      return;
    }
    job_ = Job{&f, [](const void* g, int64_t b, int64_t e) { (*static_cast<const F*>(g))(b, e); }, begin, end,
               (end - begin + workers - 1) / workers};
    finished_.store(0, std::memory_order_relaxed);
    posted_.fetch_add(1, std::memory_order_release);  // publishes job_ and the reset count
    do_share(0);
    wait_until([&] { return finished_.load(std::memory_order_acquire) == size_ - 1; });
    if (failure_) std::rethrow_exception(failure_);
  }

  // The index'th chunk of the posted job; a throw is kept (the first) for the leader to rethrow
  // once every helper is done with the job, whose function lives on the leader's stack.
  void do_share(int64_t index) {
    const int64_t first = job_.begin + index * job_.chunk;
    if (first >= job_.end) return;
    try {
      job_.call(job_.f, first, std::min(job_.end, first + job_.chunk));
    } catch (...) {
      bool expected = false;
      if (failing_.compare_exchange_strong(expected, true)) failure_ = std::current_exception();
    }
  }

  static constexpr uint32_t SPINS_BEFORE_YIELD = 1u << 16;
  static constexpr std::chrono::milliseconds GATHER_WAIT{100};
  static inline thread_local Team* leader_ = nullptr;

  const int64_t size_;
  Job job_;
  std::exception_ptr failure_;
  std::atomic<bool> failing_{false};
  std::atomic<uint64_t> posted_{0};
  std::atomic<int64_t> finished_{0};
  std::atomic<int64_t> joined_{0};
  std::atomic<bool> over_{false};
};

}  // namespace llmos

// A decode pass's thread team: the threads of one parallel region kept open for the whole pass,
// the helpers waiting between the pass's operators (spinning, then asleep on a futex) instead
// of leaving the region after each.
//
// A one-agent decode pass is ~150 small operators. Opening a parallel region for each cost a
// fork and a join apiece, and where libgomp's idle threads had gone to sleep (OMP_WAIT_POLICY,
// libgomp's throttled spinning, a hypervisor descheduling a spinning vCPU) a futex wake-up
// apiece: on the 2-core AVX-512 EPYC a step took 4.7 ms as it came, 4.1 ms with
// OMP_WAIT_POLICY=ACTIVE and 11.6 ms with PASSIVE (bench/barriers.py). ggml (llama.cpp) does
// what this does: one region a graph, its own barriers inside. A helper that does not come
// (descheduled by another process on a busy machine, asleep) does not stall an operator: the
// leader takes every share not yet taken (`run`). Beside one busy process on 2 cores the
// one-agent step took 8-9 ms, as with OpenMP's regions; with fixed shares it had taken 75 ms
// spinning and 13 ms waiting on a futex. LLMOS_THREAD_TEAM=0 turns teams off;
// bench/barriers.py measures both ways.
//
// Team::lead(pass) runs `pass` on the calling thread with the region's other threads as
// helpers; inside it Team::split hands each operator's range to the team in the chunks
// at::parallel_for would cut (each chunk computed alone: the same results whoever computes
// it), and outside a team Team::split is at::parallel_for. Only operators of
// ours may run in a pass: a library's own parallel region (oneDNN, PyTorch's kernels) nested in
// this one runs on one thread while the helpers spin.
#pragma once

#include <ATen/Parallel.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <climits>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <string>
#include <thread>

#include <sched.h>
#if defined(__linux__)
#include <linux/futex.h>
#include <sys/syscall.h>
#include <unistd.h>
#endif

#if defined(__x86_64__)
#include <immintrin.h>
#endif

namespace llmos {

class Team {
 public:
  template <typename Pass>
  static void lead(const Pass& pass) {
    const int size = at::get_num_threads();
    // More threads than CPUs (a user's setting): a team's waits would take turns with the
    // threads they wait for (the first, purely spinning team: a one-agent step took 0.53 s, not
    // 13 ms, at 4 threads on 2 cores).
    if (!enabled() || size < 2 || size > std::min(MAX_SIZE, available_cpus()) || leader_ != nullptr ||
        at::in_parallel_region()) {
      pass();
      return;
    }
    Team team(size);
    if (pinning()) team.place();
    at::parallel_for(0, size, 1, [&](int64_t begin, int64_t end) {
      if (begin != 0) {
        if (end - begin == 1) {
          Pinned pinned(team.cpus_[begin]);
          team.serve(begin);
        }
        return;
      }
      // Fewer threads than asked (this thread got several indexes): the pass runs alone. Else
      // it starts at once; a helper joins when it comes (the leader takes what it has not).
      if (end - begin != 1) {
        team.close();
        pass();
        return;
      }
      Pinned pinned(team.cpus_[0]);
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
  // A 32-bit count that threads wait on: spinning for SPIN_FOR (the thread that moves it is
  // running and done within microseconds), then asleep in the kernel (a futex), so that on a
  // busy machine a thread descheduled by another process gets a core back instead of one spent
  // spinning. `add` makes a system call only when someone sleeps. (Sleepers are counted before
  // their last look and counts read after an add, both sequentially consistent: either the
  // look sees the add or the adder sees the sleeper.)
  class Count {
   public:
    void add() {
      value_.fetch_add(1, std::memory_order_seq_cst);
      if (sleepers_.load(std::memory_order_seq_cst) > 0) wake();
    }

    // Waits until ready(the count) holds; returns the count it saw.
    template <typename Ready>
    uint32_t wait_for(const Ready& ready) {
      uint32_t seen = value_.load(std::memory_order_acquire);
      if (ready(seen)) return seen;
      const auto spin_until = std::chrono::steady_clock::now() + SPIN_FOR;
      for (uint32_t looks = 1;; ++looks) {
        relax();
        if (ready(seen = value_.load(std::memory_order_acquire))) return seen;
        if (looks % 64 == 0 && std::chrono::steady_clock::now() > spin_until) break;
      }
      sleepers_.fetch_add(1, std::memory_order_seq_cst);
      while (!ready(seen = value_.load(std::memory_order_seq_cst))) sleep(seen);
      sleepers_.fetch_sub(1, std::memory_order_seq_cst);
      return seen;
    }

   private:
    uint32_t* word() { return reinterpret_cast<uint32_t*>(&value_); }
#if defined(__linux__)
    // Until the count is no longer `seen` (or a spurious wake-up: the caller looks again).
    void sleep(uint32_t seen) { syscall(SYS_futex, word(), FUTEX_WAIT_PRIVATE, seen, nullptr, nullptr, 0); }
    void wake() { syscall(SYS_futex, word(), FUTEX_WAKE_PRIVATE, INT_MAX, nullptr, nullptr, 0); }
#else
    void sleep(uint32_t) { std::this_thread::yield(); }
    void wake() {}
#endif

    std::atomic<uint32_t> value_{0};
    std::atomic<int> sleepers_{0};
    static_assert(sizeof(std::atomic<uint32_t>) == sizeof(uint32_t), "a futex word is 32 bits");
  };

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

  explicit Team(int size) : size_(size) { cpus_.fill(-1); }

  static void relax() {
#if defined(__x86_64__)
    _mm_pause();
#endif
  }

  // LLMOS_THREAD_TEAM=0 (read once) turns teams off: each operator opens its own region again.
  static bool enabled() {
    static const bool on = switched_on("LLMOS_THREAD_TEAM");
    return on;
  }

  // LLMOS_PIN_TEAM=0 (read once) lets a pass's threads move between CPUs as the OS likes.
  static bool pinning() {
    static const bool on = switched_on("LLMOS_PIN_TEAM");
    return on;
  }

  static bool switched_on(const char* variable) {
    const char* value = std::getenv(variable);
    return value == nullptr || std::string(value) != "0";
  }

  // Each thread of the pass on a CPU of its own, for the pass only: the leader where it runs
  // now, the helpers on the leader's other CPUs, other cores first. Left to the OS, the
  // one-agent step beside a busy process averaged 13.9 ms against 8.6 pinned (2 cores, the
  // threads stacked on one CPU or moved between them mid-pass); idle it is the same
  // (bench/barriers.py measures both ways).
  void place() {
#if defined(__linux__)
    cpu_set_t set;
    const int here = sched_getcpu();
    if (here < 0 || sched_getaffinity(0, sizeof set, &set) != 0 || !CPU_ISSET(here, &set)) return;
    cpu_set_t taken, cores;  // CPUs given a thread; cores (by their first CPU) given one
    CPU_ZERO(&taken);
    CPU_ZERO(&cores);
    int placed = 0;
    const auto give = [&](int cpu) {
      cpus_[placed++] = cpu;
      CPU_SET(cpu, &taken);
      CPU_SET(core_of(cpu), &cores);
    };
    give(here);
    // First CPUs of cores no thread of the pass is on (two hardware threads of one core share
    // its arithmetic units), then any.
    for (const bool shared_core_too : {false, true}) {
      for (int cpu = 0; cpu < CPU_SETSIZE && placed < size_; ++cpu) {
        if (CPU_ISSET(cpu, &set) && !CPU_ISSET(cpu, &taken) && (shared_core_too || !CPU_ISSET(core_of(cpu), &cores))) {
          give(cpu);
        }
      }
    }
    if (placed < size_) cpus_.fill(-1);  // fewer CPUs than threads: `lead` runs no team then
#endif
  }

#if defined(__linux__)
  // The first CPU of the core `cpu` is a hardware thread of (sysfs, read once); `cpu` itself
  // where the topology is not known.
  static int core_of(int cpu) {
    static const std::array<int, CPU_SETSIZE> first_sibling = [] {
      std::array<int, CPU_SETSIZE> first{};
      for (int c = 0; c < CPU_SETSIZE; ++c) first[c] = c;
      const long configured = std::min<long>(sysconf(_SC_NPROCESSORS_CONF), CPU_SETSIZE);
      for (int c = 0; c < configured; ++c) {
        const std::string path =
            "/sys/devices/system/cpu/cpu" + std::to_string(c) + "/topology/thread_siblings_list";
        if (FILE* list = std::fopen(path.c_str(), "r")) {
          int sibling = c;  // the list starts with the lowest ("0-1" or "0,4")
          if (std::fscanf(list, "%d", &sibling) == 1 && sibling >= 0 && sibling < CPU_SETSIZE) first[c] = sibling;
          std::fclose(list);
        }
      }
      return first;
    }();
    return cpu >= 0 && cpu < CPU_SETSIZE ? first_sibling[cpu] : cpu;
  }
#endif

  // While alive, the calling thread runs on `cpu` alone (none: -1, or where the OS refuses);
  // its CPUs before are given back at the end.
  class Pinned {
   public:
    explicit Pinned(int cpu) {
#if defined(__linux__)
      if (cpu < 0 || sched_getaffinity(0, sizeof before_, &before_) != 0) return;
      cpu_set_t one;
      CPU_ZERO(&one);
      CPU_SET(cpu, &one);
      pinned_ = sched_setaffinity(0, sizeof one, &one) == 0;
#endif
    }
    ~Pinned() {
#if defined(__linux__)
      if (pinned_) sched_setaffinity(0, sizeof before_, &before_);
#endif
    }
    Pinned(const Pinned&) = delete;
    Pinned& operator=(const Pinned&) = delete;

   private:
#if defined(__linux__)
    cpu_set_t before_;
#endif
    bool pinned_ = false;
  };

  // The CPUs this process may run on: a team larger than that spins on cores it does not have.
  static int available_cpus() {
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof set, &set) == 0) return CPU_COUNT(&set);
    return static_cast<int>(std::thread::hardware_concurrency());
  }

  void close() {
    over_.store(true, std::memory_order_relaxed);
    posted_.add();  // publishes over_
  }

  // A helper's loop: at each post (a job, or the close) it takes its own share of the newest
  // job unless the leader took it first, and counts it done. Arriving late, it finds posts
  // already made and looks at the newest job at once.
  void serve(int64_t index) {
    uint32_t seen = 0, last = 0;  // posts seen; the last job looked at (jobs are numbered from 1)
    for (;;) {
      seen = posted_.wait_for([&](uint32_t posts) { return posts != seen; });
      if (over_.load(std::memory_order_relaxed)) return;
      const uint32_t job = static_cast<uint32_t>(shares_.load(std::memory_order_acquire) >> 32);
      if (job == last) continue;
      last = job;
      if (take(job, index)) {
        do_share(index);
        completed_.add();
      }
    }
  }

  // Whether this thread took share `index` of job `job` (none is taken twice, nor after the
  // job ended). job_ stays as it is until every share taken is done, so the taker may read it.
  bool take(uint32_t job, int64_t index) {
    const uint64_t bit = uint64_t{1} << index;
    uint64_t shares = shares_.load(std::memory_order_acquire);
    while (static_cast<uint32_t>(shares >> 32) == job && !(shares & bit)) {
      if (shares_.compare_exchange_weak(shares, shares | bit, std::memory_order_acq_rel, std::memory_order_acquire)) {
        return true;
      }
    }
    return false;
  }

  // Shares as at::parallel_for cuts them; the leader does its own, then takes every share a
  // helper has not yet taken, and waits only for those taken: a helper that is slow to come
  // (descheduled by another process, asleep) costs the job nothing, and a busy machine runs
  // a pass at one thread's speed instead of stalling at every operator.
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
    const uint32_t job = ++jobs_;
    const uint64_t past_range = ~uint64_t{0} << workers & 0xFFFFFFFFu;  // no thread's: taken from the start
    shares_.store(uint64_t{job} << 32 | past_range | 1u, std::memory_order_release);  // share 0 is the leader's
    posted_.add();
    do_share(0);
    int64_t helped = workers - 1;
    for (int64_t index = 1; index < workers; ++index) {
      if (take(job, index)) {
        do_share(index);
        --helped;
      }
    }
    completions_ += static_cast<uint32_t>(helped);
    const uint32_t target = completions_;
    completed_.wait_for([&](uint32_t completed) { return completed == target; });
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

  static constexpr std::chrono::microseconds SPIN_FOR{200};
  static constexpr int MAX_SIZE = 32;  // a share a bit of shares_' low half
  static inline thread_local Team* leader_ = nullptr;

  const int64_t size_;
  std::array<int, MAX_SIZE> cpus_;  // each index's CPU while the pass runs (-1: any)
  Job job_;
  std::exception_ptr failure_;
  std::atomic<bool> failing_{false};
  Count posted_;                     // jobs posted, and the close
  std::atomic<uint64_t> shares_{0};  // the posted job's number (high half) and its shares taken (a bit each)
  Count completed_;                  // shares helpers took and finished, over every job
  uint32_t jobs_ = 0;                // the leader's: jobs posted
  uint32_t completions_ = 0;         // the leader's: what completed_ reaches when the posted job is done
  std::atomic<bool> over_{false};
};

}  // namespace llmos

// See cross_core.h. Two threads, each pinned to its CPU, take turns on one
// buffer through a step counter: A writes on even steps, B reads on odd ones.
#include "machine/cross_core.h"

#include <pthread.h>
#include <sched.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstring>
#include <limits>
#include <thread>

#include "common/aligned_buffer.h"
#include "common/error.h"

namespace distml::machine {
namespace {

using Clock = std::chrono::steady_clock;

double since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

// Waits until `step` reaches `want`: a short spin, then yielding the CPU to
// whatever else is runnable there (ranks may share the cores).
void await(const std::atomic<int>& step, int want) {
  for (int i = 0; step.load(std::memory_order_acquire) < want; ++i) {
    if (i >= 64) sched_yield();
  }
}

// Keeps a copy whose destination nobody reads afterwards from being elided.
void keep(const void* p) { asm volatile("" : : "r"(p) : "memory"); }

bool pin(int cpu) {
  cpu_set_t set;
  CPU_ZERO(&set);
  CPU_SET(cpu, &set);
  return pthread_setaffinity_np(pthread_self(), sizeof set, &set) == 0;
}

bool allowed(int cpu) {
  cpu_set_t set;
  CPU_ZERO(&set);
  if (cpu < 0 || cpu >= CPU_SETSIZE || sched_getaffinity(0, sizeof set, &set) != 0) return false;
  return CPU_ISSET(cpu, &set);
}

}  // namespace

CrossCore cross_core(int cpu_a, int cpu_b, std::size_t bytes, int reps) {
  DISTML_CHECK_ARG(cpu_a != cpu_b, "the two CPUs must differ (both are " << cpu_a << ")");
  DISTML_CHECK_ARG(allowed(cpu_a), "CPU " << cpu_a << " is not one this process may run on");
  DISTML_CHECK_ARG(allowed(cpu_b), "CPU " << cpu_b << " is not one this process may run on");
  DISTML_CHECK_ARG(bytes > 0, "bytes must be positive");
  DISTML_CHECK_ARG(reps > 0, "reps must be positive");

  AlignedBuffer src(bytes), local(bytes), shared(bytes), copy_b(bytes);
  std::memset(src.data(), 1, bytes);
  std::memset(local.data(), 0, bytes);
  std::memset(shared.data(), 0, bytes);
  std::memset(copy_b.data(), 0, bytes);

  constexpr double kNone = std::numeric_limits<double>::infinity();
  CrossCore best{kNone, kNone, kNone};
  // Step 2r: A has written the shared buffer for round r; 2r+1: B has read it.
  std::atomic<int> step{-1};
  std::atomic<bool> pinned_a{true}, pinned_b{true};

  std::thread reader([&] {
    pinned_b = pin(cpu_b);
    for (int r = 0; r < reps; ++r) {
      await(step, 2 * r);
      const auto t0 = Clock::now();
      std::memcpy(copy_b.data(), shared.data(), bytes);
      keep(copy_b.data());
      best.handoff_s = std::min(best.handoff_s, since(t0));
      step.store(2 * r + 1, std::memory_order_release);
    }
  });
  std::thread writer([&] {
    pinned_a = pin(cpu_a);
    for (int r = 0; r < reps; ++r) {
      auto t0 = Clock::now();
      std::memcpy(local.data(), src.data(), bytes);
      keep(local.data());
      best.local_s = std::min(best.local_s, since(t0));
      // Round 0 writes lines nobody has read; later rounds rewrite what B
      // read in the round before.
      if (r > 0) await(step, 2 * r - 1);
      t0 = Clock::now();
      std::memcpy(shared.data(), src.data(), bytes);
      keep(shared.data());
      if (r > 0) best.rewrite_s = std::min(best.rewrite_s, since(t0));
      step.store(2 * r, std::memory_order_release);
    }
    // One more rewrite, of what B read in the last round.
    await(step, 2 * reps - 1);
    const auto t0 = Clock::now();
    std::memcpy(shared.data(), src.data(), bytes);
    keep(shared.data());
    best.rewrite_s = std::min(best.rewrite_s, since(t0));
  });
  writer.join();
  reader.join();
  // A thread that could not be pinned ran where the scheduler put it, perhaps
  // on the other thread's CPU: its times say nothing about the two cores.
  DISTML_CHECK_ARG(pinned_a && pinned_b, "could not pin a thread to CPU " << (pinned_a ? cpu_b : cpu_a));
  return best;
}

}  // namespace distml::machine

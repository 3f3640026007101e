// How fast cache lines move between two cores of this machine, measured by two
// threads pinned one to each core (no ranks, no MPI).
//
// On some virtual machines the cost of moving lines between two vCPUs changes
// over seconds to minutes while a job runs (bench/results/host_phases.md): a
// collective staged through shared memory can then take 5x as long from one
// minute to the next. The benchmarks read this beside their rows, outside the
// timed calls, to say which phase each row was measured in.
#pragma once

#include <cstddef>

namespace distml::machine {

struct CrossCore {
  double local_s = 0;    // core A copies `bytes` from one private buffer to another
  double handoff_s = 0;  // core B copies out `bytes` that core A has just written
  double rewrite_s = 0;  // core A rewrites `bytes` that core B has just read
};

// Runs `reps` rounds of: A's local copy; A writes the shared buffer; B copies
// it out (handoff); A writes it again (rewrite). Each field is the fastest of
// the rounds (a thread preempted by another process shows as a slow round,
// not as the machine's phase). Threads wait for each other by spinning a
// bounded number of times, then yielding. Throws InvalidArgument when either
// CPU is not one this process may run on or they are the same CPU.
CrossCore cross_core(int cpu_a, int cpu_b, std::size_t bytes, int reps);

}  // namespace distml::machine

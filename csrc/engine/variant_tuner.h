// Which of two variants of a shared-memory schedule runs on this node: the
// one staged through the slots, or the single copy between the ranks' own
// arrays (the kernel's copy). Chosen from their own times while the job runs.
//
// Neither is faster everywhere, nor on one machine at all times. On the AMD
// EPYC machines these runs use, moving cache lines between the two cores
// costs 3-5x more for seconds to minutes at a time; staging pays that price
// twice per block, the kernel's copy barely (bench/results/host_phases.md).
// Sweeps that read the phase (bench/results/phase_column.md) put staged
// reduce_scatter of 1-4 MiB at 1.62-1.82x MPI in the fast phase against the
// single copy's 1.23-1.37x, and at 0.47-0.74x in the slow one against
// 1.15-1.37x. A size threshold cannot be right in both.
//
// Node rank 0 keeps, per collective kind and size class (a power of two),
// the times of the last kSamples calls of each variant (from the end of the
// arrival to the end of the schedule, on rank 0). A call runs the variant
// with the lower median, except that a variant with fewer than kSamples
// times, or none newer than `explore_seconds`, first gets kSamples calls in
// a row: a change of phase is then seen within that time whichever variant
// it favours, at a cost of kSamples calls of the slower variant per size
// class and period. Rank 0 hands its choice to the other ranks with its
// arrival (Communicator::arrive_through_shm), so that all run the same one.
#pragma once

#include <cstddef>
#include <cstdint>
#include <unordered_map>

#include "engine/communicator.h"

namespace distml::engine {

class VariantTuner {
 public:
  static constexpr int kSamples = 3;
  explicit VariantTuner(double explore_seconds) : explore_seconds_(explore_seconds) {}
  // Whether the next call `kind` of `bytes` runs the single copy; `now` in
  // seconds of a steady clock.
  bool choose(Kind kind, std::size_t bytes, double now);
  // That call's time, in seconds.
  void record(Kind kind, std::size_t bytes, bool single_copy, double seconds, double now);

 private:
  struct Times {
    double last[kSamples] = {};  // a ring of the latest
    int count = 0;               // times recorded, up to kSamples
    int next = 0;
    double at = 0;  // when the newest was recorded
    double median() const;
  };
  struct SizeClass {
    Times variant[2];  // [0]: staged, [1]: single copy
    int burst = 0;     // calls still to run `bursting` in a row
    bool bursting = false;
  };
  SizeClass& size_class(Kind kind, std::size_t bytes);
  double explore_seconds_;
  std::unordered_map<std::uint32_t, SizeClass> classes_;
};

}  // namespace distml::engine

// Which variant of a shared-memory schedule runs on this node: staged
// through the slots, staged with the slots filled by streaming stores, or
// the single copy between the ranks' own arrays (the kernel's copy). Chosen
// from their own times while the job runs.
//
// None is faster everywhere, nor on one machine at all times. On the AMD
// EPYC machines these runs use, moving cache lines between the two cores
// costs 3-5x more for seconds to minutes at a time; staging with ordinary
// stores pays that price twice per block (it refills lines the peer has
// just read), the kernel's copy barely, and streaming stores not at all
// (bench/results/host_phases.md, stream_slots.md). Sweeps that read the
// phase (bench/results/phase_column.md) put staged reduce_scatter of 1-4 MiB
// at 1.62-1.82x MPI in the fast phase against the single copy's
// 1.23-1.37x, and at 0.47-0.74x in the slow one against 1.15-1.37x; with
// streaming stores, a staged reduce_scatter of 1 MiB took 59-65 us in the
// slow phase (single copy 74 us) and was slower than ordinary staging in
// the fast one. A size threshold cannot be right in both.
//
// Node rank 0 keeps, per collective kind and size class (a power of two),
// the times of the last kSamples calls of each variant, and judges a
// variant by their median. A call's time runs from its start on rank 0, the
// wait for the other ranks' arrival included, to the end of the last rank
// to finish it, which rank 0 reads once every rank has arrived at its next
// call (ShmControl::done_seq). The staged schedule lets rank 0 leave while
// its peers still copy out; timed by its own end, rank 0 saw that tail only
// when the next call followed at once, and chose staging with streaming
// stores for allgather of 1 MiB in a loop with a barrier between calls at
// 117-125 us against the single copy's 85-96 us. A call runs the variant
// that ran last unless another's median is lower by more than a tenth
// (so that noise does not flip it back and forth); then the fastest.
//
// A variant with fewer than kSamples times, or none newer than
// `explore_seconds` (or kPeriodCalls calls of the fastest, where those take
// longer), first gets kWarmup + kSamples calls in a row, the
// first kWarmup (or those in the first kWarmupSeconds) untimed; so does a
// variant the choice moves to. A new size class tries each variant offered
// in turn, then the first once more: its first calls were the first on the
// size's new arrays (a new communicator at P = 2 in the slow phase ran
// allgather of 256 KiB staged with streaming stores, 27 us, after timing
// the single copy at 32 us in its first calls; 20 us in later runs). A
// variant taken up again after a while is slow for a few calls (its slots
// have gone cold: a staged reduce_scatter of 1 MiB took 101, 105, 99, 78,
// 66, 69, 61, 56, then about 50 us in the fast phase), which would
// otherwise count against it: counted, the choice drifted back to the
// single copy in the fast phase within a second or two, and stayed there. Five times, not three, because the staged
// schedule's calls spike now and then (to 2-4x in the fast phase): with
// three, two spikes in a row handed the choice to the slower variant until
// the next look.
//
// A change of phase that favours another variant is thus seen within
// `explore_seconds`, at a cost of kWarmup + kSamples calls of each slower
// variant per size class and period; one against the running variant
// shows at once in its own times. Rank 0 hands its choice to the other
// ranks with its arrival (Communicator::arrive_through_shm), so that all
// run the same one.
#pragma once

#include <cstddef>
#include <cstdint>
#include <unordered_map>

#include "engine/communicator.h"

namespace distml::engine {

constexpr int kVariants = 3;  // of Variant (communicator.h)

class VariantTuner {
 public:
  static constexpr int kSamples = 5, kWarmup = 10;
  // The untimed calls end early once they have taken this long: a cold
  // slot slows a call's first chunks, which a long call outgrows (one
  // untimed call of a 128 MiB allreduce, not ten of 20-60 ms each).
  static constexpr double kWarmupSeconds = 2e-3;
  // A variant is looked at again after `explore_seconds`, or after this
  // many calls of the fastest known where those take longer: at most about
  // 2 (kWarmup + kSamples) / kPeriodCalls of the calls run another variant
  // (a 128 MiB allreduce takes 20-60 ms).
  static constexpr int kPeriodCalls = 500;
  explicit VariantTuner(double explore_seconds) : explore_seconds_(explore_seconds) {}
  // The variant the next call `kind` of `bytes` runs, among those `offered`
  // (bits 1 << Variant); `now` in seconds of a steady clock.
  static constexpr unsigned kOfferAll = (1u << kVariants) - 1;
  Variant choose(Kind kind, std::size_t bytes, double now, unsigned offered = kOfferAll);
  // That call's time, in seconds.
  void record(Kind kind, std::size_t bytes, Variant variant, double seconds, double now);
  // The median of `variant`'s latest times for `kind` of `bytes` (-1: none).
  double median(Kind kind, std::size_t bytes, Variant variant) const;

 private:
  struct Times {
    double last[kSamples] = {};  // a ring of the latest
    int count = 0;               // times recorded, up to kSamples
    int next = 0;
    double at = 0;  // when the newest was recorded
    double median() const;
  };
  struct SizeClass {
    Times variant[kVariants];  // by Variant
    // A variant taken up (again): calls of `bursting` still to run untimed,
    // the time they have taken so far, and timed calls still to run.
    int untimed = 0;
    double untimed_seconds = 0;
    int timed = 0;
    int bursting = 0;
    int last = static_cast<int>(Variant::kSingleCopy);  // the variant chosen last
    bool first_pass = true;  // every variant offered not yet tried once
    void burst(int v);
  };
  SizeClass& size_class(Kind kind, std::size_t bytes);
  static std::uint32_t key(Kind kind, std::size_t bytes);
  double explore_seconds_;
  std::unordered_map<std::uint32_t, SizeClass> classes_;
};

}  // namespace distml::engine

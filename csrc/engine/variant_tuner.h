// Which variant of a shared-memory schedule runs on this node: staged
// through the slots, staged with the slots filled by streaming stores, or
// the single copy between the ranks' own arrays (the kernel's copy); for
// `auto` allreduce of ordinary arrays between two ranks from 2 to 64 MiB,
// the ring over MPI too (Communicator::pair_ring_offered). Chosen from
// their own times while the job runs.
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
// Node rank 0 compares the variants offered side by side: a comparison
// runs them in turn, one call each, the order rotating every round, for
// kWarmup untimed rounds (fewer where calls are long: they end once a
// variant's untimed calls have taken kWarmupSeconds) and then kSamples timed
// ones, and keeps the variant whose timed calls have the lowest median; that
// one alone runs until the next comparison, `explore_seconds` later and
// after kPeriodCalls of its calls at least. Counted in calls, not in their
// time: a job whose calls of one size come far apart (a step's compute
// between them, or a sweep's other rows) would otherwise spend most calls
// comparing. With a comparison every 0.5 s, allgathers of 16 MiB at P = 2
// with 20 ms between them ran one variant for 31-71 calls at a time, and
// spent about 150 of 400 calls comparing. A call's time
// runs from its start on rank 0, the wait for the other ranks' arrival
// included, to the end of the last rank to finish it, which rank 0 reads
// once every rank has arrived at its next call (ShmControl::done_seq); the
// staged schedule lets rank 0 leave while its peers still copy out.
//
// Why side by side and not one variant's calls in a row after another's:
// times taken at different moments compare different conditions, and the
// conditions change from call to call, not only with the phase. In a
// benchmark sweep whose calls alternate with MPI's, a variant's calls of
// 256 KiB came out bimodal (41-59 or 113-197 us on rank 0, by what ran
// before them); five calls in a row then gave a median from either mode,
// and the choice stayed with staging with streaming stores at a median of
// 173 us where the single copy's calls took 88 us. Taken in turn, every
// variant meets the same predecessors and the same moment of the machine.
// The first rounds are untimed because a variant taken up again after a
// while is slow for its first calls (in calls in a row, a staged
// reduce_scatter of 1 MiB took 101, 105, 99, 78, 66, 69, 61, 56, then about
// 50 us, its slots cold); in turn each variant also warms the slots the
// other staged one uses.
//
// A change of phase shows in the running variant's own times: once their
// median (over its last kSamples calls) exceeds kDrift times what it was
// when chosen, a comparison comes early (at most one per tenth of the
// period); so does one when a variant this size class has never timed is
// offered (a setting changed). Rank 0 hands its choice to the other ranks
// with its arrival (Communicator::arrive_through_shm), so that all run the
// same one.
#pragma once

#include <cstddef>
#include <cstdint>
#include <unordered_map>

#include "engine/communicator.h"

namespace distml::engine {

constexpr int kVariants = 4;  // of Variant (communicator.h)

class VariantTuner {
 public:
  // Timed calls of each variant per comparison, and the untimed rounds
  // before them.
  static constexpr int kSamples = 7, kWarmup = 2;
  // A variant's untimed calls end early once they have taken this long: a
  // cold slot slows a call's first chunks, which a long call outgrows.
  static constexpr double kWarmupSeconds = 2e-3;
  // The next comparison comes after `explore_seconds` and after this many
  // calls of the variant chosen: a comparison of three variants costs
  // about 2 (kWarmup + kSamples) calls of the slower ones, under 4% of a
  // period.
  static constexpr int kPeriodCalls = 500;
  // A running variant's median beyond this multiple of its median when it
  // was chosen brings the next comparison forward, though not within a
  // tenth of the period (in time and in calls). The second comparison of a
  // size comes at that tenth as well: the first runs on the size's first
  // calls, cold, and its choice would otherwise stand for a whole period
  // (in a floor run, the allgather of 1 MiB kept the single copy chosen
  // there for all of its 220 calls, where staging was 16% faster).
  static constexpr double kDrift = 1.5;
  explicit VariantTuner(double explore_seconds) : explore_seconds_(explore_seconds) {}
  // The variant the next call `kind` of `bytes` runs, among those `offered`
  // (bits 1 << Variant); `now` in seconds of a steady clock. `in_place`
  // calls are a size class of their own: the engine says so where the
  // fastest variant differs by it (two ranks' allreduce of 4 MiB: the ring
  // out of place, staging in place; bench/results/closing.md).
  static constexpr unsigned kOfferAll = (1u << kVariants) - 1;
  Variant choose(Kind kind, std::size_t bytes, double now, unsigned offered = kOfferAll, bool in_place = false);
  // That call's time, in seconds.
  void record(Kind kind, std::size_t bytes, Variant variant, double seconds, bool in_place = false);
  // The median of `variant`'s latest times for `kind` of `bytes` (-1: none).
  double median(Kind kind, std::size_t bytes, Variant variant, bool in_place = false) const;

 private:
  struct Times {
    double last[kSamples] = {};  // a ring of the latest
    int count = 0;               // times recorded, up to kSamples
    int next = 0;
    double median() const;
    void add(double seconds);
  };
  struct SizeClass {
    Times variant[kVariants];  // by Variant
    // The comparison under way: its variants in their first round's order
    // (n of them; 0: none running), the calls it has handed out, and each
    // variant's calls handed out, untimed calls still to take and their
    // time so far, and untimed calls taken.
    int order[kVariants] = {};
    int n = 0;
    int calls = 0;
    int handed[kVariants] = {};
    int untimed[kVariants] = {};
    double untimed_seconds[kVariants] = {};
    int untimed_taken[kVariants] = {};
    bool known = false;   // a comparison has ended
    double compared_at = 0;  // when the last one handed out its last call
    int since = 0;            // calls of the chosen variant since then, up to kPeriodCalls
    int compared = 0;         // comparisons ended
    double chosen_median = 0;  // the chosen variant's median then
    int last = static_cast<int>(Variant::kSingleCopy);  // the variant chosen last
    void start(unsigned offered);
    bool done() const;
  };
  SizeClass& size_class(Kind kind, std::size_t bytes, bool in_place);
  static std::uint32_t key(Kind kind, std::size_t bytes, bool in_place);
  double explore_seconds_;
  std::unordered_map<std::uint32_t, SizeClass> classes_;
};

}  // namespace distml::engine

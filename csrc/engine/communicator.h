// The engine: one distml communicator. It checks a collective's arguments
// against the other ranks' (mismatch detection), picks the algorithm, runs it
// on the calling thread or queues it for the background thread (async
// collectives), finishes averages, and enforces the deadline.
//
// Ordering invariant (a broken one hangs the job): collectives on one
// communicator run one at a time, in the order the caller issued them, whether
// blocking or not. A blocking call issued while async work is queued waits
// for that work first.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "algorithms/schedule.h"
#include "common/types.h"
#include "transport/mpi_comm.h"
#include "transport/shm.h"

namespace distml::engine {

class VariantTuner;
// The variants of a shared-memory schedule node rank 0 chooses between by
// their times, as it hands them to its peers (ShmControl::choice). The ring
// over MPI stands in for two ranks' allreduce of ordinary arrays under
// `auto` (Communicator::pair_ring_offered).
enum class Variant : std::uint8_t { kStaged = 0, kSingleCopy = 1, kStagedStreaming = 2, kPairRing = 3 };

enum class Kind : std::uint8_t {
  kAllreduce = 0,
  kReduce = 1,
  kBroadcast = 2,
  kAllgather = 3,
  kReduceScatter = 4,
  kAlltoall = 5,
  kBarrier = 6,
  kAlltoallv = 7,
  kAllgatherv = 8,
};
constexpr int kKinds = 9;
const char* kind_name(Kind kind);

enum class Algo : std::uint8_t {
  kAuto = 0,
  kMpi = 1,
  kRing = 2,
  kRecursiveDoubling = 3,
  kTree = 4,
  kScatterAllgather = 5,
  kPairwise = 6,
  kDissemination = 7,
  kShm = 8,
  kHierarchical = 9,
  kHalvingDoubling = 10,
};
const char* algo_name(Algo algo);
// The algorithms `kind` accepts, "auto" and "mpi" first.
std::vector<Algo> accepted_algorithms(Kind kind);
// Parses an algorithm name for `kind`; throws InvalidArgument listing the
// names that `kind` accepts.
Algo parse_algo(Kind kind, const std::string& name);

constexpr int kMaxDims = 8;

struct Signature;  // what ranks compare before a collective (agreement.cpp)

// One collective call, as the Python layer describes it. Counts are in
// elements. For allgather `count` is one rank's contribution; for
// reduce_scatter and alltoall `count` is the whole input and `unit` the size
// of one row (elements per index of the first axis).
//
// alltoallv and allgatherv take two calls of their kind, told apart by
// `root`: the sizes round (root 0) exchanges one int64 per pair of ranks
// (`count` = P; `in` and `out` hold P int64), after which every rank knows
// what it receives and can allocate for it; the data round (root 1) moves
// the rows. In both `shape` is x's shape, whose first dimension the ranks do
// not compare; in the data round `count` (x's elements) is not compared
// either, and `rows` holds the row counts: send then receive per rank for
// alltoallv, every rank's for allgatherv.
struct Call {
  Kind kind = Kind::kBarrier;
  DType dtype = DType::kUInt8;
  Op op = Op::kSum;
  std::size_t count = 0;
  std::size_t unit = 1;
  int root = 0;
  Algo algo = Algo::kAuto;
  int ndim = 0;
  std::int64_t shape[kMaxDims] = {0};
  const void* in = nullptr;
  void* out = nullptr;
  // Set by the engine: the node-shared window `in` lives in (in-place calls
  // only), or -1, and the offset in it. Part of what ranks compare.
  int window = -1;
  std::uint64_t window_offset = 0;
  std::shared_ptr<const std::vector<std::int64_t>> rows;
  // Set when this rank cannot run the call (kInvalidArguments: a check only
  // it can make, like the root's out=; kNoMemory: its scratch memory could
  // not be allocated). It joins the agreement anyway, so that every rank
  // raises, and then raises itself.
  std::uint8_t invalid = 0;
};
constexpr std::uint8_t kInvalidArguments = 1, kNoMemory = 2;

// How a call will run, decided before the ranks agree and compared by them:
// the algorithm `auto` resolved to, the variant of its schedule that the
// size settings select, and the scratch memory it needs.
struct Plan {
  Algo algo = Algo::kAuto;
  std::uint8_t variant = 0;  // Variant bits
  std::size_t scratch = 0;         // bytes, on the communicator
  std::size_t scratch_across = 0;  // bytes, on the inter-node communicator
  bool has(std::uint8_t v) const { return (variant & v) != 0; }
};
// Variant bits: the data travels with the arrival (shared memory, small
// calls); peers' memory is read directly (cross-memory attach); in place in a
// node-shared window; results written with streaming stores; the data
// travels in the agreement's own messages (across nodes, small allreduce by
// recursive doubling; algorithms/carried.h); a staged schedule fills the
// slots peers read with streaming stores (only as node rank 0 chose,
// engine/variant_tuner.h).
constexpr std::uint8_t kEager = 1, kCrossMemory = 2, kInWindow = 4, kStream = 8, kCarried = 16,
                       kStreamSlots = 32;
std::string variant_name(Algo algo, std::uint8_t variant);

struct Settings {
  double timeout = 0;  // seconds; <= 0: none
  // With a timeout, rank 0 warns on stderr about ranks that have not arrived
  // after this many seconds; <= 0: half the timeout.
  double stall_warning = 0;
  bool check = true;   // mismatch detection
  algorithms::Tuning tuning;
  // auto picks the latency-oriented schedule at or below these sizes (bytes).
  std::size_t allreduce_small_bytes = 64 << 10;
  std::size_t broadcast_small_bytes = 256 << 10;
  std::size_t reduce_small_bytes = 64 << 10;
  // On a node of just two ranks, allreduce of ordinary arrays under `auto`
  // from the min to below the max may take the ring over MPI: out of place
  // it beat the shared-memory schedules there (1.6-2.5x MPI_Allreduce
  // against 1.4-2.0x, measured in mixed sequences of collectives), but in
  // place it lost to them by 10-35% in the machine's fast phase
  // (bench/results/closing.md). With shm_tune node rank 0 times it beside
  // the shared-memory variants (Variant::kPairRing); without, the ring runs
  // here. Arrays in a shared window stay on the shared-memory path.
  std::size_t pair_ring_min_bytes = 2 << 20;
  std::size_t pair_ring_max_bytes = 64 << 20;
  // Shared memory: each rank's two slots, and the most bytes a collective on
  // one node moves with its arrival, in one synchronisation (the eager path,
  // eager_shm.h; capped at ShmControl::kEagerBytes).
  std::size_t shm_slot_bytes = 1 << 20;
  std::size_t shm_one_shot_bytes = 16 << 10;
  // From this size on, and below the max, shm allreduce reads peers'
  // buffers directly (where the OS allows it) instead of staging them in
  // shared memory (never on nodes of more than two ranks; see setup_nodes).
  // Measured with two ranks: from 8 MiB, staging with streaming stores is
  // faster (by 10-15% at 16-64 MiB).
  std::size_t shm_single_copy_bytes = 256 << 10;
  std::size_t shm_single_copy_max_bytes = 8 << 20;
  // From this size on (the call's input), shm allgather, reduce_scatter and
  // alltoall read peers' arrays directly (where the OS allows it; the same
  // rule as above): one copy of each block instead of two through the
  // slots. Measured with two ranks: level with staging up to 256 KiB,
  // ahead above (bench/results/others_large.md).
  std::size_t shm_single_copy_blocks_bytes = 32 << 10;
  // From this size on, shm schedules write results that nothing reads back
  // during the collective with streaming stores, past the cache.
  std::size_t shm_stream_bytes = 8 << 20;
  // Where the thresholds above give allreduce, allgather or reduce_scatter
  // the single copy, or offers_single_copy offers it, node rank 0 chooses
  // between it and the staged schedule by their times
  // (engine/variant_tuner.h); off, the thresholds alone decide.
  bool shm_tune = true;
  bool shm = true;  // use the node's shared memory when every rank is on one node
  // Where ranks do not share one node and they agree on each call (the
  // mismatch check, or a timeout), allreduce up to this size moves its data
  // in the agreement's own messages: recursive doubling whose messages carry
  // the fingerprints (no timeout), or the arrival round through rank 0
  // (timeout), so that checking and reducing take one round of messages.
  // `auto` then takes recursive doubling on nodes of several ranks too.
  // Capped at algorithms::kCarryMaxBytes (through rank 0: that shared by
  // the other ranks). Measured on TCP between network namespaces (P=4, as
  // 2 hosts x 2 ranks and 4 x 1): carrying wins up to 32 KiB on unlimited
  // links, but from 16 KiB recursive doubling, which sends the whole
  // payload in every step, loses to the hierarchical schedule and to MPI
  // on links limited to 1 Gbit/s. Without a hierarchical layout (one rank
  // per node) and without a timeout, any non-zero value carries every
  // recursive doubling up to kCarryMaxBytes: there it only saves the
  // check's round (4 x 1: 1.38x/1.27x MPI at 16/32 KiB against
  // 1.08x/1.03x with a check round; level under 1 Gbit/s).
  std::size_t carry_bytes = 8 << 10;
  // Measured choices (distml.tune): per collective, (max bytes, algorithm)
  // rows in increasing size; the first row that fits and can run here wins
  // over the defaults above.
  std::vector<std::pair<std::size_t, Algo>> table[kKinds];
};

// One collective's passage through the engine, for timelines. Times are
// microseconds of the system clock, so that ranks' traces line up.
struct TraceEvent {
  std::uint64_t seq;
  Kind kind;
  DType dtype;
  Algo algo;
  std::uint8_t variant;  // Plan::variant: which of the algorithm's schedules ran
  std::uint64_t bytes;
  bool async;
  bool ok;
  double queued;   // submitted (== start for blocking calls)
  double start;    // began executing
  double arrived;  // every rank had arrived (the mismatch check passed)
  double end;      // done
};

// What finished calls kept alive (Communicator::submit's `keep`), waiting to
// be let go by a thread that may: the engine's thread never waits for the
// owner's locks (Python's GIL) between two collectives; the caller's next
// call into the engine drains it.
class Graveyard {
 public:
  void bury(std::shared_ptr<void> keep) {
    if (!keep) return;
    std::lock_guard<std::mutex> lk(mu_);
    buried_.push_back(std::move(keep));
  }
  // Releases everything buried so far, on the calling thread.
  void drain() {
    std::vector<std::shared_ptr<void>> gone;
    {
      std::lock_guard<std::mutex> lk(mu_);
      gone.swap(buried_);
    }
  }

 private:
  std::mutex mu_;
  std::vector<std::shared_ptr<void>> buried_;
};

// An async collective's state, shared by the queue and the caller's handle.
class Work {
 public:
  explicit Work(const Call& call);
  // Blocks until done; rethrows the collective's error.
  void wait();
  bool test();
  const Call& call() const { return call_; }
  // Where this call's kept objects go once it is done.
  Graveyard& graveyard() { return *graveyard_; }

 private:
  friend class Communicator;
  void finish(std::exception_ptr err);
  Call call_;
  double queued_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool done_ = false;
  std::exception_ptr err_;
  std::shared_ptr<void> keep_;
  std::shared_ptr<Graveyard> graveyard_;
};

class Communicator {
 public:
  Communicator(MPI_Comm user, const Settings& settings);
  ~Communicator();
  Communicator(const Communicator&) = delete;
  Communicator& operator=(const Communicator&) = delete;

  int rank() const { return rank_; }
  int size() const { return size_; }
  const Settings& settings() const { return settings_; }

  // Runs `call` to completion on the calling thread (after queued work).
  void run(const Call& call);
  // Queues `call` for the background thread and returns its handle. `keep`
  // holds what the call's buffers belong to: the engine keeps it until the
  // call has completed or failed, and drops it on the thread that ran it.
  std::shared_ptr<Work> submit(const Call& call, std::shared_ptr<void> keep = nullptr);
  // The algorithm `auto` resolves to for `call` (for diagnostics and tests).
  Algo resolve(const Call& call) const;
  // Changes settings once the collectives queued before have run, so that
  // no collective sees half a change. Settings that select schedules must
  // be changed on every rank between the same collectives: each collective
  // compares a fingerprint of them.
  void update_settings(const std::function<void(Settings&)>& change);
  // Compares every rank's settings and raises Mismatch on every rank, naming
  // the settings that differ (collective; once, after creation).
  void agree_settings();
  // Waits for queued work, stops the background thread, frees the MPI
  // communicator. Later calls raise Unusable. Idempotent.
  void free();
  // Stops the background thread (after the work queued on it) and leaves the
  // MPI objects to MPI_Finalize. Not collective: for communicators nobody
  // freed, at exit or when destroyed. Later calls raise Unusable.
  void abandon();
  // Lets go of what finished calls kept (see Graveyard); call it from a
  // thread that may release the callers' objects.
  void drain() { graveyard_->drain(); }
  bool broken() const { return broken_; }
  bool one_node() const { return one_node_; }
  // The node's ranks may copy between each other's memory (two ranks, where
  // the OS allows it; see ShmGroup::single_copy).
  bool single_copy() const;
  // Timeline recording: off by default; when on, each collective appends a
  // TraceEvent, which drain_trace() hands over.
  void set_trace(bool on) { trace_.store(on); }
  std::vector<TraceEvent> drain_trace();
  // Node-shared memory for arrays that allreduce without a copy (collective;
  // needs every rank on one node).
  std::shared_ptr<transport::ShmWindow> allocate_shared(std::size_t bytes);
  bool hierarchical() const { return across_ != nullptr; }
  const std::string& broken_reason() const { return broken_reason_; }

  // For tests of the choice by times: the median of a variant's latest
  // times on node rank 0 (-1: none, or not node rank 0); and a pause this
  // rank takes at the end of every call the choice covers, before it counts
  // as finished.
  double tuned_median(Kind kind, std::size_t bytes, Variant variant, bool in_place = false) const;
  void set_finish_delay(double seconds) { finish_delay_ = seconds; }
 private:
  void setup_nodes();
  void execute(const Call& in_call, double queued = -1, bool async = false);
  Plan plan(const Call& call) const;
  [[noreturn]] void raise_no_memory(const Call& call, const Plan& plan) const;
  // A failure after every rank agreed to run a call: the peers may be
  // waiting for this rank inside the schedule. Marks the communicator
  // broken; without a timeout, ends the job (see the definition).
  [[noreturn]] void fail_after_agreement(const Call& call, std::uint64_t seq, const char* what);
  void coordinate(const Call& call, const Plan& plan);
  void check_fingerprints(const Call& call, const Plan& plan, const Signature& mine);
  void arrive_through_root(const Call& call, const Plan& plan, const Signature& mine);
  // The most bytes an allreduce carries in the agreement's messages here
  // (0: none); the same on every rank whose settings agree.
  std::size_t carry_limit() const;
  // The payload room of every message of the arrival round through rank 0.
  std::size_t root_carry_bytes() const;
  // Whether `call` moves its data in the agreement's messages (kCarried).
  bool carried(const Call& call, Algo algo) const;
  // Scratch the agreement takes, carrying `carried_bytes` of data.
  std::size_t agreement_scratch(std::size_t carried_bytes) const;
  // Writes a carried, agreed result to `out` (finishing an average).
  void finish_carried(const Call& call, const void* result) const;
  void arrive_through_shm(const Call& call, const Signature& mine, bool eager);
  // Waits until every rank has entered collective `seq` on the node (who <
  // 0), or until node rank `who` has; raises Timeout at the deadline,
  // giving up through the arrival gate.
  void await_shm_arrival(Kind kind, std::uint64_t seq, int who);
  // Compares every rank's signature of the one-way collective this rank
  // returned from before they were compared (see arrive_through_shm);
  // raises Mismatch, as if `call` had not been started, where they differ.
  void check_one_way(const Call& call);
  // Whether `call` moves its data with the arrival on one node (small
  // collectives but barrier and the variable ones; see ShmControl::eager): the same answer
  // on every rank whose call agrees.
  bool eager(const Call& call, Algo algo) const;
  // Whether shm allgather, reduce_scatter or alltoall (`kind`) of `bytes`
  // (the call's input) takes its single-copy variant. On nodes of more than
  // two ranks only alltoall does: there allgather's single copy was
  // 1.13-1.17x MPI_Allgather from 256 KiB to 4 MiB against 1.29-1.55x
  // staged, and reduce_scatter's gained 5-15% only from 4 MiB
  // (bench/results/others_large.md, Intel machines); allgather's is offered
  // to the choice by times instead (offers_single_copy).
  bool blocks_single_copy(Kind kind, Algo algo, std::size_t bytes) const {
    return algo == Algo::kShm && shm_ && shm_->single_copy() && bytes >= settings_.shm_single_copy_blocks_bytes &&
           (shm_->size() == 2 || kind == Kind::kAlltoall);
  }
  // The variants node rank 0 chooses between for `plan` of `bytes` (the
  // call's input), as bits 1 << Variant (Settings::shm_tune; 0: the plan
  // runs as it is): all three where the plan takes the single copy (the
  // staged schedule may stand in for it); staging and staging with
  // streaming stores where it is staged (reduce too) from
  // kStreamSlotsMinBytes. The same answer on every rank whose plan agrees.
  unsigned offered_variants(const Call& call, const Plan& plan) const;
  // Whether `call` is one the ring over MPI may run in place of the
  // shared-memory schedule `auto` resolved (Settings::pair_ring_min_bytes).
  bool pair_ring_offered(const Call& call) const;
  // Above the data that travels with the arrival (ShmControl::kEagerBytes):
  // in the slow phase allreduce of 32 KiB took 9 us this way against 19-20
  // us staged at P = 2; in the fast phase both 7 us
  // (bench/results/stream_slots.md).
  static constexpr std::size_t kStreamSlotsMinBytes = std::size_t{16} << 10;
  // Whether shm allgather of `bytes` (each rank's block) or broadcast on a
  // node of more than two ranks offers its single copy to the choice by
  // times (Settings::shm_tune), which the thresholds never give it there:
  // staged allgather was 0.86-0.94x MPI_Allgather at P = 4 for blocks of
  // 512 KiB to 2 MiB on the AMD machines and the single copy 1.25-1.58x,
  // where on the Intel ones staging led (bench/results/host_phases.md);
  // staged broadcast of 4 MiB was 0.75x MPI_Bcast in the slow phase
  // (bench/results/phase_column.md).
  //
  // Also allreduce between two ranks past shm_single_copy_max_bytes: staged
  // with streaming stores it was ahead there on the Intel machines, and at
  // 128 MiB on the AMD ones 19 ms against the single copy's 23 ms in the
  // fast phase, but 61 ms against 18-19 ms in the slow one (MPI: 70 ms).
  bool offers_single_copy(Kind kind, Algo algo, std::size_t bytes) const {
    if (!(settings_.shm_tune && one_node_ && algo == Algo::kShm && shm_ && shm_->single_copy())) return false;
    if (kind == Kind::kAllreduce) return shm_->size() == 2 && bytes >= settings_.shm_single_copy_bytes;
    return shm_->size() > 2 && (kind == Kind::kAllgather || kind == Kind::kBroadcast) &&
           bytes >= kOfferedSingleCopyBytes;
  }
  static constexpr std::size_t kOfferedSingleCopyBytes = std::size_t{256} << 10;
  void dispatch(const Call& call, const Plan& plan);
  void worker_loop();
  transport::ShmGroup& shm_group();
  // Throws InvalidArgument when `algo` cannot run on this communicator.
  void check_available(Algo algo) const;
  bool available(Algo algo) const;
  void start_deadline();
  void clear_deadline();
  void ensure_usable() const;

  std::unique_ptr<transport::MpiComm> comm_;
  // This rank's node (when shared memory is enabled and the node holds more
  // than one rank), whether it holds every rank, and, for several nodes of
  // equal size, the ranks with the same node rank on the other nodes.
  std::unique_ptr<transport::ShmGroup> shm_;
  bool one_node_ = false;
  std::unique_ptr<transport::MpiComm> across_;
  int rank_ = 0;
  int size_ = 1;
  Settings settings_;
  bool threaded_ = true;
  // How ranks arrive at each collective, fixed at creation from agreed
  // settings (a per-rank choice would have ranks speak different protocols).
  enum class Arrival { kNone, kShm, kRoot, kFingerprint } arrival_ = Arrival::kNone;
  std::uint64_t settings_hash_ = 0;
  std::uint64_t inject_at_ = 0;  // DISTML_INJECT_FAULT: the collective this rank fails
  std::shared_ptr<Graveyard> graveyard_ = std::make_shared<Graveyard>();
  void rehash_settings();

  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::shared_ptr<Work>> queue_;
  bool running_ = false;
  bool stopping_ = false;
  std::thread worker_;

  std::uint64_t seq_ = 0;  // collectives started on this communicator
  // The one-way collective (a small broadcast on one node) this rank
  // returned from before every rank's call was compared, or 0; checked at
  // the start of the next collective.
  std::uint64_t unchecked_ = 0;
  Kind unchecked_kind_ = Kind::kBroadcast;
  // Whether the collective being executed may be one-way: blocking calls
  // only, so that an async call's handle reports its own mismatch (the
  // caller may never wait for the handle of the call after it).
  bool one_way_allowed_ = false;
  // On node rank 0 where the single copy is possible: the choice between
  // the variants, and the one made for the collective being executed (-1:
  // none), which arrive_through_shm hands to the other ranks.
  std::unique_ptr<VariantTuner> tuner_;
  int choice_ = -1;
  // The last tuned call, timed once every rank has arrived at the next one
  // (and so finished it): to the latest of their ends, not rank 0's own (a
  // staged schedule lets rank 0 leave while its peers still copy out).
  struct Pending {
    bool valid = false;
    std::uint64_t seq = 0;
    Kind kind = Kind::kAllreduce;
    std::size_t bytes = 0;
    Variant variant = Variant::kStaged;
    bool in_place = false;  // its size class (VariantTuner::choose)
    double start = 0, end = 0;  // rank 0's, seconds of the steady clock
  } pending_;
  void record_pending();
  double finish_delay_ = 0;  // set_finish_delay
  std::uint64_t comm_id_ = 0;  // shared by this communicator's ranks
  std::atomic<bool> trace_{false};
  std::mutex trace_mu_;
  std::vector<TraceEvent> events_;
  bool broken_ = false;
  std::string broken_reason_;
  bool freed_ = false;
};

}  // namespace distml::engine

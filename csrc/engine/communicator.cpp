// A communicator's life (creation, free, abandon) and the passage of one
// collective through the engine: plan, reserve, agree, dispatch, and what
// happens when any of it fails.
#include "engine/communicator.h"

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <limits>
#include <random>
#include <sstream>
#include <thread>

#include "common/aligned_buffer.h"
#include "common/error.h"
#include "engine/internal.h"
#include "engine/variant_tuner.h"
#include "transport/topology.h"

namespace distml::engine {

namespace tp = distml::transport;

namespace {
// On nodes of more than two ranks, alltoall's single copy from this size
// (the call's input); see setup_nodes.
constexpr std::size_t kNodeAlltoallSingleCopyBytes = std::size_t{512} << 10;
// How long a variant of a shared-memory schedule goes untimed before node
// rank 0 runs it again (VariantTuner): the machine's phases last seconds
// to minutes.
constexpr double kTuneExploreSeconds = 0.5;

double steady_seconds() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// A node rank's end of collective `seq` (ShmControl::done_seq), and node
// rank 0's reading of it: seconds of the steady clock, or a negative value
// if the rank has since finished another (or not yet this one).
void stamp_done(tp::ShmControl& c, std::uint64_t seq) {
  const auto ns = std::chrono::duration_cast<std::chrono::nanoseconds>(
      std::chrono::steady_clock::now().time_since_epoch()).count();
  c.done_seq.store(0, std::memory_order_relaxed);
  std::atomic_thread_fence(std::memory_order_release);
  c.done_ns.store(static_cast<std::uint64_t>(ns), std::memory_order_relaxed);
  c.done_seq.store(seq, std::memory_order_release);
}

double done_at(const tp::ShmControl& c, std::uint64_t seq) {
  const std::uint64_t s1 = c.done_seq.load(std::memory_order_acquire);
  const std::uint64_t ns = c.done_ns.load(std::memory_order_relaxed);
  std::atomic_thread_fence(std::memory_order_acquire);
  const std::uint64_t s2 = c.done_seq.load(std::memory_order_relaxed);
  return s1 == seq && s2 == seq ? static_cast<double>(ns) * 1e-9 : -1;
}
}  // namespace

// ---- Communicator -------------------------------------------------------

Communicator::Communicator(MPI_Comm user, const Settings& settings)
    : comm_(std::make_unique<tp::MpiComm>(user)), settings_(settings) {
  rank_ = comm_->rank();
  size_ = comm_->size();
  int provided = MPI_THREAD_SINGLE;
  MPI_Query_thread(&provided);
  // Without MPI_THREAD_MULTIPLE the background thread could call MPI while the
  // user's thread does; async collectives then run at submission instead.
  threaded_ = provided == MPI_THREAD_MULTIPLE;
  // An identifier for this communicator that all its ranks share.
  if (rank_ == 0) comm_id_ = (static_cast<std::uint64_t>(std::random_device{}()) << 32) ^ std::random_device{}();
  DISTML_MPI(MPI_Bcast(&comm_id_, 1, MPI_UINT64_T, 0, comm_->raw()));

  if (settings_.shm && size_ > 1) setup_nodes();
  if (one_node_ && shm_->rank() == 0) tuner_ = std::make_unique<VariantTuner>(kTuneExploreSeconds);
  if (size_ == 1) arrival_ = Arrival::kNone;
  else if (one_node_) arrival_ = Arrival::kShm;  // a flag per rank: free enough to do always
  else if (settings_.timeout > 0) arrival_ = Arrival::kRoot;
  else if (settings_.check) arrival_ = Arrival::kFingerprint;
  else arrival_ = Arrival::kNone;
  rehash_settings();
  if (const char* fault = std::getenv("DISTML_INJECT_FAULT")) {
    // "RANK:N": this rank fails collective number N right after every rank
    // agreed to run it, as an MPI error or a vanished peer would (testing).
    int r = -1;
    unsigned long long n = 0;
    if (std::sscanf(fault, "%d:%llu", &r, &n) == 2 && r == rank_) inject_at_ = n;
  }
}

double Communicator::tuned_median(Kind kind, std::size_t bytes, Variant variant, bool in_place) const {
  return tuner_ ? tuner_->median(kind, bytes, variant, in_place) : -1;
}

void Communicator::record_pending() {
  if (!pending_.valid) return;
  pending_.valid = false;
  // A peer that has since finished another call (one-way broadcasts go on
  // without rank 0) leaves rank 0's own end.
  double end = pending_.end;
  for (int r = 1; r < shm_->size(); ++r) {
    const double t = done_at(shm_->control(r), pending_.seq);
    if (t < 0) {
      end = pending_.end;
      break;
    }
    end = std::max(end, t);
  }
  tuner_->record(pending_.kind, pending_.bytes, pending_.variant, end - pending_.start, pending_.in_place);
}

bool Communicator::single_copy() const { return shm_ && shm_->single_copy(); }

// Finds this rank's node (MPI_COMM_TYPE_SHARED) and decides, identically on
// every rank, between one node with shared memory for everything, several
// equal nodes with a hierarchical allreduce, or plain MPI.
void Communicator::setup_nodes() {
  const tp::NodeLayout nodes(*comm_);
  // Measured with 4 ranks on one node (two cores): staging through the slots
  // beats reading three peers' arrays directly at every size for allreduce
  // (by 1.2-1.3x from 8 to 64 MiB); with two ranks reading directly wins
  // from 256 KiB. alltoall reads its blocks from the peers' arrays from
  // 512 KiB on nodes of more than two ranks: at P = 4 1.12-1.20x
  // MPI_Alltoall from 512 KiB to 4 MiB, against 1.04x staged at 512 KiB and
  // 0.97-1.14x for pairwise (level from 16 MiB); at P = 3 staging stays
  // ahead at 384 KiB (bench/results/others_large.md).
  if (nodes.largest() > 2) {
    settings_.shm_single_copy_bytes = std::numeric_limits<std::size_t>::max();
    settings_.shm_single_copy_blocks_bytes = kNodeAlltoallSingleCopyBytes;
  }
  if (nodes.one_node()) {
    one_node_ = true;
    shm_ = std::make_unique<tp::ShmGroup>(nodes.node(), settings_.shm_slot_bytes, comm_.get());
  } else if (nodes.equal_nodes()) {
    shm_ = std::make_unique<tp::ShmGroup>(nodes.node(), settings_.shm_slot_bytes, comm_.get());
    tp::UniqueComm across;
    nodes.split_across(*comm_, across);
    across_ = std::make_unique<tp::MpiComm>(across.get());
  }
}

// Not a collective: when a destructor runs depends on each rank's garbage
// collector. A communicator that was not freed stops its thread (after the
// work queued on it) and leaves its MPI objects to MPI_Finalize.
Communicator::~Communicator() { abandon(); }

void Communicator::abandon() {
  {
    std::lock_guard<std::mutex> lk(mu_);
    stopping_ = true;
    cv_.notify_all();
  }
  if (worker_.joinable()) worker_.join();
  std::lock_guard<std::mutex> lk(mu_);
  if (freed_) return;
  freed_ = true;
  if (shm_) shm_->abandon();
  if (across_) across_->abandon();
  if (comm_) comm_->abandon();
}

void Communicator::ensure_usable() const {
  if (freed_) DISTML_THROW(Unusable, "the communicator has been freed");
  if (broken_) DISTML_THROW(Unusable, "the communicator is broken and cannot be used: " << broken_reason_);
}

void Communicator::free() {
  {
    std::unique_lock<std::mutex> lk(mu_);
    if (freed_) return;
    stopping_ = true;
    cv_.notify_all();
  }
  if (worker_.joinable()) worker_.join();
  std::lock_guard<std::mutex> lk(mu_);
  freed_ = true;
  if (shm_) shm_->close();
  shm_.reset();
  across_.reset();
  comm_.reset();
}

void Communicator::start_deadline() {
  comm_->start_deadline(settings_.timeout);
  if (across_) across_->start_deadline(settings_.timeout);
}

void Communicator::clear_deadline() {
  comm_->clear_deadline();
  if (across_) across_->clear_deadline();
}

std::shared_ptr<tp::ShmWindow> Communicator::allocate_shared(std::size_t bytes) {
  // Collective, so in order with the collectives queued before it.
  std::unique_lock<std::mutex> lk(mu_);
  cv_.wait(lk, [&] { return queue_.empty() && !running_; });
  ensure_usable();
  if (!one_node_) DISTML_THROW(InvalidArgument, "shared buffers need every rank on one node (and more than one rank)");
  return shm_->allocate(bytes);
}

std::vector<TraceEvent> Communicator::drain_trace() {
  std::lock_guard<std::mutex> lk(trace_mu_);
  std::vector<TraceEvent> out;
  out.swap(events_);
  return out;
}

tp::ShmGroup& Communicator::shm_group() { return *shm_; }

void Communicator::execute(const Call& in_call, double queued, bool async) {
  {
    std::lock_guard<std::mutex> lk(mu_);
    ensure_usable();
  }
  const bool tracing = trace_.load(std::memory_order_relaxed);
  TraceEvent ev{};
  if (tracing) {
    ev.start = now_us();
    ev.queued = queued < 0 ? ev.start : queued;
    ev.async = async;
  }
  Call call = in_call;
  if (one_node_ && call.kind == Kind::kAllreduce && call.in == call.out && call.count > 0) {
    std::size_t offset = 0;
    if (auto w = shm_->find(call.in, call.count * dtype_size(call.dtype), &offset)) {
      call.window = w->id();
      call.window_offset = offset;
    }
  }
  const Plan plan = this->plan(call);  // refuses before any communication
  const std::uint64_t seq = ++seq_;
  // The plan that runs: another variant of its shared-memory schedule (or
  // the ring, for two ranks' allreduce) may stand in, as node rank 0 chose
  // (variant_tuner.h; read after the arrival).
  Plan ran = plan;
  const std::size_t call_bytes = call.count * dtype_size(call.dtype);
  const unsigned offered = offered_variants(call, plan);
  const bool tuned = offered != 0;
  const bool choosing = tuned && tuner_;  // node rank 0 chooses and times
  const double t0 = choosing ? steady_seconds() : 0;
  // Where the ring is offered, calls in place have a size class of their
  // own: in place the ring loses, out of place it wins (variant_tuner.h).
  // Elsewhere both forms share one, so that a job that makes both compares
  // once, not twice: each comparison of a 128 MiB allreduce runs the staged
  // variants, three times the single copy's time in the slow phase, for
  // some 16 of its calls.
  const bool in_place =
      call.in == call.out && (offered & (1u << static_cast<int>(Variant::kPairRing))) != 0;
  choice_ = choosing ? static_cast<int>(tuner_->choose(call.kind, call_bytes, t0, offered, in_place)) : -1;
  comm_->set_epoch(seq);
  if (across_) across_->set_epoch(seq);
  // Whatever can fail on this rank alone is acquired before the agreement,
  // so that a failure here reaches every rank through it.
  const std::size_t no_data = agreement_scratch(0);
  try {
    comm_->scratch().reserve(call.invalid ? no_data : plan.scratch);
    if (across_) across_->scratch().reserve(call.invalid ? 0 : plan.scratch_across);
  } catch (const std::bad_alloc&) {
    call.invalid = kNoMemory;
    comm_->scratch().reserve(no_data);
  }
  start_deadline();
  bool arrived = false;
  auto record = [&](bool ok) {
    if (!tracing) return;
    ev.seq = seq;
    ev.kind = call.kind;
    ev.dtype = call.dtype;
    ev.algo = ran.algo;
    ev.variant = ran.variant;
    ev.bytes = call.count * dtype_size(call.dtype);
    ev.ok = ok;
    ev.end = now_us();
    if (!arrived) ev.arrived = ev.end;
    std::lock_guard<std::mutex> lk(trace_mu_);
    events_.push_back(ev);
  };
  one_way_allowed_ = !async;
  try {
    coordinate(call, plan);
    arrived = true;
    if (tracing) ev.arrived = now_us();
    if (tuner_) record_pending();
    if (!call.invalid) {
      if (seq == inject_at_) DISTML_THROW(Error, "injected fault (DISTML_INJECT_FAULT) on rank " << rank_);
      const auto variant = static_cast<Variant>(tuned ? shm_->control(0).choice[seq & 1] : 0);
      if (tuned && variant == Variant::kPairRing) {
        // Two ranks' allreduce: the ring over MPI, whose scratch plan()
        // reserved beside the shared-memory schedule's.
        ran.algo = Algo::kRing;
        ran.variant = 0;
      } else if (tuned && variant != Variant::kSingleCopy) {
        ran.variant &= static_cast<std::uint8_t>(~kCrossMemory);
        if (variant == Variant::kStagedStreaming) ran.variant |= kStreamSlots;
      }
      dispatch(call, ran);
      if (tuned) {
        if (finish_delay_ > 0) std::this_thread::sleep_for(std::chrono::duration<double>(finish_delay_));
        stamp_done(shm_->control(shm_->rank()), seq);
      }
      if (choosing) pending_ = Pending{true, seq, call.kind, call_bytes, variant, in_place, t0, steady_seconds()};
    }
  } catch (const Timeout& e) {
    record(false);
    clear_deadline();
    std::ostringstream os;
    os << kind_name(call.kind) << " (collective #" << seq << " on this communicator) timed out after "
       << settings_.timeout << " s on rank " << rank_ << ": ";
    if (arrived) os << "every rank had arrived (some may have given up since), then " << e.what();
    else os << e.what();
    std::lock_guard<std::mutex> lk(mu_);
    broken_ = true;
    broken_reason_ = os.str();
    throw Timeout(os.str());
  } catch (const Mismatch&) {
    // Every rank reached this verdict before any data moved.
    record(false);
    clear_deadline();
    if (call.invalid == kNoMemory) raise_no_memory(call, plan);
    throw;
  } catch (const std::exception& e) {
    record(false);
    clear_deadline();
    if (size_ > 1) fail_after_agreement(call, seq, e.what());
    throw;
  }
  record(!call.invalid);
  clear_deadline();
  comm_->scratch().trim();
  if (across_) across_->scratch().trim();
  if (call.invalid == kNoMemory) raise_no_memory(call, plan);
  if (call.invalid) DISTML_THROW(InvalidArgument, "invalid arguments on rank " << rank_);
}

void Communicator::raise_no_memory(const Call& call, const Plan& plan) const {
  DISTML_THROW(NoMemory, kind_name(call.kind) << " needs " << plan.scratch + plan.scratch_across
                                             << " bytes of scratch memory, which rank " << rank_
                                             << " could not allocate (the other ranks raise too)");
}

// The peers of this rank have agreed to run `call` and may be waiting for it
// inside the schedule, where nothing but a deadline releases them. With a
// timeout they raise CommTimeoutError when it passes (the communicator is
// broken on every rank). Without one they would wait forever, so the job is
// ended, as MPI's default error handler and Horovod do, with the reason on
// stderr. Messages of an abandoned collective carry its number in their tags
// (MpiComm::set_epoch), so none can be taken for a later one.
void Communicator::fail_after_agreement(const Call& call, std::uint64_t seq, const char* what) {
  std::ostringstream os;
  os << kind_name(call.kind) << " (collective #" << seq << " on this communicator) failed on rank " << rank_
     << " after every rank had agreed to run it: " << what;
  {
    std::lock_guard<std::mutex> lk(mu_);
    broken_ = true;
    broken_reason_ = os.str();
  }
  if (settings_.timeout <= 0) {
    std::fprintf(stderr,
                 "distml: fatal: %s\n"
                 "distml: no timeout is set, so the other ranks would wait for rank %d forever: aborting the job "
                 "(set a timeout, e.g. distml.init(timeout=60) or DISTML_TIMEOUT=60, to have every rank raise "
                 "instead)\n",
                 os.str().c_str(), rank_);
    std::fflush(stderr);
    MPI_Abort(comm_->raw(), 1);
  }
  throw;
}
}  // namespace distml::engine

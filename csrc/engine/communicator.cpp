#include "engine/communicator.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <limits>
#include <map>
#include <random>
#include <sstream>

#include "common/aligned_buffer.h"
#include "common/error.h"
#include "kernels/reduce.h"
#include "transport/mpi_collectives.h"

namespace distml::engine {

namespace alg = distml::algorithms;
namespace tp = distml::transport;
using transport::Request;

const char* kind_name(Kind kind) {
  switch (kind) {
    case Kind::kAllreduce: return "allreduce";
    case Kind::kReduce: return "reduce";
    case Kind::kBroadcast: return "broadcast";
    case Kind::kAllgather: return "allgather";
    case Kind::kReduceScatter: return "reduce_scatter";
    case Kind::kAlltoall: return "alltoall";
    case Kind::kBarrier: return "barrier";
    case Kind::kAlltoallv: return "alltoallv";
    case Kind::kAllgatherv: return "allgatherv";
  }
  return "unknown";
}

const char* algo_name(Algo algo) {
  switch (algo) {
    case Algo::kAuto: return "auto";
    case Algo::kMpi: return "mpi";
    case Algo::kRing: return "ring";
    case Algo::kRecursiveDoubling: return "recursive_doubling";
    case Algo::kTree: return "tree";
    case Algo::kScatterAllgather: return "scatter_allgather";
    case Algo::kPairwise: return "pairwise";
    case Algo::kDissemination: return "dissemination";
    case Algo::kShm: return "shm";
    case Algo::kHierarchical: return "hierarchical";
  }
  return "unknown";
}

namespace {

// The algorithms each collective accepts, "auto" and "mpi" first.
std::vector<Algo> accepted(Kind kind) {
  switch (kind) {
    case Kind::kAllreduce:
      return {Algo::kAuto, Algo::kMpi, Algo::kRing, Algo::kRecursiveDoubling, Algo::kShm,
              Algo::kHierarchical};
    case Kind::kReduce: return {Algo::kAuto, Algo::kMpi, Algo::kTree, Algo::kRing, Algo::kShm};
    case Kind::kBroadcast:
      return {Algo::kAuto, Algo::kMpi, Algo::kTree, Algo::kScatterAllgather, Algo::kShm};
    case Kind::kAllgather: return {Algo::kAuto, Algo::kMpi, Algo::kRing, Algo::kShm};
    case Kind::kReduceScatter: return {Algo::kAuto, Algo::kMpi, Algo::kRing, Algo::kShm};
    case Kind::kAlltoall: return {Algo::kAuto, Algo::kMpi, Algo::kPairwise};
    case Kind::kBarrier: return {Algo::kAuto, Algo::kMpi, Algo::kDissemination, Algo::kShm};
    case Kind::kAlltoallv:
    case Kind::kAllgatherv: return {Algo::kAuto, Algo::kMpi, Algo::kPairwise, Algo::kShm};
  }
  return {};
}

bool is_variable(Kind kind) { return kind == Kind::kAlltoallv || kind == Kind::kAllgatherv; }

bool is_reduction(Kind kind) {
  return kind == Kind::kAllreduce || kind == Kind::kReduce || kind == Kind::kReduceScatter;
}

}  // namespace

// What ranks compare before a collective moves data. Fixed layout, so that
// ranks can exchange it as bytes (128 bytes: it fits a control block's note).
struct Signature {
  std::uint8_t kind, dtype, op, algo;
  // The plan: what `algo` resolved to and the variant of its schedule.
  std::uint8_t resolved, variant;
  std::uint8_t invalid;  // Call::invalid
  std::uint8_t ndim;
  std::int32_t root, window;
  std::uint64_t count, unit;
  std::uint64_t window_offset;
  std::int64_t shape[kMaxDims];
  // A fingerprint of the settings that select and shape schedules.
  std::uint64_t settings;
  // Which communicator and which of its collectives this is, so that a
  // message left over from a broken communicator (whose MPI context a new
  // one may reuse) is never taken for a current one.
  std::uint64_t comm_id, seq;
};
static_assert(sizeof(Signature) == 128, "Signature must stay 128 bytes");

Signature signature_of(const Call& c, const Plan& plan, std::uint64_t settings) {
  Signature s;
  std::memset(&s, 0, sizeof s);
  s.kind = static_cast<std::uint8_t>(c.kind);
  s.dtype = static_cast<std::uint8_t>(c.dtype);
  s.op = is_reduction(c.kind) ? static_cast<std::uint8_t>(c.op) : 0;
  s.algo = static_cast<std::uint8_t>(c.algo);
  s.resolved = static_cast<std::uint8_t>(plan.algo);
  s.variant = plan.variant;
  s.root = (c.kind == Kind::kReduce || c.kind == Kind::kBroadcast) ? c.root : 0;
  s.count = c.count;
  s.unit = c.unit;
  s.ndim = static_cast<std::uint8_t>(c.ndim);
  s.window = c.window;
  s.window_offset = c.window_offset;
  s.invalid = c.invalid;
  for (int i = 0; i < c.ndim && i < kMaxDims; ++i) s.shape[i] = c.shape[i];
  if (is_variable(c.kind)) {
    // Rows per rank may differ; the round, dtype and row shape may not.
    s.root = c.root;
    s.shape[0] = 0;
    if (c.root != 0) s.count = 0;
  }
  s.settings = settings;
  return s;
}

namespace {

std::uint64_t fnv1a(const void* data, std::size_t n) {
  std::uint64_t h = 1469598103934665603ull;
  auto* p = static_cast<const unsigned char*>(data);
  for (std::size_t i = 0; i < n; ++i) h = (h ^ p[i]) * 1099511628211ull;
  return h;
}

bool same_signature(const Signature& a, const Signature& b) {
  return std::memcmp(&a, &b, sizeof(Signature)) == 0;
}

std::string shape_str(const Signature& s) {
  std::ostringstream os;
  os << "(";
  for (int i = 0; i < s.ndim && i < kMaxDims; ++i) os << s.shape[i] << (s.ndim == 1 ? "," : (i + 1 < s.ndim ? ", " : ""));
  os << ")";
  return os.str();
}

// "float32 on ranks [0, 2]; float64 on rank [1]"
template <class F>
std::string describe_field(const std::vector<Signature>& sigs, F&& value_of) {
  std::map<std::string, std::vector<int>> groups;
  for (std::size_t r = 0; r < sigs.size(); ++r) groups[value_of(sigs[r])].push_back(static_cast<int>(r));
  if (groups.size() <= 1) return "";
  std::ostringstream os;
  bool first = true;
  for (auto& [value, ranks] : groups) {
    if (!first) os << "; ";
    first = false;
    os << value << " on rank" << (ranks.size() > 1 ? "s " : " ");
    for (std::size_t i = 0; i < ranks.size(); ++i) os << (i ? ", " : "") << ranks[i];
  }
  return os.str();
}

}  // namespace

std::string variant_name(Algo algo, std::uint8_t variant) {
  std::string name = algo_name(algo);
  if (variant & kEager) name += " (data with the arrival)";
  if (variant & kCrossMemory) name += " (cross-memory reads of peers' arrays)";
  if (variant & kInWindow) name += " (in place in a shared window)";
  if (variant & kStream) name += " (streaming stores)";
  return name;
}

Algo parse_algo(Kind kind, const std::string& name) {
  for (Algo a : accepted(kind)) {
    if (name == algo_name(a)) return a;
  }
  std::ostringstream os;
  os << "algorithm " << "'" << name << "' is not one of " << kind_name(kind) << "'s: ";
  bool first = true;
  for (Algo a : accepted(kind)) {
    os << (first ? "" : ", ") << "'" << algo_name(a) << "'";
    first = false;
  }
  DISTML_THROW(InvalidArgument, os.str());
}

namespace {
double now_us() {
  return std::chrono::duration<double, std::micro>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}
}  // namespace

// ---- Work -------------------------------------------------------------

Work::Work(const Call& call) : call_(call), queued_(now_us()) {}

void Work::finish(std::exception_ptr err) {
  std::shared_ptr<void> keep;
  {
    std::lock_guard<std::mutex> lk(mu_);
    err_ = err;
    done_ = true;
    keep.swap(keep_);
    cv_.notify_all();
  }
  // Not released here: the buffers' owner may need locks of its own
  // (Python's GIL) to let go, and this thread has the next call to run.
  if (graveyard_) graveyard_->bury(std::move(keep));
}

void Work::wait() {
  std::unique_lock<std::mutex> lk(mu_);
  cv_.wait(lk, [&] { return done_; });
  if (err_) std::rethrow_exception(err_);
}

bool Work::test() {
  std::lock_guard<std::mutex> lk(mu_);
  return done_;
}

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

// Finds this rank's node (MPI_COMM_TYPE_SHARED) and decides, identically on
// every rank, between one node with shared memory for everything, several
// equal nodes with a hierarchical allreduce, or plain MPI.
void Communicator::setup_nodes() {
  tp::UniqueComm node;
  DISTML_MPI(MPI_Comm_split_type(comm_->raw(), MPI_COMM_TYPE_SHARED, rank_, MPI_INFO_NULL, node.out()));
  int node_size = 0, node_rank = 0;
  DISTML_MPI(MPI_Comm_size(node.get(), &node_size));
  DISTML_MPI(MPI_Comm_rank(node.get(), &node_rank));
  int sizes[2] = {node_size, -node_size}, extremes[2] = {0, 0};
  DISTML_MPI(MPI_Allreduce(sizes, extremes, 2, MPI_INT, MPI_MAX, comm_->raw()));
  const int largest = extremes[0], smallest = -extremes[1];
  // Measured with 4 ranks on one node (two cores): staging through the slots
  // beats reading three peers' arrays directly at every size (by 1.2-1.3x
  // from 8 to 64 MiB); with two ranks reading directly wins from 256 KiB.
  if (largest > 2) settings_.shm_single_copy_bytes = std::numeric_limits<std::size_t>::max();
  if (largest == size_) {
    one_node_ = true;
    shm_ = std::make_unique<tp::ShmGroup>(node.get(), settings_.shm_slot_bytes, comm_.get());
  } else if (smallest == largest && largest > 1) {
    shm_ = std::make_unique<tp::ShmGroup>(node.get(), settings_.shm_slot_bytes, comm_.get());
    tp::UniqueComm across;
    DISTML_MPI(MPI_Comm_split(comm_->raw(), node_rank, rank_, across.out()));
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

void Communicator::run(const Call& call) {
  std::unique_lock<std::mutex> lk(mu_);
  ensure_usable();
  if (queue_.empty() && !running_) {
    running_ = true;
    lk.unlock();
    std::exception_ptr err;
    try {
      execute(call);
    } catch (...) {
      err = std::current_exception();
    }
    lk.lock();
    running_ = false;
    cv_.notify_all();
    lk.unlock();
    if (err) std::rethrow_exception(err);
    return;
  }
  lk.unlock();
  submit(call)->wait();
}

std::shared_ptr<Work> Communicator::submit(const Call& call, std::shared_ptr<void> keep) {
  auto work = std::make_shared<Work>(call);
  work->keep_ = std::move(keep);
  work->graveyard_ = graveyard_;
  if (!threaded_) {
    std::exception_ptr err;
    try {
      run(call);
    } catch (...) {
      err = std::current_exception();
    }
    work->finish(err);
    return work;
  }
  std::unique_lock<std::mutex> lk(mu_);
  try {
    ensure_usable();
  } catch (...) {
    lk.unlock();
    work->finish(nullptr);  // hands back what it kept
    throw;
  }
  if (!worker_.joinable()) worker_ = std::thread([this] { worker_loop(); });
  queue_.push_back(work);
  cv_.notify_all();
  return work;
}

void Communicator::worker_loop() {
  std::unique_lock<std::mutex> lk(mu_);
  for (;;) {
    cv_.wait(lk, [&] { return (!queue_.empty() && !running_) || (stopping_ && queue_.empty()); });
    if (queue_.empty()) return;  // stopping, and nothing left to do
    auto work = queue_.front();
    queue_.pop_front();
    running_ = true;
    lk.unlock();
    std::exception_ptr err;
    try {
      execute(work->call(), work->queued_, true);
    } catch (...) {
      err = std::current_exception();
    }
    // Done before the engine counts as idle: whoever waits for idleness
    // (a settings change, a blocking call) sees every earlier call done.
    work->finish(err);
    lk.lock();
    running_ = false;
    cv_.notify_all();
  }
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

bool Communicator::available(Algo algo) const {
  if (algo == Algo::kShm) return one_node_;
  if (algo == Algo::kHierarchical) return across_ != nullptr;
  return true;
}

Algo Communicator::resolve(const Call& call) const {
  if (call.algo != Algo::kAuto) return call.algo;
  const std::size_t bytes = call.count * dtype_size(call.dtype);
  for (const auto& [max_bytes, algo] : settings_.table[static_cast<int>(call.kind)]) {
    if (bytes <= max_bytes && available(algo)) return algo;
  }
  switch (call.kind) {
    case Kind::kAllreduce:
      if (one_node_ && size_ == 2 && call.window < 0 && bytes >= settings_.pair_ring_min_bytes &&
          bytes < settings_.pair_ring_max_bytes) {
        return Algo::kRing;
      }
      if (one_node_) return Algo::kShm;
      if (across_) return Algo::kHierarchical;
      return bytes <= settings_.allreduce_small_bytes ? Algo::kRecursiveDoubling : Algo::kRing;
    case Kind::kReduce:
      if (one_node_) return Algo::kShm;
      return bytes <= settings_.reduce_small_bytes ? Algo::kTree : Algo::kRing;
    case Kind::kBroadcast:
      if (one_node_) return Algo::kShm;
      return bytes <= settings_.broadcast_small_bytes ? Algo::kTree : Algo::kScatterAllgather;
    case Kind::kAllgather:
    case Kind::kReduceScatter:
      return one_node_ ? Algo::kShm : Algo::kRing;
    case Kind::kAlltoall:
    case Kind::kAlltoallv:
    case Kind::kAllgatherv:
      return Algo::kPairwise;
    case Kind::kBarrier:
      return one_node_ ? Algo::kShm : Algo::kDissemination;
  }
  return Algo::kMpi;
}

// The scratch each schedule takes (see the schedules' take() calls), plus
// the agreement's own round. Every piece is rounded as Scratch::take rounds.
Plan Communicator::plan(const Call& c) const {
  Plan p;
  p.algo = resolve(c);
  check_available(p.algo);
  const std::size_t elem = dtype_size(c.dtype), bytes = c.count * elem;
  const int P = size_;
  const bool in_place = c.in == c.out;
  auto R = [](std::size_t n) { return Scratch::rounded(n); };
  std::size_t s = R(2 * sizeof(std::uint64_t));  // check_fingerprints
  if (eager(c, p.algo)) {
    p.variant |= kEager;
    p.scratch = s;
    return p;
  }
  // (A row of zero elements: reduce_scatter of an array with an empty axis.)
  const std::size_t block0 = c.unit == 0 ? 0 : alg::Blocks{c.count, P, c.unit}.size(0) * elem;
  switch (c.kind) {
    case Kind::kAllreduce:
      if (p.algo == Algo::kRecursiveDoubling && P > 1) {
        s += R(bytes);
      } else if (p.algo == Algo::kRing && in_place) {
        s += R(block0);
      } else if (p.algo == Algo::kShm && c.window >= 0) {
        p.variant |= kInWindow;
        if (bytes >= settings_.shm_stream_bytes) p.variant |= kStream;
      } else if (p.algo == Algo::kShm && shm_->single_copy() && bytes >= settings_.shm_single_copy_bytes &&
                 bytes < settings_.shm_single_copy_max_bytes) {
        // Peers read back what this schedule streams: worth it from 4x on.
        p.variant |= kCrossMemory;
        if (bytes >= 4 * settings_.shm_stream_bytes) p.variant |= kStream;
        const std::size_t align = std::max<std::size_t>(1, 64 / elem);
        const std::size_t piece = std::max<std::size_t>(align, (std::size_t{128} << 10) / elem);
        s += R(piece * elem * static_cast<std::size_t>(shm_->size() - 1));
      } else if (p.algo == Algo::kShm) {
        // Streamed copy-out pays here only from 4x (measured at P=2 in mixed
        // sequences of collectives: from 8 MiB it lost to caching stores).
        if (bytes >= 4 * settings_.shm_stream_bytes) p.variant |= kStream;
      } else if (p.algo == Algo::kHierarchical) {
        const std::size_t node_block = std::max<std::size_t>(1, alg::Blocks{c.count, shm_->size()}.size(0)) * elem;
        s += R(node_block);
        p.scratch_across = R(node_block);  // recursive doubling, or an in-place ring (less)
      }
      break;
    case Kind::kReduce:
      if (p.algo == Algo::kTree) s += 2 * R(bytes);
      else if (p.algo == Algo::kRing) s += R(bytes) + R(block0);
      break;
    case Kind::kReduceScatter:
      if (p.algo == Algo::kRing && c.count > 0) s += R(bytes);
      break;
    case Kind::kAlltoall:
      if (p.algo == Algo::kPairwise && in_place && P > 1) s += R(bytes);
      break;
    case Kind::kAlltoallv:
    case Kind::kAllgatherv:
      // No scratch: the rows go straight between x and out. The checks
      // below guard the Python layer's part of the contract.
      if (c.invalid) {
        // A refusal (Communicator::refuse) carries no rows: it only joins
        // the agreement.
      } else if (c.root == 0) {
        DISTML_CHECK_ARG(c.count == static_cast<std::size_t>(P), kind_name(c.kind) << "'s sizes round needs one count per rank");
      } else {
        const std::size_t want = c.kind == Kind::kAlltoallv ? 2 * static_cast<std::size_t>(P) : static_cast<std::size_t>(P);
        DISTML_CHECK_ARG(c.rows && c.rows->size() == want, kind_name(c.kind) << " needs " << want << " row counts");
        std::size_t sent = 0;
        for (int i = 0; i < (c.kind == Kind::kAlltoallv ? P : 1); ++i) {
          const std::int64_t n = (*c.rows)[c.kind == Kind::kAlltoallv ? i : rank_];
          DISTML_CHECK_ARG(n >= 0, kind_name(c.kind) << ": negative row count");
          sent += static_cast<std::size_t>(n);
        }
        DISTML_CHECK_ARG(sent * c.unit == c.count, kind_name(c.kind) << ": row counts do not add up to x");
      }
      break;
    default:
      break;
  }
  p.scratch = s;
  return p;
}

void Communicator::rehash_settings() {
  // Everything that selects or shapes a schedule; not the timeout's value or
  // the stall warning, which only decide when a rank gives up or speaks.
  std::ostringstream os;
  const Settings& s = settings_;
  os << s.check << ' ' << (s.timeout > 0) << ' ' << s.tuning.segment_bytes << ' ' << s.tuning.window << ' '
     << s.allreduce_small_bytes << ' ' << s.broadcast_small_bytes << ' ' << s.reduce_small_bytes << ' '
     << s.pair_ring_min_bytes << ' ' << s.pair_ring_max_bytes << ' ' << s.shm_slot_bytes << ' '
     << s.shm_one_shot_bytes << ' ' << s.shm_single_copy_bytes << ' ' << s.shm_single_copy_max_bytes << ' '
     << s.shm_stream_bytes << ' ' << s.shm;
  for (const auto& rows : s.table) {
    os << " |";
    for (const auto& [bytes, algo] : rows) os << ' ' << bytes << ':' << static_cast<int>(algo);
  }
  const std::string text = os.str();
  settings_hash_ = fnv1a(text.data(), text.size());
}

void Communicator::update_settings(const std::function<void(Settings&)>& change) {
  std::unique_lock<std::mutex> lk(mu_);
  cv_.wait(lk, [&] { return queue_.empty() && !running_; });
  Settings next = settings_;
  change(next);
  settings_ = std::move(next);
  rehash_settings();
}

namespace {
// The settings agree_settings compares, by name, for its message.
std::vector<std::pair<const char*, std::uint64_t>> settings_fields(const Settings& s, std::uint64_t hash) {
  std::vector<std::pair<const char*, std::uint64_t>> f = {
      {"check", s.check},
      {"timeout set", s.timeout > 0},
      {"segment_bytes", s.tuning.segment_bytes},
      {"allreduce_small_bytes", s.allreduce_small_bytes},
      {"broadcast_small_bytes", s.broadcast_small_bytes},
      {"reduce_small_bytes", s.reduce_small_bytes},
      {"shared memory (DISTML_SHM)", s.shm},
      {"shm_slot_bytes (DISTML_SHM_SLOT_BYTES)", s.shm_slot_bytes},
      {"shm_one_shot_bytes (DISTML_SHM_ONE_SHOT_BYTES)", s.shm_one_shot_bytes},
      {"shm_single_copy_bytes (DISTML_SHM_SINGLE_COPY_BYTES)", s.shm_single_copy_bytes},
      {"shm_single_copy_max_bytes (DISTML_SHM_SINGLE_COPY_MAX_BYTES)", s.shm_single_copy_max_bytes},
      {"shm_stream_bytes (DISTML_SHM_STREAM_BYTES)", s.shm_stream_bytes},
  };
  // What the named fields do not cover (the tune table, the window, ...).
  f.push_back({"tune table or other settings", hash});
  return f;
}
}  // namespace

void Communicator::agree_settings() {
  std::unique_lock<std::mutex> lk(mu_);
  cv_.wait(lk, [&] { return queue_.empty() && !running_; });
  ensure_usable();
  if (size_ == 1) return;
  auto fields = settings_fields(settings_, settings_hash_);
  std::uint64_t pair[2] = {settings_hash_, ~settings_hash_};
  DISTML_MPI(MPI_Allreduce(MPI_IN_PLACE, pair, 2, MPI_UINT64_T, MPI_MAX, comm_->raw()));
  if (pair[0] == ~pair[1]) return;
  // They differ: gather every rank's values to say which, and where.
  const std::size_t n = fields.size();
  std::vector<std::uint64_t> mine(n), all(n * static_cast<std::size_t>(size_));
  for (std::size_t i = 0; i < n; ++i) mine[i] = fields[i].second;
  DISTML_MPI(MPI_Allgather(mine.data(), static_cast<int>(n), MPI_UINT64_T, all.data(), static_cast<int>(n),
                           MPI_UINT64_T, comm_->raw()));
  std::ostringstream os;
  os << "ranks created a communicator with settings that select different schedules:";
  bool named = false;
  for (std::size_t i = 0; i < n; ++i) {
    std::map<std::uint64_t, std::vector<int>> groups;
    for (int r = 0; r < size_; ++r) groups[all[r * n + i]].push_back(r);
    if (groups.size() <= 1) continue;
    if (i == n - 1 && named) break;  // the fingerprint differs because a named field does
    named = true;
    os << " " << fields[i].first << ":";
    bool first = true;
    for (auto& [value, ranks] : groups) {
      os << (first ? " " : "; ") << (i == n - 1 ? "fingerprint " : "") << value << " on rank" << (ranks.size() > 1 ? "s " : " ");
      for (std::size_t k = 0; k < ranks.size(); ++k) os << (k ? ", " : "") << ranks[k];
      first = false;
    }
    os << ".";
  }
  os << " Set them alike on every rank (environment variables, Communicator arguments, tune tables).";
  DISTML_THROW(Mismatch, os.str());
}

void Communicator::check_available(Algo algo) const {
  if (available(algo)) return;
  if (algo == Algo::kShm) {
    DISTML_THROW(InvalidArgument, "algorithm 'shm' needs every rank on one node, more than one rank, and shared memory enabled");
  }
  if (algo == Algo::kHierarchical) {
    DISTML_THROW(InvalidArgument, "algorithm 'hierarchical' needs several nodes with the same number (> 1) of ranks each");
  }
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
  comm_->set_epoch(seq);
  if (across_) across_->set_epoch(seq);
  // Whatever can fail on this rank alone is acquired before the agreement,
  // so that a failure here reaches every rank through it.
  const std::size_t agreement_scratch = Scratch::rounded(2 * sizeof(std::uint64_t));
  try {
    comm_->scratch().reserve(call.invalid ? agreement_scratch : plan.scratch);
    if (across_) across_->scratch().reserve(call.invalid ? 0 : plan.scratch_across);
  } catch (const std::bad_alloc&) {
    call.invalid = kNoMemory;
    comm_->scratch().reserve(agreement_scratch);
  }
  start_deadline();
  bool arrived = false;
  auto record = [&](bool ok) {
    if (!tracing) return;
    ev.seq = seq;
    ev.kind = call.kind;
    ev.dtype = call.dtype;
    ev.algo = plan.algo;
    ev.bytes = call.count * dtype_size(call.dtype);
    ev.ok = ok;
    ev.end = now_us();
    if (!arrived) ev.arrived = ev.end;
    std::lock_guard<std::mutex> lk(trace_mu_);
    events_.push_back(ev);
  };
  try {
    coordinate(call, plan);
    arrived = true;
    if (tracing) ev.arrived = now_us();
    if (!call.invalid) {
      if (seq == inject_at_) DISTML_THROW(Error, "injected fault (DISTML_INJECT_FAULT) on rank " << rank_);
      dispatch(call, plan);
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

bool Communicator::eager(const Call& call, Algo algo) const {
  const std::size_t bytes = call.count * dtype_size(call.dtype);
  // `count` is what each rank contributes, for allgather, and the whole
  // input otherwise: the bytes each rank writes into its control block.
  return arrival_ == Arrival::kShm && algo == Algo::kShm && !call.invalid && bytes > 0 &&
         bytes <= tp::ShmControl::kEagerBytes && call.kind != Kind::kBarrier && call.kind != Kind::kAlltoall &&
         !is_variable(call.kind);
}

void Communicator::coordinate(const Call& call, const Plan& plan) {
  Signature mine = signature_of(call, plan, settings_hash_);
  mine.comm_id = comm_id_;
  mine.seq = seq_;
  switch (arrival_) {
    case Arrival::kShm: arrive_through_shm(call, mine, plan.has(kEager)); break;
    case Arrival::kRoot: arrive_through_root(call, mine); break;
    case Arrival::kFingerprint: check_fingerprints(call, mine); break;
    case Arrival::kNone: break;
  }
}

namespace {

std::string describe_mismatch(Kind kind, const std::vector<Signature>& sigs) {
  std::ostringstream os;
  os << "ranks called " << kind_name(kind) << " with arguments that differ:";
  auto add = [&](const char* field, const std::string& d) {
    if (!d.empty()) os << " " << field << ": " << d << ".";
  };
  add("arguments", describe_field(sigs, [](const Signature& s) {
    if (s.invalid == kNoMemory) return std::string("out of memory for the collective's buffers");
    return std::string(s.invalid ? "invalid (see the error raised there)" : "valid");
  }));
  add("collective", describe_field(sigs, [](const Signature& s) { return std::string(kind_name(static_cast<Kind>(s.kind))); }));
  add("dtype", describe_field(sigs, [](const Signature& s) { return std::string(dtype_name(static_cast<DType>(s.dtype))); }));
  add("count", describe_field(sigs, [](const Signature& s) { return std::to_string(s.count); }));
  add("shape", describe_field(sigs, [](const Signature& s) { return shape_str(s); }));
  add("op", describe_field(sigs, [](const Signature& s) { return std::string(op_name(static_cast<Op>(s.op))); }));
  add("root", describe_field(sigs, [](const Signature& s) { return std::to_string(s.root); }));
  add("algorithm", describe_field(sigs, [](const Signature& s) { return std::string(algo_name(static_cast<Algo>(s.algo))); }));
  add("schedule chosen by the settings", describe_field(sigs, [](const Signature& s) {
    return variant_name(static_cast<Algo>(s.resolved), s.variant);
  }));
  add("settings", describe_field(sigs, [](const Signature& s) {
    std::ostringstream os;
    os << "fingerprint " << std::hex << s.settings;
    return os.str() + " (thresholds, DISTML_SHM_* sizes, segment size or tune table differ)";
  }));
  add("shared buffer", describe_field(sigs, [](const Signature& s) {
    return s.window < 0 ? std::string("an ordinary array")
                        : "shared buffer " + std::to_string(s.window) + " at offset " + std::to_string(s.window_offset);
  }));
  return os.str();
}

std::string rank_list(const std::vector<std::int32_t>& ranks) {
  std::ostringstream os;
  os << (ranks.size() == 1 ? "rank " : "ranks ");
  for (std::size_t i = 0; i < ranks.size(); ++i) os << (i ? ", " : "") << ranks[i];
  return os.str();
}

// Rank 0's answer to the ranks that arrived.
struct Verdict {
  std::int32_t status;  // kAgreed, kMismatch (P signatures follow), kTimedOut (missing ranks follow)
  std::int32_t count;
  std::uint64_t comm_id, seq;  // as in Signature
};
constexpr std::int32_t kAgreed = 0, kMismatch = 1, kTimedOut = 2;

}  // namespace

// On one node: each rank writes its call's signature into its control block
// and announces its arrival there; every rank waits for all arrivals and then
// reads every signature itself, so all ranks reach the same verdict without a
// message. At the deadline, the ranks whose arrival counter is behind are
// exactly the ones that never arrived. The lowest-numbered rank that has
// arrived warns about stragglers first.
void Communicator::arrive_through_shm(const Call& call, const Signature& mine, bool eager) {
  static_assert(sizeof(Signature) <= sizeof(tp::ShmControl::note[0]), "signature too large");
  auto& shm = *shm_;
  const std::uint64_t seq = seq_;
  std::memcpy(shm.control(shm.rank()).note[seq & 1], &mine, sizeof mine);
  // A small collective posts its input with the note (a broadcast: the
  // root's data); see dispatch_eager.
  if (eager && (call.kind != Kind::kBroadcast || rank_ == call.root)) {
    std::memcpy(shm.control(shm.rank()).eager[seq & 1], call.in, call.count * dtype_size(call.dtype));
  }
  shm.publish(tp::ShmGroup::Counter::kArrived, seq);
  if (comm_->has_deadline()) {
    const double timeout = settings_.timeout;
    const double warn_after = settings_.stall_warning > 0 ? settings_.stall_warning : 0.5 * timeout;
    bool warned = false;
    for (long polls = 0;; ++polls) {
      auto late = shm.behind(tp::ShmGroup::Counter::kArrived, seq);
      if (late.empty()) break;
      transport::MpiComm::pause(polls);
      if ((polls & 255) != 0) continue;
      const double waited = comm_->elapsed();
      std::vector<std::int32_t> missing(late.begin(), late.end());
      // Every waiting rank sees the same stragglers; the lowest-numbered
      // rank that has arrived speaks for all (rank 0, unless it is late).
      int speaker = 0;
      while (speaker < size_ && std::find(late.begin(), late.end(), speaker) != late.end()) ++speaker;
      if (!warned && rank_ == speaker && waited > warn_after) {
        warned = true;
        std::fprintf(stderr,
                     "distml: warning: %s (collective #%llu) has waited %.1f s for %s to arrive "
                     "(timeout %.1f s)\n",
                     kind_name(call.kind), static_cast<unsigned long long>(seq), waited,
                     rank_list(missing).c_str(), timeout);
        std::fflush(stderr);
      }
      if (waited > timeout) DISTML_THROW(Timeout, rank_list(missing) << " never arrived");
    }
  } else {
    shm.wait_all(tp::ShmGroup::Counter::kArrived, seq);
  }
  std::vector<Signature> sigs(size_);
  bool agreed = true;
  for (int r = 0; r < size_; ++r) {
    std::memcpy(&sigs[r], shm.control(r).note[seq & 1], sizeof(Signature));
    // Without the check, a rank that cannot run the call still stops all.
    agreed = agreed && (settings_.check ? same_signature(sigs[r], mine) : !sigs[r].invalid);
  }
  if (!agreed) DISTML_THROW(Mismatch, describe_mismatch(call.kind, sigs));
}

// Without a deadline: every rank contributes a hash of its call's signature;
// an allreduce of (max h, max ~h) tells every rank at once whether all hashes
// agree. Only when they do not are the signatures themselves gathered, to say
// what differs on which ranks. Either way every rank reaches the same
// verdict, and no payload has moved, so the communicator stays usable.
void Communicator::check_fingerprints(const Call& call, const Signature& mine) {
  std::uint64_t h = fnv1a(&mine, sizeof mine);
  std::uint64_t pair[2] = {h, ~h};
  alg::Reduction max_u64(DType::kUInt64, Op::kMax);
  alg::allreduce_recursive_doubling(*comm_, pair, pair, 2, max_u64);
  if (pair[0] == ~pair[1]) return;

  std::vector<Signature> sigs(size_);
  sigs[rank_] = mine;
  alg::Blocks blocks{sizeof(Signature) * size_, size_, sizeof(Signature)};
  alg::allgather_ring(*comm_, sigs.data(), blocks, 1, settings_.tuning);
  DISTML_THROW(Mismatch, describe_mismatch(call.kind, sigs));
}

// With a deadline: every rank reports its arrival (and its signature) to
// rank 0, which therefore knows exactly who has not arrived. Rank 0 warns
// about stragglers once the stall warning time has passed; at the deadline
// it tells the ranks that did arrive which ones never did, so every rank
// raises naming them. Otherwise it answers with the verdict of the mismatch
// check. Non-root ranks wait a short grace period past their own deadline
// for that answer; hearing nothing means rank 0 itself never arrived.
void Communicator::arrive_through_root(const Call& call, const Signature& mine) {
  auto& comm = *comm_;
  const int P = size_;
  const double timeout = settings_.timeout;
  const bool deadline = comm.has_deadline();  // none if the timeout was unset after creation
  // The size of what follows a verdict, so that a stale one can be skipped.
  auto payload_bytes = [&](const Verdict& v) -> std::size_t {
    if (v.status == kMismatch) return sizeof(Signature) * static_cast<std::size_t>(v.count);
    if (v.status == kTimedOut) return sizeof(std::int32_t) * static_cast<std::size_t>(v.count);
    return 0;
  };

  if (rank_ != 0) {
    Request sent = comm.isend(&mine, sizeof mine, 0, alg::kTagArrival);
    Verdict v{};
    const double grace = std::min(1.0, 0.25 * timeout) + timeout;
    for (;;) {
      Request answer = comm.irecv(&v, sizeof v, 0, alg::kTagVerdict);
      for (long polls = 0; !comm.test(answer); ++polls) {
        transport::MpiComm::pause(polls);
        if (deadline && (polls & 63) == 0 && comm.elapsed() > grace) {
          DISTML_THROW(Timeout, "rank 0, which collects arrivals, did not answer: it never arrived, or gave up on this collective before this rank arrived");
        }
      }
      if (v.comm_id == comm_id_ && v.seq == seq_) break;
      std::vector<char> stale(payload_bytes(v));  // left over from an earlier collective
      if (!stale.empty()) comm.recv(stale.data(), stale.size(), 0, alg::kTagVerdict);
    }
    comm.start_deadline(timeout);  // the payload follows the answer at once
    comm.wait(sent);
    if (v.status == kAgreed) return;
    if (v.status == kMismatch) {
      std::vector<Signature> sigs(P);
      comm.recv(sigs.data(), sizeof(Signature) * P, 0, alg::kTagVerdict);
      DISTML_THROW(Mismatch, describe_mismatch(call.kind, sigs));
    }
    std::vector<std::int32_t> missing(v.count);
    comm.recv(missing.data(), sizeof(std::int32_t) * missing.size(), 0, alg::kTagVerdict);
    DISTML_THROW(Timeout, rank_list(missing) << " never arrived");
  }

  std::vector<Signature> sigs(P);
  sigs[0] = mine;
  std::vector<Request> arrivals(P);
  std::vector<char> arrived(P, 0);
  arrived[0] = 1;
  for (int r = 1; r < P; ++r) arrivals[r] = comm.irecv(&sigs[r], sizeof(Signature), r, alg::kTagArrival);
  int pending = P - 1;
  bool warned = false;
  const double warn_after = settings_.stall_warning > 0 ? settings_.stall_warning : 0.5 * timeout;
  auto missing_ranks = [&] {
    std::vector<std::int32_t> m;
    for (int r = 0; r < P; ++r) if (!arrived[r]) m.push_back(r);
    return m;
  };
  for (long polls = 0; pending > 0; ++polls) {
    for (int r = 1; r < P; ++r) {
      if (!arrived[r] && comm.test(arrivals[r])) {
        if (sigs[r].comm_id != comm_id_ || sigs[r].seq != seq_) {
          // left over from an earlier collective: listen again
          arrivals[r] = comm.irecv(&sigs[r], sizeof(Signature), r, alg::kTagArrival);
          continue;
        }
        arrived[r] = 1;
        --pending;
      }
    }
    if (pending == 0) break;
    transport::MpiComm::pause(polls);
    if ((polls & 63) != 0) continue;
    const double waited = comm.elapsed();
    if (!deadline) continue;
    if (!warned && waited > warn_after) {
      warned = true;
      std::fprintf(stderr,
                   "distml: warning: %s (collective #%llu) has waited %.1f s for %s to arrive "
                   "(timeout %.1f s)\n",
                   kind_name(call.kind), static_cast<unsigned long long>(seq_), waited,
                   rank_list(missing_ranks()).c_str(), timeout);
      std::fflush(stderr);
    }
    if (waited > timeout) {
      auto missing = missing_ranks();
      Verdict v{kTimedOut, static_cast<std::int32_t>(missing.size()), comm_id_, seq_};
      comm.start_deadline(1.0);  // for the report itself
      // Small messages: sent eagerly, so they need no waiting (and freeing
      // the requests lets them complete on their own).
      for (int r = 1; r < P; ++r) {
        if (!arrived[r]) continue;
        Request a = comm.isend(&v, sizeof v, r, alg::kTagVerdict);
        Request b = comm.isend(missing.data(), sizeof(std::int32_t) * missing.size(), r, alg::kTagVerdict);
        comm.wait(a);
        comm.wait(b);
      }
      DISTML_THROW(Timeout, rank_list(missing) << " never arrived");
    }
  }

  bool agreed = true;
  for (int r = 1; r < P; ++r) {
    agreed = agreed && (settings_.check ? same_signature(sigs[r], sigs[0]) : !sigs[r].invalid);
  }
  agreed = agreed && !sigs[0].invalid;
  Verdict v{agreed ? kAgreed : kMismatch, agreed ? 0 : P, comm_id_, seq_};
  std::vector<Request> sends;
  for (int r = 1; r < P; ++r) {
    sends.push_back(comm.isend(&v, sizeof v, r, alg::kTagVerdict));
    if (!agreed) sends.push_back(comm.isend(sigs.data(), sizeof(Signature) * P, r, alg::kTagVerdict));
  }
  comm.wait_all(sends);
  if (!agreed) DISTML_THROW(Mismatch, describe_mismatch(call.kind, sigs));
}

tp::ShmGroup& Communicator::shm_group() { return *shm_; }

// Every rank has arrived, so every rank's data of this call is in its
// control block (arrive_through_shm): read it straight from there. Reductions
// combine all ranks' data in rank order, so every rank that computes an
// element gets bitwise the same value.
void Communicator::dispatch_eager(const Call& c) {
  auto& shm = *shm_;
  const int P = size_, r = rank_, parity = static_cast<int>(seq_ & 1);
  const std::size_t elem = dtype_size(c.dtype);
  auto data = [&](int i) -> const char* { return shm.control(i).eager[parity]; };
  auto reduce_from_all = [&](void* out, std::size_t first, std::size_t n) {
    std::vector<const void*> srcs(P);
    for (int i = 0; i < P; ++i) srcs[i] = data(i) + first * elem;
    kernels::reduce_many(out, srcs.data(), P, n, c.dtype, step_op(c.op));
    if (c.op == Op::kAvg) kernels::scale_avg(out, n, c.dtype, P);
  };
  switch (c.kind) {
    case Kind::kAllreduce:
      reduce_from_all(c.out, 0, c.count);
      return;
    case Kind::kReduce:
      if (r == c.root) reduce_from_all(c.out, 0, c.count);
      return;
    case Kind::kBroadcast:
      if (r != c.root) std::memcpy(c.out, data(c.root), c.count * elem);
      return;
    case Kind::kAllgather:
      for (int i = 0; i < P; ++i) std::memcpy(static_cast<char*>(c.out) + i * c.count * elem, data(i), c.count * elem);
      return;
    case Kind::kReduceScatter: {
      const alg::Blocks blocks{c.count, P, c.unit};
      if (blocks.size(r) > 0) reduce_from_all(c.out, blocks.offset(r), blocks.size(r));
      return;
    }
    default:
      DISTML_THROW(Error, "no eager path for " << kind_name(c.kind));
  }
}

void Communicator::dispatch(const Call& c, const Plan& plan) {
  auto& comm = *comm_;
  const auto& tuning = settings_.tuning;
  const std::size_t elem = dtype_size(c.dtype);
  const int P = size_, r = rank_;
  const Algo algo = plan.algo;
  const bool stream = plan.has(kStream);

  if (plan.has(kEager)) {
    dispatch_eager(c);
    return;
  }

  switch (c.kind) {
    case Kind::kBarrier:
      if (algo == Algo::kMpi) tp::mpi_barrier(comm);
      else if (algo == Algo::kShm) alg::barrier_shm(shm_group());
      else alg::barrier_dissemination(comm);
      return;

    case Kind::kAllreduce: {
      alg::Reduction red(c.dtype, c.op);
      // Schedules where one rank finalises each element finish an average
      // on their own slice; MPI's and recursive doubling's results are
      // finished here.
      const bool finishes = algo != Algo::kMpi && algo != Algo::kRecursiveDoubling;
      if (c.op == Op::kAvg && finishes) red.average_over = static_cast<std::size_t>(P);
      // plan() chose the variant of the shared-memory schedule.
      if (algo == Algo::kMpi) tp::mpi_allreduce(comm, c.in, c.out, c.count, c.dtype, red.op);
      else if (algo == Algo::kRing) alg::allreduce_ring(comm, c.in, c.out, c.count, red, tuning);
      else if (algo == Algo::kShm && plan.has(kInWindow)) {
        std::size_t offset = 0;
        auto w = shm_->find(c.in, c.count * elem, &offset);
        alg::allreduce_shm_window(shm_group(), *w, offset, c.count, red, stream);
      } else if (algo == Algo::kShm && plan.has(kCrossMemory))
        alg::allreduce_shm_single_copy(shm_group(), c.in, c.out, c.count, red, stream);
      else if (algo == Algo::kShm)
        alg::allreduce_shm(shm_group(), c.in, c.out, c.count, red, settings_.shm_one_shot_bytes, stream);
      else if (algo == Algo::kHierarchical)
        alg::allreduce_hierarchical(shm_group(), *across_, c.in, c.out, c.count, red, tuning,
                                    settings_.allreduce_small_bytes);
      else alg::allreduce_recursive_doubling(comm, c.in, c.out, c.count, red);
      if (c.op == Op::kAvg && !finishes) kernels::scale_avg(c.out, c.count, c.dtype, P);
      return;
    }

    case Kind::kReduce: {
      alg::Reduction red(c.dtype, c.op);
      if (algo == Algo::kMpi) tp::mpi_reduce(comm, c.in, c.out, c.count, c.dtype, red.op, c.root);
      else if (algo == Algo::kTree) alg::reduce_binomial(comm, c.in, c.out, c.count, red, c.root);
      else if (algo == Algo::kShm) alg::reduce_shm(shm_group(), c.in, c.out, c.count, red, c.root);
      else alg::reduce_scatter_gather(comm, c.in, c.out, c.count, red, c.root, tuning);
      if (c.op == Op::kAvg && r == c.root) kernels::scale_avg(c.out, c.count, c.dtype, P);
      return;
    }

    case Kind::kBroadcast:
      if (algo == Algo::kMpi) tp::mpi_broadcast(comm, c.out, c.count * elem, c.root);
      else if (algo == Algo::kTree) alg::broadcast_binomial(comm, c.out, c.count * elem, c.root);
      else if (algo == Algo::kShm) alg::broadcast_shm(shm_group(), c.out, c.count * elem, c.root);
      else alg::broadcast_scatter_allgather(comm, c.out, c.count, elem, c.root, tuning);
      return;

    case Kind::kAllgather: {
      const std::size_t block_bytes = c.count * elem;
      char* own = static_cast<char*>(c.out) + r * block_bytes;
      if (block_bytes == 0) return;
      const alg::Blocks blocks{c.count * P, P, c.count};
      if (algo == Algo::kShm) {
        alg::allgather_shm(shm_group(), c.in, c.out, blocks, elem);
        return;
      }
      if (c.in != own) std::memcpy(own, c.in, block_bytes);
      if (algo == Algo::kMpi) tp::mpi_allgather(comm, own, c.out, block_bytes);
      else alg::allgather_ring(comm, c.out, blocks, elem, tuning);
      return;
    }

    case Kind::kReduceScatter: {
      if (c.count == 0) return;
      alg::Reduction red(c.dtype, c.op);
      const alg::Blocks blocks{c.count, P, c.unit};
      if (algo == Algo::kMpi) {
        std::vector<std::size_t> counts(P);
        for (int i = 0; i < P; ++i) counts[i] = blocks.size(i);
        tp::mpi_reduce_scatter(comm, c.in, c.out, counts.data(), c.dtype, red.op);
      } else if (algo == Algo::kShm) {
        alg::reduce_scatter_shm(shm_group(), c.in, c.out, blocks, red);
      } else {
        char* work = comm.scratch().take(c.count * elem);
        alg::reduce_scatter_ring(comm, c.in, work, blocks, red, tuning);
        std::memcpy(c.out, work + blocks.offset(r) * elem, blocks.size(r) * elem);
      }
      if (c.op == Op::kAvg) kernels::scale_avg(c.out, blocks.size(r), c.dtype, P);
      return;
    }

    case Kind::kAlltoall: {
      const std::size_t block_bytes = c.count / P * elem;
      if (algo == Algo::kMpi) tp::mpi_alltoall(comm, c.in, c.out, block_bytes);
      else alg::alltoall_pairwise(comm, c.in, c.out, block_bytes);
      return;
    }

    case Kind::kAlltoallv:
    case Kind::kAllgatherv: {
      if (c.root == 0) {  // the sizes round: one int64 to and from every rank
        if (algo == Algo::kMpi) tp::mpi_alltoall(comm, c.in, c.out, sizeof(std::int64_t));
        else alg::alltoall_pairwise(comm, c.in, c.out, sizeof(std::int64_t));
        return;
      }
      const std::size_t row_bytes = c.unit * elem;
      if (row_bytes == 0) return;  // rows of zero elements: nothing to move
      std::vector<std::size_t> send(P), recv(P);
      const auto& rows = *c.rows;
      for (int i = 0; i < P; ++i) {
        if (c.kind == Kind::kAlltoallv) {
          send[i] = static_cast<std::size_t>(rows[i]) * row_bytes;
          recv[i] = static_cast<std::size_t>(rows[P + i]) * row_bytes;
        } else {
          send[i] = static_cast<std::size_t>(rows[r]) * row_bytes;
          recv[i] = static_cast<std::size_t>(rows[i]) * row_bytes;
        }
      }
      if (c.kind == Kind::kAlltoallv) {
        if (algo == Algo::kMpi) tp::mpi_alltoallv(comm, c.in, send.data(), c.out, recv.data());
        else if (algo == Algo::kShm) alg::alltoallv_shm(shm_group(), c.in, send.data(), c.out, recv.data());
        else alg::alltoallv_pairwise(comm, c.in, send.data(), c.out, recv.data());
      } else {
        if (algo == Algo::kMpi) tp::mpi_allgatherv(comm, c.in, c.out, recv.data());
        else if (algo == Algo::kShm) alg::allgatherv_shm(shm_group(), c.in, c.out, recv.data());
        else alg::allgatherv_pairwise(comm, c.in, c.out, recv.data());
      }
      return;
    }
  }
}

}  // namespace distml::engine

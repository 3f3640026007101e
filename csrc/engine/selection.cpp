// Algorithm selection: what can run here, what `auto` resolves to, the plan
// of a call (variant and scratch), and the settings that drive both, with
// their fingerprint and the check that every rank has the same.
#include <algorithm>
#include <limits>
#include <map>
#include <sstream>

#include "algorithms/carried.h"
#include "algorithms/eager_shm.h"
#include "common/aligned_buffer.h"
#include "common/error.h"
#include "engine/communicator.h"
#include "engine/internal.h"

namespace distml::engine {

namespace alg = distml::algorithms;
namespace tp = distml::transport;

namespace {
constexpr std::size_t kAlltoallShmMaxBytes = std::size_t{32} << 10;
constexpr std::size_t kPairBroadcastShmMaxBytes = std::size_t{48} << 10;
constexpr std::size_t kPairBroadcastTreeMaxBytes = std::size_t{2} << 20;
// Without a hierarchical layout, on P >= 4 ranks (a power of two),
// allreduce above this size and up to allreduce_small_bytes takes
// halving-doubling (which sends 2 (P-1)/P of the buffer, in 2 log2(P)
// rounds) instead of recursive doubling (all of it, in log2(P) rounds).
// 4 hosts x 1 rank on TCP (bench/results/carried.md, "Where 4 x 1 switches
// schedule"): under a 1 Gbit/s limit recursive doubling falls below
// MPI_Allreduce from 12 KiB (0.72-0.85x) where halving-doubling stays above
// it (1.03-1.10x); on unlimited links recursive doubling is faster still
// (1.29-1.46x against 1.11-1.17x). auto cannot see the link's speed, so it
// takes the schedule that is ahead of MPI on both from 12 KiB; a tune
// table built on a fast link can keep recursive doubling there.
constexpr std::size_t kHalvingAboveBytes = std::size_t{8} << 10;
}  // namespace

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
      // With the choice by times, node rank 0 may run the ring instead
      // (offered_variants).
      if (pair_ring_offered(call) && !settings_.shm_tune) return Algo::kRing;
      if (one_node_) return Algo::kShm;
      // Small calls carry their agreement in recursive doubling's messages,
      // one round of messages where the hierarchical schedule would follow
      // a round of its own.
      if (across_) {
        const bool carry = bytes > 0 && bytes <= carry_limit() && bytes <= settings_.allreduce_small_bytes;
        return carry ? Algo::kRecursiveDoubling : Algo::kHierarchical;
      }
      if (bytes > settings_.allreduce_small_bytes) return Algo::kRing;
      if (bytes > kHalvingAboveBytes && size_ >= 4 && (size_ & (size_ - 1)) == 0) return Algo::kHalvingDoubling;
      return Algo::kRecursiveDoubling;
    case Kind::kReduce:
      if (one_node_) return Algo::kShm;
      return bytes <= settings_.reduce_small_bytes ? Algo::kTree : Algo::kRing;
    case Kind::kBroadcast:
      // Two ranks on one node, above 48 KiB and up to 2 MiB: one MPI
      // message (the binomial tree of two) beat the shared-memory schedule,
      // 0.82-1.00x MPI_Bcast against 0.72-0.96x
      // (bench/results/broadcast_oneway.md); from 16 MiB shm wins (1.39x).
      // Past the one-way path up to 48 KiB the shm schedule wins since its
      // agreement skips the arrival gate without a timeout: 0.97-1.10x
      // against 0.83-0.87x (bench/results/collectives_p2small.md). Where the
      // two ranks can copy between each other's arrays, its single-copy
      // variant wins at every size past the one-way path (1.03-2.00x
      // MPI_Bcast, bench/results/broadcast_oneway.md), so tree is left to
      // pairs that cannot.
      if (one_node_ && size_ == 2 && !shm_->single_copy() && bytes > kPairBroadcastShmMaxBytes &&
          bytes <= kPairBroadcastTreeMaxBytes) {
        return Algo::kTree;
      }
      if (one_node_) return Algo::kShm;
      return bytes <= settings_.broadcast_small_bytes ? Algo::kTree : Algo::kScatterAllgather;
    case Kind::kAllgather:
    case Kind::kReduceScatter:
      return one_node_ ? Algo::kShm : Algo::kRing;
    case Kind::kAlltoall:
      // Shared memory wins on one node up to 32 KiB with two ranks and up to
      // 512 KiB with four (its data travels with the arrival up to the
      // eager limit; at 512 KiB 1.02-1.04x MPI_Alltoall against 0.97-1.00x
      // for pairwise); beyond, MPI's single copy per block wins or ties
      // (bench/results/collectives_17.md, others_large.md), unless the
      // ranks read each other's blocks directly (shm_single_copy_blocks_bytes,
      // see setup_nodes): with two ranks 1.00-1.87x MPI_Alltoall from 32 KiB
      // to 64 MiB against 0.91-1.58x for pairwise, with four 1.12-1.22x from
      // 512 KiB against 0.97-1.22x (bench/results/others_large.md).
      if (one_node_ && bytes <= (size_ == 2 ? kAlltoallShmMaxBytes : 16 * kAlltoallShmMaxBytes)) return Algo::kShm;
      if (one_node_ && blocks_single_copy(call.kind, Algo::kShm, bytes)) return Algo::kShm;
      return Algo::kPairwise;
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
  std::size_t s = agreement_scratch(0);
  if (carried(c, p.algo)) {
    // No schedule follows: the agreement moves the data.
    p.variant |= kCarried;
    p.scratch = agreement_scratch(bytes);
    // Halving-doubling stages each halving message (header, then half).
    if (p.algo == Algo::kHalvingDoubling) p.scratch += R(alg::kCarriedHeaderBytes + alg::halving_carry_bytes(c.count, elem, P));
    return p;
  }
  if (eager(c, p.algo)) {
    p.variant |= kEager;
    p.scratch = s;
    return p;
  }
  // (A row of zero elements: reduce_scatter of an array with an empty axis.)
  const std::size_t block0 = c.unit == 0 ? 0 : alg::Blocks{c.count, P, c.unit}.size(0) * elem;
  switch (c.kind) {
    case Kind::kAllreduce:
      if ((p.algo == Algo::kRecursiveDoubling || p.algo == Algo::kHalvingDoubling) && P > 1) {
        s += R(bytes);
      } else if (p.algo == Algo::kRing && in_place) {
        s += R(block0);
      } else if (p.algo == Algo::kShm && c.window >= 0) {
        p.variant |= kInWindow;
        if (bytes >= settings_.shm_stream_bytes) p.variant |= kStream;
      } else if ((p.algo == Algo::kShm && shm_->single_copy() && bytes >= settings_.shm_single_copy_bytes &&
                  bytes < settings_.shm_single_copy_max_bytes) ||
                 offers_single_copy(c.kind, p.algo, bytes)) {
        // Peers read back what this schedule streams: worth it from 4x on.
        p.variant |= kCrossMemory;
        if (bytes >= 4 * settings_.shm_stream_bytes) p.variant |= kStream;
        s += R(alg::single_copy_staging_bytes(elem, shm_->size()));
      } else if (p.algo == Algo::kShm) {
        // Streamed copy-out pays here only from 4x (measured at P=2 in mixed
        // sequences of collectives: from 8 MiB it lost to caching stores).
        if (bytes >= 4 * settings_.shm_stream_bytes) p.variant |= kStream;
      } else if (p.algo == Algo::kHierarchical) {
        const std::size_t node_block = std::max<std::size_t>(1, alg::Blocks{c.count, shm_->size()}.size(0)) * elem;
        s += R(node_block);
        p.scratch_across = R(node_block);  // recursive doubling, or an in-place ring (less)
      }
      // The ring may stand in (offered_variants): its in-place block too.
      if (p.algo == Algo::kShm && in_place && settings_.shm_tune && pair_ring_offered(c)) s += R(block0);
      break;
    case Kind::kBroadcast:
      // Two ranks that may copy between each other's arrays: one copy,
      // split between them (broadcast_shm.cpp).
      if (p.algo == Algo::kShm && shm_->single_copy() && shm_->size() == 2) p.variant |= kCrossMemory;
      if (offers_single_copy(c.kind, p.algo, bytes)) p.variant |= kCrossMemory;
      break;
    case Kind::kReduce:
      if (p.algo == Algo::kTree) s += 2 * R(bytes);
      else if (p.algo == Algo::kRing) s += R(bytes) + R(block0);
      break;
    case Kind::kAllgather:
      // Sizes here are each rank's block, as the collective is called with.
      if (blocks_single_copy(c.kind, p.algo, bytes) || offers_single_copy(c.kind, p.algo, bytes)) {
        p.variant |= kCrossMemory;
      }
      break;
    case Kind::kReduceScatter:
      if (p.algo == Algo::kRing && c.count > 0) s += R(bytes);
      if (blocks_single_copy(c.kind, p.algo, bytes)) {
        p.variant |= kCrossMemory;
        s += R(alg::single_copy_staging_bytes(elem, shm_->size()));
      }
      break;
    case Kind::kAlltoall:
      if (p.algo == Algo::kPairwise && in_place && P > 1) s += R(bytes);
      if (blocks_single_copy(c.kind, p.algo, bytes)) {
        p.variant |= kCrossMemory;
        // In place, the blocks from peers wait in scratch (alltoallv_shm.cpp).
        if (in_place) s += R(c.count / static_cast<std::size_t>(P) * elem * static_cast<std::size_t>(P - 1));
      }
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

void Communicator::check_available(Algo algo) const {
  if (available(algo)) return;
  if (algo == Algo::kShm) {
    DISTML_THROW(InvalidArgument, "algorithm 'shm' needs every rank on one node, more than one rank, and shared memory enabled");
  }
  if (algo == Algo::kHierarchical) {
    DISTML_THROW(InvalidArgument, "algorithm 'hierarchical' needs several nodes with the same number (> 1) of ranks each");
  }
}

bool Communicator::eager(const Call& call, Algo algo) const {
  const std::size_t bytes = call.count * dtype_size(call.dtype);
  // `count` is what each rank contributes, for allgather, and the whole
  // input otherwise: the bytes each rank writes into its control block.
  return arrival_ == Arrival::kShm && algo == Algo::kShm && !call.invalid && bytes > 0 &&
         bytes <= std::min(settings_.shm_one_shot_bytes, alg::kEagerBytes) && call.kind != Kind::kBarrier &&
         !is_variable(call.kind);
}

std::size_t Communicator::root_carry_bytes() const {
  // Rank 0 receives every other rank's message at once: they share the cap.
  // (64-byte multiples, so that its receive buffers stay aligned.)
  if (size_ < 2) return 0;
  return alg::kCarryMaxBytes / static_cast<std::size_t>(size_ - 1) / 64 * 64;
}

std::size_t Communicator::carry_limit() const {
  if (arrival_ == Arrival::kFingerprint) {
    // Without a hierarchical layout (one rank per node), recursive doubling
    // is what auto takes up to allreduce_small_bytes whether it carries or
    // not, so carrying only drops the check's round: every size it can
    // carry does. carry_bytes bounds the carried sizes where the
    // hierarchical schedule, which moves less across nodes, is the other
    // choice; 0 still turns carrying off.
    if (!across_ && settings_.carry_bytes > 0) return alg::kCarryMaxBytes;
    return std::min(settings_.carry_bytes, alg::kCarryMaxBytes);
  }
  if (arrival_ == Arrival::kRoot) return std::min(settings_.carry_bytes, root_carry_bytes());
  return 0;
}

bool Communicator::carried(const Call& call, Algo algo) const {
  const std::size_t bytes = call.count * dtype_size(call.dtype);
  if (call.kind != Kind::kAllreduce || call.invalid || bytes == 0) return false;
  if (algo == Algo::kRecursiveDoubling) return bytes <= carry_limit();
  // Halving-doubling carries the fingerprints whenever its messages before
  // the verdict fit a carried message: it moves no more bytes for it.
  if (algo == Algo::kHalvingDoubling) {
    return arrival_ == Arrival::kFingerprint && settings_.carry_bytes > 0 &&
           alg::halving_carry_bytes(call.count, dtype_size(call.dtype), size_) <= alg::kCarryMaxBytes;
  }
  return false;
}

// Every call's agreement receives into buffers as large as any carried
// message (algorithms/carried.h), so that it can meet a peer whose call
// carries data.
std::size_t Communicator::agreement_scratch(std::size_t carried_bytes) const {
  auto R = [](std::size_t n) { return Scratch::rounded(n); };
  switch (arrival_) {
    case Arrival::kFingerprint: return R(alg::kCarriedHeaderBytes + carried_bytes) + R(alg::kCarryCapacity);
    case Arrival::kRoot:
      if (rank_ == 0) {
        const std::size_t slot = R(kSignatureBytes + root_carry_bytes());
        return R(slot * static_cast<std::size_t>(size_ - 1)) + R(kVerdictBytes + carried_bytes);
      }
      return R(kSignatureBytes + carried_bytes) + R(kVerdictBytes + root_carry_bytes());
    default: return 0;
  }
}

bool Communicator::pair_ring_offered(const Call& c) const {
  const std::size_t bytes = c.count * dtype_size(c.dtype);
  return c.kind == Kind::kAllreduce && c.algo == Algo::kAuto && one_node_ && size_ == 2 && c.window < 0 &&
         bytes >= settings_.pair_ring_min_bytes && bytes < settings_.pair_ring_max_bytes;
}

unsigned Communicator::offered_variants(const Call& call, const Plan& plan) const {
  const Kind kind = call.kind;
  const std::size_t bytes = call.count * dtype_size(call.dtype);
  if (!(settings_.shm_tune && one_node_ && plan.algo == Algo::kShm) || plan.has(kEager) || plan.has(kInWindow)) return 0;
  if (!(kind == Kind::kAllreduce || kind == Kind::kAllgather || kind == Kind::kReduceScatter ||
        kind == Kind::kBroadcast || kind == Kind::kReduce))
    return 0;
  constexpr unsigned kStaged = 1u << static_cast<int>(Variant::kStaged),
                     kSingle = 1u << static_cast<int>(Variant::kSingleCopy),
                     kStreaming = 1u << static_cast<int>(Variant::kStagedStreaming),
                     kRing = 1u << static_cast<int>(Variant::kPairRing);
  const unsigned ring = pair_ring_offered(call) ? kRing : 0;
  // Two ranks' broadcast always takes its single copy: one copy split
  // between them, which no staging matches.
  if (plan.has(kCrossMemory))
    return kind == Kind::kBroadcast && shm_->size() == 2 ? 0 : kStaged | kSingle | kStreaming | ring;
  return bytes >= kStreamSlotsMinBytes ? kStaged | kStreaming | ring : 0;
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
     << s.shm_single_copy_blocks_bytes << ' ' << s.shm_stream_bytes << ' ' << s.shm << ' ' << s.carry_bytes << ' '
     << s.shm_tune;
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
      {"shm_single_copy_blocks_bytes (DISTML_SHM_SINGLE_COPY_BLOCKS_BYTES)", s.shm_single_copy_blocks_bytes},
      {"shm_stream_bytes (DISTML_SHM_STREAM_BYTES)", s.shm_stream_bytes},
      {"carry_bytes (DISTML_CARRY_BYTES)", s.carry_bytes},
      {"shm_tune (DISTML_SHM_TUNE)", s.shm_tune},
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
}  // namespace distml::engine

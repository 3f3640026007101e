// The agreement before every collective: each rank describes its call in a
// Signature; ranks compare them (through shared memory on one node, through
// rank 0 with a deadline, or by fingerprints) and all reach one verdict
// before any data moves; a mismatch is described field by field.
#include <algorithm>
#include <cstdio>
#include <cstring>
#include <map>
#include <sstream>

#include "algorithms/carried.h"
#include "algorithms/eager_shm.h"
#include "common/error.h"
#include "engine/communicator.h"
#include "engine/internal.h"
#include "kernels/reduce.h"

namespace distml::engine {

namespace alg = distml::algorithms;
namespace tp = distml::transport;
using transport::Request;

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
static_assert(sizeof(Signature) == kSignatureBytes, "Signature must stay 128 bytes");

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
static_assert(sizeof(Verdict) == kVerdictBytes, "Verdict must stay 24 bytes");
constexpr std::int32_t kAgreed = 0, kMismatch = 1, kTimedOut = 2;

}  // namespace

void Communicator::coordinate(const Call& call, const Plan& plan) {
  Signature mine = signature_of(call, plan, settings_hash_);
  mine.comm_id = comm_id_;
  mine.seq = seq_;
  switch (arrival_) {
    case Arrival::kShm: arrive_through_shm(call, mine, plan.has(kEager)); break;
    case Arrival::kRoot: arrive_through_root(call, plan, mine); break;
    case Arrival::kFingerprint: check_fingerprints(call, plan, mine); break;
    case Arrival::kNone: break;
  }
}

// On one node: each rank writes its call's signature into its control block
// and enters the arrival gate (ShmGroup::enter); every rank waits until all
// have entered and then reads every signature itself, so all ranks reach the
// same verdict without a message. At the deadline a rank gives up through
// the same gate, so that a rank arriving later raises too instead of
// completing a call the others abandoned; the ranks whose arrival counter is
// behind are the ones named. The lowest-numbered rank that has arrived warns
// about stragglers first.
//
// A small blocking broadcast is one-way (its eager path; an async one waits
// for every rank, so that its handle reports its own mismatch, as a caller
// need not wait for the next call's handle): the root posts its data
// with its note, enters the gate and returns at once, as MPI's root returns
// once its message is posted; every other rank waits for the root alone,
// compares the root's signature with its own and copies the data. A rank
// that finds the root's call different from its own waits for every rank
// and raises Mismatch at once, naming what differs. Nobody has compared
// every rank's call with every other yet (two ranks that each take
// themselves for the root never read each other's notes), so every rank
// does that at the start of its next collective (check_one_way), before it
// writes anything there: it waits until every rank has entered the
// broadcast and compares all the notes, as the ranks of any other
// collective do. Where they differ it raises Mismatch in place of its new
// call, which does not run, so every rank stands after the broadcast again
// and the communicator stays usable. The root of a mismatched broadcast
// (and a receiver whose call matched the root's) thus learns of it from its
// next collective on this communicator, never later.
//
// Reuse of the notes and eager areas (a broken rule is a spurious mismatch
// or silently wrong data): a rank writes note[v & 1] and eager[v & 1] only
// on arriving at v, and only after every rank has entered v - 1 (waited for
// by v - 1's own agreement, or by check_one_way); a rank enters v - 1 only
// after it finished v - 2, the last reader of those areas. The same wait
// keeps the gate's rule: nobody enters v before every rank entered v - 1.
void Communicator::arrive_through_shm(const Call& call, const Signature& mine, bool eager) {
  static_assert(sizeof(Signature) <= sizeof(tp::ShmControl::note[0]), "signature too large");
  using Gate = tp::ShmGroup::Gate;
  auto& shm = *shm_;
  if (unchecked_ != 0) check_one_way(call);
  const std::uint64_t seq = seq_;
  std::memcpy(shm.control(shm.rank()).note[seq & 1], &mine, sizeof mine);
  // Node rank 0's choice of variant (Communicator::execute), under the
  // note's rule of reuse.
  if (choice_ >= 0) shm.control(shm.rank()).choice[seq & 1] = static_cast<std::uint8_t>(choice_);
  // A small collective posts its input with the note (a broadcast: the
  // root's data); see algorithms/eager_shm.h.
  const bool one_way = eager && call.kind == Kind::kBroadcast && one_way_allowed_;
  if (eager && (call.kind != Kind::kBroadcast || rank_ == call.root)) {
    alg::post_eager(shm, seq, call.in, call.count * dtype_size(call.dtype));
  }
  // Without a deadline nobody gives up, so the gate has nothing to order
  // and the arrival counters alone tell who has entered: each rank then
  // writes only lines of its own control block, where every rank's entry
  // into the gate moves rank 0's line between cores (await_shm_arrival).
  if (comm_->has_deadline() && shm.enter(seq) == Gate::kGivenUp) {
    DISTML_THROW(Timeout, "rank " << rank_ << " arrived at " << kind_name(call.kind) << " (collective #" << seq
                                  << ") after the other ranks gave up waiting for it (timeout " << settings_.timeout
                                  << " s)");
  }
  shm.publish(tp::ShmGroup::Counter::kArrived, seq);
  // Without the check, a rank that cannot run the call still stops all.
  auto agrees = [&](const Signature& s) { return settings_.check ? same_signature(s, mine) : !s.invalid; };
  if (one_way) {
    unchecked_ = seq;
    unchecked_kind_ = call.kind;
    if (rank_ == call.root) return;
    await_shm_arrival(call.kind, seq, call.root);
    Signature root_sig;
    std::memcpy(&root_sig, shm.control(call.root).note[seq & 1], sizeof root_sig);
    if (agrees(root_sig)) {
      // Of two ranks, both have entered and both calls are compared.
      if (size_ == 2) unchecked_ = 0;
      return;
    }
    unchecked_ = 0;  // compared below, with every rank's call
  }
  await_shm_arrival(call.kind, seq, -1);
  // Compared where they lie (no copy, nothing allocated, on the path every
  // small collective takes); copied out only to describe a mismatch.
  bool agreed = true;
  for (int r = 0; r < size_ && agreed; ++r) {
    if (r == rank_) continue;
    const auto* note = reinterpret_cast<const Signature*>(shm.control(r).note[seq & 1]);
    agreed = agrees(*note);
  }
  if (agreed && !settings_.check) agreed = !mine.invalid;
  if (agreed) return;
  std::vector<Signature> sigs(size_);
  for (int r = 0; r < size_; ++r) std::memcpy(&sigs[r], shm.control(r).note[seq & 1], sizeof(Signature));
  DISTML_THROW(Mismatch, describe_mismatch(call.kind, sigs));
}

void Communicator::check_one_way(const Call& call) {
  auto& shm = *shm_;
  const std::uint64_t v = unchecked_;
  const Kind kind = unchecked_kind_;
  await_shm_arrival(kind, v, -1);
  unchecked_ = 0;
  std::vector<Signature> sigs(size_);
  bool agreed = true;
  for (int r = 0; r < size_; ++r) std::memcpy(&sigs[r], shm.control(r).note[v & 1], sizeof(Signature));
  for (int r = 0; r < size_; ++r) {
    agreed = agreed && (settings_.check ? same_signature(sigs[r], sigs[rank_]) : !sigs[r].invalid);
  }
  if (agreed) return;
  // This call never started: every rank stands after collective v again.
  --seq_;
  DISTML_THROW(Mismatch, describe_mismatch(kind, sigs)
                             << " (" << kind_name(kind) << ", collective #" << v
                             << " on this communicator: this rank returned from it before every rank's call had "
                                "been compared, so its mismatch is raised by this rank's next collective, "
                             << kind_name(call.kind) << ", which did not run)");
}

// Waits for the arrivals at collective `seq` through the gate (who < 0: every
// rank's; else rank `who`'s, or every rank's), warning about stragglers and
// giving up at the deadline.
void Communicator::await_shm_arrival(Kind kind, std::uint64_t seq, int who) {
  using Gate = tp::ShmGroup::Gate;
  auto& shm = *shm_;
  const double timeout = settings_.timeout;
  auto never_arrived = [&] {
    auto late = shm.behind(tp::ShmGroup::Counter::kArrived, seq);
    return rank_list(std::vector<std::int32_t>(late.begin(), late.end()));
  };
  const bool deadline = comm_->has_deadline();
  const double warn_after = settings_.stall_warning > 0 ? settings_.stall_warning : 0.5 * timeout;
  bool warned = false;
  // Every rank's arrival counter at `seq` means every rank has entered:
  // without a deadline nobody enters the gate (arrive_through_shm); with
  // one, a rank publishes its arrival only after entering, and once all
  // have entered nobody can give up. (So a collective that ran without a
  // deadline is waited for rightly by a later check_one_way with one.)
  auto all_arrived = [&] {
    for (int r = 0; r < size_; ++r) {
      if (r != rank_ && shm.control(r).arrived.load(std::memory_order_acquire) < seq) return false;
    }
    return true;
  };
  for (long polls = 0;; ++polls) {
    if (all_arrived()) break;
    if (deadline) {
      const Gate g = shm.gate(seq);
      if (g == Gate::kAllIn) break;
      // Another rank gave up (this rank's deadline may not have passed yet).
      if (g == Gate::kGivenUp) DISTML_THROW(Timeout, never_arrived() << " never arrived");
    }
    // The root's note and data were written before it published this.
    if (who >= 0 && shm.control(who).arrived.load(std::memory_order_acquire) >= seq) break;
    transport::MpiComm::pause(polls);
    if (!deadline || (polls & 255) != 0) continue;
    const double waited = comm_->elapsed();
    if (!warned && waited > warn_after) {
      // Every waiting rank sees the same stragglers; the lowest-numbered
      // rank that has arrived speaks for all (rank 0, unless it is late).
      auto late = shm.behind(tp::ShmGroup::Counter::kArrived, seq);
      int speaker = 0;
      while (speaker < size_ && std::find(late.begin(), late.end(), speaker) != late.end()) ++speaker;
      if (rank_ == speaker && !late.empty()) {
        warned = true;
        std::fprintf(stderr,
                     "distml: warning: %s (collective #%llu) has waited %.1f s for %s to arrive "
                     "(timeout %.1f s)\n",
                     kind_name(kind), static_cast<unsigned long long>(seq), waited,
                     rank_list(std::vector<std::int32_t>(late.begin(), late.end())).c_str(), timeout);
        std::fflush(stderr);
      }
    }
    if (waited > timeout) {
      const std::string missing = never_arrived();
      if (shm.give_up(seq) == Gate::kAllIn) break;  // the last rank entered first
      DISTML_THROW(Timeout, missing << " never arrived at " << kind_name(kind) << " (collective #" << seq << ")");
    }
  }
}

// Without a deadline: every rank contributes a fingerprint of its call's
// signature; recursive doubling combines (max h, max ~h), which tells every
// rank at once whether all fingerprints agree. A small allreduce by
// recursive doubling (or halving-doubling, whose halving steps take the
// same partners in the same order) carries its data in the same messages
// (algorithms/carried.h), so that its agreement and its data take one
// round of messages; every other call sends the fingerprints alone, into
// receive buffers as large as any carried message, so that ranks whose
// calls differ still exchange the same messages. Only when the
// fingerprints differ are the signatures themselves gathered, to say what
// differs on which ranks; a carried result is then dropped before it
// reaches `out`. Either way every rank reaches the same verdict, and the
// communicator stays usable.
void Communicator::check_fingerprints(const Call& call, const Plan& plan, const Signature& mine) {
  const bool carried = plan.has(kCarried) && !call.invalid;
  const std::size_t bytes = carried ? call.count * dtype_size(call.dtype) : 0;
  auto& scratch = comm_->scratch();
  char* msg = scratch.take(alg::kCarriedHeaderBytes + bytes);
  char* tmp = scratch.take(alg::kCarryCapacity);
  auto* header = reinterpret_cast<alg::CarriedHeader*>(msg);
  const std::uint64_t h = fnv1a(&mine, sizeof mine);
  *header = alg::CarriedHeader{h, ~h};
  if (carried) {
    std::memcpy(msg + alg::kCarriedHeaderBytes, call.in, bytes);
    const alg::Reduction red(call.dtype, call.op);
    if (plan.algo == Algo::kHalvingDoubling) {
      char* stage = scratch.take(alg::kCarriedHeaderBytes + alg::halving_carry_bytes(call.count, dtype_size(call.dtype), size_));
      alg::allreduce_halving_doubling_carried(*comm_, msg, tmp, stage, call.count, red);
    } else {
      alg::allreduce_carried(*comm_, msg, tmp, call.count, &red);
    }
  } else {
    alg::allreduce_carried(*comm_, msg, tmp, 0, nullptr);
  }
  if (alg::carried_agreed(*header)) {
    if (carried) finish_carried(call, msg + alg::kCarriedHeaderBytes);
    return;
  }

  std::vector<Signature> sigs(size_);
  sigs[rank_] = mine;
  alg::Blocks blocks{sizeof(Signature) * size_, size_, sizeof(Signature)};
  alg::allgather_ring(*comm_, sigs.data(), blocks, 1, settings_.tuning);
  DISTML_THROW(Mismatch, describe_mismatch(call.kind, sigs));
}

void Communicator::finish_carried(const Call& call, const void* result) const {
  std::memcpy(call.out, result, call.count * dtype_size(call.dtype));
  if (call.op == Op::kAvg) kernels::scale_avg(call.out, call.count, call.dtype, static_cast<std::size_t>(size_));
}

// With a deadline: every rank reports its arrival (and its signature) to
// rank 0, which therefore knows exactly who has not arrived. Rank 0 warns
// about stragglers once the stall warning time has passed; at the deadline
// it tells the ranks that did arrive which ones never did, so every rank
// raises naming them. Otherwise it answers with the verdict of the mismatch
// check. Non-root ranks wait a short grace period past their own deadline
// for that answer; hearing nothing means rank 0 itself never arrived.
//
// A small allreduce carries its data in the same round (kCarried): each
// rank's input follows its signature, rank 0 reduces them in rank order
// once all have arrived and agreed, and the result follows the verdict, so
// the arrival round is the whole collective and fails together exactly as
// before. Every call receives into buffers with room for a carried payload
// (root_carry_bytes(), a function of the size alone), so that ranks whose
// calls differ still exchange the same messages.
void Communicator::arrive_through_root(const Call& call, const Plan& plan, const Signature& mine) {
  auto& comm = *comm_;
  const int P = size_;
  const double timeout = settings_.timeout;
  const bool deadline = comm.has_deadline();  // none if the timeout was unset after creation
  const bool carried = plan.has(kCarried) && !call.invalid;
  const std::size_t bytes = carried ? call.count * dtype_size(call.dtype) : 0;
  const std::size_t room = root_carry_bytes();
  auto& scratch = comm.scratch();
  // The size of what follows a verdict, so that a stale one can be skipped
  // (a carried result travels in the verdict's own message).
  auto payload_bytes = [&](const Verdict& v) -> std::size_t {
    if (v.status == kMismatch) return sizeof(Signature) * static_cast<std::size_t>(v.count);
    if (v.status == kTimedOut) return sizeof(std::int32_t) * static_cast<std::size_t>(v.count);
    return 0;
  };

  if (rank_ != 0) {
    char* arrival = scratch.take(sizeof(Signature) + bytes);
    std::memcpy(arrival, &mine, sizeof mine);
    if (carried) std::memcpy(arrival + sizeof(Signature), call.in, bytes);
    char* answer_buf = scratch.take(sizeof(Verdict) + room);
    Request sent = comm.isend(arrival, sizeof(Signature) + bytes, 0, alg::kTagArrival);
    Verdict v{};
    const double grace = std::min(1.0, 0.25 * timeout) + timeout;
    for (;;) {
      Request answer = comm.irecv(answer_buf, sizeof(Verdict) + room, 0, alg::kTagVerdict);
      for (long polls = 0; !comm.test(answer); ++polls) {
        transport::MpiComm::pause_mpi();
        if (deadline && (polls & 63) == 0 && comm.elapsed() > grace) {
          DISTML_THROW(Timeout, "rank 0, which collects arrivals, did not answer: it never arrived, or gave up on this collective before this rank arrived");
        }
      }
      std::memcpy(&v, answer_buf, sizeof v);
      if (v.comm_id == comm_id_ && v.seq == seq_) break;
      std::vector<char> stale(payload_bytes(v));  // left over from an earlier collective
      if (!stale.empty()) comm.recv(stale.data(), stale.size(), 0, alg::kTagVerdict);
    }
    comm.start_deadline(timeout);  // the payload follows the answer at once
    comm.wait(sent);
    if (v.status == kAgreed) {
      if (carried) finish_carried(call, answer_buf + sizeof(Verdict));
      return;
    }
    if (v.status == kMismatch) {
      std::vector<Signature> sigs(P);
      comm.recv(sigs.data(), sizeof(Signature) * P, 0, alg::kTagVerdict);
      DISTML_THROW(Mismatch, describe_mismatch(call.kind, sigs));
    }
    std::vector<std::int32_t> missing(v.count);
    comm.recv(missing.data(), sizeof(std::int32_t) * missing.size(), 0, alg::kTagVerdict);
    DISTML_THROW(Timeout, rank_list(missing) << " never arrived");
  }

  // Rank 0: one receive buffer per other rank, a signature and room for a
  // carried input (as agreement_scratch reserved).
  const std::size_t slot = Scratch::rounded(sizeof(Signature) + room);
  char* slots = scratch.take(slot * static_cast<std::size_t>(P - 1));
  auto slot_of = [&](int r) { return slots + slot * static_cast<std::size_t>(r - 1); };
  std::vector<Signature> sigs(P);
  sigs[0] = mine;
  std::vector<Request> arrivals(P);
  std::vector<char> arrived(P, 0);
  arrived[0] = 1;
  for (int r = 1; r < P; ++r) arrivals[r] = comm.irecv(slot_of(r), sizeof(Signature) + room, r, alg::kTagArrival);
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
        std::memcpy(&sigs[r], slot_of(r), sizeof(Signature));
        if (sigs[r].comm_id != comm_id_ || sigs[r].seq != seq_) {
          // left over from an earlier collective: listen again
          arrivals[r] = comm.irecv(slot_of(r), sizeof(Signature) + room, r, alg::kTagArrival);
          continue;
        }
        arrived[r] = 1;
        --pending;
      }
    }
    if (pending == 0) break;
    transport::MpiComm::pause_mpi();
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
    // Without the check, a carried input is still reduced (and a carried
    // result awaited) only where every rank's call is alike in size and kind.
    if (!settings_.check && ((sigs[r].variant | mine.variant) & kCarried)) {
      agreed = agreed && sigs[r].kind == mine.kind && sigs[r].dtype == mine.dtype && sigs[r].op == mine.op &&
               sigs[r].count == mine.count && sigs[r].variant == mine.variant;
    }
  }
  agreed = agreed && !sigs[0].invalid;
  Verdict v{agreed ? kAgreed : kMismatch, agreed ? 0 : P, comm_id_, seq_};
  std::vector<Request> sends;
  if (agreed && carried) {
    // The reduction of every rank's input, in rank order, after the verdict.
    char* answer = scratch.take(sizeof(Verdict) + bytes);
    char* result = answer + sizeof(Verdict);
    std::memcpy(answer, &v, sizeof v);
    std::memcpy(result, call.in, bytes);
    const alg::Reduction red(call.dtype, call.op);
    for (int r = 1; r < P; ++r) red.combine(result, slot_of(r) + sizeof(Signature), call.count);
    for (int r = 1; r < P; ++r) sends.push_back(comm.isend(answer, sizeof(Verdict) + bytes, r, alg::kTagVerdict));
    comm.wait_all(sends);
    finish_carried(call, result);
    return;
  }
  for (int r = 1; r < P; ++r) {
    sends.push_back(comm.isend(&v, sizeof v, r, alg::kTagVerdict));
    if (!agreed) sends.push_back(comm.isend(sigs.data(), sizeof(Signature) * P, r, alg::kTagVerdict));
  }
  comm.wait_all(sends);
  if (!agreed) DISTML_THROW(Mismatch, describe_mismatch(call.kind, sigs));
}
}  // namespace distml::engine

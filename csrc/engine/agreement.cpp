// The agreement before every collective: each rank describes its call in a
// Signature; ranks compare them (through shared memory on one node, through
// rank 0 with a deadline, or by fingerprints) and all reach one verdict
// before any data moves; a mismatch is described field by field.
#include <algorithm>
#include <cstdio>
#include <cstring>
#include <map>
#include <sstream>

#include "algorithms/eager_shm.h"
#include "common/error.h"
#include "engine/communicator.h"
#include "engine/internal.h"

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
constexpr std::int32_t kAgreed = 0, kMismatch = 1, kTimedOut = 2;

}  // namespace

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

// On one node: each rank writes its call's signature into its control block
// and enters the arrival gate (ShmGroup::enter); every rank waits until all
// have entered and then reads every signature itself, so all ranks reach the
// same verdict without a message. At the deadline a rank gives up through
// the same gate, so that a rank arriving later raises too instead of
// completing a call the others abandoned; the ranks whose arrival counter is
// behind are the ones named. The lowest-numbered rank that has arrived warns
// about stragglers first.
void Communicator::arrive_through_shm(const Call& call, const Signature& mine, bool eager) {
  static_assert(sizeof(Signature) <= sizeof(tp::ShmControl::note[0]), "signature too large");
  using Gate = tp::ShmGroup::Gate;
  auto& shm = *shm_;
  const std::uint64_t seq = seq_;
  std::memcpy(shm.control(shm.rank()).note[seq & 1], &mine, sizeof mine);
  // A small collective posts its input with the note (a broadcast: the
  // root's data); see algorithms/eager_shm.h.
  if (eager && (call.kind != Kind::kBroadcast || rank_ == call.root)) {
    alg::post_eager(shm, seq, call.in, call.count * dtype_size(call.dtype));
  }
  const double timeout = settings_.timeout;
  if (shm.enter(seq) == Gate::kGivenUp) {
    DISTML_THROW(Timeout, "rank " << rank_ << " arrived at " << kind_name(call.kind) << " (collective #" << seq
                                  << ") after the other ranks gave up waiting for it (timeout " << timeout << " s)");
  }
  shm.publish(tp::ShmGroup::Counter::kArrived, seq);
  auto never_arrived = [&] {
    auto late = shm.behind(tp::ShmGroup::Counter::kArrived, seq);
    return rank_list(std::vector<std::int32_t>(late.begin(), late.end()));
  };
  const bool deadline = comm_->has_deadline();
  const double warn_after = settings_.stall_warning > 0 ? settings_.stall_warning : 0.5 * timeout;
  bool warned = false;
  for (long polls = 0;; ++polls) {
    const Gate g = shm.gate(seq);
    if (g == Gate::kAllIn) break;
    // Another rank gave up (this rank's deadline may not have passed yet).
    if (g == Gate::kGivenUp) DISTML_THROW(Timeout, never_arrived() << " never arrived");
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
                     kind_name(call.kind), static_cast<unsigned long long>(seq), waited,
                     rank_list(std::vector<std::int32_t>(late.begin(), late.end())).c_str(), timeout);
        std::fflush(stderr);
      }
    }
    if (waited > timeout) {
      const std::string missing = never_arrived();
      if (shm.give_up(seq) == Gate::kAllIn) break;  // the last rank entered first
      DISTML_THROW(Timeout, missing << " never arrived");
    }
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
}  // namespace distml::engine

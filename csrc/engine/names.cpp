// The names of collectives, algorithms and schedule variants, and which
// algorithms each collective accepts: what users type and messages say.
#include <sstream>

#include "common/error.h"
#include "engine/communicator.h"

namespace distml::engine {

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
    case Algo::kHalvingDoubling: return "halving_doubling";
  }
  return "unknown";
}

// The algorithms each collective accepts, "auto" and "mpi" first.
std::vector<Algo> accepted_algorithms(Kind kind) {
  switch (kind) {
    case Kind::kAllreduce:
      return {Algo::kAuto, Algo::kMpi, Algo::kRing, Algo::kRecursiveDoubling, Algo::kHalvingDoubling,
              Algo::kShm, Algo::kHierarchical};
    case Kind::kReduce: return {Algo::kAuto, Algo::kMpi, Algo::kTree, Algo::kRing, Algo::kShm};
    case Kind::kBroadcast:
      return {Algo::kAuto, Algo::kMpi, Algo::kTree, Algo::kScatterAllgather, Algo::kShm};
    case Kind::kAllgather: return {Algo::kAuto, Algo::kMpi, Algo::kRing, Algo::kShm};
    case Kind::kReduceScatter: return {Algo::kAuto, Algo::kMpi, Algo::kRing, Algo::kShm};
    case Kind::kAlltoall: return {Algo::kAuto, Algo::kMpi, Algo::kPairwise, Algo::kShm};
    case Kind::kBarrier: return {Algo::kAuto, Algo::kMpi, Algo::kDissemination, Algo::kShm};
    case Kind::kAlltoallv:
    case Kind::kAllgatherv: return {Algo::kAuto, Algo::kMpi, Algo::kPairwise, Algo::kShm};
  }
  return {};
}

std::string variant_name(Algo algo, std::uint8_t variant) {
  std::string name = algo_name(algo);
  if (variant & kEager) name += " (data with the arrival)";
  if (variant & kCrossMemory) name += " (cross-memory reads of peers' arrays)";
  if (variant & kInWindow) name += " (in place in a shared window)";
  if (variant & kStream) name += " (streaming stores)";
  if (variant & kCarried) name += " (data carried with the agreement)";
  if (variant & kStreamSlots) name += " (slots filled with streaming stores)";
  return name;
}

Algo parse_algo(Kind kind, const std::string& name) {
  for (Algo a : accepted_algorithms(kind)) {
    if (name == algo_name(a)) return a;
  }
  std::ostringstream os;
  os << "algorithm " << "'" << name << "' is not one of " << kind_name(kind) << "'s: ";
  bool first = true;
  for (Algo a : accepted_algorithms(kind)) {
    os << (first ? "" : ", ") << "'" << algo_name(a) << "'";
    first = false;
  }
  DISTML_THROW(InvalidArgument, os.str());
}
}  // namespace distml::engine

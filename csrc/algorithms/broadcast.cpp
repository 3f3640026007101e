// Broadcast: a binomial tree for small buffers, scatter + ring allgather for
// large ones.
//
// Binomial tree, ranks renumbered so the root is 0: a rank whose renumbered
// index has lowest set bit m receives from index - m, then sends to index + m'
// for every m' < m (largest first), so the data reaches all P ranks in
// ceil(log2 P) rounds.
//
// Scatter + allgather: the root sends block i of the buffer to rank i, then a
// ring allgather completes every rank's copy; each rank moves about twice the
// buffer instead of log2(P) times it.
#include "algorithms/schedule.h"

namespace distml::algorithms {

void broadcast_binomial(MpiComm& comm, void* buf, std::size_t bytes, int root) {
  const int P = comm.size();
  const int vr = mod(comm.rank() - root, P);
  int mask = 1;
  while (mask < P) {
    if (vr & mask) {
      comm.recv(buf, bytes, mod(vr - mask + root, P), kTagBroadcast);
      break;
    }
    mask <<= 1;
  }
  std::vector<Request> sends;
  for (mask >>= 1; mask > 0; mask >>= 1) {
    if (vr + mask < P) sends.push_back(comm.isend(buf, bytes, mod(vr + mask + root, P), kTagBroadcast));
  }
  comm.wait_all(sends);
}

void broadcast_scatter_allgather(MpiComm& comm, void* buf, std::size_t count, std::size_t elem,
                                 int root, const Tuning& tuning) {
  const int P = comm.size(), r = comm.rank();
  const Blocks blocks{count, P};
  auto* b = static_cast<char*>(buf);
  if (r == root) {
    std::vector<Request> sends;
    for (int i = 0; i < P; ++i) {
      if (i == root || blocks.size(i) == 0) continue;
      sends.push_back(comm.isend(b + blocks.offset(i) * elem, blocks.size(i) * elem, i,
                                 kTagBroadcast));
    }
    comm.wait_all(sends);
  } else if (blocks.size(r) > 0) {
    comm.recv(b + blocks.offset(r) * elem, blocks.size(r) * elem, root, kTagBroadcast);
  }
  allgather_ring(comm, buf, blocks, elem, tuning);
}

}  // namespace distml::algorithms

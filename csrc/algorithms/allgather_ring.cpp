// Ring allgather, in place.
//
// In step s (s = 0 .. P-2) rank r sends block (r - s) to its right neighbour
// and receives block (r - s - 1) from its left one, straight into place. The
// block sent in step s is the one received in step s - 1 (in step 0, the
// rank's own), so after P-1 steps every block has visited every rank.
#include "algorithms/schedule.h"

namespace distml::algorithms {

void allgather_ring(MpiComm& comm, void* buf, const Blocks& blocks, std::size_t elem,
                    const Tuning& tuning) {
  const int P = comm.size(), r = comm.rank();
  auto* b = static_cast<char*>(buf);
  for (int s = 0; s < P - 1; ++s) {
    const int sb = mod(r - s, P);
    const int rb = mod(r - s - 1, P);
    ring_exchange(comm, b + blocks.offset(sb) * elem, blocks.size(sb),
                  b + blocks.offset(rb) * elem, blocks.size(rb), elem, tuning, kTagAllgather,
                  [](std::size_t, std::size_t) {});
  }
}

}  // namespace distml::algorithms

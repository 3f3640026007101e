// Ring reduce-scatter.
//
// P ranks in a ring; the buffer is cut into P blocks (array_split). In step s
// (s = 0 .. P-2) rank r sends block (r - s - 1) to its right neighbour and
// receives block (r - s - 2) from its left one, reducing it into its own copy
// as each segment lands. The block a rank sends in step s is the one it
// finished reducing in step s - 1 (in step 0, its own input), so after P-1
// steps block r on rank r has passed through every rank: the full reduction.
//
// Out of place (in != work) a segment is received straight into `work` and
// the rank's own input is folded in afterwards (the ops are commutative), so
// no copy of the input is made. In place, segments land in a scratch block.
#include "algorithms/schedule.h"
#include "common/aligned_buffer.h"

namespace distml::algorithms {

void reduce_scatter_ring(MpiComm& comm, const void* in, void* work, const Blocks& blocks,
                         const Reduction& red, const Tuning& tuning) {
  const int P = comm.size(), r = comm.rank();
  const std::size_t elem = red.elem;
  auto* w = static_cast<char*>(work);
  auto* x = static_cast<const char*>(in);
  if (P == 1) {
    if (x != w) std::memcpy(w, x, blocks.count * elem);
    return;
  }
  const bool in_place = (x == w);
  char* scratch = in_place ? comm.scratch().take(blocks.size(0) * elem) : nullptr;

  for (int s = 0; s < P - 1; ++s) {
    const int sb = mod(r - s - 1, P);  // block sent this step
    const int rb = mod(r - s - 2, P);  // block received and reduced this step
    const char* send = (s == 0 ? x : w) + blocks.offset(sb) * elem;
    char* own = w + blocks.offset(rb) * elem;
    const char* mine = x + blocks.offset(rb) * elem;
    char* landing = in_place ? scratch : own;
    ring_exchange(comm, send, blocks.size(sb), landing, blocks.size(rb), elem, tuning,
                  kTagReduceScatter, [&](std::size_t first, std::size_t n) {
                    if (in_place) {
                      red.combine(own + first * elem, landing + first * elem, n);
                    } else {
                      red.combine(own + first * elem, mine + first * elem, n);
                    }
                  });
  }
  // With P ranks the last block reduced is block r itself: (r - (P-2) - 2) mod P.
  // Out of place, block r of `work` was written by the receive in that step.
}

}  // namespace distml::algorithms

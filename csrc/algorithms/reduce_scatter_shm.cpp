// Shared-memory reduce-scatter for the ranks of one node.
//
// The input is cut into P blocks (array_split of rows). A round moves one
// segment of every block: each rank copies segment o of every peer's block b
// into part b of its slot (one part per rank), posts; then rank r reduces
// part r of every peer's slot and segment o of its own block, read straight
// from its input, in rank order, into its output, and releases.
// Every rank reduces in every round, so the work stays balanced however the
// blocks are sized; the two slots alternate so that a round's copy-in
// overlaps peers still reading the previous round.
//
// Single copy (ranks that may read each other's memory, see
// ShmGroup::single_copy): every rank posts its input's address and reduces
// its own block from its input and from pieces of the peers' inputs read
// into cache-sized staging (process_vm_readv): each rank's input is read
// once, where staging copies all of it into the slots first.
#include <vector>

#include "algorithms/schedule.h"
#include "transport/shm.h"

namespace distml::algorithms {

using Counter = transport::ShmGroup::Counter;

void reduce_scatter_shm(transport::ShmGroup& shm, const void* in, void* out, const Blocks& blocks,
                        const Reduction& red, bool stream_slots) {
  const int L = shm.size(), me = shm.rank();
  const std::size_t elem = red.elem;
  const auto* src = static_cast<const char*>(in);
  auto* dst = static_cast<char*>(out);
  const std::size_t align = std::max<std::size_t>(1, 64 / elem);
  std::size_t seg = shm.slot_bytes() / elem / L;
  seg = std::max(align, seg / align * align);
  if (seg * L * elem > shm.slot_bytes()) seg = std::max<std::size_t>(1, shm.slot_bytes() / elem / L);
  std::vector<const void*> parts(L);
  const std::size_t longest = blocks.size(0);

  for (std::size_t o = 0; o < longest; o += seg) {
    const std::uint64_t step = shm.next_step();
    const int k = static_cast<int>(step & 1);
    if (step > 2) shm.wait_all(Counter::kReleased, step - 2);
    char* mine = shm.slot(me, k);
    for (int b = 0; b < L; ++b) {
      const std::size_t size = blocks.size(b);
      if (b == me || o >= size) continue;
      const std::size_t n = std::min(seg, size - o);
      copy_result(mine + b * seg * elem, src + (blocks.offset(b) + o) * elem, n * elem, stream_slots);
    }
    shm.publish(Counter::kPosted, step);
    shm.wait_all(Counter::kPosted, step);
    const std::size_t my_size = blocks.size(me);
    if (o < my_size) {
      for (int r = 0; r < L; ++r)
        parts[r] = r == me ? src + (blocks.offset(me) + o) * elem : shm.slot(r, k) + me * seg * elem;
      kernels::reduce_many(dst + o * elem, parts.data(), L, std::min(seg, my_size - o), red.dtype,
                           red.op);
    }
    shm.publish(Counter::kReleased, step);
  }
}

void reduce_scatter_shm_single_copy(transport::ShmGroup& shm, const void* in, void* out, const Blocks& blocks,
                                    const Reduction& red) {
  const int me = shm.rank();
  const std::uint64_t step = shm.next_step();
  shm.control(me).in_addr = reinterpret_cast<std::uint64_t>(in);
  shm.publish(Counter::kPosted, step);
  shm.wait_all(Counter::kPosted, step);
  reduce_from_peers(shm, static_cast<const char*>(in), static_cast<char*>(out), blocks.offset(me), blocks.size(me),
                    red, false);
  shm.publish(Counter::kReleased, step);
  shm.wait_all(Counter::kReleased, step);
}

}  // namespace distml::algorithms

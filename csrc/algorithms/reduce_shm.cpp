// Shared-memory reduce to a root for the ranks of one node. Each chunk: every
// rank copies its chunk into its slot and posts; each rank reduces its slice
// of the chunk from every slot into its own slot (so the reduction work is
// spread over all ranks) and marks it reduced; the root copies every reduced
// slice into its output. Ranks other than the root release as soon as their
// slice is reduced; the root releases after its copy-out, which is what the
// slot-reuse wait of step + 2 depends on.
#include <vector>

#include "algorithms/schedule.h"
#include "transport/shm.h"

namespace distml::algorithms {

using Counter = transport::ShmGroup::Counter;

void reduce_shm(transport::ShmGroup& shm, const void* in, void* out, std::size_t count,
                const Reduction& red, int root) {
  const int L = shm.size(), me = shm.rank();
  const std::size_t elem = red.elem;
  const auto* src = static_cast<const char*>(in);
  auto* dst = static_cast<char*>(out);
  const std::size_t chunk = shm.slot_bytes() / elem;
  const std::size_t align = std::max<std::size_t>(1, 64 / elem);
  std::vector<const void*> peers(L);
  for (std::size_t first = 0; first < count; first += chunk) {
    const std::size_t len = std::min(chunk, count - first);
    const std::uint64_t step = shm.next_step();
    const int k = static_cast<int>(step & 1);
    if (step > 2) shm.wait_all(Counter::kReleased, step - 2);
    std::memcpy(shm.slot(me, k), src + first * elem, len * elem);
    shm.publish(Counter::kPosted, step);
    shm.wait_all(Counter::kPosted, step);
    std::size_t s0, sn;
    chunk_slice(len, L, me, align, &s0, &sn);
    if (sn > 0) {
      peers[0] = shm.slot(me, k) + s0 * elem;
      for (int i = 1; i < L; ++i) peers[i] = shm.slot((me + i) % L, k) + s0 * elem;
      kernels::reduce_many(shm.slot(me, k) + s0 * elem, peers.data(), L, sn, red.dtype, red.op);
    }
    shm.publish(Counter::kReduced, step);
    if (me == root) {
      for (int i = 0; i < L; ++i) {
        const int r = (me + i) % L;
        if (r != me) shm.wait_one(r, Counter::kReduced, step);
        std::size_t r0, rn;
        chunk_slice(len, L, r, align, &r0, &rn);
        if (rn) std::memcpy(dst + (first + r0) * elem, shm.slot(r, k) + r0 * elem, rn * elem);
      }
    }
    shm.publish(Counter::kReleased, step);
  }
}

}  // namespace distml::algorithms

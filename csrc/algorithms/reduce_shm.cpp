// Shared-memory reduce to a root for the ranks of one node. Each chunk: every
// rank copies the other ranks' slices of its chunk into its slot and posts;
// each rank reduces its slice of the chunk from its own input and every
// peer's slot into its own slot (so the reduction work is spread over all
// ranks) and marks it reduced; the root copies every reduced
// slice into its output. Ranks other than the root release as soon as their
// slice is reduced; the root releases after its copy-out, which is what the
// slot-reuse wait of step + 2 depends on.
#include <vector>

#include "algorithms/schedule.h"
#include "transport/shm.h"

namespace distml::algorithms {

using Counter = transport::ShmGroup::Counter;

void reduce_shm(transport::ShmGroup& shm, const void* in, void* out, std::size_t count,
                const Reduction& red, int root, bool stream_slots) {
  const auto* src = static_cast<const char*>(in);
  auto* dst = static_cast<char*>(out);
  const std::size_t chunk = shm.slot_bytes() / red.elem;
  std::vector<const void*> peers(shm.size());
  for (std::size_t first = 0; first < count; first += chunk) {
    const std::size_t len = std::min(chunk, count - first);
    const std::uint64_t step = shm.next_step();
    stage_and_reduce(shm, src + first * red.elem, len, red, step, peers, stream_slots);
    if (shm.rank() == root) gather_reduced(shm, dst + first * red.elem, len, red.elem, step);
    shm.publish(Counter::kReleased, step);
  }
}

}  // namespace distml::algorithms

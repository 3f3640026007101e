// Shared-memory broadcast for the ranks of one node: the root copies each
// chunk into its slot and posts; every other rank copies it out and
// releases. The root reuses a slot only once every rank has released the
// step that used it last, so with two slots the root copies chunk k+1 in
// while the others still copy chunk k out.
#include "algorithms/schedule.h"
#include "transport/shm.h"

namespace distml::algorithms {

using Counter = transport::ShmGroup::Counter;

void broadcast_shm(transport::ShmGroup& shm, void* buf, std::size_t bytes, int root) {
  const int me = shm.rank();
  auto* b = static_cast<char*>(buf);
  const std::size_t seg = shm.slot_bytes();
  for (std::size_t o = 0; o < bytes; o += seg) {
    const std::size_t n = std::min(seg, bytes - o);
    const std::uint64_t step = shm.next_step();
    const int k = static_cast<int>(step & 1);
    if (me == root) {
      if (step > 2) shm.wait_all(Counter::kReleased, step - 2);
      std::memcpy(shm.slot(root, k), b + o, n);
      shm.publish(Counter::kPosted, step);
    } else {
      shm.wait_one(root, Counter::kPosted, step);
      std::memcpy(b + o, shm.slot(root, k), n);
    }
    shm.publish(Counter::kReleased, step);
  }
}

}  // namespace distml::algorithms

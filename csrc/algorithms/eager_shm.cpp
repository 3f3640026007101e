#include "algorithms/eager_shm.h"

#include <cstring>
#include <vector>

#include "kernels/reduce.h"

namespace distml::algorithms {

using transport::ShmGroup;

namespace {
const char* posted(ShmGroup& shm, int rank, std::uint64_t seq) { return shm.control(rank).eager[seq & 1]; }
}  // namespace

void post_eager(ShmGroup& shm, std::uint64_t seq, const void* data, std::size_t bytes) {
  std::memcpy(shm.control(shm.rank()).eager[seq & 1], data, bytes);
}

void reduce_eager(ShmGroup& shm, std::uint64_t seq, void* out, std::size_t first, std::size_t count,
                  const Reduction& red) {
  if (count == 0) return;
  const int P = shm.size();
  // A node's ranks fit on the stack but on very large nodes: no allocation
  // on the path of every small reduction.
  constexpr int kOnStack = 64;
  const void* on_stack[kOnStack];
  std::vector<const void*> on_heap(P > kOnStack ? P : 0);
  const void** srcs = P > kOnStack ? on_heap.data() : on_stack;
  for (int r = 0; r < P; ++r) srcs[r] = posted(shm, r, seq) + first * red.elem;
  kernels::reduce_many(out, srcs, P, count, red.dtype, red.op);
  red.finish(out, count);
}

void broadcast_eager(ShmGroup& shm, std::uint64_t seq, void* out, std::size_t bytes, int root) {
  if (shm.rank() != root) std::memcpy(out, posted(shm, root, seq), bytes);
}

void allgather_eager(ShmGroup& shm, std::uint64_t seq, void* out, std::size_t bytes) {
  for (int r = 0; r < shm.size(); ++r) std::memcpy(static_cast<char*>(out) + r * bytes, posted(shm, r, seq), bytes);
}

void alltoall_eager(ShmGroup& shm, std::uint64_t seq, void* out, std::size_t block_bytes) {
  const std::size_t me = static_cast<std::size_t>(shm.rank());
  for (int r = 0; r < shm.size(); ++r) {
    std::memcpy(static_cast<char*>(out) + r * block_bytes, posted(shm, r, seq) + me * block_bytes, block_bytes);
  }
}

}  // namespace distml::algorithms

// Hierarchical allreduce for ranks on several nodes of equal size L.
//
//   1. node-local reduce-scatter through shared memory: local rank i ends
//      with block i (of L) reduced over its node;
//   2. the ranks holding block i on every node (local rank i of each node,
//      the `across` communicator) allreduce it over the network: recursive
//      doubling when small, a ring otherwise;
//   3. node-local allgather through shared memory.
// Only 1/L of the buffer crosses the network from each rank, and the
// node-local steps never touch MPI.
#include "algorithms/schedule.h"
#include "common/aligned_buffer.h"
#include "transport/shm.h"

namespace distml::algorithms {

void allreduce_hierarchical(transport::ShmGroup& node, MpiComm& across, const void* in, void* out,
                            std::size_t count, const Reduction& red, const Tuning& tuning,
                            std::size_t small_bytes) {
  const Blocks blocks{count, node.size()};
  const std::size_t mine = blocks.size(node.rank());
  char* block = node.scratch().take(std::max<std::size_t>(1, blocks.size(0)) * red.elem);
  const Reduction sum = red.unfinished();
  reduce_scatter_shm(node, in, block, blocks, sum);
  if (mine * red.elem <= small_bytes) {
    allreduce_recursive_doubling(across, block, block, mine, sum);
  } else {
    allreduce_ring(across, block, block, mine, sum, tuning);
  }
  red.finish(block, mine);
  allgather_shm(node, block, out, blocks, red.elem);
}

}  // namespace distml::algorithms

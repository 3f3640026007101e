// Reduce to a root: a binomial tree for small buffers, ring reduce-scatter
// then a gather of the blocks for large ones.
//
// Binomial tree, ranks renumbered so the root is 0: in round k a rank whose
// renumbered index has bit k set sends its partial result to index - 2^k and
// is done; the others receive from index + 2^k (if it exists) and reduce.
// After ceil(log2 P) rounds the root holds the reduction of all P inputs.
#include "algorithms/schedule.h"
#include "common/aligned_buffer.h"

namespace distml::algorithms {

void reduce_binomial(MpiComm& comm, const void* in, void* out, std::size_t count,
                     const Reduction& red, int root) {
  const int P = comm.size(), r = comm.rank();
  const int vr = mod(r - root, P);
  const std::size_t bytes = count * red.elem;
  char* acc = r == root ? static_cast<char*>(out) : comm.scratch().take(bytes);
  if (acc != in && bytes) std::memcpy(acc, in, bytes);
  char* scratch = comm.scratch().take(bytes);
  for (int mask = 1; mask < P; mask <<= 1) {
    if (vr & mask) {
      comm.send(acc, bytes, mod(vr - mask + root, P), kTagReduce);
      return;
    }
    if (vr + mask < P) {
      comm.recv(scratch, bytes, mod(vr + mask + root, P), kTagReduce);
      red.combine(acc, scratch, count);
    }
  }
}

void reduce_scatter_gather(MpiComm& comm, const void* in, void* out, std::size_t count,
                           const Reduction& red, int root, const Tuning& tuning) {
  const int P = comm.size(), r = comm.rank();
  const Blocks blocks{count, P};
  const std::size_t elem = red.elem;
  char* work = r == root ? static_cast<char*>(out) : comm.scratch().take(count * elem);
  reduce_scatter_ring(comm, in, work, blocks, red, tuning);
  if (r == root) {
    std::vector<Request> recvs;
    for (int i = 0; i < P; ++i) {
      if (i == root || blocks.size(i) == 0) continue;
      recvs.push_back(comm.irecv(work + blocks.offset(i) * elem, blocks.size(i) * elem, i,
                                 kTagGather));
    }
    comm.wait_all(recvs);
  } else if (blocks.size(r) > 0) {
    comm.send(work + blocks.offset(r) * elem, blocks.size(r) * elem, root, kTagGather);
  }
}

}  // namespace distml::algorithms

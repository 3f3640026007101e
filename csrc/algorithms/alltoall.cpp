// Pairwise-exchange alltoall: in step i (i = 1 .. P-1) rank r sends its block
// for rank r + i and receives the block from rank r - i, so every step is a
// permutation and no rank is ever the target of two senders at once.
//
// On up to kAllAtOnceRanks ranks every step is posted at once (receives
// first, in step order) and completed together, so that MPI moves several
// blocks at a time: at P = 4 on one node 0.95-1.10x MPI_Alltoall from 1 to
// 16 MiB, against 0.95-1.03x one step after the other (two runs each,
// bench/results/others_large.md).
#include <vector>

#include "algorithms/schedule.h"
#include "common/aligned_buffer.h"

namespace distml::algorithms {

namespace {
constexpr int kAllAtOnceRanks = 8;
}  // namespace

void alltoall_pairwise(MpiComm& comm, const void* in, void* out, std::size_t block_bytes) {
  const int P = comm.size(), r = comm.rank();
  const char* src = static_cast<const char*>(in);
  char* dst = static_cast<char*>(out);
  if (src == dst && P > 1) {
    // In place: keep the outgoing blocks safe from the incoming ones.
    char* copy = comm.scratch().take(block_bytes * P);
    std::memcpy(copy, src, block_bytes * P);
    src = copy;
  }
  if (src != dst) std::memcpy(dst + r * block_bytes, src + r * block_bytes, block_bytes);
  if (P <= kAllAtOnceRanks) {
    std::vector<Request> reqs;
    reqs.reserve(2 * static_cast<std::size_t>(P - 1));
    for (int i = 1; i < P; ++i) {
      const int from = mod(r - i, P);
      reqs.push_back(comm.irecv(dst + from * block_bytes, block_bytes, from, kTagAlltoall));
    }
    for (int i = 1; i < P; ++i) {
      const int to = mod(r + i, P);
      reqs.push_back(comm.isend(src + to * block_bytes, block_bytes, to, kTagAlltoall));
    }
    comm.wait_all(reqs);
    return;
  }
  for (int i = 1; i < P; ++i) {
    const int to = mod(r + i, P), from = mod(r - i, P);
    comm.sendrecv(src + to * block_bytes, block_bytes, to, dst + from * block_bytes, block_bytes,
                  from, kTagAlltoall);
  }
}

}  // namespace distml::algorithms

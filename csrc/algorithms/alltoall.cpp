// Pairwise-exchange alltoall: in step i (i = 1 .. P-1) rank r sends its block
// for rank r + i and receives the block from rank r - i, so every step is a
// permutation and no rank is ever the target of two senders at once.
#include "algorithms/schedule.h"
#include "common/aligned_buffer.h"

namespace distml::algorithms {

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
  for (int i = 1; i < P; ++i) {
    const int to = mod(r + i, P), from = mod(r - i, P);
    comm.sendrecv(src + to * block_bytes, block_bytes, to, dst + from * block_bytes, block_bytes,
                  from, kTagAlltoall);
  }
}

}  // namespace distml::algorithms

// Pairwise exchange of blocks of any size: alltoallv and allgatherv.
//
// Vocabulary: rank r's `send[d]` bytes go to rank d, and its `recv[s]` bytes
// come from rank s; blocks sit back to back in rank order in `in` and `out`
// (offsets are prefix sums of the sizes). In step i (i = 1 .. P-1) rank r
// sends its block for rank r + i and receives the block from rank r - i, so
// every step is a permutation and no rank is ever the target of two senders
// at once. An empty block is still a message of zero bytes: both sides of a
// pair always post, so a step never waits for a message that will not come.
//
// Hang invariant: recv[s] on rank r equals send[r] on rank s (the engine's
// sizes round establishes it before any row moves).
#include <vector>

#include "algorithms/schedule.h"

namespace distml::algorithms {

namespace {

std::vector<std::size_t> offsets_of(const std::size_t* sizes, int parts) {
  std::vector<std::size_t> off(parts + 1, 0);
  for (int i = 0; i < parts; ++i) off[i + 1] = off[i] + sizes[i];
  return off;
}

}  // namespace

void alltoallv_pairwise(MpiComm& comm, const void* in, const std::size_t* send, void* out,
                        const std::size_t* recv) {
  const int P = comm.size(), r = comm.rank();
  const char* src = static_cast<const char*>(in);
  char* dst = static_cast<char*>(out);
  const auto send_off = offsets_of(send, P), recv_off = offsets_of(recv, P);
  if (send[r]) std::memcpy(dst + recv_off[r], src + send_off[r], send[r]);
  for (int i = 1; i < P; ++i) {
    const int to = mod(r + i, P), from = mod(r - i, P);
    comm.sendrecv(src + send_off[to], send[to], to, dst + recv_off[from], recv[from], from, kTagAlltoallv);
  }
}

void allgatherv_pairwise(MpiComm& comm, const void* in, void* out, const std::size_t* sizes) {
  const int P = comm.size(), r = comm.rank();
  const char* mine = static_cast<const char*>(in);
  char* dst = static_cast<char*>(out);
  const auto off = offsets_of(sizes, P);
  if (sizes[r]) std::memcpy(dst + off[r], mine, sizes[r]);
  for (int i = 1; i < P; ++i) {
    const int to = mod(r + i, P), from = mod(r - i, P);
    comm.sendrecv(mine, sizes[r], to, dst + off[from], sizes[from], from, kTagAlltoallv);
  }
}

}  // namespace distml::algorithms

// Recursive-doubling allreduce, for latency-bound sizes.
//
// With P2 the largest power of two <= P and R = P - P2 ranks left over, the
// first 2R ranks pair up: each even one hands its data to the odd one above
// it and sits out. The P2 remaining ranks then run log2(P2) steps; in step k
// each exchanges its whole buffer with the rank whose (renumbered) index
// differs in bit k and reduces. Finally the odd ranks hand the result back to
// the even ones that sat out. Both sides of an exchange compute a op b with
// commutative ops, so every rank ends with bitwise the same result.
#include "algorithms/schedule.h"
#include "common/aligned_buffer.h"

namespace distml::algorithms {

void allreduce_recursive_doubling(MpiComm& comm, const void* in, void* out, std::size_t count,
                                  const Reduction& red) {
  const int P = comm.size(), r = comm.rank();
  const std::size_t bytes = count * red.elem;
  auto* acc = static_cast<char*>(out);
  if (in != out && bytes) std::memcpy(acc, in, bytes);
  if (P == 1) return;
  char* tmp = comm.scratch().take(bytes);

  const Fold F(P, r);

  // Fold the leftover ranks in.
  if (F.folded()) {
    if (F.sits_out()) {
      comm.send(acc, bytes, F.pair(), kTagRecursiveDoubling);
    } else {
      comm.recv(tmp, bytes, F.pair(), kTagRecursiveDoubling);
      red.combine(acc, tmp, count);
    }
  }

  // Exchange and reduce along each bit of the renumbered rank.
  if (!F.sits_out()) {
    for (int mask = 1; mask < F.p2; mask <<= 1) {
      const int peer = F.peer_of(F.vrank ^ mask);
      comm.sendrecv(acc, bytes, peer, tmp, bytes, peer, kTagRecursiveDoubling);
      red.combine(acc, tmp, count);
    }
  }

  // Hand the result back to the ranks that sat out.
  if (F.folded()) {
    if (F.sits_out()) {
      comm.recv(acc, bytes, F.pair(), kTagRecursiveDoubling);
    } else {
      comm.send(acc, bytes, F.pair(), kTagRecursiveDoubling);
    }
  }
}

}  // namespace distml::algorithms

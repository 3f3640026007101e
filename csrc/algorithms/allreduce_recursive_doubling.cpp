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

  int p2 = 1;
  while (p2 * 2 <= P) p2 *= 2;
  const int rem = P - p2;

  // Fold the leftover ranks in.
  int vrank;
  if (r < 2 * rem) {
    if (r % 2 == 0) {
      comm.send(acc, bytes, r + 1, kTagRecursiveDoubling);
      vrank = -1;
    } else {
      comm.recv(tmp, bytes, r - 1, kTagRecursiveDoubling);
      red.combine(acc, tmp, count);
      vrank = r / 2;
    }
  } else {
    vrank = r - rem;
  }

  // Exchange and reduce along each bit of the renumbered rank.
  if (vrank >= 0) {
    for (int mask = 1; mask < p2; mask <<= 1) {
      const int vpeer = vrank ^ mask;
      const int peer = vpeer < rem ? vpeer * 2 + 1 : vpeer + rem;
      comm.sendrecv(acc, bytes, peer, tmp, bytes, peer, kTagRecursiveDoubling);
      red.combine(acc, tmp, count);
    }
  }

  // Hand the result back to the ranks that sat out.
  if (r < 2 * rem) {
    if (r % 2 == 0) {
      comm.recv(acc, bytes, r + 1, kTagRecursiveDoubling);
    } else {
      comm.send(acc, bytes, r - 1, kTagRecursiveDoubling);
    }
  }
}

}  // namespace distml::algorithms

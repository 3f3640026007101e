// Recursive doubling whose messages carry the agreement (carried.h).
//
// The schedule is allreduce_recursive_doubling's: with P2 the largest power
// of two <= P and R = P - P2, the first 2R ranks pair up and each even one
// hands its message to the odd one above it and sits out; the P2 others run
// log2(P2) exchange steps; the odd ranks hand the result back. Each step
// moves a whole message (header + payload) and combines both parts: the
// fingerprints by max, the payload by the reduction. Both sides of an
// exchange compute a op b with commutative ops, so every rank ends with
// bitwise the same message.
//
// Every receive lands in `tmp`, which holds the largest message any rank
// may send (a peer whose call differs may send more than this rank does);
// a rank that sat out copies the final message from there.
#include <algorithm>
#include <cstring>

#include "algorithms/carried.h"

namespace distml::algorithms {

namespace {

// Folds a received message into this rank's.
void combine_message(char* msg, const char* got, std::size_t count, const Reduction* red) {
  auto* mine = reinterpret_cast<CarriedHeader*>(msg);
  const auto* theirs = reinterpret_cast<const CarriedHeader*>(got);
  mine->hash = std::max(mine->hash, theirs->hash);
  mine->inverse = std::max(mine->inverse, theirs->inverse);
  if (count > 0) red->combine(msg + kCarriedHeaderBytes, got + kCarriedHeaderBytes, count);
}

}  // namespace

void allreduce_carried(MpiComm& comm, char* msg, char* tmp, std::size_t count, const Reduction* red) {
  const int P = comm.size(), r = comm.rank();
  const std::size_t bytes = kCarriedHeaderBytes + (count > 0 ? count * red->elem : 0);
  if (P == 1) return;

  const Fold F(P, r);

  // Fold the leftover ranks in.
  if (F.folded()) {
    if (F.sits_out()) {
      comm.send(msg, bytes, F.pair(), kTagFingerprint);
    } else {
      comm.recv(tmp, kCarryCapacity, F.pair(), kTagFingerprint);
      combine_message(msg, tmp, count, red);
    }
  }

  // Exchange and combine along each bit of the renumbered rank.
  if (!F.sits_out()) {
    for (int mask = 1; mask < F.p2; mask <<= 1) {
      const int peer = F.peer_of(F.vrank ^ mask);
      comm.sendrecv(msg, bytes, peer, tmp, kCarryCapacity, peer, kTagFingerprint);
      combine_message(msg, tmp, count, red);
    }
  }

  // Hand the result back to the ranks that sat out.
  if (F.folded()) {
    if (F.sits_out()) {
      comm.recv(tmp, kCarryCapacity, F.pair(), kTagFingerprint);
      std::memcpy(msg, tmp, bytes);
    } else {
      comm.send(msg, bytes, F.pair(), kTagFingerprint);
    }
  }
}

}  // namespace distml::algorithms

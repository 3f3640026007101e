// The agreement carried by the data: a small collective whose every message
// starts with a header holding the ranks' call fingerprints, so that the
// check before the collective and the collective itself are one schedule.
//
// Vocabulary: a message is a CarriedHeader followed by a payload (the
// sender's data, or its partial result); a rank whose call carries no data
// (or cannot run) sends the header alone. The header is kept to 16 bytes:
// on TCP the smallest messages take a faster path, and an 8-byte allreduce
// whose messages grew past it lost what the carried check saves. The capacity is the most bytes any rank may send
// in one message: kCarriedHeaderBytes + kCarryMaxBytes, a constant and not a
// setting, so that ranks whose settings or calls differ still never send
// more than a peer has room for.
//
// Compatibility invariant (a broken one is a truncation error or a hang):
// every call on a communicator that checks by fingerprints runs
// allreduce_carried, with the same peers, steps and tag whatever the call,
// and receives into the full capacity. Ranks whose calls differ therefore
// still exchange the same messages and reach the same verdict: their
// fingerprints differ (the size and type of the data are part of what they
// hash). Such a rank may combine a peer's shorter payload with stale bytes
// of its receive buffer, never past it; the result is dropped.
#pragma once

#include <cstddef>
#include <cstdint>

#include "algorithms/schedule.h"

namespace distml::algorithms {

struct CarriedHeader {
  // Combined by max over all ranks: the fingerprints agree iff, at the end,
  // hash == ~inverse (the largest fingerprint is also the smallest).
  std::uint64_t hash, inverse;
};
constexpr std::size_t kCarriedHeaderBytes = sizeof(CarriedHeader);
static_assert(kCarriedHeaderBytes == 16, "CarriedHeader must stay 16 bytes");

// The most payload one message may carry.
constexpr std::size_t kCarryMaxBytes = std::size_t{64} << 10;
constexpr std::size_t kCarryCapacity = kCarriedHeaderBytes + kCarryMaxBytes;

// Recursive doubling (as allreduce_recursive_doubling: any P, leftover ranks
// folded in and out) on `msg`, a header followed by `count` elements of
// `red` (`red` may be null when `count` is 0). On return every rank's
// header holds the max over all ranks' fingerprints, and, where they agree,
// the payload holds the reduction of all ranks' payloads (averages not
// finished), bitwise the same everywhere.
// `tmp` has room for kCarryCapacity bytes.
void allreduce_carried(MpiComm& comm, char* msg, char* tmp, std::size_t count, const Reduction* red);

// The halving-doubling allreduce (allreduce_halving_doubling.cpp) carrying
// the agreement the same way: `msg` is a header followed by `count`
// elements; the fold-in and halving messages carry the header (their
// partners and order are allreduce_carried's, so the invariant above holds
// against a peer running that), and the doubling steps run only where the
// combined header says the fingerprints agreed. Valid only where
// halving_carry_bytes(count, ...) <= kCarryMaxBytes. `tmp` has room for
// kCarryCapacity bytes, `stage` for kCarriedHeaderBytes +
// halving_carry_bytes(...). `red` leaves averages unfinished.
void allreduce_halving_doubling_carried(MpiComm& comm, char* msg, char* tmp, char* stage, std::size_t count,
                                        const Reduction& red);
// The largest payload of a message that halving-doubling sends before every
// header has been combined (the fold-in, or its first halving step), for
// `count` elements of `elem` bytes on P ranks.
std::size_t halving_carry_bytes(std::size_t count, std::size_t elem, int P);

// Whether the headers at the end of allreduce_carried say every rank's
// fingerprint was the same.
inline bool carried_agreed(const CarriedHeader& h) { return h.hash == ~h.inverse; }

}  // namespace distml::algorithms

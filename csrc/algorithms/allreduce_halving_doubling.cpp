// Halving-doubling allreduce: a reduce-scatter by recursive halving, then an
// allgather by recursive doubling. Each rank sends about 2 (P-1)/P of the
// buffer in 2 log2(P) steps, where recursive doubling sends all of it in
// each of log2(P) steps: the schedule for sizes where links, not latency,
// decide.
//
// Vocabulary: the P2 ranks that take part (P2 the largest power of two
// <= P) are numbered by `vrank`; the buffer is cut into P2 blocks
// (Blocks{count, P2}); a `range` is a run of consecutive blocks.
//
//   fold in      with R = P - P2, the first 2R ranks pair up: each even one
//                sends its whole buffer to the odd one above it and sits out.
//   halving      step k (mask = 2^k, k = 0 .. log2(P2)-1): the rank and its
//                partner vrank ^ mask split their common range in two; the
//                one whose bit k is clear keeps the lower half, the other
//                the upper; each sends the half it gives up and reduces the
//                half it keeps with what arrives. After the last step each
//                rank holds one block reduced over all ranks (the block
//                numbered by its vrank's bits reversed) and finishes it.
//   doubling     the same pairs in reverse order (mask = P2/2 .. 1): each
//                sends the range it holds and receives its partner's,
//                the neighbouring one of the same size.
//   fold out     the odd ranks hand the result back to the even ones.
//
// Steps run in the order of recursive doubling's (fold in, then masks from
// 1 up), with the same partners: so the carried variant (carried.h), whose
// fold-in and halving messages start with the agreement's header, meets a
// peer that runs allreduce_carried message for message. Only once the
// halving steps have combined every rank's header does anyone move on to
// the doubling steps, and only if the fingerprints agreed; a rank that
// disagrees skips them and goes straight to the fold out, as
// allreduce_carried does.
//
// Each element's final value is computed by exactly one rank and copied to
// the others, so every rank ends with bitwise the same result.
#include <algorithm>
#include <cstring>

#include "algorithms/carried.h"
#include "algorithms/schedule.h"

namespace distml::algorithms {

namespace {

struct Layout : Fold {
  Blocks blocks;

  Layout(const MpiComm& comm, std::size_t count)
      : Fold(comm.size(), comm.rank()), blocks{count, p2} {}
  // Elements of blocks [first, first + n).
  std::size_t offset(int first) const { return blocks.offset(first); }
  std::size_t size(int first, int n) const { return blocks.offset(first + n) - blocks.offset(first); }
};

// The schedule, with or without a header. `acc` holds the buffer (count
// elements); with `header`, `header` + acc is one contiguous message
// (header, then acc), `tmp` has room for kCarryCapacity bytes and `stage`
// for a header and the largest halving message. Without it, `tmp` has room
// for the buffer. Returns whether the doubling steps ran (always, without a
// header; with one, whether the fingerprints agreed).
bool run(MpiComm& comm, char* acc, std::size_t count, const Reduction* red, CarriedHeader* header, char* tmp,
         char* stage) {
  const Layout L(comm, count);
  const std::size_t elem = red ? red->elem : 1;
  const std::size_t bytes = count * elem;
  const std::size_t hdr = header ? kCarriedHeaderBytes : 0;
  const std::size_t room = header ? kCarryCapacity : bytes;
  const int tag = header ? kTagFingerprint : kTagHalvingDoubling;
  char* msg = acc - hdr;  // the header, then the buffer (without one: the buffer)

  // Combines a received message (header, then `n` elements) into mine.
  auto combine = [&](char* dst, const char* got, std::size_t n) {
    if (header) {
      const auto* theirs = reinterpret_cast<const CarriedHeader*>(got);
      header->hash = std::max(header->hash, theirs->hash);
      header->inverse = std::max(header->inverse, theirs->inverse);
    }
    if (n > 0) red->combine(dst, got + hdr, n);
  };

  // Fold in.
  if (L.folded()) {
    if (L.sits_out()) {
      comm.send(msg, hdr + bytes, L.pair(), tag);
    } else {
      comm.recv(tmp, room, L.pair(), tag);
      combine(acc, tmp, count);
    }
  }

  bool agreed = true;
  if (!L.sits_out()) {
    // Halving: [lo, lo + n) is the range of blocks this rank still reduces.
    int lo = 0, n = L.p2;
    for (int mask = 1; mask < L.p2; mask <<= 1) {
      const int half = n / 2;
      const int peer = L.peer_of(L.vrank ^ mask);
      const bool lower = (L.vrank & mask) == 0;
      const int keep = lower ? lo : lo + half, give = lower ? lo + half : lo;
      const std::size_t give_elems = L.size(give, half), keep_elems = L.size(keep, half);
      const char* give_at = acc + L.offset(give) * elem;
      const char* out = give_at;
      if (header) {
        // One message: the header, then the half given up.
        std::memcpy(stage, header, hdr);
        if (give_elems) std::memcpy(stage + hdr, give_at, give_elems * elem);
        out = stage;
      }
      comm.sendrecv(out, hdr + give_elems * elem, peer, tmp, header ? room : keep_elems * elem, peer, tag);
      combine(acc + L.offset(keep) * elem, tmp, keep_elems);
      lo = keep;
      n = half;
    }
    if (header) agreed = carried_agreed(*header);
    // This rank computed block `lo`'s final values.
    if (agreed && red) red->finish(acc + L.offset(lo) * elem, L.size(lo, 1));

    // Doubling, in the reverse order of the halving.
    for (int mask = L.p2 / 2; agreed && mask >= 1; mask >>= 1) {
      const int peer = L.peer_of(L.vrank ^ mask);
      const bool lower = (L.vrank & mask) == 0;
      const int theirs = lower ? lo + n : lo - n;
      comm.sendrecv(acc + L.offset(lo) * elem, L.size(lo, n) * elem, peer, acc + L.offset(theirs) * elem,
                    L.size(theirs, n) * elem, peer, kTagHalvingDoubling);
      lo = std::min(lo, theirs);
      n *= 2;
    }
  }

  // Fold out: the header (the verdict) and the result.
  if (L.folded()) {
    if (L.sits_out()) {
      if (header) {
        comm.recv(tmp, room, L.pair(), tag);
        std::memcpy(msg, tmp, hdr + bytes);
        agreed = carried_agreed(*header);
      } else {
        comm.recv(acc, bytes, L.pair(), tag);
      }
    } else {
      comm.send(msg, hdr + bytes, L.pair(), tag);
    }
  }
  return agreed;
}

}  // namespace

std::size_t halving_carry_bytes(std::size_t count, std::size_t elem, int P) {
  if (P <= 1) return 0;
  const int p2 = Fold::largest_power_of_two(P);
  // With ranks folded in, the fold's message holds the whole buffer; else
  // the first halving step's lower half is the largest (array_split puts
  // the extra elements first).
  if (P > p2) return count * elem;
  return Blocks{count, p2}.offset(p2 / 2) * elem;
}

void allreduce_halving_doubling(MpiComm& comm, const void* in, void* out, std::size_t count,
                                const Reduction& red) {
  const std::size_t bytes = count * red.elem;
  auto* acc = static_cast<char*>(out);
  if (in != out && bytes) std::memcpy(acc, in, bytes);
  if (comm.size() == 1) {
    red.finish(acc, count);
    return;
  }
  char* tmp = comm.scratch().take(bytes);
  run(comm, acc, count, &red, nullptr, tmp, nullptr);
}

void allreduce_halving_doubling_carried(MpiComm& comm, char* msg, char* tmp, char* stage, std::size_t count,
                                        const Reduction& red) {
  if (comm.size() == 1) return;
  run(comm, msg + kCarriedHeaderBytes, count, &red, reinterpret_cast<CarriedHeader*>(msg), tmp, stage);
}

}  // namespace distml::algorithms

// Shared-memory allreduce for the ranks of one node.
//
// Every rank owns two slots in the node's shared window. Messages larger than
// a slot move as chunks, one step per chunk, alternating slots so that
// copying chunk k+1 in overlaps peers still reading chunk k. One step:
//   1. wait until every peer has released the step that last used this slot
//      (step - 2), then copy the other ranks' slices of my chunk of the input
//      into my slot: posted = step
//   2. when every peer has posted, reduce my slice of the chunk, reading my
//      own input and that slice of every peer's slot, into my own slot:
//      reduced = step
//   3. when every peer has reduced, copy every reduced slice out of its
//      owner's slot into my output: released = step
// Each element is reduced by exactly one rank, so all ranks get bitwise the
// same result. Per rank and byte of input that is (P-1)/P of a copy in, one
// read of a 1/P share from each rank, and one copy out: about 2.5x the
// traffic of a memcpy, against 2(P-1)/P messages' worth through MPI plus
// MPI's own copies.
//
// With `stream` (large messages), step 3 writes the output with streaming
// stores: nothing reads it back during the collective.
//
// Small messages do not come here: they travel with the arrival (see
// eager_shm.h), one synchronisation in all.
//
// Hang invariant: every rank runs the same steps in the same order (the
// engine guarantees the same collectives in the same order), and a rank only
// waits for a counter value that its peer publishes in the same step.
#include <vector>

#include "algorithms/schedule.h"
#include "common/aligned_buffer.h"
#include "transport/shm.h"

namespace distml::algorithms {

using transport::ShmGroup;
using Counter = transport::ShmGroup::Counter;

void allreduce_shm(ShmGroup& shm, const void* in, void* out, std::size_t count,
                   const Reduction& red, bool stream, bool stream_slots) {
  const int L = shm.size();
  const std::size_t elem = red.elem;
  const auto* src = static_cast<const char*>(in);
  auto* dst = static_cast<char*>(out);
  std::vector<const void*> peers(L);

  const std::size_t chunk = shm.slot_bytes() / elem;
  for (std::size_t first = 0; first < count; first += chunk) {
    const std::size_t len = std::min(chunk, count - first);
    const std::uint64_t step = shm.next_step();
    stage_and_reduce(shm, src + first * elem, len, red, step, peers, stream_slots);  // 1 and 2
    gather_reduced(shm, dst + first * elem, len, elem, step, stream);  // 3
    shm.publish(Counter::kReleased, step);
  }
}

void stage_and_reduce(ShmGroup& shm, const char* src, std::size_t len, const Reduction& red,
                      std::uint64_t step, std::vector<const void*>& peers, bool stream_slots) {
  const int L = shm.size(), me = shm.rank();
  const std::size_t elem = red.elem;
  const std::size_t align = std::max<std::size_t>(1, 64 / elem);
  const int k = static_cast<int>(step & 1);
  // 1. copy in every slice but my own (only peers read my slot, and only
  //    their own slices of it), once every peer is done with what this slot
  //    held two steps ago
  if (step > 2) shm.wait_all(Counter::kReleased, step - 2);
  for (int s = 0; s < L; ++s) {
    std::size_t c0, cn;
    chunk_slice(len, L, s, align, &c0, &cn);
    if (s != me && cn > 0) copy_result(shm.slot(me, k) + c0 * elem, src + c0 * elem, cn * elem, stream_slots);
  }
  shm.publish(Counter::kPosted, step);
  // 2. reduce my slice, my own part straight from my input and the others
  //    from their slots, into my slot
  shm.wait_all(Counter::kPosted, step);
  std::size_t s0, sn;
  chunk_slice(len, L, me, align, &s0, &sn);
  if (sn > 0) {
    peers.resize(L);
    peers[0] = src + s0 * elem;
    for (int i = 1; i < L; ++i) peers[i] = shm.slot((me + i) % L, k) + s0 * elem;
    reduce_result(shm.slot(me, k) + s0 * elem, peers.data(), L, sn, red, stream_slots);
    red.finish(shm.slot(me, k) + s0 * elem, sn);
  }
  shm.publish(Counter::kReduced, step);
}

void gather_reduced(ShmGroup& shm, char* dst, std::size_t len, std::size_t elem,
                    std::uint64_t step, bool stream) {
  const int L = shm.size(), me = shm.rank();
  const int k = static_cast<int>(step & 1);
  const std::size_t align = std::max<std::size_t>(1, 64 / elem);
  for (int i = 0; i < L; ++i) {
    const int r = (me + i) % L;
    if (r != me) shm.wait_one(r, Counter::kReduced, step);
    std::size_t r0, rn;
    chunk_slice(len, L, r, align, &r0, &rn);
    if (rn) copy_result(dst + r0 * elem, shm.slot(r, k) + r0 * elem, rn * elem, stream);
  }
}

}  // namespace distml::algorithms

namespace distml::algorithms {

// In-place allreduce of a buffer that lives in a node-shared window, at the
// same offset on every rank: no copy in, no slots. With `stream`, the copies
// of step 3 use streaming stores (my slice, which peers read, does not).
//   1. post: my input is ready to be read
//   2. when every peer has posted, reduce my slice straight from every
//      peer's buffer into my own buffer's slice: reduced = step
//      (only I read my slice of any buffer before this point, so writing it
//      in place is safe)
//   3. when a peer has reduced, copy its slice out of its buffer into mine
//   4. release, and wait for every peer's release before returning, so that
//      nobody overwrites a buffer a peer is still copying from.
void allreduce_shm_window(transport::ShmGroup& shm, const transport::ShmWindow& window,
                          std::size_t offset, std::size_t count, const Reduction& red,
                          bool stream) {
  const int L = shm.size(), me = shm.rank();
  const std::size_t elem = red.elem;
  const std::size_t align = std::max<std::size_t>(1, 64 / elem);
  std::vector<const void*> peers(L);
  auto buf = [&](int r) { return window.base(r) + offset; };

  const std::uint64_t step = shm.next_step();
  shm.publish(Counter::kPosted, step);
  shm.wait_all(Counter::kPosted, step);
  std::size_t s0, sn;
  chunk_slice(count, L, me, align, &s0, &sn);
  if (sn > 0) {
    for (int i = 0; i < L; ++i) peers[i] = buf((me + i) % L) + s0 * elem;
    kernels::reduce_many(buf(me) + s0 * elem, peers.data(), L, sn, red.dtype, red.op);
    red.finish(buf(me) + s0 * elem, sn);
  }
  shm.publish(Counter::kReduced, step);
  for (int i = 1; i < L; ++i) {
    const int r = (me + i) % L;
    shm.wait_one(r, Counter::kReduced, step);
    std::size_t r0, rn;
    chunk_slice(count, L, r, align, &r0, &rn);
    if (rn) copy_result(buf(me) + r0 * elem, buf(r) + r0 * elem, rn * elem, stream);
  }
  shm.publish(Counter::kReleased, step);
  shm.wait_all(Counter::kReleased, step);
}

}  // namespace distml::algorithms

namespace distml::algorithms {

// Single-copy allreduce for large messages on one node: ranks read each
// other's private buffers directly (process_vm_readv), so nothing is copied
// into shared memory first. With `stream`, my slice of the output is written
// with streaming stores (every peer then reads it back from memory, so this
// pays only for messages far larger than the cache).
//   1. post the addresses of my input and output
//   2. reduce my slice: for each piece of it, read that piece of every
//      peer's input into a small cache-resident buffer, and reduce it with my
//      own input straight into my output: reduced = step
//   3. when a peer has reduced, read its slice of its output into mine
//   4. release, and wait for every peer's release before returning: peers
//      read my buffers until then.
// In place is safe: during step 2 a peer reads only my slice of its own
// index, which I overwrite in step 3 only after that peer has reduced.
void reduce_from_peers(transport::ShmGroup& shm, const char* in, char* dst, std::size_t first,
                       std::size_t count, const Reduction& red, bool stream) {
  const int L = shm.size(), me = shm.rank();
  const std::size_t elem = red.elem;
  const std::size_t piece = single_copy_piece(elem);
  char* staging = shm.scratch().take(single_copy_staging_bytes(elem, L));
  // Not when an average must still be finished in place: that would read the
  // streamed slice back from memory.
  const bool stream_out = stream && red.average_over <= 1;
  std::vector<const void*> srcs(L);
  for (std::size_t o = 0; o < count; o += piece) {
    const std::size_t n = std::min(piece, count - o);
    const std::size_t at = (first + o) * elem;
    srcs[0] = in + at;
    for (int i = 1; i < L; ++i) {
      const int r = (me + i) % L;
      char* d = staging + (i - 1) * piece * elem;
      shm.read_peer(r, d, shm.control(r).in_addr + at, n * elem);
      srcs[i] = d;
    }
    char* y = dst + o * elem;
    reduce_result(y, srcs.data(), L, n, red, stream_out);
    red.finish(y, n);
  }
}

void allreduce_shm_single_copy(transport::ShmGroup& shm, const void* in, void* out,
                               std::size_t count, const Reduction& red, bool stream) {
  const int L = shm.size(), me = shm.rank();
  const std::size_t elem = red.elem;
  const std::size_t align = std::max<std::size_t>(1, 64 / elem);
  auto& mine = shm.control(me);
  mine.in_addr = reinterpret_cast<std::uint64_t>(in);
  mine.out_addr = reinterpret_cast<std::uint64_t>(out);
  const std::uint64_t step = shm.next_step();
  shm.publish(Counter::kPosted, step);
  shm.wait_all(Counter::kPosted, step);

  std::size_t s0, sn;
  chunk_slice(count, L, me, align, &s0, &sn);
  char* y = static_cast<char*>(out);
  reduce_from_peers(shm, static_cast<const char*>(in), y + s0 * elem, s0, sn, red, stream);
  shm.publish(Counter::kReduced, step);

  for (int i = 1; i < L; ++i) {
    const int r = (me + i) % L;
    shm.wait_one(r, Counter::kReduced, step);
    std::size_t r0, rn;
    chunk_slice(count, L, r, align, &r0, &rn);
    if (rn) shm.read_peer(r, y + r0 * elem, shm.control(r).out_addr + r0 * elem, rn * elem);
  }
  shm.publish(Counter::kReleased, step);
  shm.wait_all(Counter::kReleased, step);
}

}  // namespace distml::algorithms

// Shared-memory broadcast for the ranks of one node: the root copies each
// chunk into its slot and posts; every other rank copies it out and
// releases. The root reuses a slot only once every rank has released the
// step that used it last, so with two slots the root copies chunk k+1 in
// while the others still copy chunk k out.
//
// Single copy (two ranks that may read and write each other's memory, see
// ShmGroup::single_copy): both post their array's address; the other rank
// reads the first half of the root's array into its own
// (process_vm_readv) while the root writes the second half into it
// (process_vm_writev); each waits for the other's release. One copy of the
// message instead of two, split between both ranks. At P = 2 it took
// MPI_Bcast's time / 1.03-1.20 from 20 to 48 KiB, / 1.35-1.42 at 256 KiB and
// / 1.86-2.00 from 1 to 64 MiB, where staging through the slots took
// / 0.74-1.38 (bench/results/broadcast_oneway.md).
//
// On nodes of more than two ranks the root posts its array's address and
// every other rank reads all of it (process_vm_readv); the root returns
// once every rank has. One copy per receiving rank, none by the root, and
// no slot to refill (which the AMD machines' slow phase makes dear,
// bench/results/host_phases.md). Offered to the choice by times only
// (engine/variant_tuner.h).
#include "algorithms/schedule.h"
#include "transport/shm.h"

namespace distml::algorithms {

using Counter = transport::ShmGroup::Counter;

void broadcast_shm(transport::ShmGroup& shm, void* buf, std::size_t bytes, int root, bool stream_slots) {
  const int me = shm.rank();
  auto* b = static_cast<char*>(buf);
  const std::size_t seg = shm.slot_bytes();
  for (std::size_t o = 0; o < bytes; o += seg) {
    const std::size_t n = std::min(seg, bytes - o);
    const std::uint64_t step = shm.next_step();
    const int k = static_cast<int>(step & 1);
    if (me == root) {
      if (step > 2) shm.wait_all(Counter::kReleased, step - 2);
      copy_result(shm.slot(root, k), b + o, n, stream_slots);
      shm.publish(Counter::kPosted, step);
    } else {
      shm.wait_one(root, Counter::kPosted, step);
      std::memcpy(b + o, shm.slot(root, k), n);
    }
    shm.publish(Counter::kReleased, step);
  }
}

void broadcast_shm_single_copy(transport::ShmGroup& shm, void* buf, std::size_t bytes, int root) {
  const int me = shm.rank();
  if (shm.size() > 2) {
    const std::uint64_t step = shm.next_step();
    if (me == root) {
      shm.control(me).in_addr = reinterpret_cast<std::uint64_t>(buf);
      shm.publish(Counter::kPosted, step);
    } else {
      shm.wait_one(root, Counter::kPosted, step);
      if (bytes) shm.read_peer(root, buf, shm.control(root).in_addr, bytes);
    }
    // The root's array is read by every other rank until all are done.
    shm.publish(Counter::kReleased, step);
    if (me == root) shm.wait_all(Counter::kReleased, step);
    return;
  }
  const int other = 1 - me;
  // The root writes the second half into the other rank's array while that
  // rank reads the first half from the root's: both copy at once.
  const std::size_t head = std::min(bytes, (bytes / 2 + 63) / 64 * 64);
  const std::uint64_t step = shm.next_step();
  shm.control(me).in_addr = reinterpret_cast<std::uint64_t>(buf);
  shm.publish(Counter::kPosted, step);
  shm.wait_one(other, Counter::kPosted, step);
  auto* b = static_cast<char*>(buf);
  const std::uint64_t theirs = shm.control(other).in_addr;
  if (me == root) {
    if (head < bytes) shm.write_peer(other, theirs + head, b + head, bytes - head);
  } else if (head > 0) {
    shm.read_peer(root, b, theirs, head);
  }
  // Each rank's array is read or written by the other until both are done.
  shm.publish(Counter::kReleased, step);
  shm.wait_one(other, Counter::kReleased, step);
}

}  // namespace distml::algorithms

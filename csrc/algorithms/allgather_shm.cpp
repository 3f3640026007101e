// Shared-memory allgather for the ranks of one node: in each round every
// rank copies the next segment of its block into its slot and posts; then
// every rank copies every peer's segment into place and releases. Rounds run
// until the longest block is done; blocks may differ in size.
//
// Single copy (ranks that may read and write each other's memory, see
// ShmGroup::single_copy): every rank posts its output's address, copies its
// own block into place and writes it from there straight into every peer's
// output (process_vm_writev), one copy per block where staging takes two.
// Writing the block just copied, still in this core's cache, beat reading
// each peer's input into place at P = 2 from 512 KiB: 1.00-1.32x
// MPI_Allgather up to 16 MiB against 0.94-1.15x. Below 256 KiB (level at
// 256 KiB; at 64 KiB ahead in one set of runs and behind in another) every
// rank posts its input instead and reads each peer's block
// (bench/results/others_large.md).
#include "algorithms/schedule.h"
#include "transport/shm.h"

namespace distml::algorithms {

using Counter = transport::ShmGroup::Counter;

namespace {
// Two ranks copy in segments of this size (at most the slot) when the slots
// are written by ordinary stores: a round's segment copied in, the peer's
// copied out and the own one from the input stay in a core's L2 (1 MiB on
// the machines measured), and the peer reads the slot from there. Sweeps
// at P = 2 alternating with the build before, fast phase: 1.27 / 1.17 /
// 1.15x MPI_Allgather at 1 / 2 / 4 MiB against 1.13 / 1.02 / 0.93x; staged
// in segments of 128 or 512 KiB was slower than 256 KiB, and at P = 4 (two
// ranks to a core, five segments a round) 1 MiB was as fast or faster
// (bench/results/segments.md). In the slow phase small segments lose
// (cross-core lines cost more per round) and the tuner takes the single
// copy there.
// Streaming stores send the slot to memory, where a segment's size buys
// nothing and each round costs a synchronisation.
constexpr std::size_t kPairSegmentBytes = std::size_t{256} << 10;
}  // namespace

void allgather_shm(transport::ShmGroup& shm, const void* in, void* out, const Blocks& blocks,
                   std::size_t elem, bool stream_slots) {
  const int L = shm.size(), me = shm.rank();
  const auto* src = static_cast<const char*>(in);
  auto* dst = static_cast<char*>(out);
  const std::size_t seg_bytes =
      L == 2 && !stream_slots ? std::min(shm.slot_bytes(), kPairSegmentBytes) : shm.slot_bytes();
  const std::size_t seg = std::max<std::size_t>(1, seg_bytes / elem);
  const std::size_t longest = blocks.size(0);
  for (std::size_t o = 0; o < longest; o += seg) {
    const std::uint64_t step = shm.next_step();
    const int k = static_cast<int>(step & 1);
    if (step > 2) shm.wait_all(Counter::kReleased, step - 2);
    const std::size_t own = blocks.size(me);
    if (o < own) copy_result(shm.slot(me, k), src + o * elem, std::min(seg, own - o) * elem, stream_slots);
    shm.publish(Counter::kPosted, step);
    // The own segment from the input, still in this core's cache (a slot
    // written by streaming stores would be read back from memory), while
    // the peers post.
    char* mine = dst + (blocks.offset(me) + o) * elem;
    if (o < own && mine != src + o * elem) std::memcpy(mine, src + o * elem, std::min(seg, own - o) * elem);
    for (int i = 1; i < L; ++i) {
      const int r = (me + i) % L;
      shm.wait_one(r, Counter::kPosted, step);
      const std::size_t size = blocks.size(r);
      if (o >= size) continue;
      std::memcpy(dst + (blocks.offset(r) + o) * elem, shm.slot(r, k),
                  std::min(seg, size - o) * elem);
    }
    shm.publish(Counter::kReleased, step);
  }
}

namespace {
// From this size (the first block, which every rank knows) the single copy
// writes into the peers' outputs; below it reads the peers' inputs.
constexpr std::size_t kSingleCopyWriteBytes = std::size_t{256} << 10;
}  // namespace

void allgather_shm_single_copy(transport::ShmGroup& shm, const void* in, void* out, const Blocks& blocks,
                               std::size_t elem) {
  const int L = shm.size(), me = shm.rank();
  auto* dst = static_cast<char*>(out);
  if (blocks.size(0) * elem < kSingleCopyWriteBytes) {
    const std::uint64_t step = shm.next_step();
    shm.control(me).in_addr = reinterpret_cast<std::uint64_t>(in);
    shm.publish(Counter::kPosted, step);
    // The own block while the peers post.
    char* own = dst + blocks.offset(me) * elem;
    if (in != own && blocks.size(me)) std::memcpy(own, in, blocks.size(me) * elem);
    for (int i = 1; i < L; ++i) {
      const int r = (me + i) % L;
      shm.wait_one(r, Counter::kPosted, step);
      if (blocks.size(r)) shm.read_peer(r, dst + blocks.offset(r) * elem, shm.control(r).in_addr, blocks.size(r) * elem);
    }
    // Every rank's input is read by its peers until all are done.
    shm.publish(Counter::kReleased, step);
    shm.wait_all(Counter::kReleased, step);
    return;
  }
  const std::uint64_t step = shm.next_step();
  shm.control(me).out_addr = reinterpret_cast<std::uint64_t>(out);
  shm.publish(Counter::kPosted, step);
  char* own = dst + blocks.offset(me) * elem;
  const std::size_t bytes = blocks.size(me) * elem;
  if (in != own && bytes) std::memcpy(own, in, bytes);
  for (int i = 1; i < L && bytes; ++i) {
    const int r = (me + i) % L;
    shm.wait_one(r, Counter::kPosted, step);
    shm.write_peer(r, shm.control(r).out_addr + blocks.offset(me) * elem, own, bytes);
  }
  // Every rank's output is written by its peers until all are done.
  shm.publish(Counter::kReleased, step);
  shm.wait_all(Counter::kReleased, step);
}

}  // namespace distml::algorithms

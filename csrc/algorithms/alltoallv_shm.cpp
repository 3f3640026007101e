// Shared-memory alltoall, alltoallv and allgatherv for the ranks of one node.
//
// Vocabulary as in alltoallv.cpp (blocks of any size, back to back in rank
// order), plus: a round moves the next `piece` bytes of every block through
// the ranks' slots. For alltoallv a rank's slot is cut into one lane per
// destination, so one round carries a piece of every block: the writer fills
// lane d of its slot with the next piece of its block for rank d and posts;
// rank d copies lane d out of every peer's slot and releases. For allgatherv
// the whole slot is one lane holding the next piece of the writer's block,
// which every rank copies.
//
// alltoall is alltoallv with every block the same size, which every rank
// knows, so it skips the round that agrees on the longest block. In place
// (in == out) is safe for it: a round posts its piece of every outgoing
// block before it writes the same range of the incoming ones, and later
// rounds read only later ranges.
//
// Single copy (ranks that may read and write each other's memory, see
// ShmGroup::single_copy), alltoall only: every rank posts its output's
// address and writes its block for each peer straight into the peer's
// output (process_vm_writev); in place, the outgoing blocks are first
// copied to scratch, since the peers write over them. Below
// kSingleCopyWriteBytes it posts its input instead and reads its block from
// each peer's (process_vm_readv); in place it stages what arrives until
// every peer is done reading. Writing was 1.02-1.17x MPI_Alltoall at P = 2
// from 512 KiB to 4 MiB against 1.00-1.03x reading, and 1.06-1.17x against
// 1.03-1.12x at P = 4; at 256 KiB reading was level or ahead (1.02x
// against 1.01x, and 0.98x for writing in later runs), at 64 KiB ahead
// (1.72x against 1.62x; bench/results/others_large.md).
//
// Hang invariant: every rank runs the same number of rounds. allgatherv's
// and alltoall's ranks all know every block's size; alltoallv's ranks know
// only their own sends and receives, so they first agree on the longest
// block over all pairs in one round of their own (each posts its longest
// send).
#include <algorithm>
#include <vector>

#include "algorithms/schedule.h"
#include "transport/shm.h"

namespace distml::algorithms {

using Counter = transport::ShmGroup::Counter;

namespace {

std::vector<std::size_t> offsets_of(const std::size_t* sizes, int parts) {
  std::vector<std::size_t> off(parts + 1, 0);
  for (int i = 0; i < parts; ++i) off[i + 1] = off[i] + sizes[i];
  return off;
}

// Starts the next step: waits until every rank has released the slot this
// step reuses (double buffering: the one of two steps ago).
std::uint64_t begin_step(transport::ShmGroup& shm) {
  const std::uint64_t step = shm.next_step();
  if (step > 2) shm.wait_all(Counter::kReleased, step - 2);
  return step;
}

}  // namespace

namespace {

// The rounds of alltoallv after the longest block is known: `longest` bytes
// of every block, a lane's worth per round. The own block is not moved here.
void exchange_lanes(transport::ShmGroup& shm, const char* src, const std::size_t* send, char* dst,
                    const std::size_t* recv, std::uint64_t longest) {
  const int L = shm.size(), me = shm.rank();
  const auto send_off = offsets_of(send, L), recv_off = offsets_of(recv, L);
  // Lanes start on cache lines, so writers never share a line.
  const std::size_t lane = std::max<std::size_t>(64, shm.slot_bytes() / L / 64 * 64);
  for (std::uint64_t o = 0; o < longest; o += lane) {
    const std::uint64_t step = begin_step(shm);
    const int k = static_cast<int>(step & 1);
    char* mine = shm.slot(me, k);
    for (int d = 0; d < L; ++d) {  // post: lane d of my slot <- my next piece for rank d
      if (d == me || o >= send[d]) continue;
      std::memcpy(mine + d * lane, src + send_off[d] + o, std::min<std::size_t>(lane, send[d] - o));
    }
    shm.publish(Counter::kPosted, step);
    for (int i = 1; i < L; ++i) {  // collect: lane `me` of every peer's slot
      const int s = (me + i) % L;
      shm.wait_one(s, Counter::kPosted, step);
      if (o >= recv[s]) continue;
      std::memcpy(dst + recv_off[s] + o, shm.slot(s, k) + me * lane, std::min<std::size_t>(lane, recv[s] - o));
    }
    shm.publish(Counter::kReleased, step);
  }
}

}  // namespace

void alltoallv_shm(transport::ShmGroup& shm, const void* in, const std::size_t* send, void* out,
                   const std::size_t* recv) {
  const int L = shm.size(), me = shm.rank();
  const char* src = static_cast<const char*>(in);
  char* dst = static_cast<char*>(out);

  // Round 0: agree on the longest block, hence the number of rounds.
  std::uint64_t longest = 0;
  {
    const std::uint64_t step = begin_step(shm);
    const int k = static_cast<int>(step & 1);
    std::uint64_t mine = 0;
    for (int d = 0; d < L; ++d) mine = std::max<std::uint64_t>(mine, d == me ? 0 : send[d]);
    std::memcpy(shm.slot(me, k), &mine, sizeof mine);
    shm.publish(Counter::kPosted, step);
    for (int r = 0; r < L; ++r) {
      if (r != me) shm.wait_one(r, Counter::kPosted, step);
      std::uint64_t theirs = 0;
      std::memcpy(&theirs, shm.slot(r, k), sizeof theirs);
      longest = std::max(longest, theirs);
    }
    shm.publish(Counter::kReleased, step);
  }
  if (send[me]) {
    const auto send_off = offsets_of(send, L), recv_off = offsets_of(recv, L);
    std::memcpy(dst + recv_off[me], src + send_off[me], send[me]);
  }
  exchange_lanes(shm, src, send, dst, recv, longest);
}

void alltoall_shm(transport::ShmGroup& shm, const void* in, void* out, std::size_t block_bytes) {
  const int L = shm.size(), me = shm.rank();
  const char* src = static_cast<const char*>(in);
  char* dst = static_cast<char*>(out);
  if (block_bytes == 0) return;
  const std::vector<std::size_t> sizes(L, block_bytes);
  if (src != dst) std::memcpy(dst + me * block_bytes, src + me * block_bytes, block_bytes);
  exchange_lanes(shm, src, sizes.data(), dst, sizes.data(), block_bytes);
}

void allgatherv_shm(transport::ShmGroup& shm, const void* in, void* out, const std::size_t* sizes) {
  const int L = shm.size(), me = shm.rank();
  const char* mine_in = static_cast<const char*>(in);
  char* dst = static_cast<char*>(out);
  const auto off = offsets_of(sizes, L);
  const std::size_t piece = shm.slot_bytes();
  // Every rank knows every size (they are agreed), so all run the same rounds.
  const std::size_t longest = *std::max_element(sizes, sizes + L);
  if (sizes[me]) std::memcpy(dst + off[me], mine_in, sizes[me]);
  for (std::size_t o = 0; o < longest; o += piece) {
    const std::uint64_t step = begin_step(shm);
    const int k = static_cast<int>(step & 1);
    if (o < sizes[me]) std::memcpy(shm.slot(me, k), mine_in + o, std::min(piece, sizes[me] - o));
    shm.publish(Counter::kPosted, step);
    for (int i = 1; i < L; ++i) {
      const int r = (me + i) % L;
      shm.wait_one(r, Counter::kPosted, step);
      if (o >= sizes[r]) continue;
      std::memcpy(dst + off[r] + o, shm.slot(r, k), std::min(piece, sizes[r] - o));
    }
    shm.publish(Counter::kReleased, step);
  }
}

namespace {
// From this size (the call's input) alltoall's single copy writes its
// blocks into the peers' outputs; below it reads the peers' blocks.
constexpr std::size_t kSingleCopyWriteBytes = std::size_t{512} << 10;
}  // namespace

void alltoall_shm_single_copy(transport::ShmGroup& shm, const void* in, void* out, std::size_t block_bytes) {
  const int L = shm.size(), me = shm.rank();
  const char* src = static_cast<const char*>(in);
  char* dst = static_cast<char*>(out);
  if (block_bytes == 0) return;
  if (block_bytes * static_cast<std::size_t>(L) >= kSingleCopyWriteBytes) {
    const bool in_place = src == dst;
    // In place, the peers write over the blocks this rank sends them: those
    // leave from scratch (the block for peer i steps ahead at i - 1), copied
    // before the output is posted.
    char* outgoing = nullptr;
    if (in_place) {
      outgoing = shm.scratch().take(block_bytes * static_cast<std::size_t>(L - 1));
      for (int i = 1; i < L; ++i) {
        std::memcpy(outgoing + (i - 1) * block_bytes, src + ((me + i) % L) * block_bytes, block_bytes);
      }
    }
    const std::uint64_t step = shm.next_step();
    shm.control(me).out_addr = reinterpret_cast<std::uint64_t>(out);
    shm.publish(Counter::kPosted, step);
    if (!in_place) std::memcpy(dst + me * block_bytes, src + me * block_bytes, block_bytes);
    for (int i = 1; i < L; ++i) {
      const int r = (me + i) % L;
      shm.wait_one(r, Counter::kPosted, step);
      const char* block = in_place ? outgoing + (i - 1) * block_bytes : src + r * block_bytes;
      shm.write_peer(r, shm.control(r).out_addr + me * block_bytes, block, block_bytes);
    }
    // Every rank's output is written by its peers until all are done.
    shm.publish(Counter::kReleased, step);
    shm.wait_all(Counter::kReleased, step);
    return;
  }
  const bool in_place = src == dst;
  const std::uint64_t step = shm.next_step();
  shm.control(me).in_addr = reinterpret_cast<std::uint64_t>(in);
  shm.publish(Counter::kPosted, step);
  if (!in_place) std::memcpy(dst + me * block_bytes, src + me * block_bytes, block_bytes);
  // In place, peers still read the blocks this rank's output replaces: stage
  // what arrives until every peer is done reading.
  char* staging = in_place ? shm.scratch().take(block_bytes * static_cast<std::size_t>(L - 1)) : nullptr;
  for (int i = 1; i < L; ++i) {
    const int r = (me + i) % L;
    shm.wait_one(r, Counter::kPosted, step);
    char* to = in_place ? staging + (i - 1) * block_bytes : dst + r * block_bytes;
    shm.read_peer(r, to, shm.control(r).in_addr + me * block_bytes, block_bytes);
  }
  // Done reading peers' inputs (an in-place rank waits for this).
  shm.publish(Counter::kReduced, step);
  if (in_place) {
    shm.wait_all(Counter::kReduced, step);
    for (int i = 1; i < L; ++i) std::memcpy(dst + ((me + i) % L) * block_bytes, staging + (i - 1) * block_bytes, block_bytes);
  }
  shm.publish(Counter::kReleased, step);
  shm.wait_all(Counter::kReleased, step);
}

}  // namespace distml::algorithms

// What every schedule in algorithms/ shares: the reduction it applies, how a
// buffer is cut into one block per rank, segment sizes, and message tags.
//
// Vocabulary (used by every file here):
//   block   - the part of a buffer that one rank owns in a schedule; blocks
//             follow numpy.array_split, so the first (count % P) blocks hold
//             one element more.
//   segment - a piece of a block no larger than Tuning::segment_bytes; a block
//             moves as several segments so that receiving one overlaps
//             reducing the previous one.
//   step    - one round of a ring or tree; the schedule's comments number them.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstring>
#include <vector>

#include "common/types.h"
#include "kernels/reduce.h"
#include "transport/mpi_comm.h"

namespace distml::transport {
class ShmGroup;
class ShmWindow;
}

namespace distml::algorithms {

using transport::MpiComm;
using transport::Request;

struct Reduction {
  DType dtype;
  Op op;  // the combining operator (never kAvg)
  std::size_t elem;
  kernels::ReduceFn combine;
  // Nonzero: an average over this many ranks, which the schedule finishes
  // itself (see finish()). Zero: the caller finishes averages, if any.
  std::size_t average_over = 0;

  Reduction(DType d, Op o)
      : dtype(d), op(combining_op(o)), elem(dtype_size(d)), combine(kernels::lookup(d, combining_op(o))) {}

  // Schedules in which exactly one rank computes each element's final value
  // call this on it (while it is still in cache) before handing it out, so an
  // average costs a pass over 1/P of the buffer instead of all of it, and
  // every rank still gets bitwise the same values.
  void finish(void* p, std::size_t n) const {
    if (average_over > 1 && n > 0) kernels::scale_avg(p, n, dtype, average_over);
  }
  // The same reduction with averages left to the caller.
  Reduction unfinished() const {
    Reduction r = *this;
    r.average_over = 0;
    return r;
  }
};

// How the schedules built on pairs (recursive doubling, halving-doubling,
// and the carried check) run on any number of ranks. p2 is the largest power
// of two <= P and rem = P - p2. Of the first 2 rem ranks each even one hands
// its buffer to the odd one after it and sits out (fold in); the p2 ranks
// left take part, numbered by `vrank` (the odd ones of those pairs first,
// then the others in order), and partner vrank ^ mask at each step; at the
// end the odd ranks hand the result back (fold out).
struct Fold {
  int rank, p2 = 1, rem = 0;
  int vrank = -1;  // -1: this rank sits out

  Fold(int P, int r) : rank(r) {
    p2 = largest_power_of_two(P);
    rem = P - p2;
    if (rank < 2 * rem) vrank = rank % 2 == 0 ? -1 : rank / 2;
    else vrank = rank - rem;
  }
  static int largest_power_of_two(int P) {
    int p = 1;
    while (p * 2 <= P) p *= 2;
    return p;
  }
  // This rank is in a pair of the fold: it sends (even) or takes (odd) the
  // pair's buffer before the steps and the other way round after them.
  bool folded() const { return rank < 2 * rem; }
  bool sits_out() const { return vrank < 0; }
  // The odd rank a sitting-out rank pairs with, or the even one an odd one
  // takes in.
  int pair() const { return rank % 2 == 0 ? rank + 1 : rank - 1; }
  // The rank that takes part as `v`.
  int peer_of(int v) const { return v < rem ? v * 2 + 1 : v + rem; }
};

struct Tuning {
  std::size_t segment_bytes = std::size_t{1} << 20;
  // At most this many segments of one step in flight at once.
  int window = 8;
};

// numpy.array_split of `count` elements into `parts` blocks, in whole
// units of `unit` elements (the row size when an N-D array is split along its
// first axis; `count` is a multiple of it). Offsets and sizes are in elements.
struct Blocks {
  std::size_t count;
  int parts;
  std::size_t unit = 1;
  std::size_t offset(int i) const {
    std::size_t rows = count / unit, base = rows / parts, extra = rows % parts;
    return (base * i + std::min<std::size_t>(i, extra)) * unit;
  }
  std::size_t size(int i) const {
    std::size_t rows = count / unit, base = rows / parts, extra = rows % parts;
    return (base + (static_cast<std::size_t>(i) < extra ? 1 : 0)) * unit;
  }
};

// One tag per collective, so that a message of one kind can never be taken
// for another's.
enum Tag : int {
  kTagReduceScatter = 101,
  kTagAllgather = 102,
  kTagRecursiveDoubling = 103,
  kTagBroadcast = 104,
  kTagReduce = 105,
  kTagAlltoall = 106,
  kTagBarrier = 107,
  kTagGather = 108,
  kTagFingerprint = 109,
  kTagArrival = 110,
  kTagVerdict = 111,
  kTagAlltoallv = 112,
  kTagHalvingDoubling = 113,
};

inline int mod(int a, int p) { return ((a % p) + p) % p; }

// Copies a result, or fills a slot; with `stream`, past the cache
// (streaming stores).
inline void copy_result(void* dst, const void* src, std::size_t bytes, bool stream) {
  if (stream) kernels::copy_stream(dst, src, bytes);
  else std::memcpy(dst, src, bytes);
}

// kernels::reduce_many of `n` sources into `dst` by `red`'s dtype and op;
// with `stream`, past the cache.
inline void reduce_result(void* dst, const void* const* srcs, int n, std::size_t count, const Reduction& red,
                          bool stream) {
  (stream ? kernels::reduce_many_stream : kernels::reduce_many)(dst, srcs, n, count, red.dtype, red.op);
}

// Number of segments a block of `elems` elements is cut into.
inline std::size_t segments_of(std::size_t elems, std::size_t seg_elems) {
  return elems == 0 ? 0 : (elems + seg_elems - 1) / seg_elems;
}

inline std::size_t segment_elems(const Tuning& t, std::size_t elem) {
  return std::max<std::size_t>(1, t.segment_bytes / elem);
}

// Slice i of a shared-memory chunk of `len` elements over `parts` ranks.
// Slices start on multiples of `align` elements (a cache line), so ranks
// reducing neighbouring slices never write the same line.
inline void chunk_slice(std::size_t len, int parts, int i, std::size_t align, std::size_t* first,
                        std::size_t* n) {
  std::size_t per = (len + parts - 1) / parts;
  per = (per + align - 1) / align * align;
  std::size_t a = std::min(len, per * i), b = std::min(len, per * (i + 1));
  *first = a;
  *n = b - a;
}

// ---- Schedules (one per file) -------------------------------------------

// Ring reduce-scatter. On return, block `rank` of `work` holds the reduction
// of block `rank` over all ranks; other blocks of `work` are scratch. `in` may
// equal `work`. `blocks.count` elements in both.
void reduce_scatter_ring(MpiComm& comm, const void* in, void* work, const Blocks& blocks,
                         const Reduction& red, const Tuning& tuning);

// Ring allgather in place: on entry block `rank` of `buf` holds this rank's
// data; on return every block holds its owner's. Blocks in elements of `elem`
// bytes.
void allgather_ring(MpiComm& comm, void* buf, const Blocks& blocks, std::size_t elem,
                    const Tuning& tuning);

// Ring allreduce: reduce_scatter_ring then allgather_ring.
void allreduce_ring(MpiComm& comm, const void* in, void* out, std::size_t count,
                    const Reduction& red, const Tuning& tuning);

// Recursive doubling allreduce for latency-bound sizes; any P.
void allreduce_recursive_doubling(MpiComm& comm, const void* in, void* out, std::size_t count,
                                  const Reduction& red);

// Halving-doubling allreduce (allreduce_halving_doubling.cpp): reduce-scatter
// by recursive halving, then allgather by recursive doubling; any P (ranks
// beyond the largest power of two folded in and out). About 2 (P-1)/P of the
// buffer leaves each rank, against log2(P) times all of it for recursive
// doubling.
void allreduce_halving_doubling(MpiComm& comm, const void* in, void* out, std::size_t count,
                                const Reduction& red);

// Binomial-tree broadcast of `bytes` bytes from `root`.
void broadcast_binomial(MpiComm& comm, void* buf, std::size_t bytes, int root);

// Broadcast for large buffers: root scatters one block per rank, then a ring
// allgather; `count` elements of `elem` bytes.
void broadcast_scatter_allgather(MpiComm& comm, void* buf, std::size_t count, std::size_t elem,
                                 int root, const Tuning& tuning);

// Binomial-tree reduce to `root`; `out` is written on the root only.
void reduce_binomial(MpiComm& comm, const void* in, void* out, std::size_t count,
                     const Reduction& red, int root);

// Reduce for large buffers: ring reduce-scatter, then each rank sends its
// block to the root. `out` is written on the root only.
void reduce_scatter_gather(MpiComm& comm, const void* in, void* out, std::size_t count,
                           const Reduction& red, int root, const Tuning& tuning);

// Pairwise-exchange alltoall: `block_bytes` to and from every rank. `in` may
// equal `out`.
void alltoall_pairwise(MpiComm& comm, const void* in, void* out, std::size_t block_bytes);

// Pairwise exchange of blocks of any size (alltoallv.cpp): `send[d]` bytes
// of `in` to rank d and `recv[s]` bytes into `out` from rank s, blocks back
// to back in rank order. `in` and `out` must not overlap.
void alltoallv_pairwise(MpiComm& comm, const void* in, const std::size_t* send, void* out,
                        const std::size_t* recv);
// Every rank's `in` (`sizes[rank]` bytes) into `out`, in rank order.
void allgatherv_pairwise(MpiComm& comm, const void* in, void* out, const std::size_t* sizes);

// Dissemination barrier.
void barrier_dissemination(MpiComm& comm);

// ---- Shared-memory schedules, among the ranks of one node -----------------

// With `stream`, results nothing reads back during the collective are written
// with streaming stores (for messages larger than the cache). Small messages
// take the eager path instead (eager_shm.h).
//
// With `stream_slots`, the staged schedules (reduce_shm's too) fill the
// slots that peers read with streaming stores. A slot refilled with
// ordinary stores is written over lines a peer has just read, and the writer first takes them
// back from the peer's cache; on the AMD EPYC machines these runs use that
// costs 3-5x more in one of the two phases the machine switches between
// (bench/results/host_phases.md), while streaming stores do not wait for
// those lines: in the slow phase a staged reduce_scatter of 1 MiB between
// two ranks took 59-65 us this way against 246-249 us, in the fast phase
// it was slower (bench/results/stream_slots.md). Which is faster is chosen
// by times (engine/variant_tuner.h).
void allreduce_shm(transport::ShmGroup& shm, const void* in, void* out, std::size_t count,
                   const Reduction& red, bool stream, bool stream_slots = false);
// The staged chunk step the shared-memory allreduce and reduce share
// (allreduce_shm.cpp): copy the other ranks' slices of my `len` elements into
// my slot for `step`, post, then reduce my slice (my own input and every
// peer's slot) into my slot and mark it reduced. `peers` is scratch.
void stage_and_reduce(transport::ShmGroup& shm, const char* src, std::size_t len,
                      const Reduction& red, std::uint64_t step, std::vector<const void*>& peers,
                      bool stream_slots = false);
// Copies every rank's reduced slice of the chunk of `step` into `dst`.
void gather_reduced(transport::ShmGroup& shm, char* dst, std::size_t len, std::size_t elem,
                    std::uint64_t step, bool stream = false);
// Single-copy schedules (peers read each other's memory directly) read a
// peer's input in pieces of this many elements (128 KiB, whole cache lines)
// into staging that stays in cache, and reduce from there.
inline std::size_t single_copy_piece(std::size_t elem) {
  const std::size_t align = std::max<std::size_t>(1, 64 / elem);
  return std::max<std::size_t>(align, (std::size_t{128} << 10) / elem);
}
// The staging reduce_from_peers takes from scratch on a node of L ranks.
inline std::size_t single_copy_staging_bytes(std::size_t elem, int L) {
  return single_copy_piece(elem) * elem * static_cast<std::size_t>(L - 1);
}
// Reduces elements [first, first + count) of every node rank's input into
// dst (dst[0] is element `first`): this rank's from `in`, each peer's read
// in single_copy_piece() pieces from the address it posted (in_addr) into
// staging from scratch; finishes averages (Reduction::finish); `stream`:
// streaming stores where nothing is finished in place.
void reduce_from_peers(transport::ShmGroup& shm, const char* in, char* dst, std::size_t first,
                       std::size_t count, const Reduction& red, bool stream);
// Large messages where peers can read each other's memory directly.
void allreduce_shm_single_copy(transport::ShmGroup& shm, const void* in, void* out,
                               std::size_t count, const Reduction& red, bool stream);
// In place, on a buffer at `offset` in `window` on every rank.
void allreduce_shm_window(transport::ShmGroup& shm, const transport::ShmWindow& window,
                          std::size_t offset, std::size_t count, const Reduction& red,
                          bool stream);
// `out` receives block `rank` of `blocks` (reduced over the node).
void reduce_scatter_shm(transport::ShmGroup& shm, const void* in, void* out, const Blocks& blocks,
                        const Reduction& red, bool stream_slots = false);
void reduce_scatter_shm_single_copy(transport::ShmGroup& shm, const void* in, void* out, const Blocks& blocks,
                                    const Reduction& red);
// `in` holds this rank's block of `blocks`; `out` receives every block.
void allgather_shm(transport::ShmGroup& shm, const void* in, void* out, const Blocks& blocks,
                   std::size_t elem, bool stream_slots = false);
void allgather_shm_single_copy(transport::ShmGroup& shm, const void* in, void* out, const Blocks& blocks,
                               std::size_t elem);
void broadcast_shm(transport::ShmGroup& shm, void* buf, std::size_t bytes, int root,
                   bool stream_slots = false);
// The same for two ranks that may read and write each other's memory
// (ShmGroup::single_copy): one copy between the two arrays, half of it by
// each rank.
void broadcast_shm_single_copy(transport::ShmGroup& shm, void* buf, std::size_t bytes, int root);
void barrier_shm(transport::ShmGroup& shm);
// Blocks of any size (alltoallv_shm.cpp), as alltoallv_pairwise and
// allgatherv_pairwise; the node must hold every rank of the call.
void alltoallv_shm(transport::ShmGroup& shm, const void* in, const std::size_t* send, void* out,
                   const std::size_t* recv);
void allgatherv_shm(transport::ShmGroup& shm, const void* in, void* out, const std::size_t* sizes);
// Every block `block_bytes` (alltoallv_shm.cpp); `in` may equal `out`.
void alltoall_shm(transport::ShmGroup& shm, const void* in, void* out, std::size_t block_bytes);
// Each rank reads its block of every peer's input straight into its output;
// in place (in == out), through staging of (size - 1) blocks from scratch.
void alltoall_shm_single_copy(transport::ShmGroup& shm, const void* in, void* out, std::size_t block_bytes);
// `out` is written on the root only.
void reduce_shm(transport::ShmGroup& shm, const void* in, void* out, std::size_t count,
                const Reduction& red, int root, bool stream_slots = false);

// Hierarchical allreduce across nodes of equal size: shared-memory
// reduce-scatter on each node, an allreduce of each block among the ranks
// that hold it on the other nodes (`across`), shared-memory allgather.
void allreduce_hierarchical(transport::ShmGroup& node, MpiComm& across, const void* in, void* out,
                            std::size_t count, const Reduction& red, const Tuning& tuning,
                            std::size_t small_bytes);

}  // namespace distml::algorithms

namespace distml::algorithms {

// One ring step: send `send_elems` elements to the right neighbour while
// receiving `recv_elems` from the left one, segment by segment, with at most
// `tuning.window` segments of each direction in flight. `on_recv(first, n)` runs
// as soon as received segment [first, first + n) has landed, while later
// segments are still moving.
//
// Hang invariant: every rank posts its first `window` receives and sends
// before waiting on anything, and posts send k + window only after receive k
// completed and send k finished; so around the ring, segment k of every rank
// is always either posted or already delivered.
template <class OnRecv>
void ring_exchange(MpiComm& comm, const char* send, std::size_t send_elems, char* recv,
                   std::size_t recv_elems, std::size_t elem, const Tuning& tuning, int tag,
                   OnRecv&& on_recv) {
  const int right = mod(comm.rank() + 1, comm.size());
  const int left = mod(comm.rank() - 1, comm.size());
  const std::size_t seg = segment_elems(tuning, elem);
  const std::size_t nsend = segments_of(send_elems, seg);
  const std::size_t nrecv = segments_of(recv_elems, seg);
  const std::size_t window = static_cast<std::size_t>(std::max(1, tuning.window));
  std::vector<Request> sends(nsend), recvs(nrecv);

  auto post_recv = [&](std::size_t k) {
    std::size_t first = k * seg, n = std::min(seg, recv_elems - first);
    recvs[k] = comm.irecv(recv + first * elem, n * elem, left, tag);
  };
  auto post_send = [&](std::size_t k) {
    if (k >= window) comm.wait(sends[k - window]);
    std::size_t first = k * seg, n = std::min(seg, send_elems - first);
    sends[k] = comm.isend(send + first * elem, n * elem, right, tag);
  };

  for (std::size_t k = 0; k < std::min(window, nrecv); ++k) post_recv(k);
  std::size_t next_send = 0;
  for (; next_send < std::min(window, nsend); ++next_send) post_send(next_send);
  for (std::size_t k = 0; k < nrecv; ++k) {
    comm.wait(recvs[k]);
    std::size_t first = k * seg;
    on_recv(first, std::min(seg, recv_elems - first));
    if (k + window < nrecv) post_recv(k + window);
    if (next_send < nsend) post_send(next_send++);
  }
  while (next_send < nsend) post_send(next_send++);
  comm.wait_all(sends);
}

}  // namespace distml::algorithms

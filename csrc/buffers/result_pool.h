// Memory for the new arrays collectives return (`y = comm.allreduce(x)`).
//
// Why: a large numpy array is a fresh anonymous mapping, so the collective
// that first writes it takes a page fault per page (per 2 MiB with huge
// pages) and the kernel zeroes every page inside the collective, while the
// peers wait; freeing the array unmaps it again. Profiled at 128 MiB on two
// ranks, zeroing those pages (clear_page_erms under the faults of the
// result's copy-out) was a third of the time, and a fresh result took 2.1-2.4x
// the time of `out=x`. The pool keeps the memory of freed results mapped and
// hands it out again, already faulted in.
//
// Vocabulary:
//   block  - one mapping, a whole number of pages, that backs one result
//            array. It goes back to the pool when the last array viewing it
//            is gone, never earlier: a later call cannot write into a
//            result still held.
//   cached - blocks back in the pool, waiting to be handed out again. Their
//            bytes are bounded (`cap_bytes`): returning a block beyond that
//            unmaps the blocks returned longest ago first.
//
// Thread safety: every member may be called from any thread; blocks may be
// returned after the pool is closed (they are then unmapped at once).
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <vector>

namespace distml::buffers {

class ResultPool {
 public:
  // Bytes kept in cached blocks at most; blocks handed out are not counted.
  explicit ResultPool(std::size_t cap_bytes);
  ~ResultPool();
  ResultPool(const ResultPool&) = delete;
  ResultPool& operator=(const ResultPool&) = delete;

  // A block of at least `bytes` bytes (> 0), 64-byte aligned and faulted in:
  // a cached one that fits (wasting at most a quarter of it), or a new
  // mapping. Throws std::bad_alloc when the memory cannot be had. The block
  // returns to the pool when the last copy of the pointer is dropped.
  std::shared_ptr<void> take(std::size_t bytes);

  // Unmaps the cached blocks; blocks still held are unmapped when they
  // return. Later take() calls map blocks that are never cached.
  void close();

  struct Stats {
    std::size_t cached_bytes, cached_blocks;
    std::size_t held_bytes, held_blocks;  // handed out, not yet returned
    std::size_t mapped, reused;           // blocks mapped, and takes served from the cache, so far
  };
  Stats stats() const;
  std::size_t cap_bytes() const { return cap_; }

 private:
  struct State;
  std::shared_ptr<State> state_;
  std::size_t cap_;
};

}  // namespace distml::buffers

#include "buffers/result_pool.h"

#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <new>

namespace distml::buffers {

namespace {

#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23  // Linux 5.14
#endif

constexpr std::size_t kHuge = std::size_t{2} << 20;

// Whole pages; whole huge pages from 4 MiB on (numpy asks for huge pages
// from that size too), so that the last one is not a run of small pages.
std::size_t block_size(std::size_t bytes) {
  const std::size_t page = static_cast<std::size_t>(sysconf(_SC_PAGESIZE));
  const std::size_t unit = bytes >= 2 * kHuge ? kHuge : page;
  return (bytes + unit - 1) / unit * unit;
}

char* map_block(std::size_t bytes) {
  void* p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) throw std::bad_alloc();
  if (bytes >= 2 * kHuge) madvise(p, bytes, MADV_HUGEPAGE);
  // Fault the pages in now, on this rank alone, rather than in the
  // collective that first writes them while its peers wait.
  if (madvise(p, bytes, MADV_POPULATE_WRITE) != 0) {
    const std::size_t page = static_cast<std::size_t>(sysconf(_SC_PAGESIZE));
    for (std::size_t o = 0; o < bytes; o += page) static_cast<volatile char*>(p)[o] = 0;
  }
  return static_cast<char*>(p);
}

}  // namespace

struct ResultPool::State {
  struct Cached {
    char* p;
    std::size_t bytes;
    std::uint64_t returned;  // order of return, for evicting the oldest
  };
  mutable std::mutex mu;
  std::size_t cap;
  bool closed = false;
  std::vector<Cached> cached;
  std::size_t cached_bytes = 0, held_bytes = 0, held_blocks = 0;
  std::size_t mapped = 0, reused = 0;
  std::uint64_t returns = 0;

  // Unmaps outside the lock: munmap of a large block takes a while.
  void give_back(char* p, std::size_t bytes) {
    std::vector<Cached> drop;
    {
      std::lock_guard<std::mutex> lk(mu);
      held_bytes -= bytes;
      --held_blocks;
      if (closed || bytes > cap) {
        drop.push_back({p, bytes, 0});
      } else {
        cached.push_back({p, bytes, ++returns});
        cached_bytes += bytes;
        while (cached_bytes > cap) {
          auto oldest = std::min_element(cached.begin(), cached.end(),
                                         [](const Cached& a, const Cached& b) { return a.returned < b.returned; });
          cached_bytes -= oldest->bytes;
          drop.push_back(*oldest);
          cached.erase(oldest);
        }
      }
    }
    for (const auto& c : drop) munmap(c.p, c.bytes);
  }
};

ResultPool::ResultPool(std::size_t cap_bytes) : state_(std::make_shared<State>()), cap_(cap_bytes) {
  state_->cap = cap_bytes;
}

ResultPool::~ResultPool() { close(); }

std::shared_ptr<void> ResultPool::take(std::size_t bytes) {
  const std::size_t want = block_size(std::max<std::size_t>(bytes, 1));
  char* p = nullptr;
  std::size_t got = 0;
  {
    std::lock_guard<std::mutex> lk(state_->mu);
    auto& cached = state_->cached;
    // The smallest cached block that fits without wasting more than a quarter.
    auto best = cached.end();
    for (auto it = cached.begin(); it != cached.end(); ++it) {
      if (it->bytes >= want && it->bytes - want <= it->bytes / 4 && (best == cached.end() || it->bytes < best->bytes)) {
        best = it;
      }
    }
    if (best != cached.end()) {
      p = best->p;
      got = best->bytes;
      state_->cached_bytes -= got;
      cached.erase(best);
      ++state_->reused;
    }
  }
  const bool fresh = p == nullptr;
  if (fresh) {
    p = map_block(want);
    got = want;
  }
  {
    std::lock_guard<std::mutex> lk(state_->mu);
    state_->held_bytes += got;
    ++state_->held_blocks;
    if (fresh) ++state_->mapped;
  }
  auto state = state_;
  try {
    return std::shared_ptr<void>(p, [state, got](void* q) { state->give_back(static_cast<char*>(q), got); });
  } catch (...) {
    state->give_back(p, got);
    throw;
  }
}

void ResultPool::close() {
  std::vector<State::Cached> drop;
  {
    std::lock_guard<std::mutex> lk(state_->mu);
    state_->closed = true;
    drop.swap(state_->cached);
    state_->cached_bytes = 0;
  }
  for (const auto& c : drop) munmap(c.p, c.bytes);
}

ResultPool::Stats ResultPool::stats() const {
  std::lock_guard<std::mutex> lk(state_->mu);
  return {state_->cached_bytes, state_->cached.size(), state_->held_bytes, state_->held_blocks, state_->mapped,
          state_->reused};
}

}  // namespace distml::buffers

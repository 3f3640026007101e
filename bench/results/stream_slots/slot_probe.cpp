// How fast a staged handoff between two cores is, by how the slots are
// written: two threads pinned to CPUs 0 and 1 move `total` bytes (default
// 512 KiB) per round in 32 KiB chunks. The producer copies each chunk from
// its private array into the next slot of a ring; the consumer adds the slot
// to a private array of its own into a third (a reduce_scatter's step).
// Columns: median microseconds per round of
//   mNNN   ordinary stores into a ring of NNN bytes (the ring is refilled
//          once the consumer has read a slot: lines it has just read);
//   ntNNN  streaming (non-temporal) stores into the same ring;
//   kern   no slots: the consumer reads the producer's array by the
//          kernel's copy (process_vm_readv) into a chunk buffer, then adds.
// Each line starts with the phase reading: a 64 KiB rewrite of lines the
// other CPU has just read, against the same copy within one CPU (as
// distml.bench.machine.cross_core_ratio).
//
//   g++ -O2 -mavx512f -pthread slot_probe.cpp -o /tmp/slot_probe
//   /tmp/slot_probe [total_bytes [rounds [lines]]]
#include <pthread.h>
#include <sched.h>
#include <sys/uio.h>
#include <unistd.h>
#include <immintrin.h>
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <thread>
#include <vector>
using Clock = std::chrono::steady_clock;
static double since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }
static void pin(int c) { cpu_set_t s; CPU_ZERO(&s); CPU_SET(c, &s); pthread_setaffinity_np(pthread_self(), sizeof s, &s); }
static void* amalloc(size_t n) { void* p; posix_memalign(&p, 4096, n); memset(p, 0, n); return p; }
static void copy_nt(void* d, const void* s, size_t n) {
  auto* dd = (__m512i*)d; auto* ss = (const __m512i*)s;
  for (size_t i = 0; i < n / 64; ++i) _mm512_stream_si512(dd + i, _mm512_load_si512(ss + i));
  _mm_sfence();
}
static void add(float* d, const float* a, const float* b, size_t n) {
  for (size_t i = 0; i < n; i += 16) _mm512_store_ps(d + i, _mm512_add_ps(_mm512_load_ps(a + i), _mm512_load_ps(b + i)));
}
struct alignas(64) Flag { std::atomic<long> v{0}; char pad[56]; };
static void wait_ge(std::atomic<long>& f, long w) { for (int i = 0; f.load(std::memory_order_acquire) < w; ++i) if (i > 64) sched_yield(); }

// mode 0: memcpy into slots; 1: NT copy into slots; 2: kernel copy of src
static double run(int mode, size_t total, size_t chunk, size_t ring, int rounds, double* out_med) {
  size_t nslots = ring / chunk;
  char* src = (char*)amalloc(total); char* slots = (char*)amalloc(ring);
  float* own = (float*)amalloc(total); float* dst = (float*)amalloc(total); char* tmp = (char*)amalloc(chunk);
  for (size_t i = 0; i < total / 4; ++i) ((float*)src)[i] = 1.f;
  Flag written, consumed, start, finish;
  std::vector<double> t(rounds);
  long nch = total / chunk;
  std::thread cons([&] {
    pin(1);
    pid_t pid = getpid();
    for (int r = 0; r < rounds; ++r) {
      wait_ge(start.v, r + 1);
      for (long c = 0; c < nch; ++c) {
        long g = (long)r * nch + c;
        if (mode == 2) {
          iovec l{tmp, chunk}, rm{src + c * chunk, chunk};
          process_vm_readv(pid, &l, 1, &rm, 1, 0);
          add(dst + c * chunk / 4, own + c * chunk / 4, (float*)tmp, chunk / 4);
        } else {
          wait_ge(written.v, g + 1);
          add(dst + c * chunk / 4, own + c * chunk / 4, (float*)(slots + (g % nslots) * chunk), chunk / 4);
          consumed.v.store(g + 1, std::memory_order_release);
        }
      }
      finish.v.store(r + 1, std::memory_order_release);
    }
  });
  pin(0);
  for (int r = 0; r < rounds; ++r) {
    auto t0 = Clock::now();
    start.v.store(r + 1, std::memory_order_release);
    if (mode != 2)
      for (long c = 0; c < nch; ++c) {
        long g = (long)r * nch + c;
        if (g >= (long)nslots) wait_ge(consumed.v, g - nslots + 1);
        char* s = slots + (g % nslots) * chunk;
        if (mode == 0) memcpy(s, src + c * chunk, chunk); else copy_nt(s, src + c * chunk, chunk);
        written.v.store(g + 1, std::memory_order_release);
      }
    wait_ge(finish.v, r + 1);
    t[r] = since(t0);
  }
  cons.join();
  std::sort(t.begin(), t.end());
  *out_med = t[rounds / 2];
  free(src); free(slots); free(own); free(dst); free(tmp);
  return t[0];
}
// phase probe: rewrite of lines the peer read / local copy, 64 KiB
static double phase() {
  size_t n = 65536; char* a = (char*)amalloc(n); char* b = (char*)amalloc(n); char* sh = (char*)amalloc(n); char* c = (char*)amalloc(n);
  std::atomic<int> step{-1}; double loc = 1e9, rew = 1e9;
  std::thread rd([&] { pin(1); for (int r = 0; r < 5; ++r) { while (step.load() < 2 * r) sched_yield(); memcpy(c, sh, n); asm volatile("" ::"r"(c) : "memory"); step.store(2 * r + 1); } });
  pin(0);
  for (int r = 0; r < 5; ++r) {
    auto t0 = Clock::now(); memcpy(b, a, n); asm volatile("" ::"r"(b) : "memory"); loc = std::min(loc, since(t0));
    if (r) { while (step.load() < 2 * r - 1) sched_yield(); t0 = Clock::now(); memcpy(sh, a, n); asm volatile("" ::"r"(sh) : "memory"); rew = std::min(rew, since(t0)); } else memcpy(sh, a, n);
    step.store(2 * r);
  }
  rd.join(); free(a); free(b); free(sh); free(c);
  return rew / loc;
}
int main(int argc, char** argv) {
  size_t total = argc > 1 ? atol(argv[1]) : 512 << 10;
  int rounds = argc > 2 ? atoi(argv[2]) : 50;
  int reps = argc > 3 ? atoi(argv[3]) : 10;
  struct V { const char* name; int mode; size_t chunk, ring; };
  std::vector<V> vs = {{"m128K", 0, 32 << 10, 128 << 10}, {"nt128K", 1, 32 << 10, 128 << 10},
                       {"m1M", 0, 32 << 10, 1 << 20}, {"nt1M", 1, 32 << 10, 1 << 20},
                       {"m2M", 0, 32 << 10, 2 << 20}, {"m4M", 0, 32 << 10, 4 << 20}, {"m8M", 0, 32 << 10, 8 << 20},
                       {"kern", 2, 32 << 10, 32 << 10}};
  for (int k = 0; k < reps; ++k) {
    printf("phase %.1f |", phase());
    for (auto& v : vs) { double med; run(v.mode, total, v.chunk, v.ring, rounds, &med); printf(" %s %.0f |", v.name, med * 1e6); }
    printf("\n"); fflush(stdout);
  }
}

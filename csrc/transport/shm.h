// Node-local shared memory: the ranks of one node map one MPI-3 shared
// window (MPI_Win_allocate_shared), each owning a region of it that every
// peer can read and write directly. MPI creates and removes the backing
// files itself, so a rank that dies leaves nothing behind in /dev/shm.
//
// Each region starts with a cache-line-separated control block of
// monotonically increasing step counters (a peer's counter is only ever
// written by its owner), followed by two data slots for double buffering.
// Waiting on a peer's counter spins briefly, then yields, and honours the
// collective's deadline.
#pragma once

#include <mpi.h>

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

#include "transport/mpi_comm.h"
#include "transport/mpi_handles.h"

namespace distml::transport {

// The counters one rank publishes. A value v means "done with step v".
struct alignas(64) ShmControl {
  std::atomic<std::uint64_t> posted;    // my input for step v is in my slot
  char pad0[56];
  std::atomic<std::uint64_t> reduced;   // my slice of step v is reduced in my slot
  char pad1[56];
  std::atomic<std::uint64_t> released;  // I have finished reading every slot for step v
  char pad2[56];
  std::atomic<std::uint64_t> arrived;   // I have entered collective number v
  char pad3[56];
  // Rank 0's only: the arrival gate (ShmGroup::enter).
  std::atomic<std::uint64_t> gate;
  char pad_gate[56];
  // For single-copy schedules: my process id, and the addresses of my input
  // and output for the step being posted (written before `posted`, read by
  // peers after they see it; stable until every peer has released).
  std::uint64_t pid;
  std::uint64_t in_addr;
  std::uint64_t out_addr;
  // For the choice by times (engine/variant_tuner.h): when I finished
  // collective `done_seq`, in nanoseconds of the steady clock, so that node
  // rank 0 can time a call to its last rank's end. A sequence lock: 0 in
  // `done_seq` while `done_ns` changes.
  std::atomic<std::uint64_t> done_seq;
  std::atomic<std::uint64_t> done_ns;
  // Rank 0's only: for collective v, in choice[v & 1], the variant of its
  // schedule it runs (engine::Variant, engine/variant_tuner.h); written with
  // the note, read as it.
  std::uint8_t choice[2];
  char pad4[22];
  // What I called collective v with, in note[v & 1]: peers compare it after
  // waiting for `arrived`, and a peer cannot reach collective v + 2 (and
  // overwrite the note) before I have arrived at v + 1.
  char note[2][128];
  // The data of a small collective v, written with the note (eager[v & 1]):
  // once every rank has arrived, peers read it straight from here, with no
  // further synchronisation. The same argument as for the note keeps it
  // stable until every peer has read it.
  static constexpr std::size_t kEagerBytes = 16384;
  alignas(64) char eager[2][kEagerBytes];
};
static_assert(std::atomic<std::uint64_t>::is_always_lock_free,
              "shared-memory flags need lock-free 64-bit atomics");

// A node-shared allocation for user data (persistent buffers): each rank
// owns `bytes` bytes that every peer can read. Created collectively, and
// freed collectively (MPI_Win_free synchronises), so never from a garbage
// collector: the group's close() frees the windows no rank's arrays still
// point into; the others stay mapped until exit.
class ShmWindow {
 public:
  ShmWindow(MPI_Comm node, std::size_t bytes, int id);
  ~ShmWindow() { win_.abandon(); }  // see the class comment
  void free() { win_.reset(); }     // collective
  ShmWindow(const ShmWindow&) = delete;
  ShmWindow& operator=(const ShmWindow&) = delete;
  char* base(int r) const { return bases_[r]; }
  char* mine() const { return bases_[rank_]; }
  std::size_t bytes() const { return bytes_; }
  int id() const { return id_; }

 private:
  UniqueWin win_;
  std::size_t bytes_;
  int id_;
  int rank_ = 0;
  std::vector<char*> bases_;
};

class ShmGroup {
 public:
  // Collective over `node`, whose ranks must share memory. `slot_bytes` is
  // the size of each of a rank's two data slots. `parent` supplies the
  // deadline of the collective in progress.
  ShmGroup(MPI_Comm node, std::size_t slot_bytes, MpiComm* parent);
  // Frees the group's MPI objects (collective); see also abandon().
  void close();
  // Leaves them to MPI_Finalize: for a group destroyed at a time its peers
  // did not agree on.
  void abandon();
  ShmGroup(const ShmGroup&) = delete;
  ShmGroup& operator=(const ShmGroup&) = delete;

  int rank() const { return rank_; }
  int size() const { return size_; }
  std::size_t slot_bytes() const { return slot_bytes_; }

  ShmControl& control(int r) { return *reinterpret_cast<ShmControl*>(regions_[r]); }
  char* slot(int r, int k) { return regions_[r] + kControlBytes + static_cast<std::size_t>(k & 1) * slot_bytes_; }

  enum class Counter { kPosted, kReduced, kReleased, kArrived };
  void publish(Counter c, std::uint64_t step);
  // Waits until every rank's counter `c` is at least `step`.
  void wait_all(Counter c, std::uint64_t step);
  // Waits until rank r's counter `c` is at least `step`.
  void wait_one(int r, Counter c, std::uint64_t step);

  // Whether peers' private memory can be read directly (Linux
  // process_vm_readv, checked on every rank when the group is made).
  bool single_copy() const { return single_copy_; }
  // Copies `bytes` from address `remote` in node rank r's process into `local`.
  void read_peer(int r, void* local, std::uint64_t remote, std::size_t bytes);
  // Copies `bytes` from `local` to address `remote` in node rank r's process.
  void write_peer(int r, std::uint64_t remote, const void* local, std::size_t bytes);

  // Ranks whose counter `c` is still below `step`.
  std::vector<int> behind(Counter c, std::uint64_t step);

  // The arrival gate: one word in rank 0's control block, changed only by
  // compare-and-swap, that counts the ranks entering collective `seq` and
  // can mark it given up. Entering and giving up change the same word, so
  // all ranks see them in one order: either the last rank entered before
  // anyone gave up (everyone proceeds; giving up then answers kAllIn), or
  // someone gave up first (everyone raises, a rank entering later too:
  // enter answers kGivenUp). Arrival counters alone cannot decide this for
  // a call whose data travels with its arrival (eager_shm.h): a rank
  // arriving after its peers timed out would find their data and complete.
  enum class Gate { kWaiting, kAllIn, kGivenUp };
  Gate enter(std::uint64_t seq);
  Gate gate(std::uint64_t seq);
  Gate give_up(std::uint64_t seq);

  // Scratch memory of the collective in progress (the parent's; see Scratch).
  Scratch& scratch() { return parent_->scratch(); }

  // Steps are numbered across all shared-memory collectives of the group;
  // every rank calls next_step() the same number of times.
  std::uint64_t next_step() { return ++step_; }

  // Allocates `bytes` per rank of node-shared memory (collective).
  std::shared_ptr<ShmWindow> allocate(std::size_t bytes);
  // The live window holding [p, p + bytes) in this rank's part, with the
  // offset of p in it; null if none.
  std::shared_ptr<ShmWindow> find(const void* p, std::size_t bytes, std::size_t* offset);

 private:
  static constexpr std::size_t kControlBytes = sizeof(ShmControl);
  std::atomic<std::uint64_t>& counter(int r, Counter c);

  UniqueComm node_;
  UniqueWin win_;
  MpiComm* parent_;
  int rank_ = 0;
  int size_ = 1;
  std::size_t slot_bytes_ = 0;
  std::uint64_t step_ = 0;
  void move_peer(int r, void* local, std::uint64_t remote, std::size_t bytes, bool write);
  bool single_copy_ = false;
  std::vector<char*> regions_;
  // Windows live as long as the group; see ~ShmGroup.
  std::vector<std::shared_ptr<ShmWindow>> windows_;
  int next_window_id_ = 0;
};

}  // namespace distml::transport

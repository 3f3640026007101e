#include "transport/shm.h"

#include <sys/prctl.h>
#include <sys/uio.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <cstring>
#include <sstream>

#include "common/error.h"

namespace distml::transport {

namespace {
bool peer_reads_unrestricted();
bool allow_peer_reads(pid_t peer);
}

ShmGroup::ShmGroup(MPI_Comm node, std::size_t slot_bytes, MpiComm* parent)
    : parent_(parent), slot_bytes_((slot_bytes + 63) / 64 * 64) {
  DISTML_MPI(MPI_Comm_dup(node, node_.out()));
  DISTML_MPI(MPI_Comm_set_errhandler(node_.get(), MPI_ERRORS_RETURN));
  DISTML_MPI(MPI_Comm_rank(node_.get(), &rank_));
  DISTML_MPI(MPI_Comm_size(node_.get(), &size_));
  const std::size_t region = kControlBytes + 2 * slot_bytes_;
  UniqueInfo info;
  DISTML_MPI(MPI_Info_create(info.out()));
  // Each rank's region on its own pages, so that first touch places it
  // near its owner.
  DISTML_MPI(MPI_Info_set(info.get(), "alloc_shared_noncontig", "true"));
  char* mine = nullptr;
  DISTML_MPI(MPI_Win_allocate_shared(static_cast<MPI_Aint>(region), 64, info.get(), node_.get(), &mine, win_.out()));
  if (const char* fault = std::getenv("DISTML_INJECT_FAULT"); fault && std::strcmp(fault, "create") == 0) {
    // Testing: every rank fails here, holding a communicator and a window
    // that the owners must free on the way out.
    DISTML_THROW(Error, "injected fault (DISTML_INJECT_FAULT=create) while creating the node group");
  }
  regions_.resize(size_);
  for (int r = 0; r < size_; ++r) {
    MPI_Aint bytes = 0;
    int disp = 0;
    char* base = nullptr;
    DISTML_MPI(MPI_Win_shared_query(win_.get(), r, &bytes, &disp, &base));
    regions_[r] = base;
  }
  auto& c = control(rank_);
  new (&c) ShmControl();
  c.posted.store(0);
  c.reduced.store(0);
  c.released.store(0);
  c.arrived.store(0);
  c.gate.store(0);
  c.pid = static_cast<std::uint64_t>(getpid());
  c.in_addr = reinterpret_cast<std::uint64_t>(&c.pid);
  c.out_addr = 0;
  // Nobody reads a peer's counters (or its pid) before the peer has set them.
  DISTML_MPI(MPI_Barrier(node_.get()));
  // Two ranks allow each other where Yama asks for it (a process names one
  // tracer); on larger nodes peers are read only where nothing restricts it.
  int ok = size_ == 2 ? allow_peer_reads(static_cast<pid_t>(control(1 - rank_).pid))
                      : peer_reads_unrestricted();
  DISTML_MPI(MPI_Barrier(node_.get()));  // every rank has allowed its peer

  // Single copy works if every rank can read and write every peer's pid
  // field through process_vm_readv/writev (they can fail under seccomp or
  // ptrace rules).
  for (int r = 0; r < size_ && ok; ++r) {
    if (r == rank_) continue;
    std::uint64_t got = 0;
    struct iovec local{&got, sizeof got}, remote{reinterpret_cast<void*>(control(r).in_addr), sizeof got};
    ok = process_vm_readv(static_cast<pid_t>(control(r).pid), &local, 1, &remote, 1, 0) ==
                 static_cast<ssize_t>(sizeof got) &&
             got == control(r).pid;
    // And write it (the same value back): the single-copy broadcast writes
    // into the peer's array.
    ok = ok && process_vm_writev(static_cast<pid_t>(control(r).pid), &local, 1, &remote, 1, 0) ==
                   static_cast<ssize_t>(sizeof got);
  }
  int all_ok = 0;
  DISTML_MPI(MPI_Allreduce(&ok, &all_ok, 1, MPI_INT, MPI_MIN, node_.get()));
  single_copy_ = all_ok != 0;
}

void ShmGroup::read_peer(int r, void* local, std::uint64_t remote, std::size_t bytes) {
  move_peer(r, local, remote, bytes, false);
}

void ShmGroup::write_peer(int r, std::uint64_t remote, const void* local, std::size_t bytes) {
  move_peer(r, const_cast<void*>(local), remote, bytes, true);
}

void ShmGroup::move_peer(int r, void* local, std::uint64_t remote, std::size_t bytes, bool write) {
  auto* at = static_cast<char*>(local);
  const pid_t pid = static_cast<pid_t>(control(r).pid);
  while (bytes > 0) {
    struct iovec l{at, bytes}, rm{reinterpret_cast<void*>(remote), bytes};
    ssize_t n = write ? process_vm_writev(pid, &l, 1, &rm, 1, 0) : process_vm_readv(pid, &l, 1, &rm, 1, 0);
    if (n <= 0) {
      if (n < 0 && errno == EINTR) continue;
      if (n < 0 && errno == ESRCH) {
        DISTML_THROW(Error, "node rank " << r << " (process " << pid << ") has exited in the middle of a collective");
      }
      DISTML_THROW(Error, (write ? "writing" : "reading") << " node rank " << r
                                                          << "'s memory failed: " << std::strerror(errno));
    }
    at += n;
    remote += static_cast<std::uint64_t>(n);
    bytes -= static_cast<std::size_t>(n);
  }
}

void ShmGroup::close() {
  if (!mpi_alive()) return abandon();
  // Free together the windows that no rank's arrays still use; the others
  // stay mapped until the process ends.
  std::vector<int> used(windows_.size()), any(windows_.size());
  for (std::size_t i = 0; i < windows_.size(); ++i) used[i] = windows_[i].use_count() > 1;
  if (!windows_.empty()) {
    DISTML_MPI(MPI_Allreduce(used.data(), any.data(), static_cast<int>(used.size()), MPI_INT, MPI_MAX,
                             node_.get()));
  }
  for (std::size_t i = 0; i < windows_.size(); ++i) {
    if (!any[i]) windows_[i]->free();
  }
  windows_.clear();
  win_.reset();
  node_.reset();
}

void ShmGroup::abandon() {
  windows_.clear();  // each window forgets its handle when its last user goes
  win_.abandon();
  node_.abandon();
}

namespace {
// Yama's ptrace_scope (0 where Yama is absent).
int yama_ptrace_scope() {
  int scope = 0;
  if (FILE* f = std::fopen("/proc/sys/kernel/yama/ptrace_scope", "r")) {
    if (std::fscanf(f, "%d", &scope) != 1) scope = 0;
    std::fclose(f);
  }
  return scope;
}

// Whether any process of the user may read this one's memory, with no
// consent given: what a node of more than two ranks needs, since consent
// names a single peer (below).
bool peer_reads_unrestricted() { return yama_ptrace_scope() == 0; }

// Where Yama restricts ptrace to a process's descendants (ptrace_scope 1),
// process_vm_readv needs the target's consent: it is given to the one peer
// that reads this process, never to every process of the user. A process
// can name only one such peer; a second node group that needs another one
// goes without direct reads. Elsewhere (scope 0) nothing needs allowing; at
// scope 2 or 3 nothing can be.
bool allow_peer_reads(pid_t peer) {
  const int scope = yama_ptrace_scope();
  if (scope == 0) return true;
  if (scope != 1) return false;
#ifdef PR_SET_PTRACER
  static std::mutex mu;
  static pid_t allowed = 0;
  std::lock_guard<std::mutex> lk(mu);
  if (allowed == peer) return true;
  if (allowed != 0) return false;
  if (prctl(PR_SET_PTRACER, static_cast<unsigned long>(peer), 0, 0, 0) != 0) return false;
  allowed = peer;
  return true;
#else
  return false;
#endif
}
}  // namespace

std::atomic<std::uint64_t>& ShmGroup::counter(int r, Counter c) {
  auto& ctl = control(r);
  switch (c) {
    case Counter::kPosted: return ctl.posted;
    case Counter::kReduced: return ctl.reduced;
    case Counter::kReleased: return ctl.released;
    case Counter::kArrived: return ctl.arrived;
  }
  return ctl.arrived;
}

void ShmGroup::publish(Counter c, std::uint64_t step) {
  counter(rank_, c).store(step, std::memory_order_release);
}

void ShmGroup::wait_one(int r, Counter c, std::uint64_t step) {
  auto& v = counter(r, c);
  for (long polls = 0; v.load(std::memory_order_acquire) < step; ++polls) {
    MpiComm::pause(polls);
    if ((polls & 255) == 255 && parent_->past_deadline()) {
      static const char* names[] = {"post its input", "reduce its slice", "release the buffers",
                                    "signal", "arrive"};
      std::ostringstream os;
      os << "rank " << rank_ << " of the node was waiting for node rank " << r << " to "
         << names[static_cast<int>(c)] << " (shared-memory step " << step << ")";
      DISTML_THROW(Timeout, os.str());
    }
  }
}

std::vector<int> ShmGroup::behind(Counter c, std::uint64_t step) {
  std::vector<int> late;
  for (int r = 0; r < size_; ++r) {
    if (counter(r, c).load(std::memory_order_acquire) < step) late.push_back(r);
  }
  return late;
}

// The gate word: the collective's number, a given-up bit, and how many
// ranks have entered it. A rank enters collective v + 1 only after every
// rank has entered v (the engine waits for that, in v's agreement or before
// v + 1's after a one-way v), so the word never holds a later collective
// than the caller's unless every rank has entered the caller's.
namespace {
constexpr int kGateSeqShift = 17;
constexpr std::uint64_t kGateGivenUp = std::uint64_t{1} << 16;
constexpr std::uint64_t kGateCount = kGateGivenUp - 1;
std::uint64_t gate_seq(std::uint64_t w) { return w >> kGateSeqShift; }
}  // namespace

ShmGroup::Gate ShmGroup::enter(std::uint64_t seq) {
  auto& word = control(0).gate;
  std::uint64_t w = word.load(std::memory_order_acquire);
  std::uint64_t next = 0;
  do {
    if (gate_seq(w) > seq) DISTML_THROW(Error, "shared-memory arrival gate: collective #" << seq << " entered after #" << gate_seq(w));
    if (gate_seq(w) < seq) {
      next = (seq << kGateSeqShift) | 1;
    } else {
      if (w & kGateGivenUp) return Gate::kGivenUp;
      next = w + 1;
    }
  } while (!word.compare_exchange_weak(w, next, std::memory_order_acq_rel, std::memory_order_acquire));
  return (next & kGateCount) == static_cast<std::uint64_t>(size_) ? Gate::kAllIn : Gate::kWaiting;
}

ShmGroup::Gate ShmGroup::gate(std::uint64_t seq) {
  const std::uint64_t w = control(0).gate.load(std::memory_order_acquire);
  if (gate_seq(w) > seq) return Gate::kAllIn;
  if (gate_seq(w) < seq) return Gate::kWaiting;
  if (w & kGateGivenUp) return Gate::kGivenUp;
  return (w & kGateCount) == static_cast<std::uint64_t>(size_) ? Gate::kAllIn : Gate::kWaiting;
}

ShmGroup::Gate ShmGroup::give_up(std::uint64_t seq) {
  auto& word = control(0).gate;
  std::uint64_t w = word.load(std::memory_order_acquire);
  std::uint64_t next = 0;
  do {
    if (gate_seq(w) > seq) return Gate::kAllIn;
    if (gate_seq(w) < seq) {
      next = (seq << kGateSeqShift) | kGateGivenUp;
    } else {
      if (w & kGateGivenUp) return Gate::kGivenUp;
      if ((w & kGateCount) == static_cast<std::uint64_t>(size_)) return Gate::kAllIn;
      next = w | kGateGivenUp;
    }
  } while (!word.compare_exchange_weak(w, next, std::memory_order_acq_rel, std::memory_order_acquire));
  return Gate::kGivenUp;
}

void ShmGroup::wait_all(Counter c, std::uint64_t step) {
  for (int r = 0; r < size_; ++r) {
    if (r != rank_) wait_one(r, c, step);
  }
}

}  // namespace distml::transport

namespace distml::transport {

ShmWindow::ShmWindow(MPI_Comm node, std::size_t bytes, int id) : bytes_(bytes), id_(id) {
  int size = 0;
  DISTML_MPI(MPI_Comm_size(node, &size));
  DISTML_MPI(MPI_Comm_rank(node, &rank_));
  UniqueInfo info;
  DISTML_MPI(MPI_Info_create(info.out()));
  DISTML_MPI(MPI_Info_set(info.get(), "alloc_shared_noncontig", "true"));
  char* mine = nullptr;
  const std::size_t rounded = std::max<std::size_t>(64, (bytes + 63) / 64 * 64);
  DISTML_MPI(MPI_Win_allocate_shared(static_cast<MPI_Aint>(rounded), 1, info.get(), node, &mine, win_.out()));
  try {
    bases_.resize(size);
    for (int r = 0; r < size; ++r) {
      MPI_Aint got = 0;
      int disp = 0;
      DISTML_MPI(MPI_Win_shared_query(win_.get(), r, &got, &disp, &bases_[r]));
    }
  } catch (...) {
    win_.reset();  // the destructor would not: it never frees
    throw;
  }
}

std::shared_ptr<ShmWindow> ShmGroup::allocate(std::size_t bytes) {
  auto w = std::make_shared<ShmWindow>(node_.get(), bytes, next_window_id_++);
  windows_.push_back(w);
  return w;
}

std::shared_ptr<ShmWindow> ShmGroup::find(const void* p, std::size_t bytes, std::size_t* offset) {
  const char* c = static_cast<const char*>(p);
  for (auto& w : windows_) {
    const char* base = w->base(rank_);
    if (c >= base && c + bytes <= base + w->bytes()) {
      *offset = static_cast<std::size_t>(c - base);
      return w;
    }
  }
  return nullptr;
}

}  // namespace distml::transport

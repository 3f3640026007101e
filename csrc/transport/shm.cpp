#include "transport/shm.h"

#include <sys/prctl.h>
#include <sys/uio.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <sstream>

#include "common/error.h"

namespace distml::transport {

ShmGroup::ShmGroup(MPI_Comm node, std::size_t slot_bytes, MpiComm* parent)
    : parent_(parent), slot_bytes_((slot_bytes + 63) / 64 * 64) {
  DISTML_MPI(MPI_Comm_dup(node, &node_));
  DISTML_MPI(MPI_Comm_set_errhandler(node_, MPI_ERRORS_RETURN));
  DISTML_MPI(MPI_Comm_rank(node_, &rank_));
  DISTML_MPI(MPI_Comm_size(node_, &size_));
  const std::size_t region = kControlBytes + 2 * slot_bytes_;
  MPI_Info info;
  DISTML_MPI(MPI_Info_create(&info));
  // Each rank's region on its own pages, so that first touch places it
  // near its owner.
  MPI_Info_set(info, "alloc_shared_noncontig", "true");
  char* mine = nullptr;
  int rc = MPI_Win_allocate_shared(static_cast<MPI_Aint>(region), 64, info, node_, &mine, &win_);
  MPI_Info_free(&info);
  DISTML_MPI(rc);
  regions_.resize(size_);
  for (int r = 0; r < size_; ++r) {
    MPI_Aint bytes = 0;
    int disp = 0;
    char* base = nullptr;
    DISTML_MPI(MPI_Win_shared_query(win_, r, &bytes, &disp, &base));
    regions_[r] = base;
  }
  auto& c = control(rank_);
  new (&c) ShmControl();
  c.posted.store(0);
  c.reduced.store(0);
  c.released.store(0);
  c.aux.store(0);
  c.arrived.store(0);
  c.pid = static_cast<std::uint64_t>(getpid());
  c.in_addr = reinterpret_cast<std::uint64_t>(&c.pid);
  c.out_addr = 0;
#ifdef PR_SET_PTRACER
  // Where Yama restricts ptrace to descendants, let peers read this process
  // (process_vm_readv). Harmless elsewhere.
  prctl(PR_SET_PTRACER, PR_SET_PTRACER_ANY, 0, 0, 0);
#endif
  // Nobody reads a peer's counters before the peer has zeroed them.
  DISTML_MPI(MPI_Barrier(node_));

  // Single copy works if every rank can read every peer's pid field
  // through process_vm_readv (it can fail under seccomp or ptrace rules).
  int ok = 1;
  for (int r = 0; r < size_ && ok; ++r) {
    if (r == rank_) continue;
    std::uint64_t got = 0;
    struct iovec local{&got, sizeof got}, remote{reinterpret_cast<void*>(control(r).in_addr), sizeof got};
    ok = process_vm_readv(static_cast<pid_t>(control(r).pid), &local, 1, &remote, 1, 0) ==
                 static_cast<ssize_t>(sizeof got) &&
             got == control(r).pid;
  }
  int all_ok = 0;
  DISTML_MPI(MPI_Allreduce(&ok, &all_ok, 1, MPI_INT, MPI_MIN, node_));
  single_copy_ = all_ok != 0;
}

void ShmGroup::read_peer(int r, void* local, std::uint64_t remote, std::size_t bytes) {
  auto* dst = static_cast<char*>(local);
  const pid_t pid = static_cast<pid_t>(control(r).pid);
  while (bytes > 0) {
    struct iovec l{dst, bytes}, rm{reinterpret_cast<void*>(remote), bytes};
    ssize_t n = process_vm_readv(pid, &l, 1, &rm, 1, 0);
    if (n <= 0) {
      if (n < 0 && errno == EINTR) continue;
      if (n < 0 && errno == ESRCH) {
        DISTML_THROW(Error, "node rank " << r << " (process " << pid << ") has exited in the middle of a collective");
      }
      DISTML_THROW(Error, "reading node rank " << r << "'s memory failed: " << std::strerror(errno));
    }
    dst += n;
    remote += static_cast<std::uint64_t>(n);
    bytes -= static_cast<std::size_t>(n);
  }
}

ShmGroup::~ShmGroup() {
  if (!mpi_alive()) return;
  if (!windows_.empty()) {
    // Free together the windows that no rank's arrays still use; keep the
    // others mapped until the process ends.
    std::vector<int> used(windows_.size()), any(windows_.size());
    for (std::size_t i = 0; i < windows_.size(); ++i) used[i] = windows_[i].use_count() > 1;
    if (MPI_Allreduce(used.data(), any.data(), static_cast<int>(used.size()), MPI_INT, MPI_MAX,
                      node_) == MPI_SUCCESS) {
      static std::vector<std::shared_ptr<ShmWindow>> kept_until_exit;
      for (std::size_t i = 0; i < windows_.size(); ++i) {
        if (any[i]) kept_until_exit.push_back(windows_[i]);
      }
      windows_.clear();
    } else {
      for (auto& w : windows_) new std::shared_ptr<ShmWindow>(w);  // unusable MPI: leak
      windows_.clear();
    }
  }
  if (win_ != MPI_WIN_NULL) MPI_Win_free(&win_);
  if (node_ != MPI_COMM_NULL) MPI_Comm_free(&node_);
}

std::atomic<std::uint64_t>& ShmGroup::counter(int r, Counter c) {
  auto& ctl = control(r);
  switch (c) {
    case Counter::kPosted: return ctl.posted;
    case Counter::kReduced: return ctl.reduced;
    case Counter::kReleased: return ctl.released;
    case Counter::kAux: return ctl.aux;
    case Counter::kArrived: return ctl.arrived;
  }
  return ctl.aux;
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
  MPI_Info info;
  DISTML_MPI(MPI_Info_create(&info));
  MPI_Info_set(info, "alloc_shared_noncontig", "true");
  char* mine = nullptr;
  const std::size_t rounded = std::max<std::size_t>(64, (bytes + 63) / 64 * 64);
  int rc = MPI_Win_allocate_shared(static_cast<MPI_Aint>(rounded), 1, info, node, &mine, &win_);
  MPI_Info_free(&info);
  DISTML_MPI(rc);
  bases_.resize(size);
  for (int r = 0; r < size; ++r) {
    MPI_Aint got = 0;
    int disp = 0;
    DISTML_MPI(MPI_Win_shared_query(win_, r, &got, &disp, &bases_[r]));
  }
}

ShmWindow::~ShmWindow() {
  if (win_ != MPI_WIN_NULL && mpi_alive()) MPI_Win_free(&win_);
}

std::shared_ptr<ShmWindow> ShmGroup::allocate(std::size_t bytes) {
  auto w = std::make_shared<ShmWindow>(node_, bytes, next_window_id_++);
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

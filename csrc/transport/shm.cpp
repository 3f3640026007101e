#include "transport/shm.h"

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
  // Nobody reads a peer's counters before the peer has zeroed them.
  DISTML_MPI(MPI_Barrier(node_));
}

ShmGroup::~ShmGroup() {
  if (!mpi_alive()) return;
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

#include "transport/mpi_comm.h"

#include <sched.h>

#include <algorithm>
#include <climits>
#include <sstream>

#include "common/error.h"

namespace distml::transport {

namespace {
// Messages are split into pieces no larger than this, far below INT_MAX so
// the count fits MPI's int with MPI_BYTE.
constexpr std::size_t kPieceBytes = std::size_t{1} << 30;
// Polls of shared memory before the first yield: a short spin keeps latency
// low when the peer is running; yielding after it lets an oversubscribed peer
// have the core.
constexpr int kSpinPolls = 64;
}  // namespace

void check_mpi(int rc, const char* call, const char* file, int line) {
  if (rc == MPI_SUCCESS) return;
  char msg[MPI_MAX_ERROR_STRING] = {0};
  int len = 0;
  int error_class = rc;
  MPI_Error_class(rc, &error_class);
  MPI_Error_string(rc, msg, &len);
  std::ostringstream os;
  os << call << " failed: " << std::string(msg, len) << " (MPI error class " << error_class
     << ") [" << ::distml::detail::short_file(file) << ":" << line << "]";
  throw MpiError(os.str(), rc, error_class, std::string(msg, len));
}

bool mpi_alive() {
  int initialized = 0, finalized = 0;
  MPI_Initialized(&initialized);
  MPI_Finalized(&finalized);
  return initialized && !finalized;
}

Request::Request(Request&& other) noexcept
    : reqs_(std::move(other.reqs_)), is_recv_(other.is_recv_), peer_(other.peer_) {
  other.reqs_.clear();
}

Request& Request::operator=(Request&& other) noexcept {
  if (this != &other) {
    release();
    reqs_ = std::move(other.reqs_);
    is_recv_ = other.is_recv_;
    peer_ = other.peer_;
    other.reqs_.clear();
  }
  return *this;
}

Request::~Request() { release(); }

void Request::release() noexcept {
  if (reqs_.empty() || !mpi_alive()) {
    reqs_.clear();
    return;
  }
  // Only reached on an error path (a timeout or an exception mid-schedule):
  // receives are cancelled so MPI stops writing into memory that may be freed;
  // sends are left to complete on their own.
  for (auto& r : reqs_) {
    if (r == MPI_REQUEST_NULL) continue;
    if (is_recv_) MPI_Cancel(&r);
    MPI_Request_free(&r);
  }
  reqs_.clear();
}

MpiComm::MpiComm(MPI_Comm user) {
  if (!mpi_alive()) DISTML_THROW(Unusable, "MPI is not initialised, or already finalised");
  DISTML_MPI(MPI_Comm_dup(user, comm_.out()));
  DISTML_MPI(MPI_Comm_set_errhandler(comm_.get(), MPI_ERRORS_RETURN));
  DISTML_MPI(MPI_Comm_rank(comm_.get(), &rank_));
  DISTML_MPI(MPI_Comm_size(comm_.get(), &size_));
  int* tag_ub = nullptr;
  int found = 0;
  DISTML_MPI(MPI_Comm_get_attr(comm_.get(), MPI_TAG_UB, &tag_ub, &found));
  // MPI guarantees at least 32767, so at least 255 epochs.
  if (found && tag_ub) epochs_ = std::max(1, (*tag_ub + 1) / kTagSpan);
}


Request MpiComm::isend(const void* buf, std::size_t bytes, int peer, int tag) {
  Request req;
  req.peer_ = peer;
  auto* p = static_cast<const char*>(buf);
  do {
    std::size_t n = bytes < kPieceBytes ? bytes : kPieceBytes;
    MPI_Request r;
    DISTML_MPI(MPI_Isend(p, static_cast<int>(n), MPI_BYTE, peer, tag_base_ + tag, comm_.get(), &r));
    req.reqs_.push_back(r);
    p += n;
    bytes -= n;
  } while (bytes > 0);
  return req;
}

Request MpiComm::irecv(void* buf, std::size_t bytes, int peer, int tag) {
  Request req;
  req.peer_ = peer;
  req.is_recv_ = true;
  auto* p = static_cast<char*>(buf);
  do {
    std::size_t n = bytes < kPieceBytes ? bytes : kPieceBytes;
    MPI_Request r;
    DISTML_MPI(MPI_Irecv(p, static_cast<int>(n), MPI_BYTE, peer, tag_base_ + tag, comm_.get(), &r));
    req.reqs_.push_back(r);
    p += n;
    bytes -= n;
  } while (bytes > 0);
  return req;
}

void MpiComm::pause(long polls) {
  if (polls >= kSpinPolls) sched_yield();
}

// A poll of MPI requests, unlike a load from shared memory, is a pass of
// MPI's progress engine, which over TCP is already a system call (epoll), so
// yielding after each fruitless one adds little to a wait. Spinning first
// costs much where ranks outnumber cores: the peer whose message this rank
// waits for may be the task it keeps off the core. On 4 virtual hosts on 2
// cores (tools/netns_cluster.sh) spinning 64 polls before the first yield
// made an 8-byte allreduce across hosts take 54-60 us against 39 us with a
// yield after every poll (bench/results/carried.md).
void MpiComm::pause_mpi() { sched_yield(); }

void MpiComm::poll_until_done(std::vector<MPI_Request>& reqs, const char* what, int peer) {
  for (long polls = 0;; ++polls) {
    int done = 0;
    DISTML_MPI(MPI_Testall(static_cast<int>(reqs.size()), reqs.data(), &done,
                           MPI_STATUSES_IGNORE));
    if (done) return;
    pause_mpi();
    if (has_deadline_ && (polls & 63) == 0 && std::chrono::steady_clock::now() > deadline_) {
      std::ostringstream os;
      os << "rank " << rank_ << " was waiting to " << what;
      if (peer >= 0) os << " rank " << peer;
      last_stall_ = os.str();
      DISTML_THROW(Timeout, last_stall_);
    }
  }
}

bool MpiComm::test(Request& req) {
  if (!req.active()) return true;
  int done = 0;
  DISTML_MPI(MPI_Testall(static_cast<int>(req.reqs_.size()), req.reqs_.data(), &done,
                         MPI_STATUSES_IGNORE));
  if (done) req.reqs_.clear();
  return done != 0;
}

void MpiComm::wait_collective(MPI_Request& req, const char* what) {
  std::vector<MPI_Request> one{req};
  try {
    poll_until_done(one, what, -1);
  } catch (...) {
    // MPI cannot cancel a collective; the request is left to MPI.
    req = MPI_REQUEST_NULL;
    throw;
  }
  req = MPI_REQUEST_NULL;
}

void MpiComm::wait(Request& req) {
  if (!req.active()) return;
  poll_until_done(req.reqs_, req.is_recv_ ? "receive from" : "send to", req.peer_);
  req.reqs_.clear();
}

void MpiComm::wait_all(std::vector<Request>& reqs) {
  for (auto& r : reqs) wait(r);
}

void MpiComm::send(const void* buf, std::size_t bytes, int peer, int tag) {
  Request r = isend(buf, bytes, peer, tag);
  wait(r);
}

void MpiComm::recv(void* buf, std::size_t bytes, int peer, int tag) {
  Request r = irecv(buf, bytes, peer, tag);
  wait(r);
}

void MpiComm::sendrecv(const void* sbuf, std::size_t sbytes, int dst, void* rbuf,
                       std::size_t rbytes, int src, int tag) {
  Request r = irecv(rbuf, rbytes, src, tag);
  Request s = isend(sbuf, sbytes, dst, tag);
  wait(r);
  wait(s);
}

void MpiComm::start_deadline(double seconds) {
  started_ = std::chrono::steady_clock::now();
  has_deadline_ = seconds > 0;
  if (has_deadline_) {
    deadline_ = std::chrono::steady_clock::now() +
                std::chrono::duration_cast<std::chrono::steady_clock::duration>(
                    std::chrono::duration<double>(seconds));
  }
}

}  // namespace distml::transport

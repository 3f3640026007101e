#include "transport/mailbox.h"

#include <sched.h>
#include <time.h>

#include <sstream>

#include "common/error.h"
#include "transport/mpi_comm.h"

namespace distml::transport {

namespace {

// Blocks of a gathered datatype stay below INT_MAX bytes (MPI's int counts).
constexpr std::size_t kBlockBytes = std::size_t{1} << 30;
// Yields before the first sleep: cheap when nobody else wants the core, and
// they keep a ping-pong between two running ranks fast.
constexpr long kYieldPolls = 32;

// An hindexed datatype over the pieces' absolute addresses, committed; used
// with MPI_BOTTOM. Empty pieces are skipped; no pieces at all gives a
// zero-length type.
struct Gathered {
  MPI_Datatype type = MPI_DATATYPE_NULL;
  ~Gathered() {
    if (type != MPI_DATATYPE_NULL && mpi_alive()) MPI_Type_free(&type);
  }
};

void build(const std::vector<Piece>& pieces, Gathered* g) {
  std::vector<int> lengths;
  std::vector<MPI_Aint> displs;
  for (const Piece& p : pieces) {
    const char* at = static_cast<const char*>(p.ptr);
    std::size_t left = p.bytes;
    while (left > 0) {
      std::size_t n = left < kBlockBytes ? left : kBlockBytes;
      MPI_Aint addr;
      DISTML_MPI(MPI_Get_address(at, &addr));
      lengths.push_back(static_cast<int>(n));
      displs.push_back(addr);
      at += n;
      left -= n;
    }
  }
  DISTML_MPI(MPI_Type_create_hindexed(static_cast<int>(lengths.size()), lengths.data(), displs.data(), MPI_BYTE,
                                      &g->type));
  DISTML_MPI(MPI_Type_commit(&g->type));
}

}  // namespace

void Backoff::pause() {
  if (polls_++ < kYieldPolls) {
    sched_yield();
    return;
  }
  sleep_us_ = sleep_us_ == 0 ? min_us_ : (sleep_us_ * 2 > max_us_ ? max_us_ : sleep_us_ * 2);
  timespec ts{0, sleep_us_ * 1000};
  nanosleep(&ts, nullptr);
}

Pending& Pending::operator=(Pending&& o) noexcept {
  if (this != &o) {
    release();
    req_ = o.req_;
    recv_ = o.recv_;
    peer_ = o.peer_;
    received_ = o.received_;
    o.req_ = MPI_REQUEST_NULL;
  }
  return *this;
}

void Pending::release() noexcept {
  if (req_ == MPI_REQUEST_NULL || !mpi_alive()) {
    req_ = MPI_REQUEST_NULL;
    return;
  }
  // Only on error paths: stop MPI writing into memory about to be freed.
  if (recv_) MPI_Cancel(&req_);
  MPI_Request_free(&req_);
  req_ = MPI_REQUEST_NULL;
}

bool Pending::test() {
  if (req_ == MPI_REQUEST_NULL) return true;
  int done = 0;
  MPI_Status st;
  DISTML_MPI(MPI_Test(&req_, &done, &st));
  if (done && recv_) {
    MPI_Count n = 0;
    MPI_Get_elements_x(&st, MPI_BYTE, &n);
    received_ = n > 0 ? static_cast<std::size_t>(n) : 0;
  }
  return done != 0;
}

Mailbox::Mailbox(MPI_Comm user) {
  if (!mpi_alive()) DISTML_THROW(Unusable, "MPI is not initialised, or already finalised");
  DISTML_MPI(MPI_Comm_dup(user, requests_.out()));
  DISTML_MPI(MPI_Comm_set_errhandler(requests_.get(), MPI_ERRORS_RETURN));
  DISTML_MPI(MPI_Comm_dup(user, replies_.out()));
  DISTML_MPI(MPI_Comm_set_errhandler(replies_.get(), MPI_ERRORS_RETURN));
  DISTML_MPI(MPI_Comm_rank(requests_.get(), &rank_));
  DISTML_MPI(MPI_Comm_size(requests_.get(), &size_));
}

void Mailbox::abandon() {
  requests_.abandon();
  replies_.abandon();
}

Pending Mailbox::send(Channel ch, int peer, int tag, const std::vector<Piece>& pieces) {
  Gathered g;
  build(pieces, &g);
  Pending p;
  p.peer_ = peer;
  DISTML_MPI(MPI_Isend(MPI_BOTTOM, 1, g.type, peer, tag, comm(ch), &p.req_));
  return p;
}

Pending Mailbox::recv(Channel ch, int peer, int tag, const std::vector<Piece>& pieces) {
  Gathered g;
  build(pieces, &g);
  Pending p;
  p.peer_ = peer;
  p.recv_ = true;
  DISTML_MPI(MPI_Irecv(MPI_BOTTOM, 1, g.type, peer, tag, comm(ch), &p.req_));
  return p;
}

bool Mailbox::probe(Incoming* in) {
  int flag = 0;
  MPI_Status st;
  DISTML_MPI(MPI_Improbe(MPI_ANY_SOURCE, MPI_ANY_TAG, requests_.get(), &flag, &in->message, &st));
  if (!flag) return false;
  MPI_Count n = 0;
  DISTML_MPI(MPI_Get_elements_x(&st, MPI_BYTE, &n));
  in->source = st.MPI_SOURCE;
  in->tag = st.MPI_TAG;
  in->bytes = static_cast<std::size_t>(n);
  return true;
}

Pending Mailbox::receive(Incoming& in, const std::vector<Piece>& pieces) {
  Gathered g;
  build(pieces, &g);
  Pending p;
  p.peer_ = in.source;
  p.recv_ = true;
  DISTML_MPI(MPI_Imrecv(MPI_BOTTOM, 1, g.type, &in.message, &p.req_));
  return p;
}

void Mailbox::broadcast(int root, const std::vector<Piece>& pieces, std::chrono::steady_clock::time_point deadline,
                        bool has_deadline, const std::string& what) {
  Gathered g;
  build(pieces, &g);
  MPI_Request req;
  DISTML_MPI(MPI_Ibcast(MPI_BOTTOM, 1, g.type, root, replies_.get(), &req));
  Backoff backoff(20, 1000);
  for (;;) {
    int done = 0;
    DISTML_MPI(MPI_Test(&req, &done, MPI_STATUS_IGNORE));
    if (done) return;
    if (has_deadline && std::chrono::steady_clock::now() > deadline) {
      // MPI cannot cancel a collective; the request is left to MPI.
      std::ostringstream os;
      os << "rank " << rank_ << " timed out waiting for " << what;
      DISTML_THROW(Timeout, os.str());
    }
    backoff.pause();
  }
}

}  // namespace distml::transport

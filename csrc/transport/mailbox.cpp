#include "transport/mailbox.h"

#include <sched.h>
#include <time.h>

#include <climits>
#include <cstdlib>
#include <sstream>

#include "common/error.h"
#include "transport/mpi_comm.h"

namespace distml::transport {

namespace {

// Yields before the first sleep: cheap when nobody else wants the core, and
// they keep a ping-pong between two running ranks fast.
constexpr long kYieldPolls = 32;

int int_bytes(std::size_t bytes) {
  DISTML_CHECK_ARG(bytes <= static_cast<std::size_t>(INT_MAX), "a message of " << bytes << " bytes is too large");
  return static_cast<int>(bytes);
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

void Backoff::yield() {
  // A few polls between yields: each yield on a loaded machine can cost a
  // scheduling round, and the copy advances only while this side polls.
  static thread_local unsigned polls = 0;
  static const unsigned every = [] {
    const char* v = std::getenv("DISTML_PS_YIELD_EVERY");
    return v && *v ? static_cast<unsigned>(std::atoi(v)) : 16u;
  }();
  if (every <= 1 || ++polls % every == 0) sched_yield();
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
  for (UniqueComm* c : {&requests_, &replies_, &data_}) {
    DISTML_MPI(MPI_Comm_dup(user, c->out()));
    DISTML_MPI(MPI_Comm_set_errhandler(c->get(), MPI_ERRORS_RETURN));
  }
  DISTML_MPI(MPI_Comm_rank(requests_.get(), &rank_));
  DISTML_MPI(MPI_Comm_size(requests_.get(), &size_));
}

void Mailbox::abandon() {
  requests_.abandon();
  replies_.abandon();
  data_.abandon();
}

Pending Mailbox::send(Channel ch, int peer, int tag, const void* buf, std::size_t bytes) {
  Pending p;
  p.peer_ = peer;
  DISTML_MPI(MPI_Isend(buf, int_bytes(bytes), MPI_BYTE, peer, tag, comm(ch), &p.req_));
  return p;
}

Pending Mailbox::send_synchronous(Channel ch, int peer, int tag, const void* buf, std::size_t bytes) {
  Pending p;
  p.peer_ = peer;
  DISTML_MPI(MPI_Issend(buf, int_bytes(bytes), MPI_BYTE, peer, tag, comm(ch), &p.req_));
  return p;
}

Pending Mailbox::recv(Channel ch, int peer, int tag, void* buf, std::size_t bytes) {
  Pending p;
  p.peer_ = peer;
  p.recv_ = true;
  DISTML_MPI(MPI_Irecv(buf, int_bytes(bytes), MPI_BYTE, peer, tag, comm(ch), &p.req_));
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

bool Mailbox::probe_from(Channel ch, int source, int tag, Incoming* in) {
  int flag = 0;
  MPI_Status st;
  DISTML_MPI(MPI_Improbe(source, tag, comm(ch), &flag, &in->message, &st));
  if (!flag) return false;
  MPI_Count n = 0;
  DISTML_MPI(MPI_Get_elements_x(&st, MPI_BYTE, &n));
  in->source = st.MPI_SOURCE;
  in->tag = st.MPI_TAG;
  in->bytes = static_cast<std::size_t>(n);
  return true;
}

Pending Mailbox::receive(Incoming& in, void* buf, std::size_t bytes) {
  Pending p;
  p.peer_ = in.source;
  p.recv_ = true;
  DISTML_MPI(MPI_Imrecv(buf, int_bytes(bytes), MPI_BYTE, &in.message, &p.req_));
  return p;
}

void Mailbox::broadcast(int root, void* buf, std::size_t bytes, std::chrono::steady_clock::time_point deadline,
                        bool has_deadline, const std::string& what) {
  MPI_Request req;
  DISTML_MPI(MPI_Ibcast(buf, int_bytes(bytes), MPI_BYTE, root, data_.get(), &req));
  // Every rank arrives here together (at the end of a close), and the data
  // moves only while ranks poll: no sleeps.
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
    Backoff::yield();
  }
}

}  // namespace distml::transport

// Request/reply messaging for the parameter server (csrc/ps/): the only MPI
// the parameter server uses lives here.
//
// A Mailbox owns two duplicates of a user's communicator: the request
// channel, which only a server's progress loop receives from (any source,
// any tag: it probes, then receives the probed message), and the reply
// channel, on which a worker receives the answers to its own requests from
// named servers. Keeping them apart is what lets a colocated rank's worker
// thread and its progress thread receive at the same time without either
// matching the other's messages.
//
// Every message is "gathered": one MPI message whose datatype lists the
// pieces (address, bytes) it is made of, so a header and a parameter range
// spread over several user arrays travel as one message with no staging
// copy (MPI_Type_create_hindexed over absolute addresses, sent from
// MPI_BOTTOM).
//
// Nothing here spins: waits poll with MPI_Test/MPI_Improbe and back off to
// sleeps (Backoff), since ranks share cores with each other and with the
// colocated rank's computation, and MPICH's blocking calls busy-poll.
#pragma once

#include <mpi.h>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "transport/mpi_handles.h"

namespace distml::transport {

struct Piece {
  const void* ptr;
  std::size_t bytes;
};

// The pause between polls: a few yields, then sleeps that double from
// `min_sleep_us` up to `max_sleep_us`. reset() after progress.
class Backoff {
 public:
  Backoff(long min_sleep_us, long max_sleep_us) : min_us_(min_sleep_us), max_us_(max_sleep_us) {}
  void pause();
  void reset() { polls_ = 0; sleep_us_ = 0; }

 private:
  long min_us_, max_us_;
  long polls_ = 0;
  long sleep_us_ = 0;
};

// One posted send or receive. Destroying an active receive cancels it;
// an active send is left to MPI (freed, completes on its own).
class Pending {
 public:
  Pending() = default;
  Pending(Pending&& o) noexcept : req_(o.req_), recv_(o.recv_), peer_(o.peer_) { o.req_ = MPI_REQUEST_NULL; }
  Pending& operator=(Pending&& o) noexcept;
  Pending(const Pending&) = delete;
  Pending& operator=(const Pending&) = delete;
  ~Pending() { release(); }

  bool active() const { return req_ != MPI_REQUEST_NULL; }
  int peer() const { return peer_; }
  // One MPI_Test; true once complete (and then inactive).
  bool test();
  // Bytes a completed receive got (set by test()).
  std::size_t received() const { return received_; }

 private:
  friend class Mailbox;
  void release() noexcept;
  MPI_Request req_ = MPI_REQUEST_NULL;
  bool recv_ = false;
  int peer_ = -1;
  std::size_t received_ = 0;
};

// A request found by Mailbox::probe, not yet received.
struct Incoming {
  int source = -1;
  int tag = -1;
  std::size_t bytes = 0;
  MPI_Message message = MPI_MESSAGE_NULL;
};

class Mailbox {
 public:
  enum Channel { kRequests = 0, kReplies = 1 };

  // Duplicates `user` twice (collective over `user`).
  explicit Mailbox(MPI_Comm user);
  Mailbox(const Mailbox&) = delete;
  Mailbox& operator=(const Mailbox&) = delete;
  // Leaves the duplicates to MPI_Finalize instead of freeing them (for a
  // mailbox destroyed at a time its peers did not agree on).
  void abandon();

  int rank() const { return rank_; }
  int size() const { return size_; }

  Pending send(Channel ch, int peer, int tag, const std::vector<Piece>& pieces);
  Pending recv(Channel ch, int peer, int tag, const std::vector<Piece>& pieces);
  // Looks for a request (any source, any tag) on the request channel.
  bool probe(Incoming* in);
  // Receives a probed request into `pieces` (which may hold fewer bytes
  // than announced only if the caller then treats it as malformed).
  Pending receive(Incoming& in, const std::vector<Piece>& pieces);

  // Broadcast from `root` over the reply channel into `pieces`, waited for
  // with backoff; throws Timeout (naming `what`) at `deadline`.
  void broadcast(int root, const std::vector<Piece>& pieces, std::chrono::steady_clock::time_point deadline,
                 bool has_deadline, const std::string& what);

 private:
  MPI_Comm comm(Channel ch) const { return ch == kRequests ? requests_.get() : replies_.get(); }
  UniqueComm requests_;
  UniqueComm replies_;
  int rank_ = 0;
  int size_ = 1;
};

}  // namespace distml::transport

// Request/reply messaging for the parameter server (csrc/ps/): the only MPI
// the parameter server uses lives here.
//
// A Mailbox owns three duplicates of a user's communicator: the request
// channel, which only a server's progress loop receives from (any source,
// any tag: it probes, then receives the probed message), the reply channel,
// on which a worker receives the headers of the answers to its own requests
// from named servers, and the data channel, which carries the parameter and
// gradient ranges that follow a header, each received from a named peer
// with a tag of its direction. Keeping them apart is what lets a colocated
// rank's worker thread and its progress thread receive at the same time
// without either matching the other's messages.
//
// Every message is one contiguous buffer. (A message gathered from pieces
// by an MPI datatype was measured 10-50x slower: MPICH moves non-contiguous
// data through its shared-memory cells piece by piece, contiguous data with
// one copy; see docs/ps.md.) Ranges spread over several arrays therefore
// travel as one message per array, cut at the same places on both sides.
//
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
  // For waits on a transfer in flight: MPICH moves large messages in pieces
  // per progress call on both sides, so sleeping between polls would stall
  // the copy itself; yielding lets oversubscribed peers run.
  static void yield();

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
  // Gives up on the transfer (its peer is lost): a receive is cancelled
  // (MPICH cancels one not yet matched; one already matched may still land
  // in its buffer), then the request is freed, which completes it as far
  // as this side is concerned; a send is freed and left to MPI. Either way
  // the buffer must outlive the peer's part of the transfer.
  void abandon() noexcept { release(); }

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
  enum Channel { kRequests = 0, kReplies = 1, kData = 2 };

  // Duplicates `user` three times (collective over `user`).
  explicit Mailbox(MPI_Comm user);
  Mailbox(const Mailbox&) = delete;
  Mailbox& operator=(const Mailbox&) = delete;
  // Leaves the duplicates to MPI_Finalize instead of freeing them (for a
  // mailbox destroyed at a time its peers did not agree on).
  void abandon();

  int rank() const { return rank_; }
  int size() const { return size_; }

  // One contiguous message of `bytes` (below 2 GiB).
  Pending send(Channel ch, int peer, int tag, const void* buf, std::size_t bytes);
  // The same, complete only once `peer` has matched it (MPI_Issend). A
  // small send completes at once on its own: MPICH copies it into a
  // shared-memory cell of the sender's, which stays taken until the peer
  // receives it, and the sender has a fixed number of cells (64) for all
  // its peers. A sender that keeps a bounded number of synchronous sends
  // under way towards each peer knows that a peer that stops receiving
  // holds at most that many of its cells.
  Pending send_synchronous(Channel ch, int peer, int tag, const void* buf, std::size_t bytes);
  Pending recv(Channel ch, int peer, int tag, void* buf, std::size_t bytes);
  // Looks for a request (any source, any tag) on the request channel.
  bool probe(Incoming* in);
  // Looks for a message from `source` with `tag` on `ch`.
  bool probe_from(Channel ch, int source, int tag, Incoming* in);
  // Receives a probed message into `buf` (at most `bytes`).
  Pending receive(Incoming& in, void* buf, std::size_t bytes);

  // Broadcast of a contiguous buffer from `root` over the data channel,
  // polled (yielding) until done; throws Timeout (naming `what`) at
  // `deadline`.
  void broadcast(int root, void* buf, std::size_t bytes, std::chrono::steady_clock::time_point deadline,
                 bool has_deadline, const std::string& what);

 private:
  MPI_Comm comm(Channel ch) const {
    return ch == kRequests ? requests_.get() : ch == kReplies ? replies_.get() : data_.get();
  }
  UniqueComm requests_;
  UniqueComm replies_;
  UniqueComm data_;
  int rank_ = 0;
  int size_ = 1;
};

}  // namespace distml::transport

// A parameter server: the flattened parameters split into one contiguous
// shard per server rank, each server applying an optimizer to its shard,
// workers pushing gradients and pulling parameters at their own pace.
//
// Vocabulary. The flat parameter space has `total` elements; server i (of
// `servers`, a list of ranks) owns [bounds[i], bounds[i+1]), an even split.
// Workers are every rank (colocated layout) or every rank that is not a
// server (dedicated layout). A worker's clock is its number of pushes.
// A shard's version is its number of updates applied: in sync/bounded mode
// the clocks whose gradients it has applied (one update per clock, the
// average over the workers), in async mode the pushes it has applied (one
// update per push).
//
// Messages (transport::Mailbox). Headers on the request and reply channels;
// the ranges that follow a header on the data channel, one contiguous
// message per piece of the range that lies in one parameter, pushes also
// cut every Config::piece_bytes (see cuts()):
//   push  worker -> server  Header, then the server's range of the gradient
//   pull  worker -> server  Header (need: the version the reply must reach)
//   close worker -> server  Header (the worker's final clock)
//   step  worker -> server  Header, then the gradient as a push (async only)
//   reply server -> worker  Header, then the shard when data was asked for
//                           (a step's reply cut like its push, each piece
//                           sent as soon as it is updated)
// A colocated rank's requests to its own shard send no message: they go
// through a LocalLink (csrc/ps/server.h) to its progress thread, which
// applies a push straight from the worker's arrays and copies a pull's
// shard straight into them.
// Consistency. Sync is bounded staleness with s = 0. In sync/bounded mode a
// server sums the clock-c gradients of every worker into slot c mod (s+1)
// and applies their average once all have arrived, in clock order; a pull
// by a worker at clock c waits until version >= c - s. A worker never
// pushes clock c before version >= c - 1 - s (push waits for that), so s+1
// slots always suffice. In async mode each push is one optimizer step with
// the learning rate divided by the number of workers.
//
// A server receives the pushes and steps of several workers at once, piece
// by piece, and applies them in the order they began (Server::Inflight):
// piece k of an update waits for piece k of the update before it.
//
// Invariants that would hang or corrupt if broken:
// - no part of the shard is modified while a reply is sending it: a pull's
//   reply starts only when no push is under way, and an update first
//   completes the pull replies in flight (Server::quiesce); a step's reply
//   sends each piece only once that step has updated it, and the next
//   update of that piece waits until it is delivered;
// - a worker has at most one request outstanding per server, so a reply is
//   matched by (server, tag) alone (and a LocalLink holds one request); a
//   server takes a worker's next push only after its last one has ended,
//   so a worker's pieces are matched by (worker, tag) in order;
// - every wait has a deadline when a timeout is set, and polls with backoff;
// - a transfer a server gives up on (async: a worker lost in the middle of
//   one, Server::lose) keeps its buffers as long as the server lives: MPI
//   may still complete it if the worker resumes.
#pragma once

#include <mpi.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "common/types.h"
#include "ps/optimizer.h"
#include "transport/mailbox.h"

namespace distml::ps {

enum class Mode : std::uint8_t { kSync = 0, kAsync = 1 };

struct Config {
  DType dtype = DType::kFloat32;  // parameters (float32 or float64)
  DType wire = DType::kFloat32;   // gradients on the wire (dtype, float16, bfloat16)
  std::int64_t total = 0;         // elements of the flat parameter space
  std::vector<std::int64_t> segments;  // elements of each parameter, in order (sum: total)
  std::vector<int> servers;       // ranks that serve, ascending
  Mode mode = Mode::kAsync;
  int staleness = 0;              // sync/bounded only
  OptimizerConfig optimizer;
  double timeout = 0;             // seconds; <= 0: none
  long poll_min_us = 20;          // backoff sleeps of the polling loops
  long poll_max_us = 1000;
  // Largest message of a pushed gradient: a server receives a push piece by
  // piece and applies each piece while it is in cache (same on every rank).
  std::int64_t piece_bytes = std::int64_t{1} << 21;
  // Most pushes (and steps) of different workers a server receives at once
  // (0: no limit). On 2 shared cores one at a time measured fastest
  // (bench/results/ps.md): the next push starts as soon as the last one's
  // pieces are all applied, while its reply is still being delivered.
  std::int64_t max_in_flight = 1;
};

struct Header {
  std::int64_t op = 0;
  std::int64_t clock = 0;    // push: the push's clock; close: final clock
  std::int64_t need = 0;     // pull: the version the reply must reach
  std::int64_t version = 0;  // reply: the shard's version
  std::int64_t status = 0;   // reply: 0 ok, else an error (see .cpp)
  std::int64_t stale = 0;    // reply: async max staleness of this worker's pushes
  std::int64_t info0 = 0;    // pull: 1 = send data; error replies: details
  std::int64_t info1 = 0;
};

struct WorkerStats {
  std::int64_t clock = 0;
  std::int64_t updates_applied = 0;  // smallest shard version in the last pull
  std::int64_t max_staleness = 0;
  std::int64_t bytes_pushed = 0;
  std::int64_t bytes_pulled = 0;
  std::int64_t pulls = 0;
  double wait_seconds = 0;
  // The part of wait_seconds spent in requests (pull, step, close) before
  // every server had begun answering (its reply header arrived): queued
  // behind other workers or waiting for a clock, with no data of this
  // worker's moving.
  double wait_for_server_seconds = 0;
  std::vector<std::int64_t> shard_versions;  // per server: the version its last reply carried
  // Async: workers a server has given up on (stalled in the middle of a
  // transfer), as the servers' replies to this worker named them (ranks
  // above 61 are not named there; the servers' own stats name them).
  std::vector<int> lost_workers;
};

struct ServerStats {
  std::int64_t version = 0;
  std::int64_t updates_applied = 0;
  std::int64_t max_staleness = 0;
  std::int64_t requests = 0;
  std::int64_t bytes_received = 0;
  std::int64_t bytes_sent = 0;
  std::int64_t shard_elements = 0;
  std::int64_t optimizer_state_bytes = 0;
  std::vector<std::int64_t> applied_per_worker;  // by rank
  double busy_seconds = 0;  // in the optimizer and copies
  std::int64_t most_in_flight = 0;  // most pushes (and steps) being received at once
  std::vector<int> lost_workers;    // async: workers given up on, in the order they were lost
};

class Server;

class ParameterServer {
 public:
  // Collective over `user`. `initial` is this rank's full parameter space as
  // pieces (the same values on every rank); a server copies its range.
  ParameterServer(MPI_Comm user, const Config& config, const std::vector<transport::Piece>& initial);
  ~ParameterServer();
  ParameterServer(const ParameterServer&) = delete;
  ParameterServer& operator=(const ParameterServer&) = delete;

  bool is_server() const { return server_ != nullptr; }
  bool is_worker() const { return worker_; }
  int rank() const { return mail_->rank(); }
  const std::vector<std::int64_t>& bounds() const { return bounds_; }

  // Colocated layout: serve on a progress thread while this rank works.
  void start_progress();
  // Dedicated layout: serve on the calling thread until every worker has
  // closed, then take part in the final broadcast into `out`.
  void serve(const std::vector<transport::Piece>& out);

  // Worker calls (pieces cover the whole flat space, in order).
  void push(const std::vector<transport::Piece>& grads);
  void pull(const std::vector<transport::Piece>& out);
  // push(grads) then pull(out). In async mode one request per server: the
  // gradients go out in pieces and each server replies with each piece of
  // its shard as soon as it has applied it (see Server::receive_step).
  void step(const std::vector<transport::Piece>& grads, const std::vector<transport::Piece>& out);
  // Collective: every worker closes, servers drain, all ranks receive the
  // final parameters into `out`.
  void close(const std::vector<transport::Piece>& out);
  bool closed() const { return closed_; }

  WorkerStats worker_stats() const {
    WorkerStats s = wstats_;
    s.shard_versions = known_version_;
    for (int r = 0; r < 62; ++r) {
      if (lost_mask_ & (std::int64_t{1} << r)) s.lost_workers.push_back(r);
    }
    return s;
  }
  ServerStats server_stats() const;
  double progress_cpu_seconds() const;

 private:
  std::chrono::steady_clock::time_point worker_deadline() const;
  // Server i is this rank's own (colocated): requested through the LocalLink.
  bool is_local(int i) const { return worker_ && server_ && config_.servers[i] == mail_->rank(); }
  void check_usable() const;
  // Sends `hdr` (+ nothing) as a pull with need/data to server i and waits
  // for the reply into `out` pieces (may be empty for a fence).
  // A step (op kStep) also sends `grads` to every server in `which`.
  void request(int op, const std::vector<int>& which, std::int64_t need, bool data,
               const std::vector<transport::Piece>& out, const char* what,
               const std::vector<transport::Piece>& grads = {});
  void final_broadcast(const std::vector<transport::Piece>& out);
  void stop_progress();
  // This rank's server has failed: the parameter server is broken; raises
  // Timeout or Error with the server's reason.
  void raise_if_server_failed();
  // An error reply `h` from server rank `server`: the parameter server is
  // broken; raises Timeout (naming the ranks it names) or Unusable.
  [[noreturn]] void raise_reply(int server, const Header& h);
  // Async: a header from a server when none is due is an error reply that
  // server sent on giving up on this worker (Server::lose): raises it.
  void raise_if_lost();

  Config config_;
  std::unique_ptr<transport::Mailbox> mail_;
  std::vector<std::int64_t> bounds_;
  std::vector<std::int64_t> seg_bounds_;  // prefix sums of config_.segments
  std::unique_ptr<Server> server_;
  bool worker_ = false;
  std::thread progress_;
  std::atomic<bool> stop_{false};
  std::vector<std::int64_t> known_version_;  // per server, from replies
  std::int64_t lost_mask_ = 0;               // workers the servers' replies named lost (wire.h, rank_bit)
  WorkerStats wstats_;
  bool closed_ = false;
  bool broken_ = false;
  std::string broken_reason_;
};

}  // namespace distml::ps

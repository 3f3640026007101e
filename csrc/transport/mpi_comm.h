// Point-to-point messages over MPI. transport/ is the only code that calls
// MPI (with mpi_collectives.cpp, topology.cpp and the windows of shm.cpp).
//
// MpiComm owns a duplicate of a user's communicator, so distml's messages
// never match the user's. Point-to-point calls take byte counts of any size
// (split into pieces below INT_MAX) and return RAII requests. Waiting polls
// with MPI_Testall, spinning briefly and then yielding the core, so that
// oversubscribed jobs (more ranks than cores) keep moving, and checks the
// deadline of the collective in progress.
#pragma once

#include <mpi.h>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "common/aligned_buffer.h"
#include "transport/mpi_handles.h"

namespace distml::transport {

// Throws MpiError carrying MPI's error class and string when rc != MPI_SUCCESS.
void check_mpi(int rc, const char* call, const char* file, int line);
#define DISTML_MPI(call) ::distml::transport::check_mpi((call), #call, __FILE__, __LINE__)

// One logical message, possibly several MPI requests. Destroying an active
// request cancels what can be cancelled and frees the rest.
class Request {
 public:
  Request() = default;
  Request(Request&& other) noexcept;
  Request& operator=(Request&& other) noexcept;
  Request(const Request&) = delete;
  Request& operator=(const Request&) = delete;
  ~Request();

  bool active() const { return !reqs_.empty(); }

 private:
  friend class MpiComm;
  void release() noexcept;
  std::vector<MPI_Request> reqs_;
  bool is_recv_ = false;
  int peer_ = -1;
};

class MpiComm {
 public:
  // Duplicates `user` (MPI_Comm_dup) and sets MPI_ERRORS_RETURN on the copy.
  // Destroying it frees the duplicate (collective); see abandon().
  explicit MpiComm(MPI_Comm user);
  MpiComm(const MpiComm&) = delete;
  MpiComm& operator=(const MpiComm&) = delete;

  int rank() const { return rank_; }
  int size() const { return size_; }
  MPI_Comm raw() const { return comm_.get(); }
  // Leaves the duplicate to MPI_Finalize instead of freeing it (for a
  // communicator that is destroyed at a time its peers did not agree on).
  void abandon() { comm_.abandon(); }

  Request isend(const void* buf, std::size_t bytes, int peer, int tag);
  Request irecv(void* buf, std::size_t bytes, int peer, int tag);
  // Completes `req` (no-op when inactive).
  void wait(Request& req);
  void wait_all(std::vector<Request>& reqs);
  void send(const void* buf, std::size_t bytes, int peer, int tag);
  void recv(void* buf, std::size_t bytes, int peer, int tag);
  void sendrecv(const void* sbuf, std::size_t sbytes, int dst, void* rbuf, std::size_t rbytes,
                int src, int tag);

  // Completes `req` if it has finished (one MPI_Testall); true when done.
  bool test(Request& req);
  // Waits for a request of MPI's own non-blocking collectives, honouring the
  // deadline like every other wait.
  void wait_collective(MPI_Request& req, const char* what);
  // Backs off between polls of shared memory: a short spin, then yields the
  // core.
  static void pause(long polls);
  // Backs off between polls of MPI requests: yields the core at once.
  static void pause_mpi();

  // The deadline for the collective about to run; a wait past it throws
  // Timeout. A non-positive `seconds` means no deadline.
  void start_deadline(double seconds);
  void clear_deadline() { has_deadline_ = false; }
  bool has_deadline() const { return has_deadline_; }
  bool past_deadline() const {
    return has_deadline_ && std::chrono::steady_clock::now() > deadline_;
  }
  // Seconds since start_deadline was last called.
  double elapsed() const {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - started_).count();
  }

  // What the collective in progress was waiting for when it timed out.
  const std::string& last_stall() const { return last_stall_; }

  // Scratch memory of the collective in progress, reserved by the engine
  // before the ranks agree to run it (see Scratch).
  Scratch& scratch() { return scratch_; }

  // Numbers the messages of collective `seq`: from here on every tag is
  // offset by a value derived from it, so that a message left behind by an
  // abandoned collective can never match one of a later collective.
  // Schedules' own tags must stay below kTagSpan.
  static constexpr int kTagSpan = 128;
  void set_epoch(std::uint64_t seq) {
    tag_base_ = static_cast<int>(seq % static_cast<std::uint64_t>(epochs_)) * kTagSpan;
  }

 private:
  void poll_until_done(std::vector<MPI_Request>& reqs, const char* what, int peer);

  UniqueComm comm_;
  int rank_ = 0;
  int size_ = 1;
  bool has_deadline_ = false;
  std::chrono::steady_clock::time_point deadline_{};
  std::chrono::steady_clock::time_point started_{};
  std::string last_stall_;
  Scratch scratch_;
  int epochs_ = 1;     // distinct tag offsets MPI_TAG_UB allows
  int tag_base_ = 0;   // the offset of the collective in progress
};


}  // namespace distml::transport

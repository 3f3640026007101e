// The server side of the parameter server: one shard, served by a polling
// loop (on the progress thread of a colocated rank, or the main thread of a
// dedicated one).
#pragma once

#include <pthread.h>
#include <time.h>

#include <algorithm>
#include <cstring>
#include <list>
#include <mutex>
#include <sstream>

#include "ps/optimizer.h"
#include "ps/parameter_server.h"
#include "ps/wire.h"

namespace distml::ps {

// A colocated rank's own requests to its own shard, with no message: the
// worker thread posts one request at a time (as to any server), the
// progress thread takes it at its next poll. A push is applied straight
// from the worker's arrays piece by piece (each piece under `mu`, so the
// worker cannot withdraw them meanwhile) and then marked taken; a pull's
// shard is copied straight into the worker's arrays when its reply is due
// (also under `mu`), then the reply header is posted here. An async step
// does both: each piece of the shard is updated and at once copied into
// the worker's arrays, while it is in cache. A worker that gives up
// withdraw()s.
struct LocalLink {
  std::mutex mu;
  bool posted = false;  // a request waits for the progress thread
  int op = 0;
  Header header;
  std::vector<tp::Piece> data;  // push, step: the gradients; pull: where the parameters go (the whole flat space)
  std::vector<tp::Piece> out;   // step: where the parameters go
  bool taken = false;           // push: applied (or dropped by a failed server)
  bool replied = false;         // `reply` holds the answer
  Header reply;
};

class Server {
 public:
  Server(tp::Mailbox& mail, const Config& cfg, std::int64_t lo, std::int64_t hi, std::vector<int> workers,
         const std::vector<tp::Piece>& initial)
      : mail_(mail), cfg_(cfg), lo_(lo), hi_(hi), count_(static_cast<std::size_t>(hi - lo)),
        elem_(dtype_size(cfg.dtype)), wire_elem_(dtype_size(cfg.wire)), workers_(std::move(workers)),
        opt_(cfg.optimizer, cfg.dtype, count_) {
    const int P = mail.size();
    is_worker_.assign(P, 0);
    for (int w : workers_) is_worker_[w] = 1;
    pushed_.assign(P, 0);
    applied_.assign(P, 0);
    last_pull_version_.assign(P, 0);
    max_stale_.assign(P, 0);
    closed_.assign(P, 0);
    lost_.assign(P, 0);
    final_clock_.assign(P, 0);
    seg_bounds_.assign(1, 0);
    for (auto n : cfg.segments) seg_bounds_.push_back(seg_bounds_.back() + n);
    params_.resize(bytes_words(count_ * elem_));
    std::size_t at = 0;
    for (const auto& p : slice(initial, elem_, lo, hi)) {
      std::memcpy(reinterpret_cast<char*>(params_.data()) + at, p.ptr, p.bytes);
      at += p.bytes;
    }
    piece_elems_ = std::max<std::int64_t>(1, cfg.piece_bytes / static_cast<std::int64_t>(wire_elem_));
    pieces_ = cuts(seg_bounds_, lo_, hi_, piece_elems_);
    const std::size_t piece = std::min(count_, static_cast<std::size_t>(piece_elems_));
    // Per worker, two pieces of a push in flight: one being applied, the
    // next arriving (allocated at the worker's first push).
    staging_.resize(P);
    half_ = piece * wire_elem_;
    if (cfg.wire != cfg.dtype) grad_.resize(bytes_words(piece * elem_));
    local_ = is_worker_[mail.rank()] != 0;
    if (cfg.mode == Mode::kSync) {
      slots_.resize(static_cast<std::size_t>(cfg.staleness) + 1);
      for (auto& s : slots_) s.resize(bytes_words(count_ * elem_));
      counts_.assign(slots_.size(), 0);
      begun_.assign(slots_.size(), 0);
    }
  }

  void* params() { return params_.data(); }
  std::size_t bytes() const { return count_ * elem_; }
  bool failed() const { return failed_; }
  bool timed_out() const { return timed_out_; }
  const std::string& failure() const { return failure_; }
  bool done() const { return done_ && replies_.empty() && inflight_.empty(); }
  // Data is moving (replies, pushes under way): poll without sleeping (see
  // wait()).
  bool sending() const { return !replies_.empty() || !inflight_.empty() || !queue_.empty(); }

  // ---- the worker thread's side of the LocalLink (colocated ranks) ----
  void post(int op, const Header& h, const std::vector<tp::Piece>& data, const std::vector<tp::Piece>& out = {}) {
    std::lock_guard<std::mutex> lk(link_.mu);
    link_.posted = true;
    link_.op = op;
    link_.header = h;
    link_.data = data;
    link_.out = out;
    link_.taken = link_.replied = false;
  }
  // Both only try the lock: while the progress thread holds it (applying
  // this push, copying this pull's shard) the worker goes on moving its
  // other servers' data.
  bool push_taken() {
    std::unique_lock<std::mutex> lk(link_.mu, std::try_to_lock);
    return lk.owns_lock() && link_.taken;
  }
  bool take_reply(Header* h) {
    std::unique_lock<std::mutex> lk(link_.mu, std::try_to_lock);
    if (!lk.owns_lock() || !link_.replied) return false;
    *h = link_.reply;
    link_.replied = false;
    link_.data.clear();
    link_.out.clear();
    return true;
  }
  // The worker gives up (timeout, error): its arrays are not touched again.
  void withdraw() {
    std::lock_guard<std::mutex> lk(link_.mu);
    link_.posted = false;
    link_.data.clear();
    link_.out.clear();
  }

  // One round: a piece of every push under way, at most one new request,
  // the replies in flight, the deadlines.
  bool poll() {
    bool progressed = false;
    try {
      if (pump()) progressed = true;
      if (local_ && poll_local()) progressed = true;
      // New requests wait in MPI's queue while an earlier one waits here:
      // requests start in their order of arrival.
      tp::Incoming in;
      if (queue_.empty() && mail_.probe(&in)) {
        handle(in);
        progressed = true;
      }
      if (start_queued()) progressed = true;
      for (auto it = replies_.begin(); it != replies_.end();) {
        if (progress(*it)) {
          it = replies_.erase(it);
          progressed = true;
        } else {
          ++it;
        }
      }
      check_deadlines();
      check_stalls();
    } catch (const Timeout& e) {
      // A transfer with `late_peer_` stalled (a stopped worker or server):
      // the error replies name it.
      const std::int64_t mask = late_peer_ >= 0 && late_peer_ < 62 ? std::int64_t{1} << late_peer_ : 0;
      fail(kPeerLate, mask | (late_peer_ >= 62 ? std::int64_t{1} << 62 : 0), 0, e.what(), true);
    } catch (const std::exception& e) {
      fail(kServerFailed, 0, 0, e.what(), false);
    }
    return progressed;
  }

  ServerStats stats() const {
    std::lock_guard<std::mutex> lk(stats_mu_);
    return stats_;
  }

  // A failed dedicated server is about to raise and stop polling, and its
  // error replies move only while it polls (MPICH may not have sent a
  // header yet): it polls them out first, for at most `seconds` (a reply
  // to a stopped worker never completes).
  void flush(double seconds) {
    const auto until = Clock::now() + to_duration(seconds);
    tp::Backoff backoff(cfg_.poll_min_us, cfg_.poll_max_us);
    while (Clock::now() < until) {
      bool all = true;
      for (auto& e : replies_) all = progress(e) && all;
      if (all) return;
      backoff.pause();
    }
  }

 private:
  static std::size_t bytes_words(std::size_t bytes) { return bytes / sizeof(double) + 1; }

  // Transfers under way give up at the verdict time, before the workers'
  // own deadline, so that the workers hear which peer stalled.
  Clock::time_point deadline() const {
    return cfg_.timeout > 0 ? Clock::now() + to_duration(verdict_seconds()) : Clock::time_point::max();
  }

  // Completes a transfer already under way (a matched receive, a reply the
  // worker is waiting for): polls, yielding between polls, never sleeping,
  // since the data moves only while both sides poll.
  void wait(tp::Pending& p, const char* what) {
    const auto until = deadline();
    while (!p.test()) {
      if (Clock::now() > until) {
        late_peer_ = p.peer();
        DISTML_THROW(Timeout, "parameter server on rank " << mail_.rank() << " timed out waiting to " << what
                                                          << " rank " << p.peer());
      }
      tp::Backoff::yield();
    }
  }

  void handle(tp::Incoming& in) {
    Header h;
    const int w = in.source;
    ++requests_;
    if (in.bytes != sizeof(Header)) {
      std::vector<char> junk(in.bytes + 1);
      tp::Pending p = mail_.receive(in, junk.data(), in.bytes);
      wait(p, "receive a request from");
      DISTML_THROW(Error, "parameter server on rank " << mail_.rank() << " got a request of " << in.bytes
                                                       << " bytes from rank " << w);
    }
    tp::Pending hp = mail_.receive(in, &h, sizeof(Header));
    wait(hp, "receive a request from");
    if (in.tag != kPush && in.tag != kStep && in.tag != kPull && in.tag != kClose) {
      DISTML_THROW(Error, "parameter server on rank " << mail_.rank() << " got a message with unknown tag "
                                                      << in.tag << " from rank " << w);
    }
    queue_.push_back({w, static_cast<int>(in.tag), h, false});
  }

  // ---- pushes and steps under way ----
  //
  // Every push (and async step) is an Inflight record, from the header's
  // arrival until its last piece is applied and its reply's pieces are
  // delivered. The records of several workers are under way at once, at
  // most one per worker; each poll moves every record on by at most one
  // piece (pump()), so the server applies worker A's piece k while worker
  // B's piece arrives. The records form a chain in the order they began,
  // which is the order of their updates (async: their optimizer steps and
  // shard versions; sync/bounded: which push of a clock copies into the
  // slot and which add): a record applies piece k only after the record
  // before it has applied piece k and, if that one is a step, its reply has
  // delivered piece k. So every piece sees the updates in one order, a
  // step's reply holds exactly its own version of every piece (no later
  // update touches a piece before the reply has it, no earlier one is
  // missing), and a step's reply header can carry that version from the
  // start.
  //
  // Remote pieces arrive on the data channel into two halves of the
  // worker's staging (a clock's first push in the parameters' dtype
  // straight into its slot): piece k is applied while piece k + 1 arrives.
  // The colocated rank's own push or step reads the worker's arrays and
  // writes a step's reply into them, piece by piece under the LocalLink's
  // lock. A push that fails the checks is still received (its worker's
  // sends complete), then the server fails.
  struct Inflight {
    int w = -1;
    int op = 0;  // kPush or kStep
    Header h;
    bool local = false;  // through link_
    bool take = false;   // applied (else received and dropped)
    std::string bad;     // why not taken (the server fails once received)
    bool direct = false;  // sync: received straight into the clock's slot
    bool first = false;   // sync: the clock's first push (copies; later ones add)
    std::int64_t version = 0;  // async: the optimizer step, and shard version, this update makes
    std::int64_t stale = 0;    // async: updates since this worker's last pull
    std::size_t applied = 0;   // pieces applied (a step's: and their reply posted)
    tp::Pending ring[2];       // receives of pieces applied + 1 and + 2
    std::unique_ptr<Header> reply;  // a remote step's reply header
    tp::Pending reply_header;
    std::vector<tp::Pending> sends;  // a remote step's reply, one per piece
    bool ended = false;  // every piece applied
    Clock::time_point since;  // last progress
  };

  struct Queued {
    int w;
    int op;
    Header h;
    bool local;
  };

  // A reply being delivered: its header (which lives here until sent), and
  // a pull's shard.
  struct Reply {
    int w;
    std::unique_ptr<Header> header;
    std::vector<tp::Pending> sends;
    Clock::time_point since;  // last progress
    // A pull's ranges of the shard not sent yet: posted as the worker
    // takes the ones before (see kReplyWindow, progress()).
    std::vector<std::pair<std::int64_t, std::int64_t>> rest = {};
    std::size_t next = 0;
  };

  // Moves e on: posts its next ranges while fewer than kReplyWindow are
  // under way, and notes progress. True once every part is delivered.
  bool progress(Reply& e) {
    bool all = true, moved = false;
    std::size_t under_way = 0;
    for (std::size_t i = 0; i < e.sends.size(); ++i) {
      const bool was = e.sends[i].active();
      const bool done = e.sends[i].test();
      all = all && done;
      moved = moved || (was && done);
      if (i > 0 && !done) ++under_way;  // [0] is the header
    }
    for (; e.next < e.rest.size() && under_way < kReplyWindow; ++e.next, ++under_way) {
      const auto [a, b] = e.rest[e.next];
      e.sends.push_back(mail_.send_synchronous(tp::Mailbox::kData, e.w, kReplyData,
                                               reinterpret_cast<char*>(params_.data()) + (a - lo_) * elem_,
                                               static_cast<std::size_t>(b - a) * elem_));
      all = false;
    }
    if (moved) e.since = Clock::now();
    return all && e.next == e.rest.size();
  }

  char* staged(const Inflight& r, std::size_t k) {
    if (r.direct) return reinterpret_cast<char*>(slots_[slot_of(r.h.clock)].data()) + (pieces_[k].first - lo_) * elem_;
    return reinterpret_cast<char*>(staging_[r.w].data()) + (k % 2) * half_;
  }

  tp::Pending post_receive(Inflight& r, std::size_t k) {
    const auto [a, b] = pieces_[k];
    return mail_.recv(tp::Mailbox::kData, r.w, kPushData, staged(r, k), static_cast<std::size_t>(b - a) * wire_elem_);
  }

  bool busy_worker(int w) const {
    for (const auto& r : inflight_) {
      if (r.w == w) return true;
    }
    return false;
  }

  // Starts the queued requests in order: a push or step once its worker has
  // no record under way and fewer than Config::max_in_flight pushes are
  // being received, a pull or close once no push is under way (a reply
  // never reads a shard half updated).
  bool start_queued() {
    bool progressed = false;
    while (!queue_.empty()) {
      Queued& q = queue_.front();
      if (lost_[q.w]) {
        // A lost worker that has resumed: its requests get the error reply
        // (a push's is read by its next request), and no data of its is
        // received any more.
        const int w = q.w;
        queue_.pop_front();
        progressed = true;
        reply_error(w, kPeerLate, rank_bit(w), 0);
        continue;
      }
      const bool data = q.op == kPush || q.op == kStep;
      if (data ? busy_worker(q.w) : !inflight_.empty()) break;
      if (data && cfg_.max_in_flight > 0) {
        std::int64_t receiving = 0;
        for (const auto& x : inflight_) receiving += x.ended ? 0 : 1;
        if (receiving >= cfg_.max_in_flight) break;
      }
      const Queued e = q;
      queue_.pop_front();
      progressed = true;
      if (data) {
        start(e);
      } else if (failed_) {
        reply_error(e.w, fail_status_, fail_info0_, fail_info1_);
      } else if (e.op == kPull) {
        on_pull(e.w, e.h);
      } else {
        on_close(e.w, e.h);
      }
      publish();
    }
    return progressed;
  }

  void start(const Queued& e) {
    const int w = e.w;
    if (e.op == kStep && cfg_.mode != Mode::kAsync) {
      if (e.local) {
        std::lock_guard<std::mutex> lk(link_.mu);
        link_.reply = Header{};
        link_.reply.status = kServerFailed;
        link_.replied = true;
      }
      DISTML_THROW(Error, "parameter server on rank " << mail_.rank() << " got a step request from rank " << w
                                                      << " outside async mode");
    }
    Inflight r;
    r.w = w;
    r.op = e.op;
    r.h = e.h;
    r.local = e.local;
    r.bad = failed_ ? std::string() : check_push(w, e.h);
    r.take = !failed_ && r.bad.empty();
    if (r.local && !r.take) {
      // Nothing to receive: the worker hears at once.
      {
        std::lock_guard<std::mutex> lk(link_.mu);
        if (e.op == kPush) {
          link_.taken = true;
          link_.data.clear();
        } else {
          link_.reply = Header{};
          link_.reply.status = failed_ ? fail_status_ : kServerFailed;
          link_.reply.info0 = failed_ ? fail_info0_ : 0;
          link_.reply.info1 = failed_ ? fail_info1_ : 0;
          link_.replied = true;
        }
      }
      if (!r.bad.empty()) DISTML_THROW(Error, r.bad);
      return;
    }
    if (r.take) {
      if (cfg_.mode == Mode::kAsync) {
        // The replies in flight (pulls) read the shard; steps under way
        // order themselves piece by piece.
        quiesce();
        r.version = opt_.begin_step();
        r.stale = r.version - 1 - last_pull_version_[w];
      } else {
        const std::size_t slot = slot_of(e.h.clock);
        r.first = begun_[slot]++ == 0;
        r.direct = !r.local && cfg_.wire == cfg_.dtype && r.first;
      }
    }
    if (!r.local && staging_[w].empty()) staging_[w].resize(bytes_words(2 * half_));
    if (r.take && r.op == kStep && !r.local) {
      r.reply = std::make_unique<Header>();
      r.reply->version = r.version;
      r.reply->stale = std::max(max_stale_[w], r.stale);
      r.reply->info0 = lost_mask_;
      r.reply_header = mail_.send(tp::Mailbox::kReplies, w, kReplyTag, r.reply.get(), sizeof(Header));
      r.sends.resize(pieces_.size());
    }
    if (!r.local) {
      for (std::size_t k = 0; k < pieces_.size() && k < 2; ++k) r.ring[k] = post_receive(r, k);
    }
    r.since = Clock::now();
    inflight_.push_back(std::move(r));
    std::int64_t receiving = 0;
    for (const auto& x : inflight_) receiving += x.ended ? 0 : 1;
    most_in_flight_ = std::max(most_in_flight_, receiving);
    if (pieces_.empty()) end(inflight_.back());
  }

  // Moves every record on by at most one piece, then forgets the records
  // whose replies are delivered.
  bool pump() {
    bool progressed = false;
    const Inflight* before = nullptr;  // the last record taken, earlier in the chain
    for (auto& r : inflight_) {
      if (!r.ended && next_piece(r, before)) progressed = true;
      if (r.take) before = &r;
    }
    for (auto it = inflight_.begin(); it != inflight_.end();) {
      bool delivered = it->ended && it->reply_header.test();
      for (std::size_t k = 0; delivered && k < it->sends.size(); ++k) delivered = it->sends[k].test();
      if (delivered) {
        it = inflight_.erase(it);
        progressed = true;
      } else {
        ++it;
      }
    }
    return progressed;
  }

  bool next_piece(Inflight& r, const Inflight* before) {
    const std::size_t k = r.applied;
    if (!r.local && !r.ring[k % 2].test()) return false;
    if (r.take && before) {
      // Waiting for the record before: not this worker's stall (its
      // verdict clock restarts, see check_stalls()).
      if (before->applied <= k || (k < before->sends.size() && !const_cast<Inflight*>(before)->sends[k].test())) {
        r.since = Clock::now();
        return false;
      }
    }
    if (window_full(r)) return false;  // its worker's to take: see check_stalls()
    const auto [a, b] = pieces_[k];
    const std::size_t n = static_cast<std::size_t>(b - a);
    char* shard = reinterpret_cast<char*>(params_.data()) + (a - lo_) * elem_;
    if (r.take) {
      const auto t0 = Clock::now();
      if (r.local) {
        std::lock_guard<std::mutex> lk(link_.mu);
        if (!link_.data.empty()) {  // else withdrawn: the worker has given up
          take_piece(r, a, b, address(link_.data, wire_elem_, a, b));
          if (r.op == kStep) std::memcpy(address(link_.out, elem_, a, b), shard, n * elem_);
        }
      } else {
        take_piece(r, a, b, staged(r, k));
        if (r.op == kStep) {
          r.sends[k] = mail_.send_synchronous(tp::Mailbox::kData, r.w, kReplyData, shard, n * elem_);
        }
      }
      busy_ += seconds_since(t0);
    }
    ++r.applied;
    r.since = Clock::now();
    // Piece k's half of the staging is free again.
    if (!r.local && k + 2 < pieces_.size()) r.ring[k % 2] = post_receive(r, k + 2);
    if (r.applied == pieces_.size()) end(r);
    return true;
  }

  // A remote step's next piece waits until its worker has taken the piece
  // kReplyWindow before it (see kReplyWindow).
  bool window_full(Inflight& r) const {
    const std::size_t k = r.applied;
    return r.take && r.op == kStep && !r.local && k >= kReplyWindow && !r.sends[k - kReplyWindow].test();
  }

  // Elements [a, b) of a push, at `src` in the wire dtype.
  void take_piece(const Inflight& r, std::int64_t a, std::int64_t b, const void* src) {
    const std::size_t n = static_cast<std::size_t>(b - a), at = static_cast<std::size_t>(a - lo_);
    if (cfg_.mode == Mode::kAsync) {
      const void* g = src;
      if (cfg_.wire != cfg_.dtype) {
        widen(grad_.data(), cfg_.dtype, src, cfg_.wire, n, false);
        g = grad_.data();
      }
      opt_.apply(params_.data(), g, at, n, 1.0 / static_cast<double>(workers_.size()), r.version);
      return;
    }
    if (r.direct) return;  // received into the slot
    char* dst = reinterpret_cast<char*>(slots_[slot_of(r.h.clock)].data()) + at * elem_;
    if (cfg_.wire == cfg_.dtype && r.first) {
      std::memcpy(dst, src, n * elem_);
    } else {
      widen(dst, cfg_.dtype, src, cfg_.wire, n, !r.first);
    }
  }

  // Every piece of r applied (r stays in the chain until its reply is
  // delivered).
  void end(Inflight& r) {
    r.ended = true;
    const int w = r.w;
    bytes_received_ += static_cast<std::int64_t>(count_ * wire_elem_);
    if (!r.take) {
      if (r.op == kStep) {
        reply_error(w, failed_ ? fail_status_ : kServerFailed, failed_ ? fail_info0_ : 0, failed_ ? fail_info1_ : 0);
      }
      if (!r.bad.empty()) DISTML_THROW(Error, r.bad);
      return;
    }
    if (cfg_.mode == Mode::kAsync) {
      max_stale_[w] = std::max(max_stale_[w], r.stale);
      max_stale_all_ = std::max(max_stale_all_, r.stale);
      version_ = r.version;  // the chain ends in order
      ++applied_[w];
      pushed_[w] = r.h.clock;
      if (r.op == kStep) {
        last_pull_version_[w] = version_;
        bytes_sent_ += static_cast<std::int64_t>(count_ * elem_);
      }
    } else {
      ++counts_[slot_of(r.h.clock)];
      pushed_[w] = r.h.clock;
      ++applied_[w];
      advance();
    }
    if (r.local) {
      std::lock_guard<std::mutex> lk(link_.mu);
      if (r.op == kPush) {
        link_.taken = true;
      } else {
        link_.reply = Header{};
        link_.reply.version = version_;
        link_.reply.stale = max_stale_[w];
        link_.reply.info0 = lost_mask_;
        link_.replied = true;
      }
      link_.data.clear();
      link_.out.clear();
    }
    publish();
  }

  // A record stalled on its own worker (a piece that does not arrive, a
  // reply not taken) past the verdict time. Sync/bounded: a Timeout naming
  // that worker (the server fails: no clock completes without it). Async:
  // the server gives up on that worker alone (lose()), as on a pull's reply
  // its worker stopped taking. (A record waiting for the one before it is
  // not its worker's fault.)
  void check_stalls() {
    if (cfg_.timeout <= 0 || failed_) return;
    for (auto& r : inflight_) {
      if (seconds_since(r.since) <= verdict_seconds()) continue;
      bool own = !r.ended && !r.local && (r.ring[r.applied % 2].active() || window_full(r));
      const char* what = "receive a push from";
      if (r.ended) {
        own = r.reply_header.active();
        for (auto& s : r.sends) own = own || s.active();
        what = "deliver parameters to";
      }
      if (!own) continue;
      if (cfg_.mode == Mode::kAsync) {
        lose(r.w);
        return;  // the chain changed: the next poll looks again
      }
      late_peer_ = r.w;
      DISTML_THROW(Timeout, "parameter server on rank " << mail_.rank() << " timed out waiting to " << what
                                                        << " rank " << r.w);
    }
    if (cfg_.mode != Mode::kAsync || done_) return;
    for (auto& e : replies_) {
      if (seconds_since(e.since) <= verdict_seconds()) continue;
      lose(e.w);
      return;
    }
  }

  // Async mode: worker w stalled in the middle of a transfer (a push whose
  // pieces stopped arriving, a reply it stopped taking) past the verdict
  // time: stopped or dead, MPI cannot tell. The server gives up on w alone
  // and goes on serving the others.
  // - w's record leaves the chain, and the records behind it go on: its
  //   receives are cancelled and its sends abandoned (Pending::abandon).
  //   Their buffers outlive them: w's staging and the shard live as long as
  //   the server (and w's staging is never used again), the step's reply
  //   header moves to abandoned_. Pieces are applied only once fully
  //   received, in order, so w's last update stands on the pieces applied
  //   before the stall and on none of the rest: every element has the whole
  //   of it or none of it (its optimizer step number stays taken: the later
  //   updates are numbered already).
  // - Its pull reply in flight is abandoned likewise.
  // - w is lost: it is sent an error reply now (a w that resumes reads it
  //   as the answer to its next request, or after the one under way, see
  //   ParameterServer::request), its later requests get the same, every OK
  //   reply names the lost workers (info0), and once every other worker
  //   has closed the close fails naming them (on_close()).
  // Waits of the other records restart: they were held up by w's.
  void lose(int w) {
    lost_[w] = 1;
    lost_workers_.push_back(w);
    lost_mask_ |= rank_bit(w);
    for (auto it = inflight_.begin(); it != inflight_.end();) {
      if (it->w != w) {
        ++it;
        continue;
      }
      for (auto& p : it->ring) p.abandon();
      it->reply_header.abandon();
      for (auto& p : it->sends) p.abandon();
      if (it->reply) abandoned_.push_back(std::move(it->reply));
      it = inflight_.erase(it);
    }
    for (auto it = replies_.begin(); it != replies_.end();) {
      if (it->w != w) {
        ++it;
        continue;
      }
      for (auto& p : it->sends) p.abandon();
      abandoned_.push_back(std::move(it->header));
      it = replies_.erase(it);
    }
    const auto now = Clock::now();
    for (auto& r : inflight_) r.since = now;
    for (auto& e : replies_) e.since = now;
    reply_error(w, kPeerLate, rank_bit(w), 0);
    if (!closers_.empty() && closers_.size() + lost_workers_.size() >= workers_.size()) fail_for_lost();
    publish();
  }

  // Every worker has closed but the lost ones: the close cannot complete
  // (the final broadcast takes every rank), and a verdict would say nothing
  // new, so the closers hear now.
  void fail_for_lost() {
    std::ostringstream os;
    os << "parameter server on rank " << mail_.rank() << " gave up on worker(s) [";
    for (std::size_t i = 0; i < lost_workers_.size(); ++i) os << (i ? ", " : "") << lost_workers_[i];
    os << "], stalled in the middle of a transfer: it cannot close without them";
    fail(kWorkersLost, lost_mask_, 0, os.str(), true);
  }

  std::size_t slot_of(std::int64_t clock) const { return static_cast<std::size_t>(clock % (cfg_.staleness + 1)); }

  // Empty if rank w may push h.clock now, else why not.
  std::string check_push(int w, const Header& h) const {
    std::ostringstream os;
    if (!is_worker_[w] || closed_[w]) {
      os << "parameter server on rank " << mail_.rank() << " got a push from rank " << w
         << ", which is not a worker or has closed";
      return os.str();
    }
    if (cfg_.mode == Mode::kAsync) return {};
    const std::int64_t c = h.clock, s = cfg_.staleness;
    if (c <= version_ || c > version_ + s + 1 || c != pushed_[w] + 1) {
      os << "parameter server on rank " << mail_.rank() << ": rank " << w << " pushed clock " << c << " after clock "
         << pushed_[w] << " with the shard at version " << version_ << " (staleness " << s << ")";
      return os.str();
    }
    return {};
  }


  // The LocalLink's request, if one is posted: queued like a message.
  bool poll_local() {
    std::lock_guard<std::mutex> lk(link_.mu);
    if (!link_.posted) return false;
    link_.posted = false;
    ++requests_;
    queue_.push_back({mail_.rank(), link_.op, link_.header, true});
    return true;
  }

  // Workers still expected to push clock c: not closed before reaching it.
  int expected(std::int64_t c) const {
    int n = 0;
    for (int w : workers_) n += (!closed_[w] || final_clock_[w] >= c) ? 1 : 0;
    return n;
  }

  // Applies every complete clock, in order, then answers the pulls waiting
  // for them.
  void advance() {
    for (;;) {
      const std::int64_t c = version_ + 1;
      const std::size_t slot = slot_of(c);
      const int have = counts_[slot];
      if (have == 0 || have < expected(c)) break;
      divide(slots_[slot].data(), cfg_.dtype, count_, static_cast<double>(have));
      quiesce();
      opt_.step(params_.data(), slots_[slot].data(), 1.0);
      counts_[slot] = 0;
      begun_[slot] = 0;
      ++version_;
    }
    for (auto it = pending_.begin(); it != pending_.end();) {
      if (version_ >= it->need) {
        reply(it->worker, it->data);
        it = pending_.erase(it);
      } else {
        ++it;
      }
    }
  }

  void on_pull(int w, const Header& h) {
    if (cfg_.mode == Mode::kAsync || version_ >= h.need) {
      reply(w, h.info0 != 0);
    } else {
      pending_.push_back({w, h.need, h.info0 != 0, Clock::now()});
    }
  }

  void on_close(int w, const Header& h) {
    if (!is_worker_[w] || closed_[w]) {
      DISTML_THROW(Error, "parameter server on rank " << mail_.rank() << " got a second close from rank " << w);
    }
    closed_[w] = 1;
    final_clock_[w] = h.clock;
    if (closers_.empty()) first_close_ = Clock::now();
    closers_.push_back(w);
    // Clocks that waited for this worker may be complete now.
    if (cfg_.mode == Mode::kSync) advance();
    if (closers_.size() + lost_workers_.size() < workers_.size()) return;
    if (!lost_workers_.empty()) {
      fail_for_lost();
      return;
    }
    quiesce();
    for (int c : closers_) reply_status(c, kOk, 0, 0, false);
    closers_.clear();
    done_ = true;
  }

  // Completes the replies in flight, which read the shard: called before
  // the shard changes. Async: a reply that makes no progress for the
  // verdict time gives up on its worker (lose()) instead of failing.
  void quiesce() {
    if (cfg_.mode != Mode::kAsync) {
      for (auto& e : replies_) {
        if (!deliver(e)) {
          late_peer_ = e.w;
          DISTML_THROW(Timeout, "parameter server on rank " << mail_.rank()
                                                            << " timed out waiting to deliver parameters to rank " << e.w);
        }
      }
      replies_.clear();
      return;
    }
    while (!replies_.empty()) {
      Reply& e = replies_.front();
      if (deliver(e)) {
        replies_.pop_front();
      } else {
        lose(e.w);  // takes e out
      }
    }
  }

  // Polls e (yielding, as wait()) until delivered (true) or stalled for the
  // verdict time since its last progress (false).
  bool deliver(Reply& e) {
    for (;;) {
      if (progress(e)) return true;
      if (cfg_.timeout > 0 && seconds_since(e.since) > verdict_seconds()) return false;
      tp::Backoff::yield();
    }
  }

  void reply(int w, bool data) {
    if (data) last_pull_version_[w] = version_;
    reply_status(w, kOk, 0, 0, data);
  }

  void reply_status(int w, std::int64_t status, std::int64_t info0, std::int64_t info1, bool data) {
    if (local_ && w == mail_.rank()) {
      // The colocated rank's own worker: its shard is copied into its arrays
      // now (unless it has withdrawn them), then the header posted.
      std::lock_guard<std::mutex> lk(link_.mu);
      if (data && !link_.data.empty()) {
        for (auto [a, b] : cuts(seg_bounds_, lo_, hi_)) {
          std::memcpy(address(link_.data, elem_, a, b), reinterpret_cast<const char*>(params_.data()) + (a - lo_) * elem_,
                      static_cast<std::size_t>(b - a) * elem_);
        }
        bytes_sent_ += static_cast<std::int64_t>(count_ * elem_);
      }
      link_.reply = Header{};
      link_.reply.version = version_;
      link_.reply.status = status;
      link_.reply.stale = max_stale_[w];
      link_.reply.info0 = status == kOk ? lost_mask_ : info0;
      link_.reply.info1 = info1;
      link_.replied = true;
      return;
    }
    auto h = std::make_unique<Header>();
    h->version = version_;
    h->status = status;
    h->stale = max_stale_[w];
    h->info0 = status == kOk ? lost_mask_ : info0;
    h->info1 = info1;
    std::vector<tp::Pending> sends;
    sends.push_back(mail_.send(tp::Mailbox::kReplies, w, kReplyTag, h.get(), sizeof(Header)));
    if (lost_[w]) {
      // Nothing waits for a lost worker's error reply (never with data).
      for (auto& p : sends) p.abandon();
      abandoned_.push_back(std::move(h));
      return;
    }
    Reply e{w, std::move(h), std::move(sends), Clock::now()};
    if (data) {
      e.rest = cuts(seg_bounds_, lo_, hi_);
      bytes_sent_ += static_cast<std::int64_t>(count_ * elem_);
    }
    progress(e);
    replies_.push_back(std::move(e));
  }

  void reply_error(int w, std::int64_t status, std::int64_t info0, std::int64_t info1) {
    try {
      reply_status(w, status, info0, info1, false);
    } catch (const std::exception&) {
      // The worker will time out instead.
    }
  }

  // Workers (as a bitmask) for which `late(w)` holds.
  template <class F>
  std::pair<std::int64_t, std::int64_t> mask_of(F late) const {
    std::int64_t mask = 0, more = 0;
    for (int w : workers_) {
      if (!late(w)) continue;
      if (w < 63) mask |= std::int64_t{1} << w;
      else more = 1;
    }
    return {mask, more};
  }

  // A server's verdict on a late worker comes at 3/4 of the timeout, so the
  // workers waiting on it hear which worker it was before their own
  // deadline (the whole timeout) passes.
  double verdict_seconds() const { return 0.75 * cfg_.timeout; }

  void check_deadlines() {
    if (cfg_.timeout <= 0 || failed_) return;
    for (const auto& p : pending_) {
      if (seconds_since(p.since) <= verdict_seconds()) continue;
      auto [mask, more] = mask_of([&](int w) { return pushed_[w] < p.need && !(closed_[w] && final_clock_[w] < p.need); });
      std::ostringstream os;
      os << "parameter server on rank " << mail_.rank() << " timed out after " << verdict_seconds()
         << " s waiting for worker(s) " << ranks_in(mask, more) << " to push clock " << p.need;
      fail(kWorkersLate, mask | (more << 62), p.need, os.str(), true);
      return;
    }
    if (!closers_.empty() && seconds_since(first_close_) > verdict_seconds()) {
      auto [mask, more] = mask_of([&](int w) { return !closed_[w]; });
      std::ostringstream os;
      os << "parameter server on rank " << mail_.rank() << " timed out after " << verdict_seconds()
         << " s waiting for worker(s) " << ranks_in(mask, more) << " to close";
      fail(kNotClosed, mask | (more << 62), 0, os.str(), true);
    }
  }

  // From now on every request gets an error reply; the ones waiting get it now.
  void fail(std::int64_t status, std::int64_t info0, std::int64_t info1, const std::string& why, bool timeout) {
    if (failed_) return;
    failed_ = true;
    timed_out_ = timeout;
    failure_ = why;
    fail_status_ = status;
    fail_info0_ = info0;
    fail_info1_ = info1;
    for (const auto& p : pending_) reply_error(p.worker, status, info0, info1);
    pending_.clear();
    for (int c : closers_) reply_error(c, status, info0, info1);
    closers_.clear();
    // Pushes under way are dropped (their workers time out); the buffers of
    // sends in flight must outlive them. The colocated worker hears now.
    for (auto& r : inflight_) {
      if (r.local && !r.ended) {
        std::lock_guard<std::mutex> lk(link_.mu);
        if (r.op == kPush) {
          link_.taken = true;
        } else {
          link_.reply = Header{};
          link_.reply.status = status;
          link_.reply.info0 = info0;
          link_.reply.info1 = info1;
          link_.replied = true;
        }
        link_.data.clear();
        link_.out.clear();
      }
      std::vector<tp::Pending> sends;
      sends.push_back(std::move(r.reply_header));
      for (auto& p : r.sends) sends.push_back(std::move(p));
      replies_.push_back(Reply{r.w, std::move(r.reply), std::move(sends), Clock::now()});
    }
    inflight_.clear();
    publish();
  }

  void publish() {
    std::lock_guard<std::mutex> lk(stats_mu_);
    stats_.version = version_;
    stats_.updates_applied = opt_.steps();
    stats_.max_staleness = max_stale_all_;
    stats_.requests = requests_;
    stats_.bytes_received = bytes_received_;
    stats_.bytes_sent = bytes_sent_;
    stats_.shard_elements = static_cast<std::int64_t>(count_);
    stats_.optimizer_state_bytes = static_cast<std::int64_t>(opt_.state_bytes());
    stats_.applied_per_worker = applied_;
    stats_.busy_seconds = busy_;
    stats_.most_in_flight = most_in_flight_;
    stats_.lost_workers = lost_workers_;
  }

  struct PendingPull {
    int worker;
    std::int64_t need;
    bool data;
    Clock::time_point since;
  };

  tp::Mailbox& mail_;
  Config cfg_;
  std::int64_t lo_, hi_;
  std::vector<std::int64_t> seg_bounds_;
  std::size_t count_, elem_, wire_elem_;
  std::int64_t piece_elems_ = 1;
  bool local_ = false;  // this rank is also a worker (colocated): its requests come through link_
  LocalLink link_;
  std::vector<int> workers_;
  ShardOptimizer opt_;
  std::vector<double> params_, grad_;  // double: 8-byte aligned bytes
  std::vector<std::vector<double>> staging_;  // per worker rank: two pieces
  std::size_t half_ = 0;                      // bytes of one piece of staging
  std::vector<std::pair<std::int64_t, std::int64_t>> pieces_;  // a push's pieces (cuts at piece_elems_)
  std::list<Inflight> inflight_;  // in the order they began
  std::deque<Queued> queue_;      // requests not started yet, in order of arrival
  std::vector<std::vector<double>> slots_;
  std::vector<int> counts_, begun_;  // per slot: pushes applied, pushes begun
  std::vector<char> is_worker_, closed_;
  std::vector<char> lost_;         // async: workers given up on (lose())
  std::vector<int> lost_workers_;  // the same, in the order they were lost
  std::int64_t lost_mask_ = 0;     // the same as a reply's mask (rank_bit)
  std::vector<std::int64_t> pushed_, applied_, last_pull_version_, max_stale_, final_clock_;
  std::int64_t version_ = 0, max_stale_all_ = 0, requests_ = 0, bytes_received_ = 0, bytes_sent_ = 0;
  double busy_ = 0;
  std::int64_t most_in_flight_ = 0;
  std::deque<PendingPull> pending_;
  std::deque<Reply> replies_;
  // Headers of sends abandoned to lost workers: MPI may still read them.
  std::vector<std::unique_ptr<Header>> abandoned_;
  std::vector<int> closers_;
  Clock::time_point first_close_{};
  bool done_ = false;
  bool failed_ = false, timed_out_ = false;
  std::string failure_;
  std::int64_t fail_status_ = 0, fail_info0_ = 0, fail_info1_ = 0;
  int late_peer_ = -1;
  mutable std::mutex stats_mu_;
  ServerStats stats_;
};

}  // namespace distml::ps

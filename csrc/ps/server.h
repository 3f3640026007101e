// The server side of the parameter server: one shard, served by a polling
// loop (on the progress thread of a colocated rank, or the main thread of a
// dedicated one).
#pragma once

#include <pthread.h>
#include <time.h>

#include <algorithm>
#include <cstring>
#include <mutex>
#include <sstream>

#include "ps/optimizer.h"
#include "ps/parameter_server.h"
#include "ps/wire.h"

namespace distml::ps {

// A colocated rank's own requests to its own shard, with no message: the
// worker thread posts one request at a time (as to any server), the
// progress thread takes it at its next poll. A push is applied straight
// from the worker's arrays (under `mu`, so the worker cannot withdraw them
// meanwhile) and then marked taken; a pull's shard is copied straight into
// the worker's arrays when its reply is due (also under `mu`), then the
// reply header is posted here. An async step does both in one pass: each
// piece of the shard is updated and at once copied into the worker's
// arrays, while it is in cache. A worker that gives up withdraw()s.
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
    const std::size_t piece = std::min(count_, static_cast<std::size_t>(piece_elems_));
    // Two pieces of a push in flight: one being applied, the next arriving.
    staging_.resize(bytes_words(2 * piece * wire_elem_));
    if (cfg.wire != cfg.dtype) grad_.resize(bytes_words(piece * elem_));
    local_ = is_worker_[mail.rank()] != 0;
    if (cfg.mode == Mode::kSync) {
      slots_.resize(static_cast<std::size_t>(cfg.staleness) + 1);
      for (auto& s : slots_) s.resize(bytes_words(count_ * elem_));
      counts_.assign(slots_.size(), 0);
    }
  }

  void* params() { return params_.data(); }
  std::size_t bytes() const { return count_ * elem_; }
  bool failed() const { return failed_; }
  bool timed_out() const { return timed_out_; }
  const std::string& failure() const { return failure_; }
  bool done() const { return done_ && replies_.empty(); }
  // Replies are being sent: poll without sleeping (see wait()).
  bool sending() const { return !replies_.empty(); }

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

  // Completes every transfer in `ps` (see wait()).
  void wait_all(std::vector<tp::Pending>& ps, const char* what) {
    for (auto& p : ps) wait(p, what);
  }

  // One round: at most one request, the replies in flight, the deadlines.
  bool poll() {
    bool progressed = false;
    try {
      if (local_ && poll_local()) progressed = true;
      tp::Incoming in;
      if (mail_.probe(&in)) {
        handle(in);
        progressed = true;
      }
      for (auto it = replies_.begin(); it != replies_.end();) {
        bool all = true;
        for (auto& p : it->second) all = p.test() && all;
        if (all) {
          it = replies_.erase(it);
          progressed = true;
        } else {
          ++it;
        }
      }
      check_deadlines();
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
    if (in.tag == kPush) {
      receive_push(w, h);
    } else if (in.tag == kStep) {
      receive_step(w, h);
    } else if (in.tag == kPull || in.tag == kClose) {
      if (failed_) {
        reply_error(w, fail_status_, fail_info0_, fail_info1_);
      } else if (in.tag == kPull) {
        on_pull(w, h);
      } else {
        on_close(w, h);
      }
    } else {
      DISTML_THROW(Error, "parameter server on rank " << mail_.rank() << " got a message with unknown tag "
                                                      << in.tag << " from rank " << w);
    }
    publish();
  }

  // A push from rank w is taken in pieces (cuts at piece_elems_): each piece
  // is applied as it arrives, while it is in cache (async: that piece of
  // the optimizer step; sync/bounded: added into the clock's slot). Before
  // the first piece: the checks, and (async) the replies in flight that
  // read the shard are completed.
  //
  // Remote pushes arrive on the data channel, two pieces in flight: piece
  // k is applied while piece k + 1 is received into the other half of
  // staging_ (and a clock's first push in the parameters' dtype is received
  // straight into its slot). A push that fails the checks is still received
  // (its worker's sends complete), then the server fails.
  void receive_push(int w, const Header& h) {
    const std::string bad = failed_ ? std::string() : check_push(w, h);
    const bool take = !failed_ && bad.empty();
    const auto pieces = cuts(seg_bounds_, lo_, hi_, piece_elems_);
    const bool direct = take && cfg_.mode == Mode::kSync && cfg_.wire == cfg_.dtype && counts_[slot_of(h.clock)] == 0;
    if (take) begin_push(h);
    const std::size_t half = staging_.size() * sizeof(double) / 2;
    auto dest = [&](std::size_t k) {
      const auto [a, b] = pieces[k];
      return direct ? reinterpret_cast<char*>(slots_[slot_of(h.clock)].data()) + (a - lo_) * elem_
                    : reinterpret_cast<char*>(staging_.data()) + (k % 2) * half;
    };
    auto post = [&](std::size_t k) {
      const auto [a, b] = pieces[k];
      return mail_.recv(tp::Mailbox::kData, w, kPushData, dest(k), static_cast<std::size_t>(b - a) * wire_elem_);
    };
    tp::Pending ring[2];
    for (std::size_t k = 0; k < pieces.size() && k < 2; ++k) ring[k] = post(k);
    for (std::size_t k = 0; k < pieces.size(); ++k) {
      wait(ring[k % 2], "receive a push from");
      if (take) take_piece(h, pieces[k].first, pieces[k].second, dest(k), direct);
      if (k + 2 < pieces.size()) ring[k % 2] = post(k + 2);
    }
    bytes_received_ += static_cast<std::int64_t>(count_ * wire_elem_);
    if (!bad.empty()) DISTML_THROW(Error, bad);
    if (take) end_push(w, h);
  }

  // An async step from rank w: a push whose reply is the updated shard,
  // sent piece by piece as the update goes. The reply header goes first
  // (its version and staleness are known once the push has passed the
  // checks); then piece k of the shard is sent as soon as piece k of the
  // gradient has been applied, so the worker copies it while the server
  // applies piece k + 1, and it is read while still in cache. A piece sent
  // is not modified again by this step, and the next update quiesces first:
  // no reply ever reads a range being updated.
  //
  // A step that fails the checks is still received (its worker's sends
  // complete) and gets an error reply before the server fails.
  void receive_step(int w, const Header& h) {
    if (cfg_.mode != Mode::kAsync) {
      DISTML_THROW(Error, "parameter server on rank " << mail_.rank() << " got a step request from rank " << w
                                                      << " outside async mode");
    }
    const std::string bad = failed_ ? std::string() : check_push(w, h);
    const bool take = !failed_ && bad.empty();
    const auto pieces = cuts(seg_bounds_, lo_, hi_, piece_elems_);
    // The reply's sends join replies_ at once, so that the header and the
    // pieces outlive this call if a transfer fails half-way.
    std::vector<tp::Pending>* sends = nullptr;
    if (take) {
      begin_push(h);
      auto hdr = std::make_unique<Header>();
      hdr->version = version_ + 1;
      hdr->stale = std::max(max_stale_[w], version_ - last_pull_version_[w]);
      const Header* at = hdr.get();
      replies_.emplace_back(std::move(hdr), std::vector<tp::Pending>{});
      sends = &replies_.back().second;  // a deque's elements stay put as it grows
      sends->push_back(mail_.send(tp::Mailbox::kReplies, w, kReplyTag, at, sizeof(Header)));
    }
    const std::size_t half = staging_.size() * sizeof(double) / 2;
    auto dest = [&](std::size_t k) { return reinterpret_cast<char*>(staging_.data()) + (k % 2) * half; };
    auto post = [&](std::size_t k) {
      const auto [a, b] = pieces[k];
      return mail_.recv(tp::Mailbox::kData, w, kPushData, dest(k), static_cast<std::size_t>(b - a) * wire_elem_);
    };
    tp::Pending ring[2];
    for (std::size_t k = 0; k < pieces.size() && k < 2; ++k) ring[k] = post(k);
    for (std::size_t k = 0; k < pieces.size(); ++k) {
      wait(ring[k % 2], "receive a step from");
      if (take) {
        const auto [a, b] = pieces[k];
        take_piece(h, a, b, dest(k), false);
        sends->push_back(mail_.send(tp::Mailbox::kData, w, kReplyData,
                                    reinterpret_cast<char*>(params_.data()) + (a - lo_) * elem_,
                                    static_cast<std::size_t>(b - a) * elem_));
      }
      // Piece k's half of staging_ is free again.
      if (k + 2 < pieces.size()) ring[k % 2] = post(k + 2);
    }
    bytes_received_ += static_cast<std::int64_t>(count_ * wire_elem_);
    if (!take) {
      reply_error(w, failed_ ? fail_status_ : kServerFailed, failed_ ? fail_info0_ : 0, failed_ ? fail_info1_ : 0);
      if (!bad.empty()) DISTML_THROW(Error, bad);
      return;
    }
    end_push(w, h);
    last_pull_version_[w] = version_;
    bytes_sent_ += static_cast<std::int64_t>(count_ * elem_);
  }

  // The colocated rank's own async step (the LocalLink, locked by the
  // caller): each piece applied from the worker's gradients and copied into
  // its arrays at once.
  void take_local_step(const Header& h, const std::vector<tp::Piece>& grads, const std::vector<tp::Piece>& out) {
    const int w = mail_.rank();
    if (cfg_.mode != Mode::kAsync) {
      DISTML_THROW(Error, "parameter server on rank " << w << " got a step outside async mode");
    }
    const std::string bad = check_push(w, h);
    if (!bad.empty()) DISTML_THROW(Error, bad);
    begin_push(h);
    for (auto [a, b] : cuts(seg_bounds_, lo_, hi_, piece_elems_)) {
      take_piece(h, a, b, address(grads, wire_elem_, a, b), false);
      std::memcpy(address(out, elem_, a, b), reinterpret_cast<const char*>(params_.data()) + (a - lo_) * elem_,
                  static_cast<std::size_t>(b - a) * elem_);
    }
    bytes_received_ += static_cast<std::int64_t>(count_ * wire_elem_);
    bytes_sent_ += static_cast<std::int64_t>(count_ * elem_);
  }

  // The colocated rank's own push (the LocalLink, locked by the caller):
  // applied straight from the worker's arrays.
  void take_local_push(const Header& h, const std::vector<tp::Piece>& grads) {
    const int w = mail_.rank();
    const std::string bad = check_push(w, h);
    if (!bad.empty()) DISTML_THROW(Error, bad);
    begin_push(h);
    for (auto [a, b] : cuts(seg_bounds_, lo_, hi_, piece_elems_)) {
      take_piece(h, a, b, address(grads, wire_elem_, a, b), false);
    }
    bytes_received_ += static_cast<std::int64_t>(count_ * wire_elem_);
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

  void begin_push(const Header&) {
    push_started_ = Clock::now();
    if (cfg_.mode == Mode::kAsync) {
      quiesce();
      opt_.begin_step();
    }
  }

  // Elements [a, b) of a push, at `src` in the wire dtype (`in_slot`: already
  // received into the clock's slot).
  void take_piece(const Header& h, std::int64_t a, std::int64_t b, const void* src, bool in_slot) {
    const std::size_t n = static_cast<std::size_t>(b - a), at = static_cast<std::size_t>(a - lo_);
    if (cfg_.mode == Mode::kAsync) {
      const void* g = src;
      if (cfg_.wire != cfg_.dtype) {
        widen(grad_.data(), cfg_.dtype, src, cfg_.wire, n, false);
        g = grad_.data();
      }
      opt_.apply(params_.data(), g, at, n, 1.0 / static_cast<double>(workers_.size()));
      return;
    }
    if (in_slot) return;
    const std::size_t slot = slot_of(h.clock);
    char* dst = reinterpret_cast<char*>(slots_[slot].data()) + at * elem_;
    if (cfg_.wire == cfg_.dtype && counts_[slot] == 0) {
      std::memcpy(dst, src, n * elem_);
    } else {
      widen(dst, cfg_.dtype, src, cfg_.wire, n, counts_[slot] > 0);
    }
  }

  void end_push(int w, const Header& h) {
    if (cfg_.mode == Mode::kAsync) {
      const std::int64_t stale = version_ - last_pull_version_[w];
      max_stale_[w] = std::max(max_stale_[w], stale);
      max_stale_all_ = std::max(max_stale_all_, stale);
      ++version_;
      ++applied_[w];
      pushed_[w] = h.clock;
      busy_ += seconds_since(push_started_);
      return;
    }
    ++counts_[slot_of(h.clock)];
    pushed_[w] = h.clock;
    ++applied_[w];
    advance();
    busy_ += seconds_since(push_started_);
  }

  // The LocalLink's request, if one is posted.
  bool poll_local() {
    std::unique_lock<std::mutex> lk(link_.mu);
    if (!link_.posted) return false;
    link_.posted = false;
    const int op = link_.op, w = mail_.rank();
    const Header h = link_.header;
    ++requests_;
    if (op == kPush) {
      bool applied = false;
      try {
        if (!failed_) {
          take_local_push(h, link_.data);
          applied = true;
        }
      } catch (...) {
        link_.taken = true;
        throw;
      }
      link_.taken = true;
      link_.data.clear();
      lk.unlock();
      if (applied) end_push(w, h);
    } else if (op == kStep && !failed_) {
      try {
        take_local_step(h, link_.data, link_.out);
      } catch (...) {
        link_.reply = Header{};
        link_.reply.status = kServerFailed;
        link_.replied = true;
        throw;
      }
      end_push(w, h);
      last_pull_version_[w] = version_;
      link_.reply = Header{};
      link_.reply.version = version_;
      link_.reply.stale = max_stale_[w];
      link_.replied = true;
    } else {
      lk.unlock();
      if (failed_) {
        reply_error(w, fail_status_, fail_info0_, fail_info1_);  // also a step's
      } else if (op == kPull) {
        on_pull(w, h);
      } else {
        on_close(w, h);
      }
    }
    publish();
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
    if (closers_.size() < workers_.size()) return;
    quiesce();
    for (int c : closers_) reply_status(c, kOk, 0, 0, false);
    closers_.clear();
    done_ = true;
  }

  // Completes the replies in flight, which read the shard: called before
  // the shard changes.
  void quiesce() {
    for (auto& r : replies_) wait_all(r.second, "deliver parameters to");
    replies_.clear();
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
      link_.reply.info0 = info0;
      link_.reply.info1 = info1;
      link_.replied = true;
      return;
    }
    auto h = std::make_unique<Header>();
    h->version = version_;
    h->status = status;
    h->stale = max_stale_[w];
    h->info0 = info0;
    h->info1 = info1;
    std::vector<tp::Pending> sends;
    sends.push_back(mail_.send(tp::Mailbox::kReplies, w, kReplyTag, h.get(), sizeof(Header)));
    if (data) {
      for (auto [a, b] : cuts(seg_bounds_, lo_, hi_)) {
        sends.push_back(mail_.send(tp::Mailbox::kData, w, kReplyData,
                                   reinterpret_cast<char*>(params_.data()) + (a - lo_) * elem_,
                                   static_cast<std::size_t>(b - a) * elem_));
      }
      bytes_sent_ += static_cast<std::int64_t>(count_ * elem_);
    }
    replies_.emplace_back(std::move(h), std::move(sends));
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
  Clock::time_point push_started_{};
  std::vector<int> workers_;
  ShardOptimizer opt_;
  std::vector<double> params_, staging_, grad_;  // double: 8-byte aligned bytes
  std::vector<std::vector<double>> slots_;
  std::vector<int> counts_;
  std::vector<char> is_worker_, closed_;
  std::vector<std::int64_t> pushed_, applied_, last_pull_version_, max_stale_, final_clock_;
  std::int64_t version_ = 0, max_stale_all_ = 0, requests_ = 0, bytes_received_ = 0, bytes_sent_ = 0;
  double busy_ = 0;
  std::deque<PendingPull> pending_;
  std::deque<std::pair<std::unique_ptr<Header>, std::vector<tp::Pending>>> replies_;
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

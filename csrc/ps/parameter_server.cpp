#include "ps/parameter_server.h"

#include <pthread.h>
#include <time.h>

#include <algorithm>
#include <cstring>
#include <sstream>

#include "common/error.h"

namespace distml::ps {

namespace tp = distml::transport;
using Clock = std::chrono::steady_clock;

namespace {

constexpr int kPush = 1, kPull = 2, kClose = 3;  // request tags (= Header::op)
constexpr int kReplyTag = 1;
constexpr int kPushData = 1, kReplyData = 2;  // data channel tags
// Reply status codes.
constexpr std::int64_t kOk = 0, kWorkersLate = 1, kServerFailed = 2, kNotClosed = 3, kPeerLate = 4;

static_assert(sizeof(Header) == 64, "the header is part of the wire format");

// Longest message, in elements (512 MiB of float64: below MPI's int count).
constexpr std::int64_t kCutElements = std::int64_t{1} << 26;

// Where range [lo, hi) is cut into messages: at every parameter's boundary
// (seg_bounds, prefix sums of the parameters' sizes) and every kCutElements
// from each one's start, so that each message is contiguous in every
// rank's arrays. Sender and receiver compute the same cuts.
std::vector<std::pair<std::int64_t, std::int64_t>> cuts(const std::vector<std::int64_t>& seg_bounds, std::int64_t lo,
                                                        std::int64_t hi) {
  std::vector<std::pair<std::int64_t, std::int64_t>> out;
  for (std::size_t j = 0; j + 1 < seg_bounds.size(); ++j) {
    const std::int64_t a0 = std::max(lo, seg_bounds[j]), b0 = std::min(hi, seg_bounds[j + 1]);
    for (std::int64_t a = a0; a < b0;) {
      const std::int64_t next = seg_bounds[j] + ((a - seg_bounds[j]) / kCutElements + 1) * kCutElements;
      const std::int64_t b = std::min(b0, next);
      out.emplace_back(a, b);
      a = b;
    }
  }
  return out;
}

// The part of `all` (pieces covering the flat space in order, `elem` bytes
// per element) that holds elements [lo, hi).
std::vector<tp::Piece> slice(const std::vector<tp::Piece>& all, std::size_t elem, std::int64_t lo,
                             std::int64_t hi) {
  std::vector<tp::Piece> out;
  const std::size_t begin = static_cast<std::size_t>(lo) * elem, end = static_cast<std::size_t>(hi) * elem;
  std::size_t at = 0;
  for (const tp::Piece& p : all) {
    const std::size_t p_end = at + p.bytes;
    const std::size_t a = std::max(at, begin), b = std::min(p_end, end);
    if (a < b) out.push_back({static_cast<const char*>(p.ptr) + (a - at), b - a});
    at = p_end;
    if (at >= end) break;
  }
  return out;
}

// The address of elements [a, b) in `all`, which must hold them in one piece.
char* address(const std::vector<tp::Piece>& all, std::size_t elem, std::int64_t a, std::int64_t b) {
  auto part = slice(all, elem, a, b);
  if (part.size() != 1 || part[0].bytes != static_cast<std::size_t>(b - a) * elem) {
    DISTML_THROW(InvalidArgument, "elements " << a << " to " << b << " are not contiguous in the arrays given "
                                              << "(pass one array per parameter, or one flat array)");
  }
  return static_cast<char*>(const_cast<void*>(part[0].ptr));
}

std::size_t total_bytes(const std::vector<tp::Piece>& pieces) {
  std::size_t n = 0;
  for (const auto& p : pieces) n += p.bytes;
  return n;
}

// Ranks in a bitmask (ranks above 62 are summarised).
std::string ranks_in(std::int64_t mask, std::int64_t more) {
  std::ostringstream os;
  os << "[";
  bool first = true;
  for (int r = 0; r < 63; ++r) {
    if (mask & (std::int64_t{1} << r)) {
      os << (first ? "" : ", ") << r;
      first = false;
    }
  }
  if (more) os << (first ? "" : ", ") << "and ranks above 62";
  os << "]";
  return os.str();
}

double seconds_since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

Clock::duration to_duration(double seconds) {
  return std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(seconds));
}

}  // namespace

// ---- Server: one shard, served by a polling loop ------------------------------

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
    staging_.resize(bytes_words(count_ * wire_elem_));
    if (cfg.wire != cfg.dtype) grad_.resize(bytes_words(count_ * elem_));
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

  // Completes every transfer in `ps` (see wait()).
  void wait_all(std::vector<tp::Pending>& ps, const char* what) {
    for (auto& p : ps) wait(p, what);
  }

  // One round: at most one request, the replies in flight, the deadlines.
  bool poll() {
    bool progressed = false;
    try {
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
      // The gradient follows on the data channel, one message per cut.
      std::vector<tp::Pending> data;
      for (auto [a, b] : cuts(seg_bounds_, lo_, hi_)) {
        data.push_back(mail_.recv(tp::Mailbox::kData, w, kPushData,
                                  reinterpret_cast<char*>(staging_.data()) + (a - lo_) * wire_elem_,
                                  static_cast<std::size_t>(b - a) * wire_elem_));
      }
      wait_all(data, "receive a push from");
      bytes_received_ += static_cast<std::int64_t>(count_ * wire_elem_);
      if (!failed_) on_push(w, h);
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

  // The gradient just received (in staging_), in the parameters' dtype.
  const void* gradient() {
    if (cfg_.wire == cfg_.dtype) return staging_.data();
    widen(grad_.data(), cfg_.dtype, staging_.data(), cfg_.wire, count_, false);
    return grad_.data();
  }

  void on_push(int w, const Header& h) {
    if (!is_worker_[w] || closed_[w]) {
      DISTML_THROW(Error, "parameter server on rank " << mail_.rank() << " got a push from rank " << w
                                                      << ", which is not a worker or has closed");
    }
    const auto t0 = Clock::now();
    if (cfg_.mode == Mode::kAsync) {
      const void* g = gradient();
      quiesce();
      opt_.step(params_.data(), g, 1.0 / static_cast<double>(workers_.size()));
      const std::int64_t stale = version_ - last_pull_version_[w];
      max_stale_[w] = std::max(max_stale_[w], stale);
      max_stale_all_ = std::max(max_stale_all_, stale);
      ++version_;
      ++applied_[w];
      pushed_[w] = h.clock;
      busy_ += seconds_since(t0);
      return;
    }
    const std::int64_t c = h.clock, s = cfg_.staleness;
    if (c <= version_ || c > version_ + s + 1 || c != pushed_[w] + 1) {
      DISTML_THROW(Error, "parameter server on rank " << mail_.rank() << ": rank " << w << " pushed clock " << c
                                                      << " after clock " << pushed_[w] << " with the shard at version "
                                                      << version_ << " (staleness " << s << ")");
    }
    const std::size_t slot = static_cast<std::size_t>(c % (s + 1));
    if (cfg_.wire == cfg_.dtype && counts_[slot] == 0) {
      std::memcpy(slots_[slot].data(), staging_.data(), count_ * elem_);
    } else {
      widen(slots_[slot].data(), cfg_.dtype, staging_.data(), cfg_.wire, count_, counts_[slot] > 0);
    }
    ++counts_[slot];
    pushed_[w] = c;
    ++applied_[w];
    advance();
    busy_ += seconds_since(t0);
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
      const std::size_t slot = static_cast<std::size_t>(c % (cfg_.staleness + 1));
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

// ---- ParameterServer ------------------------------------------------------------

ParameterServer::ParameterServer(MPI_Comm user, const Config& config, const std::vector<tp::Piece>& initial)
    : config_(config), mail_(std::make_unique<tp::Mailbox>(user)) {
  const int P = mail_->size(), me = mail_->rank();
  DISTML_CHECK_ARG(!config.servers.empty(), "a parameter server needs at least one server rank");
  for (int s : config.servers) DISTML_CHECK_ARG(s >= 0 && s < P, "server rank " << s << " out of range");
  DISTML_CHECK_ARG(config.staleness >= 0, "staleness must be >= 0");
  const int S = static_cast<int>(config.servers.size());
  const bool colocated = S == P;
  std::vector<int> workers;
  for (int r = 0; r < P; ++r) {
    bool serves = std::find(config.servers.begin(), config.servers.end(), r) != config.servers.end();
    if (colocated || !serves) workers.push_back(r);
  }
  DISTML_CHECK_ARG(!workers.empty(), "a parameter server needs at least one worker rank");
  worker_ = std::find(workers.begin(), workers.end(), me) != workers.end();
  // An even split: the first total % S shards hold one element more.
  bounds_.assign(S + 1, 0);
  for (int i = 0; i < S; ++i) bounds_[i + 1] = bounds_[i] + config.total / S + (i < config.total % S ? 1 : 0);
  known_version_.assign(S, 0);
  seg_bounds_.assign(1, 0);
  for (auto n : config.segments) seg_bounds_.push_back(seg_bounds_.back() + n);
  DISTML_CHECK_ARG(seg_bounds_.back() == config.total, "the parameters' sizes add up to " << seg_bounds_.back()
                                                                                         << ", not " << config.total);
  for (int i = 0; i < S; ++i) {
    if (config.servers[i] == me) {
      server_ = std::make_unique<Server>(*mail_, config, bounds_[i], bounds_[i + 1], workers, initial);
    }
  }
}

ParameterServer::~ParameterServer() {
  stop_progress();
  // Freeing the communicators is collective: done by close() on success.
  // Otherwise (destroyed after a failure, or never closed) they are left
  // to MPI_Finalize.
  if (mail_) mail_->abandon();
}

void ParameterServer::start_progress() {
  if (!server_ || progress_.joinable()) return;
  progress_ = std::thread([this] {
    tp::Backoff backoff(config_.poll_min_us, config_.poll_max_us);
    while (!stop_.load(std::memory_order_relaxed) && !server_->done()) {
      if (server_->poll()) {
        backoff.reset();
      } else if (server_->sending()) {
        tp::Backoff::yield();
      } else {
        backoff.pause();
      }
    }
  });
}

void ParameterServer::stop_progress() {
  stop_.store(true);
  if (progress_.joinable()) progress_.join();
}

double ParameterServer::progress_cpu_seconds() const {
  // Only while the thread runs (its clock goes with it).
  if (!const_cast<std::thread&>(progress_).joinable()) return -1;
  clockid_t cid;
  if (pthread_getcpuclockid(const_cast<std::thread&>(progress_).native_handle(), &cid) != 0) return -1;
  timespec ts;
  if (clock_gettime(cid, &ts) != 0) return -1;
  return static_cast<double>(ts.tv_sec) + 1e-9 * static_cast<double>(ts.tv_nsec);
}

ServerStats ParameterServer::server_stats() const {
  return server_ ? server_->stats() : ServerStats{};
}

void ParameterServer::check_usable() const {
  if (closed_) DISTML_THROW(Unusable, "the parameter server was closed");
  if (broken_) DISTML_THROW(Unusable, "the parameter server is broken: " << broken_reason_);
  if (!worker_) DISTML_THROW(InvalidArgument, "rank " << mail_->rank() << " is a dedicated server, not a worker");
}

Clock::time_point ParameterServer::worker_deadline() const {
  // The servers' own verdict (which names the late workers) comes first,
  // at 3/4 of the timeout (Server::verdict_seconds).
  if (config_.timeout <= 0) return Clock::time_point::max();
  return Clock::now() + to_duration(config_.timeout);
}

void ParameterServer::request(int op, const std::vector<int>& which, std::int64_t need, bool data,
                              const std::vector<tp::Piece>& out, const char* what) {
  const std::size_t elem = dtype_size(config_.dtype);
  const std::size_t n = which.size();
  std::vector<Header> sent(n), got(n);
  // A reply's header is received once it has arrived (probed): until then
  // the wait may be long (a sync pull waits for the slowest worker) and
  // sleeps between polls. The parameters follow the header on the data
  // channel; once they are expected the data is moving, and the wait only
  // yields.
  std::vector<std::vector<tp::Pending>> recvs(n);
  std::vector<tp::Pending> sends;
  std::vector<char> matched(n, 0);
  sends.reserve(n);
  const auto t0 = Clock::now();
  const auto until = worker_deadline();
  try {
    for (std::size_t k = 0; k < n; ++k) {
      sent[k].op = op;
      sent[k].clock = wstats_.clock;
      sent[k].need = need;
      sent[k].info0 = data ? 1 : 0;
      sends.push_back(mail_->send(tp::Mailbox::kRequests, config_.servers[which[k]], op, &sent[k], sizeof(Header)));
    }
    tp::Backoff backoff(config_.poll_min_us, config_.poll_max_us);
    bool failed_reply = false;
    for (;;) {
      bool all = true, moving = false;
      for (auto& s : sends) all = s.test() && all;
      for (std::size_t k = 0; k < n; ++k) {
        const int i = which[k], server = config_.servers[i];
        if (!matched[k]) {
          tp::Incoming in;
          if (!mail_->probe_from(tp::Mailbox::kReplies, server, kReplyTag, &in)) {
            all = false;
            continue;
          }
          if (in.bytes != sizeof(Header)) {
            DISTML_THROW(Error, "parameter server on rank " << server << " replied with a header of " << in.bytes
                                                            << " bytes");
          }
          tp::Pending hp = mail_->receive(in, &got[k], sizeof(Header));
          while (!hp.test()) tp::Backoff::yield();  // arrived already: completes at once
          matched[k] = 1;
          backoff.reset();
          if (got[k].status != kOk) {
            failed_reply = true;  // raised below, without waiting for the other servers
            break;
          }
          if (data && got[k].status == kOk) {
            for (auto [a, b] : cuts(seg_bounds_, bounds_[i], bounds_[i + 1])) {
              recvs[k].push_back(mail_->recv(tp::Mailbox::kData, server, kReplyData, address(out, elem, a, b),
                                             static_cast<std::size_t>(b - a) * elem));
            }
          }
        }
        for (auto& r : recvs[k]) {
          if (!r.test()) {
            all = false;
            moving = true;
          }
        }
      }
      if (all || failed_reply) break;
      if (Clock::now() > until) {
        std::ostringstream os;
        os << "rank " << mail_->rank() << " timed out after " << seconds_since(t0) << " s waiting to " << what
           << " parameter server rank(s) [";
        bool first = true;
        for (std::size_t k = 0; k < n; ++k) {
          bool active = !matched[k] || sends[k].active();
          for (auto& r : recvs[k]) active = active || r.active();
          if (active) {
            os << (first ? "" : ", ") << config_.servers[which[k]];
            first = false;
          }
        }
        os << "]";
        DISTML_THROW(Timeout, os.str());
      }
      if (moving) {
        tp::Backoff::yield();
      } else {
        backoff.pause();
      }
    }
  } catch (const Error& e) {
    broken_ = true;
    broken_reason_ = e.what();
    wstats_.wait_seconds += seconds_since(t0);
    throw;
  }
  wstats_.wait_seconds += seconds_since(t0);
  std::int64_t min_version = -1;
  for (std::size_t k = 0; k < n; ++k) {
    const Header& h = got[k];
    const int server = config_.servers[which[k]];
    if (!matched[k]) continue;  // only after an error reply from another server
    if (h.status != kOk) {
      broken_ = true;
      std::ostringstream os;
      const std::int64_t mask = h.info0 & ((std::int64_t{1} << 62) - 1), more = (h.info0 >> 62) & 1;
      if (h.status == kWorkersLate) {
        os << "parameter server on rank " << server << " timed out waiting for worker(s) " << ranks_in(mask, more)
           << " to push clock " << h.info1;
        broken_reason_ = os.str();
        DISTML_THROW(Timeout, broken_reason_);
      }
      if (h.status == kPeerLate) {
        os << "parameter server on rank " << server << " timed out waiting for rank(s) " << ranks_in(mask, more)
           << " to take part in a transfer";
        broken_reason_ = os.str();
        DISTML_THROW(Timeout, broken_reason_);
      }
      if (h.status == kNotClosed) {
        os << "parameter server on rank " << server << " timed out waiting for worker(s) " << ranks_in(mask, more)
           << " to close";
        broken_reason_ = os.str();
        DISTML_THROW(Timeout, broken_reason_);
      }
      os << "parameter server on rank " << server << " has failed (its rank raised the cause)";
      broken_reason_ = os.str();
      DISTML_THROW(Unusable, broken_reason_);
    }
    if (data) {
      wstats_.bytes_pulled += (bounds_[which[k] + 1] - bounds_[which[k]]) * static_cast<std::int64_t>(elem);
    }
    known_version_[which[k]] = std::max(known_version_[which[k]], h.version);
    min_version = min_version < 0 ? h.version : std::min(min_version, h.version);
    if (config_.mode == Mode::kAsync) wstats_.max_staleness = std::max(wstats_.max_staleness, h.stale);
  }
  if (data && min_version >= 0) {
    wstats_.updates_applied = min_version;
    ++wstats_.pulls;
    if (config_.mode == Mode::kSync) {
      wstats_.max_staleness = std::max(wstats_.max_staleness, wstats_.clock - min_version);
    }
  }
}

void ParameterServer::push(const std::vector<tp::Piece>& grads) {
  check_usable();
  const std::size_t wire = dtype_size(config_.wire);
  DISTML_CHECK_ARG(total_bytes(grads) == static_cast<std::size_t>(config_.total) * wire,
                   "push got " << total_bytes(grads) << " bytes of gradients, expected "
                               << static_cast<std::size_t>(config_.total) * wire);
  const std::int64_t c = wstats_.clock + 1;
  const int S = static_cast<int>(config_.servers.size());
  if (config_.mode == Mode::kSync) {
    // Clock c goes into slot c mod (s+1), which clock c - s - 1 must have left.
    const std::int64_t need = c - 1 - config_.staleness;
    std::vector<int> behind;
    for (int i = 0; i < S; ++i) {
      if (known_version_[i] < need) behind.push_back(i);
    }
    if (!behind.empty()) request(kPull, behind, need, false, {}, "push to (waiting for the staleness bound)");
  }
  std::vector<Header> hdrs(S);
  std::vector<std::vector<tp::Pending>> sends(S);
  const auto t0 = Clock::now();
  const auto until = worker_deadline();
  try {
    for (int i = 0; i < S; ++i) {
      hdrs[i].op = kPush;
      hdrs[i].clock = c;
      const int server = config_.servers[i];
      sends[i].push_back(mail_->send(tp::Mailbox::kRequests, server, kPush, &hdrs[i], sizeof(Header)));
      for (auto [a, b] : cuts(seg_bounds_, bounds_[i], bounds_[i + 1])) {
        sends[i].push_back(mail_->send(tp::Mailbox::kData, server, kPushData, address(grads, wire, a, b),
                                       static_cast<std::size_t>(b - a) * wire));
      }
    }
    // A push is taken by the server's next poll, then moves: yield only.
    for (;;) {
      bool all = true;
      for (auto& v : sends) {
        for (auto& s : v) all = s.test() && all;
      }
      if (all) break;
      if (Clock::now() > until) {
        std::ostringstream os;
        os << "rank " << mail_->rank() << " timed out after " << seconds_since(t0)
           << " s waiting to push to parameter server rank(s) [";
        bool first = true;
        for (int i = 0; i < S; ++i) {
          bool active = false;
          for (auto& s : sends[i]) active = active || s.active();
          if (active) {
            os << (first ? "" : ", ") << config_.servers[i];
            first = false;
          }
        }
        os << "]";
        DISTML_THROW(Timeout, os.str());
      }
      tp::Backoff::yield();
    }
  } catch (const Error& e) {
    broken_ = true;
    broken_reason_ = e.what();
    wstats_.wait_seconds += seconds_since(t0);
    throw;
  }
  wstats_.wait_seconds += seconds_since(t0);
  wstats_.clock = c;
  wstats_.bytes_pushed += static_cast<std::int64_t>(total_bytes(grads));
}

void ParameterServer::pull(const std::vector<tp::Piece>& out) {
  check_usable();
  DISTML_CHECK_ARG(total_bytes(out) == static_cast<std::size_t>(config_.total) * dtype_size(config_.dtype),
                   "pull got " << total_bytes(out) << " bytes of output arrays");
  const std::int64_t need = config_.mode == Mode::kSync ? wstats_.clock - config_.staleness : 0;
  std::vector<int> all(config_.servers.size());
  for (std::size_t i = 0; i < all.size(); ++i) all[i] = static_cast<int>(i);
  request(kPull, all, need, true, out, "pull from");
}

void ParameterServer::final_broadcast(const std::vector<tp::Piece>& out) {
  const std::size_t elem = dtype_size(config_.dtype);
  const bool has_deadline = config_.timeout > 0;
  const auto until = has_deadline ? Clock::now() + to_duration(config_.timeout) : Clock::time_point::max();
  for (std::size_t i = 0; i < config_.servers.size(); ++i) {
    const int root = config_.servers[i];
    std::ostringstream what;
    what << "the final parameters from server rank " << root;
    for (auto [a, b] : cuts(seg_bounds_, bounds_[i], bounds_[i + 1])) {
      char* mine = address(out, elem, a, b);
      const std::size_t bytes = static_cast<std::size_t>(b - a) * elem;
      if (root == mail_->rank()) {
        char* shard = static_cast<char*>(server_->params()) + (a - bounds_[i]) * elem;
        mail_->broadcast(root, shard, bytes, until, has_deadline, what.str());
        std::memcpy(mine, shard, bytes);
      } else {
        mail_->broadcast(root, mine, bytes, until, has_deadline, what.str());
      }
    }
  }
}

void ParameterServer::serve(const std::vector<tp::Piece>& out) {
  DISTML_CHECK_ARG(server_ && !worker_, "serve() is for dedicated server ranks");
  tp::Backoff backoff(config_.poll_min_us, config_.poll_max_us);
  while (!server_->done()) {
    if (server_->poll()) {
      backoff.reset();
    } else if (server_->sending()) {
      tp::Backoff::yield();
    } else {
      backoff.pause();
    }
    if (server_->failed()) {
      broken_ = true;
      broken_reason_ = server_->failure();
      if (server_->timed_out()) throw Timeout(server_->failure());
      throw Error(server_->failure());
    }
  }
  final_broadcast(out);
  closed_ = true;
  mail_.reset();
}

void ParameterServer::close(const std::vector<tp::Piece>& out) {
  if (closed_) return;
  if (broken_) DISTML_THROW(Unusable, "the parameter server is broken: " << broken_reason_);
  DISTML_CHECK_ARG(worker_, "close() on a dedicated server rank: its constructor served until the workers closed");
  try {
    std::vector<int> all(config_.servers.size());
    for (std::size_t i = 0; i < all.size(); ++i) all[i] = static_cast<int>(i);
    request(kClose, all, 0, false, {}, "close with");
    if (server_) {
      // Ends once every worker has closed and the replies are delivered.
      if (progress_.joinable()) progress_.join();
      if (server_->failed()) {
        broken_ = true;
        broken_reason_ = server_->failure();
        if (server_->timed_out()) throw Timeout(server_->failure());
        throw Error(server_->failure());
      }
    }
    final_broadcast(out);
  } catch (...) {
    stop_progress();
    throw;
  }
  closed_ = true;
  mail_.reset();
}

}  // namespace distml::ps

#include "ps/parameter_server.h"

#include <pthread.h>
#include <time.h>

#include <algorithm>
#include <cstring>
#include <sstream>

#include "common/error.h"
#include "ps/server.h"
#include "ps/wire.h"

namespace distml::ps {

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
                              const std::vector<tp::Piece>& out, const char* what,
                              const std::vector<tp::Piece>& grads) {
  const std::size_t elem = dtype_size(config_.dtype), wire = dtype_size(config_.wire);
  const std::size_t n = which.size();
  // A step's gradients go out in pieces right behind its header, and its
  // reply comes back cut at the same places (the server sends each piece
  // once it is updated); other replies come in whole parameters.
  const bool step = op == kStep;
  const std::int64_t piece = std::max<std::int64_t>(1, config_.piece_bytes / static_cast<std::int64_t>(wire));
  const std::int64_t reply_cut = step ? piece : kCutElements;
  std::vector<Header> sent(n), got(n);
  // A reply's header is received once it has arrived (probed): until then
  // the wait may be long (a sync pull waits for the slowest worker; a step
  // waits behind the other workers' pushes) and sleeps between polls. The
  // parameters follow the header on the data channel; once they are
  // expected the data is moving, and the wait only yields. A step's pushed
  // pieces do not count as moving before their server's header has come:
  // the server sends the header as it takes the step, MPICH copies a large
  // message on the receiver's side, so nothing waits on this worker until
  // then. (Yielding in a loop meanwhile took the cores from the server: with
  // three workers queued at one dedicated server on two cores, the server
  // ran half the time; bench/results/ps.md.)
  std::vector<std::vector<tp::Pending>> recvs(n), pushing(n);
  std::vector<tp::Pending> sends;
  std::vector<char> matched(n, 0);
  sends.reserve(n);
  const auto t0 = Clock::now();
  const auto until = worker_deadline();
  try {
    int local = -1;
    for (std::size_t k = 0; k < n; ++k) {
      sent[k].op = op;
      sent[k].clock = step ? wstats_.clock + 1 : wstats_.clock;
      sent[k].need = need;
      sent[k].info0 = data ? 1 : 0;
      if (is_local(which[k])) {
        local = static_cast<int>(k);  // posted after the messages, so that the remote servers start first
        sends.emplace_back();
        continue;
      }
      const int i = which[k], server = config_.servers[i];
      sends.push_back(mail_->send(tp::Mailbox::kRequests, server, op, &sent[k], sizeof(Header)));
      if (!step) continue;
      for (auto [a, b] : cuts(seg_bounds_, bounds_[i], bounds_[i + 1], piece)) {
        pushing[k].push_back(mail_->send(tp::Mailbox::kData, server, kPushData, address(grads, wire, a, b),
                                         static_cast<std::size_t>(b - a) * wire));
      }
    }
    if (local >= 0) {
      // This rank's own shard: its progress thread answers through the
      // LocalLink, reads a step's gradients straight from `grads` and
      // copies the parameters straight into `out`.
      server_->post(op, sent[local], step ? grads : data ? out : std::vector<tp::Piece>{},
                    step ? out : std::vector<tp::Piece>{});
    }
    tp::Backoff backoff(config_.poll_min_us, config_.poll_max_us);
    bool failed_reply = false, answered = false;
    for (;;) {
      bool all = true, moving = false;
      for (auto& s : sends) all = s.test() && all;
      for (std::size_t k = 0; k < n; ++k) {
        for (auto& s : pushing[k]) {
          if (!s.test()) {
            all = false;
            moving = moving || matched[k];
          }
        }
      }
      for (std::size_t k = 0; k < n; ++k) {
        const int i = which[k], server = config_.servers[i];
        if (!matched[k] && is_local(i)) {
          if (!server_->take_reply(&got[k])) {
            all = false;
            continue;
          }
          matched[k] = 1;
          backoff.reset();
          if (got[k].status != kOk) {
            failed_reply = true;
            break;
          }
        } else if (!matched[k]) {
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
            for (auto [a, b] : cuts(seg_bounds_, bounds_[i], bounds_[i + 1], reply_cut)) {
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
      if (!answered && std::all_of(matched.begin(), matched.end(), [](char m) { return m != 0; })) {
        answered = true;
        wstats_.wait_for_server_seconds += seconds_since(t0);
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
          for (auto& s : pushing[k]) active = active || s.active();
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
    if (server_ && worker_) server_->withdraw();
    wstats_.wait_seconds += seconds_since(t0);
    throw;
  }
  wstats_.wait_seconds += seconds_since(t0);
  std::int64_t min_version = -1;
  for (std::size_t k = 0; k < n; ++k) {
    const Header& h = got[k];
    const int server = config_.servers[which[k]];
    if (!matched[k]) continue;  // only after an error reply from another server
    if (h.status != kOk) raise_reply(server, h);
    lost_mask_ |= h.info0;  // an OK reply's info0: the workers its server has given up on
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
  raise_if_lost();
}

void ParameterServer::raise_reply(int server, const Header& h) {
  broken_ = true;
  std::ostringstream os;
  const std::int64_t mask = h.info0 & ((std::int64_t{1} << 62) - 1), more = (h.info0 >> 62) & 1;
  os << "parameter server on rank " << server;
  switch (h.status) {
    case kWorkersLate:
      os << " timed out waiting for worker(s) " << ranks_in(mask, more) << " to push clock " << h.info1;
      break;
    case kPeerLate:
      os << " timed out waiting for rank(s) " << ranks_in(mask, more) << " to take part in a transfer";
      break;
    case kNotClosed:
      os << " timed out waiting for worker(s) " << ranks_in(mask, more) << " to close";
      break;
    case kWorkersLost:
      os << " gave up on worker(s) " << ranks_in(mask, more)
         << ", stalled in the middle of a transfer: it cannot close without them";
      break;
    default:
      os << " has failed (its rank raised the cause)";
      broken_reason_ = os.str();
      DISTML_THROW(Unusable, broken_reason_);
  }
  broken_reason_ = os.str();
  DISTML_THROW(Timeout, broken_reason_);
}

void ParameterServer::raise_if_lost() {
  if (config_.mode != Mode::kAsync) return;
  // Every reply due has been received (one request at a time per server),
  // so a header waiting now was sent unasked. A worker given up on that
  // resumes must not keep what its call under way received: the server
  // may have changed the shard under the reply it abandoned.
  for (std::size_t i = 0; i < config_.servers.size(); ++i) {
    if (is_local(static_cast<int>(i))) continue;
    const int server = config_.servers[i];
    tp::Incoming in;
    if (!mail_->probe_from(tp::Mailbox::kReplies, server, kReplyTag, &in)) continue;
    Header h;
    tp::Pending hp = mail_->receive(in, &h, std::min(in.bytes, sizeof(Header)));
    while (!hp.test()) tp::Backoff::yield();  // arrived already: completes at once
    if (server_ && worker_) server_->withdraw();
    raise_reply(server, h);
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
    const std::int64_t piece = std::max<std::int64_t>(1, config_.piece_bytes / static_cast<std::int64_t>(wire));
    int local = -1;
    for (int i = 0; i < S; ++i) {
      hdrs[i].op = kPush;
      hdrs[i].clock = c;
      if (is_local(i)) {
        local = i;  // posted after the messages, so that the remote servers start first
        continue;
      }
      const int server = config_.servers[i];
      sends[i].push_back(mail_->send(tp::Mailbox::kRequests, server, kPush, &hdrs[i], sizeof(Header)));
      for (auto [a, b] : cuts(seg_bounds_, bounds_[i], bounds_[i + 1], piece)) {
        sends[i].push_back(mail_->send(tp::Mailbox::kData, server, kPushData, address(grads, wire, a, b),
                                       static_cast<std::size_t>(b - a) * wire));
      }
    }
    // This rank's own shard: its progress thread applies the gradients
    // straight from `grads`; the push returns once it has.
    if (local >= 0) server_->post(kPush, hdrs[local], grads);
    // A server that has begun receiving this push (its first piece is in:
    // MPICH copies a large message on the receiver's side, and the sender
    // sees it complete) is moving it: yield only. Before that the push may
    // wait behind other workers' at the server, and nothing waits on this
    // worker (as for a step's header, see request()): sleep between polls.
    tp::Backoff backoff(config_.poll_min_us, config_.poll_max_us);
    for (;;) {
      bool all = local < 0 || server_->push_taken(), moving = false;
      for (auto& v : sends) {
        bool done = true;
        for (auto& s : v) done = s.test() && done;
        all = all && done;
        moving = moving || (!done && v.size() > 1 && !v[1].active());
      }
      if (all) break;
      if (Clock::now() > until) {
        std::ostringstream os;
        os << "rank " << mail_->rank() << " timed out after " << seconds_since(t0)
           << " s waiting to push to parameter server rank(s) [";
        bool first = true;
        for (int i = 0; i < S; ++i) {
          bool active = i == local && !server_->push_taken();
          for (auto& s : sends[i]) active = active || s.active();
          if (active) {
            os << (first ? "" : ", ") << config_.servers[i];
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
    if (server_ && worker_) server_->withdraw();
    wstats_.wait_seconds += seconds_since(t0);
    throw;
  }
  wstats_.wait_seconds += seconds_since(t0);
  raise_if_lost();
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

void ParameterServer::step(const std::vector<tp::Piece>& grads, const std::vector<tp::Piece>& out) {
  if (config_.mode != Mode::kAsync) {
    // A sync/bounded pull waits for a clock the push alone cannot complete.
    push(grads);
    pull(out);
    return;
  }
  check_usable();
  const std::size_t wire = dtype_size(config_.wire);
  DISTML_CHECK_ARG(total_bytes(grads) == static_cast<std::size_t>(config_.total) * wire,
                   "step got " << total_bytes(grads) << " bytes of gradients, expected "
                               << static_cast<std::size_t>(config_.total) * wire);
  DISTML_CHECK_ARG(total_bytes(out) == static_cast<std::size_t>(config_.total) * dtype_size(config_.dtype),
                   "step got " << total_bytes(out) << " bytes of output arrays");
  std::vector<int> all(config_.servers.size());
  for (std::size_t i = 0; i < all.size(); ++i) all[i] = static_cast<int>(i);
  request(kStep, all, 0, true, out, "step with", grads);
  wstats_.clock += 1;
  wstats_.bytes_pushed += static_cast<std::int64_t>(total_bytes(grads));
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
    raise_if_server_failed();
  }
  final_broadcast(out);
  closed_ = true;
  mail_.reset();
}

void ParameterServer::raise_if_server_failed() {
  if (!server_->failed()) return;
  // A dedicated server polls no more once it raises: its error replies go
  // out first (a colocated rank's progress thread keeps polling).
  if (!worker_) server_->flush(config_.timeout > 0 ? std::min(1.0, 0.25 * config_.timeout) : 1.0);
  broken_ = true;
  broken_reason_ = server_->failure();
  if (server_->timed_out()) throw Timeout(server_->failure());
  throw Error(server_->failure());
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
      raise_if_server_failed();
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

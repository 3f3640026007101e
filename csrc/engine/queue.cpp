// The async queue: collectives run one at a time, in the order callers
// issued them, on the calling thread (run) or the background thread (submit).
#include "engine/communicator.h"
#include "engine/internal.h"

namespace distml::engine {

// ---- Work -------------------------------------------------------------

Work::Work(const Call& call) : call_(call), queued_(now_us()) {}

void Work::finish(std::exception_ptr err) {
  std::shared_ptr<void> keep;
  {
    std::lock_guard<std::mutex> lk(mu_);
    err_ = err;
    done_ = true;
    keep.swap(keep_);
    cv_.notify_all();
  }
  // Not released here: the buffers' owner may need locks of its own
  // (Python's GIL) to let go, and this thread has the next call to run.
  if (graveyard_) graveyard_->bury(std::move(keep));
}

void Work::wait() {
  std::unique_lock<std::mutex> lk(mu_);
  cv_.wait(lk, [&] { return done_; });
  if (err_) std::rethrow_exception(err_);
}

bool Work::test() {
  std::lock_guard<std::mutex> lk(mu_);
  return done_;
}

void Communicator::run(const Call& call) {
  std::unique_lock<std::mutex> lk(mu_);
  ensure_usable();
  if (queue_.empty() && !running_) {
    running_ = true;
    lk.unlock();
    std::exception_ptr err;
    try {
      execute(call);
    } catch (...) {
      err = std::current_exception();
    }
    lk.lock();
    running_ = false;
    cv_.notify_all();
    lk.unlock();
    if (err) std::rethrow_exception(err);
    return;
  }
  lk.unlock();
  submit(call)->wait();
}

std::shared_ptr<Work> Communicator::submit(const Call& call, std::shared_ptr<void> keep) {
  auto work = std::make_shared<Work>(call);
  work->keep_ = std::move(keep);
  work->graveyard_ = graveyard_;
  if (!threaded_) {
    std::exception_ptr err;
    try {
      run(call);
    } catch (...) {
      err = std::current_exception();
    }
    work->finish(err);
    return work;
  }
  std::unique_lock<std::mutex> lk(mu_);
  try {
    ensure_usable();
  } catch (...) {
    lk.unlock();
    work->finish(nullptr);  // hands back what it kept
    throw;
  }
  if (!worker_.joinable()) worker_ = std::thread([this] { worker_loop(); });
  queue_.push_back(work);
  cv_.notify_all();
  return work;
}

void Communicator::worker_loop() {
  std::unique_lock<std::mutex> lk(mu_);
  for (;;) {
    cv_.wait(lk, [&] { return (!queue_.empty() && !running_) || (stopping_ && queue_.empty()); });
    if (queue_.empty()) return;  // stopping, and nothing left to do
    auto work = queue_.front();
    queue_.pop_front();
    running_ = true;
    lk.unlock();
    std::exception_ptr err;
    try {
      execute(work->call(), work->queued_, true);
    } catch (...) {
      err = std::current_exception();
    }
    // Done before the engine counts as idle: whoever waits for idleness
    // (a settings change, a blocking call) sees every earlier call done.
    work->finish(err);
    lk.lock();
    running_ = false;
    cv_.notify_all();
  }
}
}  // namespace distml::engine

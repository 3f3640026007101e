// The gradient buffer (see grad_buffer.h for the vocabulary and the
// launch-order invariant).
#include "buffers/grad_buffer.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <new>

#include "buffers/convert.h"
#include "common/error.h"

namespace distml::buffers {
namespace {

AllocObserver g_observer;

constexpr std::size_t kAlign = 64;

}  // namespace

void set_alloc_observer(AllocObserver observer) { g_observer = observer; }

// ---- Block ------------------------------------------------------------------

Block::~Block() {
  if (heap_) {
    if (g_observer.untrack) g_observer.untrack(data_);
    std::free(data_);
  }
}

void Block::allocate(std::size_t bytes) {
  const std::size_t rounded = std::max<std::size_t>(kAlign, (bytes + kAlign - 1) / kAlign * kAlign);
  char* p = static_cast<char*>(std::aligned_alloc(kAlign, rounded));
  if (!p) DISTML_THROW(NoMemory, "no memory for a gradient buffer of " << bytes << " bytes");
  std::memset(p, 0, rounded);
  data_ = p;
  bytes_ = bytes;
  heap_ = true;
  if (g_observer.track) g_observer.track(p, bytes);
}

void Block::allocate_shared(engine::Communicator& comm, std::size_t bytes) {
  window_ = comm.allocate_shared(std::max<std::size_t>(bytes, 1));
  data_ = window_->mine();
  bytes_ = bytes;
  std::memset(data_, 0, bytes);
}

// ---- layout -------------------------------------------------------------------

GradBuffer::GradBuffer(engine::Communicator* comm, std::vector<std::size_t> sizes, std::vector<DType> dtypes,
                       const Options& options)
    : comm_(comm), options_(options), sizes_(std::move(sizes)), storage_(std::make_shared<Storage>()) {
  const int n = static_cast<int>(sizes_.size());
  DISTML_CHECK_ARG(n > 0, "a gradient buffer needs at least one parameter");
  DISTML_CHECK_ARG(static_cast<int>(dtypes.size()) == n, "one dtype per parameter");
  DISTML_CHECK_ARG(options_.op == Op::kAvg || options_.op == Op::kSum, "gradients are averaged or summed");
  DISTML_CHECK_ARG(options_.bucket_bytes >= 1, "bucket_bytes must be >= 1");
  DISTML_CHECK_ARG(options_.slots >= 1, "a sharded buffer needs at least one staging slot");
  DISTML_CHECK_ARG(!options_.compress || options_.wire == DType::kFloat16 || options_.wire == DType::kBFloat16,
                   "the wire format is float16 or bfloat16");
  if (comm_) {
    rank_ = comm_->rank();
    size_ = comm_->size();
  }

  // Groups, by first appearance of each dtype.
  group_of_.resize(n);
  for (int i = 0; i < n; ++i) {
    auto it = std::find(group_dtype_.begin(), group_dtype_.end(), dtypes[i]);
    group_of_[i] = static_cast<int>(it - group_dtype_.begin());
    if (it == group_dtype_.end()) group_dtype_.push_back(dtypes[i]);
  }
  const int ng = groups();
  for (DType d : group_dtype_) {
    const bool narrow = options_.compress && is_float(d) && d != options_.wire;
    group_wire_.push_back(narrow ? options_.wire : d);
  }
  group_elems_.assign(ng, 0);
  offset_.assign(n, 0);
  buckets_of_.assign(n, {});

  if (options_.mode == Mode::kReplicated) {
    // Reverse registration order inside each group; a bucket closes once it
    // reaches bucket_bytes and never splits a gradient.
    for (int g = 0; g < ng; ++g) {
      const std::size_t item = dtype_size(group_dtype_[g]);
      std::size_t cursor = 0;
      bool open = false;
      for (int i = n - 1; i >= 0; --i) {
        if (group_of_[i] != g) continue;
        if (!open) {
          buckets_.push_back(Bucket{g, cursor, cursor, {}});
          open = true;
        }
        Bucket& b = buckets_.back();
        offset_[i] = cursor;
        cursor += sizes_[i];
        b.stop = cursor;
        b.params.push_back(i);
        buckets_of_[i].push_back(static_cast<int>(buckets_.size()) - 1);
        if ((b.stop - b.start) * item >= options_.bucket_bytes) open = false;
      }
      group_elems_[g] = cursor;
    }
  } else {
    DISTML_CHECK_ARG(ng == 1, "a sharded gradient buffer holds one dtype");
    const std::size_t item = dtype_size(group_dtype_[0]);
    std::vector<std::size_t> ends(n);
    for (int i = 0; i < n; ++i) {
      offset_[i] = numel_;
      numel_ += sizes_[i];
      ends[i] = numel_;
    }
    const std::size_t P = static_cast<std::size_t>(size_);
    shard_ = (numel_ + P - 1) / P;
    group_elems_[0] = shard_ * P;
    if (shard_ > 0) {
      width_ = std::min(shard_, std::max<std::size_t>(1, options_.bucket_bytes / (P * item)));
      const std::size_t windows = (shard_ + width_ - 1) / width_;
      // Bucket 0 is the last window: the gradients a backward pass produces
      // first sit at the high end of every shard.
      for (std::size_t w = windows; w-- > 0;) {
        Bucket b;
        b.start = w * width_;
        b.stop = std::min(shard_, b.start + width_);
        for (std::size_t j = 0; j < P; ++j) {
          const std::size_t lo = j * shard_ + b.start, hi = std::min(numel_, j * shard_ + b.stop);
          if (lo >= hi) continue;
          // the first parameter ending after lo, then on while they start before hi
          int i = static_cast<int>(std::upper_bound(ends.begin(), ends.end(), lo) - ends.begin());
          for (; i < n && offset_[i] < hi; ++i) {
            if (sizes_[i] == 0) continue;
            if (b.params.empty() || b.params.back() != i) b.params.push_back(i);
          }
        }
        const int k = static_cast<int>(buckets_.size());
        for (int i : b.params) buckets_of_[i].push_back(k);
        buckets_.push_back(std::move(b));
      }
    }
  }

  // Memory.
  storage_->flat = std::vector<Block>(ng);
  storage_->wire = std::vector<Block>(ng);
  const bool shared = options_.shared && comm_ && comm_->one_node() && size_ > 1 &&
                      options_.mode == Mode::kReplicated;
  for (int g = 0; g < ng; ++g) {
    const std::size_t bytes = group_elems_[g] * dtype_size(group_dtype_[g]);
    const bool narrow = group_wire_[g] != group_dtype_[g];
    if (options_.mode == Mode::kShard && !options_.flat) {
      // read from set_source pointers until allocate_flat
    } else if (shared && !narrow) {
      storage_->flat[g].allocate_shared(*comm_, bytes);
    } else {
      storage_->flat[g].allocate(bytes);
    }
    if (narrow && options_.mode == Mode::kReplicated) {
      const std::size_t wbytes = group_elems_[g] * dtype_size(group_wire_[g]);
      if (shared) {
        storage_->wire[g].allocate_shared(*comm_, wbytes);
      } else {
        storage_->wire[g].allocate(wbytes);
      }
    }
  }
  if (options_.mode == Mode::kShard) {
    storage_->shard.allocate(shard_ * dtype_size(group_dtype_[0]));
    if (group_wire_[0] != group_dtype_[0]) storage_->wire_shard.allocate(shard_ * dtype_size(group_wire_[0]));
    storage_->staging = std::vector<Block>(options_.slots);
  }
  sources_.assign(n, nullptr);
  ready_.assign(n, 0);
  works_.assign(buckets_.size(), nullptr);
  reset();
}

GradBuffer::~GradBuffer() = default;

char* GradBuffer::flat(int g) const { return storage_->flat[g].data(); }
char* GradBuffer::wire(int g) const { return storage_->wire[g].data(); }

std::size_t GradBuffer::grad_bytes() const {
  std::size_t total = storage_->shard.bytes() + storage_->wire_shard.bytes();
  for (const auto& b : storage_->flat) total += b.bytes();
  for (const auto& b : storage_->wire) total += b.bytes();
  for (const auto& b : storage_->staging) total += b.bytes();
  return total;
}

engine::Communicator& GradBuffer::comm() {
  if (!comm_) DISTML_THROW(InvalidArgument, "this gradient buffer has no communicator (layout only)");
  return *comm_;
}

// ---- one step -------------------------------------------------------------------

std::shared_ptr<void> GradBuffer::keep() {
  if (!inflight_) inflight_ = std::make_shared<std::shared_ptr<Storage>>(storage_);
  return inflight_;
}

void GradBuffer::reset() {
  std::fill(ready_.begin(), ready_.end(), 0);
  missing_.resize(buckets_.size());
  for (std::size_t k = 0; k < buckets_.size(); ++k) missing_[k] = static_cast<int>(buckets_[k].params.size());
  std::fill(works_.begin(), works_.end(), nullptr);
  std::fill(sources_.begin(), sources_.end(), nullptr);
  next_ = 0;
  marked_ = 0;
}

void GradBuffer::mark_ready(int i) {
  std::lock_guard<std::mutex> lk(mu_);
  DISTML_CHECK_ARG(i >= 0 && i < params(), "gradient index " << i << " out of range for " << params() << " parameters");
  DISTML_CHECK_ARG(!ready_[i], "gradient " << i << " was already marked ready in this step");
  ready_[i] = 1;
  ++marked_;
  for (int k : buckets_of_[i]) --missing_[k];
  // In bucket order only: see the invariant in grad_buffer.h.
  while (next_ < static_cast<int>(buckets_.size()) && missing_[next_] == 0) {
    launch(next_);
    ++next_;
  }
}

bool GradBuffer::would_launch(int i) {
  std::lock_guard<std::mutex> lk(mu_);
  if (i < 0 || i >= params() || ready_[i] || next_ >= static_cast<int>(buckets_.size())) return false;
  int left = missing_[next_];
  for (int k : buckets_of_[i]) left -= (k == next_);
  return left == 0;
}

void GradBuffer::launch_all() {
  std::lock_guard<std::mutex> lk(mu_);
  while (next_ < static_cast<int>(buckets_.size())) {
    launch(next_);
    ++next_;
  }
}

void GradBuffer::launch(int k) {
  comm();  // throws without a communicator
  if (options_.mode == Mode::kReplicated) {
    launch_replicated(k, buckets_[k]);
  } else {
    launch_shard(k, buckets_[k]);
  }
}

void GradBuffer::launch_replicated(int k, const Bucket& b) {
  const DType dtype = group_dtype_[b.group], wire = group_wire_[b.group];
  const std::size_t count = b.stop - b.start;
  char* p = flat(b.group) + b.start * dtype_size(dtype);
  if (wire != dtype) {
    char* w = this->wire(b.group) + b.start * dtype_size(wire);
    convert(w, wire, p, dtype, count);
    p = w;
  }
  engine::Call call;
  call.kind = engine::Kind::kAllreduce;
  call.dtype = wire;
  call.op = options_.op;
  call.count = count;
  call.in = p;
  call.out = p;
  works_[k] = comm_->submit(call, keep());
}

// Copies rank j's piece of window `b`, for every j, to position j of `dst`
// (in the wire format); padding past numel reads as zeros.
void GradBuffer::gather_window(const Bucket& b, char* dst) {
  const DType dtype = group_dtype_[0], wire = group_wire_[0];
  const std::size_t item = dtype_size(dtype), witem = dtype_size(wire);
  const std::size_t w = b.stop - b.start;
  const int n = params();
  for (int j = 0; j < size_; ++j) {
    const std::size_t lo = static_cast<std::size_t>(j) * shard_ + b.start, hi = lo + w;
    char* out = dst + static_cast<std::size_t>(j) * w * witem;
    std::size_t pos = lo;
    // parameters are few next to elements: a scan from the one holding lo
    int i = 0;
    while (i < n && offset_[i] + sizes_[i] <= lo) ++i;
    for (; pos < hi && i < n; ++i) {
      const std::size_t end = std::min(hi, offset_[i] + sizes_[i]);
      if (end <= pos) continue;
      const char* src = sources_[i] ? static_cast<const char*>(sources_[i]) : flat(0);
      DISTML_CHECK_ARG(src, "gradient " << i << " has no source (set_source, or allocate_flat)");
      if (!sources_[i]) src += offset_[i] * item;
      src += (pos - offset_[i]) * item;
      char* to = out + (pos - lo) * witem;
      if (wire == dtype) {
        std::memcpy(to, src, (end - pos) * item);
      } else {
        convert(to, wire, src, dtype, end - pos);
      }
      pos = end;
    }
    if (pos < hi) std::memset(out + (pos - lo) * witem, 0, (hi - pos) * witem);
  }
}

void GradBuffer::launch_shard(int k, const Bucket& b) {
  const DType dtype = group_dtype_[0], wire = group_wire_[0];
  const std::size_t w = b.stop - b.start;
  const std::size_t P = static_cast<std::size_t>(size_);
  engine::Call call;
  call.kind = engine::Kind::kReduceScatter;
  call.dtype = wire;
  call.op = options_.op;
  call.count = P * w;
  char* out = wire == dtype ? storage_->shard.data() : storage_->wire_shard.data();
  call.out = out + b.start * dtype_size(wire);
  const bool direct = buckets_.size() == 1 && wire == dtype && flat(0) &&
                      std::all_of(sources_.begin(), sources_.end(), [](const void* s) { return s == nullptr; });
  if (direct) {
    // One window covering whole shards is the flat buffer itself.
    call.in = flat(0);
  } else {
    const int slot = k % options_.slots;
    if (k >= options_.slots && works_[k - options_.slots]) {
      // The slot's previous bucket must be done with it. Its error, if any,
      // is raised by wait_all.
      try {
        works_[k - options_.slots]->wait();
      } catch (const std::exception&) {
      }
    }
    Block& staging = storage_->staging[slot];
    const std::size_t need = P * width_ * dtype_size(wire);
    if (staging.bytes() < need) staging.allocate(need);
    gather_window(b, staging.data());
    call.in = staging.data();
  }
  works_[k] = comm_->submit(call, keep());
}

void GradBuffer::finish(int k) {
  const Bucket& b = buckets_[k];
  if (options_.mode == Mode::kReplicated) {
    const DType dtype = group_dtype_[b.group], wire = group_wire_[b.group];
    if (wire == dtype) return;
    convert(flat(b.group) + b.start * dtype_size(dtype), dtype, this->wire(b.group) + b.start * dtype_size(wire),
            wire, b.stop - b.start);
  } else {
    const DType dtype = group_dtype_[0], wire = group_wire_[0];
    if (wire == dtype) return;
    convert(storage_->shard.data() + b.start * dtype_size(dtype), dtype,
            storage_->wire_shard.data() + b.start * dtype_size(wire), wire, b.stop - b.start);
  }
}

void GradBuffer::wait_all() {
  std::lock_guard<std::mutex> lk(mu_);
  std::exception_ptr first;
  if (comm_) {
    try {
      while (next_ < static_cast<int>(buckets_.size())) {
        launch(next_);
        ++next_;
      }
    } catch (...) {
      first = std::current_exception();
    }
  }
  for (int k = 0; k < next_; ++k) {
    if (!works_[k]) continue;
    try {
      works_[k]->wait();
      finish(k);
    } catch (...) {
      if (!first) first = std::current_exception();
    }
  }
  // Every call of the step is done: what they kept holds nothing now.
  if (inflight_) {
    inflight_->reset();
    inflight_.reset();
  }
  reset();
  if (first) std::rethrow_exception(first);
}

void GradBuffer::zero() {
  std::lock_guard<std::mutex> lk(mu_);
  for (auto& b : storage_->flat) {
    if (b.data()) std::memset(b.data(), 0, b.bytes());
  }
}

// ---- shard mode ---------------------------------------------------------------------

void GradBuffer::set_source(int i, const void* p) {
  std::lock_guard<std::mutex> lk(mu_);
  DISTML_CHECK_ARG(options_.mode == Mode::kShard, "set_source is for sharded buffers");
  DISTML_CHECK_ARG(i >= 0 && i < params(), "gradient index " << i << " out of range");
  DISTML_CHECK_ARG(!ready_[i], "gradient " << i << " is already marked ready");
  sources_[i] = p;
}

void GradBuffer::allocate_flat() {
  std::lock_guard<std::mutex> lk(mu_);
  DISTML_CHECK_ARG(options_.mode == Mode::kShard, "allocate_flat is for sharded buffers");
  if (!flat(0)) storage_->flat[0].allocate(group_elems_[0] * dtype_size(group_dtype_[0]));
}

void GradBuffer::gather(void* params_flat) {
  DISTML_CHECK_ARG(options_.mode == Mode::kShard, "gather is for sharded buffers");
  if (shard_ == 0) return;
  const DType dtype = group_dtype_[0];
  const std::size_t bytes = shard_ * dtype_size(dtype);
  // The shard is part of the allgather's output, so it leaves from a copy
  // (allgather refuses overlapping input and output).
  Block& send = storage_->send;
  if (!send.data()) send.allocate(bytes);
  std::memcpy(send.data(), static_cast<char*>(params_flat) + start() * dtype_size(dtype), bytes);
  engine::Call call;
  call.kind = engine::Kind::kAllgather;
  call.dtype = dtype;
  call.count = shard_;
  call.in = send.data();
  call.out = params_flat;
  comm().run(call);
}

}  // namespace distml::buffers

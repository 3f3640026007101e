// The gradient buffer: every parameter's gradient in one flat, aligned
// allocation, cut into buckets that reduce themselves on the communicator's
// async queue as soon as their last gradient is marked ready.
//
// Vocabulary (the names below follow it):
//   flat buffer  - one 64-byte aligned allocation per dtype group holding the
//                  gradients of that group's parameters. Replicated mode puts
//                  them in reverse registration order (the last parameter at
//                  offset 0: backward produces the last layer's gradient
//                  first); shard mode in registration order, padded with
//                  zeros to P * shard elements, so that the partition is the
//                  one ShardedOptimizer and distml.checkpoint know.
//   view         - a parameter's gradient: a slice of its group's flat buffer.
//   bucket       - what one collective reduces.
//                  Replicated: a contiguous slice of a flat buffer holding
//                  whole gradients of consecutive parameters, closed once it
//                  reaches bucket_bytes; one allreduce (avg or sum) in place.
//                  Shard: a window of `width` elements at the same offset of
//                  every rank's shard; rank j's piece of the window is copied
//                  to position j of a staging slot, and one reduce_scatter
//                  (avg or sum) hands each rank the reduction of its own
//                  piece, written at that offset of its gradient shard.
//                  Windows ignore parameter boundaries: a bucket straddles
//                  parameters and a parameter may touch many buckets.
//   ready        - a gradient has its final value for this step. A bucket
//                  counts the parameters it still misses; the mark that
//                  brings its count to zero launches it.
//   wire format  - float16 or bfloat16 in place of a floating gradient dtype:
//                  the bucket is narrowed into a wire buffer before its
//                  collective (whose kernels accumulate halves in float32)
//                  and widened back when waited for.
//
// Invariant that keeps ranks from deadlocking (break it and the job hangs):
// buckets launch strictly in bucket order (0, 1, 2, ...). A bucket complete
// before an earlier one waits for it, so whatever order a rank marks its
// gradients in, every rank submits the same collectives in the same order,
// which is what the communicator's in-order queue needs to pair them up.
//
// Threads: mark_ready, launch_all, wait_all and zero may be called from any
// thread, one at a time per buffer (a mutex serializes them); none of them
// needs Python. The memory the queued collectives use is owned by a Storage.
// Every call submitted in a step keeps alive one holder of it, which
// wait_all empties once the step's calls are done: a buffer dropped with
// work in flight cannot free memory under the engine, and one dropped after
// its step frees its memory at once, not whenever the engine lets go of
// what its finished calls kept.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <vector>

#include "common/types.h"
#include "engine/communicator.h"

namespace distml::buffers {

enum class Mode : std::uint8_t { kReplicated = 0, kShard = 1 };

// Tells the embedding runtime (Python's tracemalloc, via the bindings) about
// the buffer's allocations, so that memory accounting sees them like numpy's.
struct AllocObserver {
  void (*track)(const void* p, std::size_t bytes) = nullptr;
  void (*untrack)(const void* p) = nullptr;
};
void set_alloc_observer(AllocObserver observer);

// One allocation: 64-byte aligned heap memory, or this rank's part of a
// node-shared window.
class Block {
 public:
  Block() = default;
  ~Block();
  Block(const Block&) = delete;
  Block& operator=(const Block&) = delete;
  // Heap memory, zeroed.
  void allocate(std::size_t bytes);
  // Node-shared memory (collective over `comm`), zeroed.
  void allocate_shared(engine::Communicator& comm, std::size_t bytes);
  char* data() const { return data_; }
  std::size_t bytes() const { return bytes_; }
  bool shared() const { return window_ != nullptr; }

 private:
  char* data_ = nullptr;
  std::size_t bytes_ = 0;
  bool heap_ = false;
  std::shared_ptr<transport::ShmWindow> window_;
};

struct Storage {
  std::vector<Block> flat;      // per group: gradients
  std::vector<Block> wire;      // per group: wire-format copy (replicated mode)
  Block shard;                  // shard mode: this rank's reduced gradient shard
  Block wire_shard;             // shard mode, compressed: the shard in wire format
  std::vector<Block> staging;   // shard mode: slots the windows are gathered into
  Block send;                   // shard mode: the parameter shard allgather sends
};

struct Bucket {
  int group = 0;                // replicated: the flat buffer it is a slice of
  std::size_t start = 0;        // replicated: elements [start, stop) of the flat buffer
  std::size_t stop = 0;         // shard: the window [start, stop) of every shard
  std::vector<int> params;      // parameters it holds (replicated) or touches (shard)
};

struct Options {
  Mode mode = Mode::kReplicated;
  Op op = Op::kAvg;             // kAvg or kSum
  std::size_t bucket_bytes = 25 << 20;
  // Wire format for floating groups: kFloat16, kBFloat16, or the group's own
  // dtype for none. Groups already in the wire format, and integer groups,
  // travel as they are.
  bool compress = false;
  DType wire = DType::kFloat16;
  // Replicated mode: put the flat (or wire) buffers in node-shared memory
  // when every rank is on one node, so that in-place allreduces read peers'
  // gradients where they lie (collective).
  bool shared = false;
  // Shard mode: allocate the flat gradient buffer now (else the gradients
  // are read from set_source pointers, or allocated by allocate_flat).
  bool flat = true;
  // Shard mode: staging slots; bucket k reuses slot k % slots once bucket
  // k - slots has completed.
  int slots = 1;
};

class GradBuffer {
 public:
  // `comm` may be null: the layout only (no launching). `sizes` and `dtypes`
  // are per parameter, in registration order.
  GradBuffer(engine::Communicator* comm, std::vector<std::size_t> sizes, std::vector<DType> dtypes,
             const Options& options);
  ~GradBuffer();
  GradBuffer(const GradBuffer&) = delete;
  GradBuffer& operator=(const GradBuffer&) = delete;

  // ---- layout ----
  int params() const { return static_cast<int>(sizes_.size()); }
  int groups() const { return static_cast<int>(group_dtype_.size()); }
  DType group_dtype(int g) const { return group_dtype_[g]; }
  DType group_wire(int g) const { return group_wire_[g]; }
  std::size_t group_elements(int g) const { return group_elems_[g]; }
  int group_of(int i) const { return group_of_[i]; }
  std::size_t offset(int i) const { return offset_[i]; }  // elements into its group's flat buffer
  const std::vector<Bucket>& buckets() const { return buckets_; }
  const std::vector<std::vector<int>>& buckets_of() const { return buckets_of_; }
  char* flat(int g) const;       // null in shard mode until allocated
  char* wire(int g) const;       // null when the group is not compressed
  bool shared(int g) const { return storage_->flat[g].shared() || storage_->wire[g].shared(); }
  const Options& options() const { return options_; }
  // Shard mode: elements per rank, this rank's [start, start + shard), the
  // reduced gradient shard, and the window width.
  std::size_t shard() const { return shard_; }
  std::size_t start() const { return shard_ * rank_; }
  std::size_t numel() const { return numel_; }
  char* grad_shard() const { return storage_->shard.data(); }
  std::size_t width() const { return width_; }
  // Bytes of gradient memory held (flat, wire, shard and staging buffers).
  std::size_t grad_bytes() const;

  // ---- one step ----
  // Declares gradient i final for this step; launches, in bucket order,
  // every bucket this completes. Throws InvalidArgument for an index out of
  // range or marked twice in a step.
  void mark_ready(int i);
  // Whether mark_ready(i) would launch a bucket now.
  bool would_launch(int i);
  // Launches every bucket not launched yet (all gradients count as ready).
  void launch_all();
  // Waits for every launched bucket, widens wire formats back, and starts
  // the next step; rethrows the first collective error after waiting for
  // the rest.
  void wait_all();
  int launched() const { return next_; }
  int marked() const { return marked_; }
  bool pending() const { return marked_ > 0 || next_ > 0; }
  void zero();
  // Lets go of what the communicator's finished calls kept (call it where
  // their owners may be released, e.g. with Python's GIL held).
  void drain() {
    if (comm_) comm_->drain();
  }

  // ---- shard mode ----
  // Where gradient i is read from this step (a contiguous array of
  // size(i) elements of the buffer's dtype); null: its view in the flat
  // buffer. Pointers are forgotten by wait_all.
  void set_source(int i, const void* p);
  void allocate_flat();
  // Allgathers every rank's shard of `params_flat` (P * shard elements, this
  // rank's shard at start()) into it on every rank (blocking, collective).
  void gather(void* params_flat);

 private:
  void launch(int k);
  void launch_replicated(int k, const Bucket& b);
  void launch_shard(int k, const Bucket& b);
  void gather_window(const Bucket& b, char* dst);
  void finish(int k);
  void reset();
  engine::Communicator& comm();

  engine::Communicator* comm_;
  Options options_;
  int rank_ = 0, size_ = 1;
  std::vector<std::size_t> sizes_;
  std::vector<int> group_of_;
  std::vector<std::size_t> offset_;
  std::vector<DType> group_dtype_, group_wire_;
  std::vector<std::size_t> group_elems_;
  std::vector<Bucket> buckets_;
  std::vector<std::vector<int>> buckets_of_;  // per parameter
  std::size_t numel_ = 0, shard_ = 0, width_ = 0;
  std::shared_ptr<Storage> storage_;
  // What this step's submitted calls keep (see the comment at the top).
  std::shared_ptr<std::shared_ptr<Storage>> inflight_;
  std::shared_ptr<void> keep();

  std::mutex mu_;
  std::vector<char> ready_;
  std::vector<int> missing_;
  std::vector<std::shared_ptr<engine::Work>> works_;
  std::vector<const void*> sources_;
  int next_ = 0;
  int marked_ = 0;
};

}  // namespace distml::buffers

// The parameter server's optimizers: SGD (momentum, dampening, Nesterov,
// weight decay), Adam and AdamW on one flat shard, with the update rules of
// python/distml/optim.py, which is their reference.
//
// Each element goes through the same sequence of roundings the numpy
// reference makes, one operation at a time in the parameter's dtype with
// the hyperparameters rounded to it first (numpy's rule for Python floats),
// so a float64 shard follows the reference to the last bits and needs no
// Python (and no GIL) on the server's progress thread.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "common/types.h"

namespace distml::ps {

enum class OptimizerKind : std::uint8_t { kSgd = 0, kAdam = 1, kAdamW = 2 };

struct OptimizerConfig {
  OptimizerKind kind = OptimizerKind::kSgd;
  double lr = 0.01;
  double momentum = 0, dampening = 0, weight_decay = 0;
  bool nesterov = false;
  double beta1 = 0.9, beta2 = 0.999, eps = 1e-8;
};

// Optimizer state for `count` elements of `dtype` (float32 or float64).
class ShardOptimizer {
 public:
  ShardOptimizer(const OptimizerConfig& config, DType dtype, std::size_t count);
  // One step on params[0:count) with gradient grad (same dtype), learning
  // rate scaled by `lr_scale`.
  void step(void* params, const void* grad, double lr_scale) {
    apply(params, grad, 0, count_, lr_scale, begin_step());
  }
  // The same step in pieces: begin_step() once (it returns the step's
  // number, 1 for the first), then apply() with that number on every range
  // [begin, begin + n) of the shard once, in any order; `params` is the
  // shard's start, `grad` the range's own n gradients. (Each element's
  // update reads only its own state, so pieces give the whole step's bits.)
  // Several steps may be under way at once, each on its own ranges, as
  // long as every range sees the steps in the order of their numbers.
  std::int64_t begin_step() { return ++steps_; }
  void apply(void* params, const void* grad, std::size_t begin, std::size_t n, double lr_scale, std::int64_t step);
  // Steps begun.
  std::int64_t steps() const { return steps_; }
  std::size_t state_bytes() const;

 private:
  template <class T>
  void apply_typed(T* p, const T* g, std::size_t begin, std::size_t n, double lr_scale, std::int64_t step);
  OptimizerConfig config_;
  DType dtype_;
  std::size_t count_;
  std::int64_t steps_ = 0;
  // momentum_buffer, or exp_avg and exp_avg_sq (bytes, dtype-typed).
  std::vector<unsigned char> a_, b_;
};

// Widens `count` elements of `src` (float16, bfloat16, float32 or float64)
// into `dst` of dtype float32 or float64; `accumulate` adds instead.
void widen(void* dst, DType dst_dtype, const void* src, DType src_dtype, std::size_t count, bool accumulate);
// dst[i] /= divisor.
void divide(void* dst, DType dtype, std::size_t count, double divisor);

}  // namespace distml::ps

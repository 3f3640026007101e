#include "ps/optimizer.h"

#include <cmath>
#include <cstring>

#include "common/error.h"

namespace distml::ps {

namespace {

float bits_to_float(std::uint32_t u) {
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

// IEEE binary16 to float32, exactly (every half is a float).
float half_to_float(std::uint16_t h) {
  const std::uint32_t sign = static_cast<std::uint32_t>(h & 0x8000u) << 16;
  const std::uint32_t mag = h & 0x7fffu;
  if (mag >= 0x7c00u) return bits_to_float(sign | 0x7f800000u | ((mag & 0x3ffu) << 13));  // inf, NaN
  // Shifted into float position the exponent is 112 too small; one exact
  // multiply by 2^112 rebiases it and normalizes subnormals.
  float f = bits_to_float(mag << 13) * 0x1p112f;
  std::uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  return bits_to_float(sign | u);
}

float bf16_to_float(std::uint16_t h) { return bits_to_float(static_cast<std::uint32_t>(h) << 16); }

template <class T, class S, class Conv>
void widen_typed(T* dst, const S* src, std::size_t n, bool accumulate, Conv conv) {
  if (accumulate) {
    for (std::size_t i = 0; i < n; ++i) dst[i] += static_cast<T>(conv(src[i]));
  } else {
    for (std::size_t i = 0; i < n; ++i) dst[i] = static_cast<T>(conv(src[i]));
  }
}

template <class T>
void widen_into(T* dst, const void* src, DType src_dtype, std::size_t n, bool accumulate) {
  switch (src_dtype) {
    case DType::kFloat16:
      widen_typed(dst, static_cast<const std::uint16_t*>(src), n, accumulate, half_to_float);
      return;
    case DType::kBFloat16:
      widen_typed(dst, static_cast<const std::uint16_t*>(src), n, accumulate, bf16_to_float);
      return;
    case DType::kFloat32:
      widen_typed(dst, static_cast<const float*>(src), n, accumulate, [](float x) { return x; });
      return;
    case DType::kFloat64:
      widen_typed(dst, static_cast<const double*>(src), n, accumulate, [](double x) { return x; });
      return;
    default:
      DISTML_THROW(InvalidArgument, "parameter server gradients must be floating point, not " << dtype_name(src_dtype));
  }
}

}  // namespace

void widen(void* dst, DType dst_dtype, const void* src, DType src_dtype, std::size_t count, bool accumulate) {
  if (dst_dtype == DType::kFloat32) {
    widen_into(static_cast<float*>(dst), src, src_dtype, count, accumulate);
  } else if (dst_dtype == DType::kFloat64) {
    widen_into(static_cast<double*>(dst), src, src_dtype, count, accumulate);
  } else {
    DISTML_THROW(InvalidArgument, "parameter server parameters must be float32 or float64, not " << dtype_name(dst_dtype));
  }
}

void divide(void* dst, DType dtype, std::size_t count, double divisor) {
  if (dtype == DType::kFloat32) {
    auto* d = static_cast<float*>(dst);
    const float v = static_cast<float>(divisor);
    for (std::size_t i = 0; i < count; ++i) d[i] /= v;
  } else {
    auto* d = static_cast<double*>(dst);
    for (std::size_t i = 0; i < count; ++i) d[i] /= divisor;
  }
}

ShardOptimizer::ShardOptimizer(const OptimizerConfig& config, DType dtype, std::size_t count)
    : config_(config), dtype_(dtype), count_(count) {
  DISTML_CHECK_ARG(dtype == DType::kFloat32 || dtype == DType::kFloat64,
                   "parameter server parameters must be float32 or float64, not " << dtype_name(dtype));
  const std::size_t bytes = count * dtype_size(dtype);
  const bool sgd = config.kind == OptimizerKind::kSgd;
  if (!sgd || config.momentum != 0) a_.assign(bytes, 0);
  if (!sgd) b_.assign(bytes, 0);
}

std::size_t ShardOptimizer::state_bytes() const { return a_.size() + b_.size(); }

void ShardOptimizer::apply(void* params, const void* grad, std::size_t begin, std::size_t n, double lr_scale,
                           std::int64_t step) {
  DISTML_CHECK_ARG(begin + n <= count_, "optimizer range " << begin << "+" << n << " beyond the shard's " << count_);
  if (dtype_ == DType::kFloat32) {
    apply_typed(static_cast<float*>(params), static_cast<const float*>(grad), begin, n, lr_scale, step);
  } else {
    apply_typed(static_cast<double*>(params), static_cast<const double*>(grad), begin, n, lr_scale, step);
  }
}

// Each line below is one numpy operation of python/distml/optim.py, in the
// same order, with the same scalars rounded to T.
template <class T>
void ShardOptimizer::apply_typed(T* p, const T* g_in, std::size_t begin, std::size_t n, double lr_scale,
                                 std::int64_t step) {
  const OptimizerConfig& c = config_;
  const double lr = c.lr * lr_scale;
  p += begin;
  if (c.kind == OptimizerKind::kSgd) {
    const T wd = static_cast<T>(c.weight_decay), mu = static_cast<T>(c.momentum);
    const T damp = static_cast<T>(1 - c.dampening), tlr = static_cast<T>(lr);
    T* buf = reinterpret_cast<T*>(a_.data()) + (a_.empty() ? 0 : begin);
    const bool first = step == 1;
    // Flags in locals: a float64 store through p could alias the config's
    // doubles, which would keep the compiler from hoisting the tests.
    const bool decay = c.weight_decay != 0, momentum = c.momentum != 0, nesterov = c.nesterov;
    if (!decay && !momentum) {
      for (std::size_t i = 0; i < n; ++i) p[i] -= tlr * g_in[i];
      return;
    }
    for (std::size_t i = 0; i < n; ++i) {
      T g = g_in[i];
      if (decay) g = g + wd * p[i];
      if (momentum) {
        if (first) {
          buf[i] = g;
        } else {
          buf[i] *= mu;
          buf[i] += damp * g;
        }
        g = nesterov ? g + mu * buf[i] : buf[i];
      }
      p[i] -= tlr * g;
    }
    return;
  }
  const bool decoupled = c.kind == OptimizerKind::kAdamW;
  const double b1 = c.beta1, b2 = c.beta2;
  const double bias1 = 1 - std::pow(b1, static_cast<double>(step));
  const double bias2_sqrt = std::sqrt(1 - std::pow(b2, static_cast<double>(step)));
  const T decay = static_cast<T>(1 - lr * c.weight_decay), wd = static_cast<T>(c.weight_decay);
  const T one_b1 = static_cast<T>(1 - b1), tb2 = static_cast<T>(b2), one_b2 = static_cast<T>(1 - b2);
  const T tbias2 = static_cast<T>(bias2_sqrt), teps = static_cast<T>(c.eps), tstep = static_cast<T>(lr / bias1);
  T* m = reinterpret_cast<T*>(a_.data()) + begin;
  T* v = reinterpret_cast<T*>(b_.data()) + begin;
  const bool weight_decay = c.weight_decay != 0;
  for (std::size_t i = 0; i < n; ++i) {
    T g = g_in[i];
    if (weight_decay) {
      if (decoupled) {
        p[i] *= decay;
      } else {
        g = g + wd * p[i];
      }
    }
    T tmp = g - m[i];
    tmp *= one_b1;
    m[i] += tmp;
    v[i] *= tb2;
    tmp = g * g;
    tmp *= one_b2;
    v[i] += tmp;
    tmp = std::sqrt(v[i]);
    tmp /= tbias2;
    tmp += teps;
    tmp = m[i] / tmp;
    tmp *= tstep;
    p[i] -= tmp;
  }
}

template void ShardOptimizer::apply_typed<float>(float*, const float*, std::size_t, std::size_t, double,
                                                 std::int64_t);
template void ShardOptimizer::apply_typed<double>(double*, const double*, std::size_t, std::size_t, double,
                                                  std::int64_t);

}  // namespace distml::ps

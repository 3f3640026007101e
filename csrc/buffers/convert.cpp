// Conversions go through float32 blocks small enough to stay in L1: widen the
// source block, narrow it into the destination. The half types' conversions
// are the reduction kernels' own (kernels::widen_half / narrow_half, chosen
// for the CPU at run time), so a gradient rounds the same way on the wire as
// inside a reduction.
#include "buffers/convert.h"

#include <cmath>
#include <cstdint>
#include <cstring>

#include "common/error.h"
#include "kernels/reduce.h"

namespace distml::buffers {
namespace {

constexpr std::size_t kBlock = 512;

bool is_half(DType d) { return d == DType::kFloat16 || d == DType::kBFloat16; }

void widen(const unsigned char* src, DType from, float* out, std::size_t n) {
  if (from == DType::kFloat32) {
    std::memcpy(out, src, n * 4);
  } else if (from == DType::kFloat64) {
    for (std::size_t i = 0; i < n; ++i) {
      double d;
      std::memcpy(&d, src + 8 * i, 8);
      out[i] = static_cast<float>(d);
    }
  } else {
    kernels::widen_half(from, src, out, n);
  }
}

void narrow(const float* in, unsigned char* dst, DType to, std::size_t n) {
  if (to == DType::kFloat32) {
    std::memcpy(dst, in, n * 4);
  } else if (to == DType::kFloat64) {
    for (std::size_t i = 0; i < n; ++i) {
      const double d = in[i];
      std::memcpy(dst + 8 * i, &d, 8);
    }
  } else {
    kernels::narrow_half(to, in, dst, n);
  }
}

// float64 to a half type through float32 would round twice; numpy rounds
// once. Rounding to float32 with the sticky bit kept (round to odd) makes the
// second rounding the correct one.
void to_odd_floats(const unsigned char* src, float* out, std::size_t n) {
  for (std::size_t i = 0; i < n; ++i) {
    double d;
    std::memcpy(&d, src + 8 * i, 8);
    float f = static_cast<float>(d);
    if (static_cast<double>(f) != d) {
      std::uint32_t u;
      std::memcpy(&u, &f, 4);
      if (std::fabs(static_cast<double>(f)) > std::fabs(d)) u -= 1;  // truncate toward zero ...
      u |= 1;                                                          // ... and mark inexact
      std::memcpy(&f, &u, 4);
    }
    out[i] = f;
  }
}

}  // namespace

void convert(void* dst, DType to, const void* src, DType from, std::size_t count) {
  DISTML_CHECK_ARG(is_float(to) && is_float(from),
                   "wire formats convert floating dtypes only, not " << dtype_name(from) << " to " << dtype_name(to));
  const auto* s = static_cast<const unsigned char*>(src);
  auto* d = static_cast<unsigned char*>(dst);
  if (from == to) {
    std::memcpy(d, s, count * dtype_size(to));
    return;
  }
  const std::size_t fs = dtype_size(from), ts = dtype_size(to);
  float block[kBlock];
  for (std::size_t i = 0; i < count; i += kBlock) {
    const std::size_t n = count - i < kBlock ? count - i : kBlock;
    if (from == DType::kFloat64 && is_half(to)) to_odd_floats(s + i * fs, block, n);
    else widen(s + i * fs, from, block, n);
    narrow(block, d + i * ts, to, n);
  }
}

}  // namespace distml::buffers

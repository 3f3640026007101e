// Conversions go through float32 blocks small enough to stay in L1: widen the
// source block, narrow it into the destination. The scalar conversions are
// branch-free, so the compiler vectorizes the block loops at the baseline
// instruction set.
#include "buffers/convert.h"

#include <cmath>
#include <cstdint>
#include <cstring>

#include "common/error.h"

namespace distml::buffers {
namespace {

constexpr std::size_t kBlock = 512;

inline std::uint32_t bits(float f) {
  std::uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}
inline float from_bits(std::uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
inline std::uint32_t pick(bool c, std::uint32_t a, std::uint32_t b) {
  return (a & (0u - static_cast<std::uint32_t>(c))) | (b & ~(0u - static_cast<std::uint32_t>(c)));
}

float half_to_float(std::uint16_t h) {
  const std::uint32_t sign = static_cast<std::uint32_t>(h & 0x8000u) << 16;
  const std::uint32_t mag = h & 0x7fffu;
  // Shifted into float position the exponent is short by 127 - 15; one exact
  // multiply by 2^112 rebiases it and normalizes subnormals.
  std::uint32_t u = bits(from_bits(mag << 13) * 0x1p112f);
  u = pick(mag >= 0x7c00u, 0x7f800000u | (mag << 13), u);  // inf, NaN
  return from_bits(sign | u);
}

std::uint16_t float_to_half(float f) {
  const std::uint32_t u = bits(f);
  const std::uint32_t sign = (u >> 16) & 0x8000u;
  const std::uint32_t mag = u & 0x7fffffffu;
  std::uint32_t normal = mag - ((127u - 15u) << 23);
  normal = (normal + 0x0fffu + ((normal >> 13) & 1u)) >> 13;
  // Below 2^-14 the result is subnormal: adding 0.5 (ulp 2^-24) rounds the
  // magnitude into the low bits.
  const std::uint32_t subnormal = bits(from_bits(mag) + 0.5f) - 0x3f000000u;
  std::uint32_t h = pick(mag < 0x38800000u, subnormal, normal);
  h = pick(mag >= 0x47800000u, 0x7c00u, h);
  h = pick(mag > 0x7f800000u, 0x7e00u | ((mag >> 13) & 0x3ffu), h);
  return static_cast<std::uint16_t>(sign | h);
}

float bf16_to_float(std::uint16_t h) { return from_bits(static_cast<std::uint32_t>(h) << 16); }

std::uint16_t float_to_bf16(float f) {
  const std::uint32_t u = bits(f);
  const std::uint32_t nan = (u >> 16) | 0x0040u;
  const std::uint32_t rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
  return static_cast<std::uint16_t>(pick((u & 0x7fffffffu) > 0x7f800000u, nan, rounded));
}

void widen(const void* src, DType from, float* out, std::size_t n) {
  const auto* p = static_cast<const unsigned char*>(src);
  switch (from) {
    case DType::kFloat32:
      std::memcpy(out, p, n * 4);
      return;
    case DType::kFloat64:
      for (std::size_t i = 0; i < n; ++i) {
        double d;
        std::memcpy(&d, p + 8 * i, 8);
        out[i] = static_cast<float>(d);
      }
      return;
    case DType::kFloat16:
      for (std::size_t i = 0; i < n; ++i) {
        std::uint16_t h;
        std::memcpy(&h, p + 2 * i, 2);
        out[i] = half_to_float(h);
      }
      return;
    case DType::kBFloat16:
      for (std::size_t i = 0; i < n; ++i) {
        std::uint16_t h;
        std::memcpy(&h, p + 2 * i, 2);
        out[i] = bf16_to_float(h);
      }
      return;
    default:
      DISTML_THROW(InvalidArgument, "cannot convert from " << dtype_name(from));
  }
}

void narrow(const float* in, void* dst, DType to, std::size_t n) {
  auto* p = static_cast<unsigned char*>(dst);
  switch (to) {
    case DType::kFloat32:
      std::memcpy(p, in, n * 4);
      return;
    case DType::kFloat64:
      for (std::size_t i = 0; i < n; ++i) {
        double d = in[i];
        std::memcpy(p + 8 * i, &d, 8);
      }
      return;
    case DType::kFloat16:
      for (std::size_t i = 0; i < n; ++i) {
        std::uint16_t h = float_to_half(in[i]);
        std::memcpy(p + 2 * i, &h, 2);
      }
      return;
    case DType::kBFloat16:
      for (std::size_t i = 0; i < n; ++i) {
        std::uint16_t h = float_to_bf16(in[i]);
        std::memcpy(p + 2 * i, &h, 2);
      }
      return;
    default:
      DISTML_THROW(InvalidArgument, "cannot convert to " << dtype_name(to));
  }
}

// float64 -> half directly would round twice through float32; the
// difference is below the half format's resolution except at exact ties,
// where numpy rounds once. Go straight from double for the wire formats.
void narrow_double(const unsigned char* p, void* dst, DType to, std::size_t n) {
  auto* q = static_cast<unsigned char*>(dst);
  for (std::size_t i = 0; i < n; ++i) {
    double d;
    std::memcpy(&d, p + 8 * i, 8);
    // Round to float with the sticky bit kept (round-to-odd), so that the
    // second rounding to the half format is correct.
    float f = static_cast<float>(d);
    if (static_cast<double>(f) != d) {
      std::uint32_t u = bits(f);
      if (std::fabs(static_cast<double>(f)) > std::fabs(d)) u -= 1;  // truncate toward zero ...
      u |= 1;                                                          // ... and mark inexact
      f = from_bits(u);
    }
    std::uint16_t h = to == DType::kFloat16 ? float_to_half(f) : float_to_bf16(f);
    std::memcpy(q + 2 * i, &h, 2);
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
  if (from == DType::kFloat64 && (to == DType::kFloat16 || to == DType::kBFloat16)) {
    narrow_double(s, d, to, count);
    return;
  }
  const std::size_t fs = dtype_size(from), ts = dtype_size(to);
  float block[kBlock];
  for (std::size_t i = 0; i < count; i += kBlock) {
    const std::size_t n = count - i < kBlock ? count - i : kBlock;
    widen(s + i * fs, from, block, n);
    narrow(block, d + i * ts, to, n);
  }
}

}  // namespace distml::buffers

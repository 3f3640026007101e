// Private to csrc/kernels: the bodies of every reduction kernel, written once.
//
// This header is included by exactly one .cpp per instruction set, after that
// file defines DISTML_KERNEL_ISA (the namespace to build into) and
// DISTML_KERNEL_TABLE (the name of the accessor declared in table.h). Each of
// those files is compiled with its own -m flags, so the same plain loops come
// out as SSE2, AVX2 or AVX-512 code. Everything here except the accessor has
// internal linkage, which keeps the linker from mixing code built for
// different instruction sets.
//
// Vocabulary:
//   element  - a value as stored in the user's buffer (T, or uint16_t bits
//              for float16/bfloat16);
//   combining op - a functor with `static T apply(T a, T b)`, the contract being
//              elementwise, no state, same result for every ISA;
//   block    - a stretch of elements small enough to stay in L1 while every
//              source is folded into it.
//
// Native types (float, double, integers) reduce in plain loops that the
// compiler vectorizes. float16/bfloat16 are widened into float blocks, reduced
// there, and narrowed once per call (round to nearest even); only that
// widening and narrowing uses intrinsics.
#ifndef DISTML_KERNEL_ISA
#error "define DISTML_KERNEL_ISA before including kernels/kernels_impl.h"
#endif
#ifndef DISTML_KERNEL_TABLE
#error "define DISTML_KERNEL_TABLE before including kernels/kernels_impl.h"
#endif

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define DISTML_HAVE_STREAM_STORES 1
#endif

#include "kernels/table.h"

namespace distml::kernels::DISTML_KERNEL_ISA {
namespace {

using std::size_t;
using std::uint16_t;
using std::uint32_t;

// Elements in one block. 8 KiB per source keeps dst's block in L1 while
// several sources are folded in.
constexpr size_t kBlockBytes = 8192;
// float16/bfloat16 are reduced through two float blocks of this many values
// (1 KiB each). Measured on AVX-512 at 64M elements: 256 beats 128 and 512
// and is ~1.4x faster than 1024, whose 4 KiB blocks put `acc[i]` and `in[i]`
// at the same address modulo 4 KiB, so loads falsely wait on stores.
constexpr size_t kHalfBlock = 256;

inline size_t min_size(size_t a, size_t b) { return a < b ? a : b; }

// Buffers come from numpy and may sit at any byte address, so every access
// goes through memcpy; the compiler turns these into unaligned vector moves.
template <class T>
inline T load(const void* base, size_t i) {
  T v;
  std::memcpy(&v, static_cast<const unsigned char*>(base) + i * sizeof(T), sizeof(T));
  return v;
}

template <class T>
inline void store(void* base, size_t i, T v) {
  std::memcpy(static_cast<unsigned char*>(base) + i * sizeof(T), &v, sizeof(T));
}

inline uint32_t float_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof(u));
  return u;
}

inline float bits_float(uint32_t u) {
  float f;
  std::memcpy(&f, &u, sizeof(f));
  return f;
}

// cond ? a : b as bit masks. GCC keeps some `?:` as branches, which stops
// it vectorizing the loop around them; masks always vectorize.
inline uint32_t select_bits(bool cond, uint32_t a, uint32_t b) {
  const uint32_t mask = 0u - static_cast<uint32_t>(cond);
  return (a & mask) | (b & ~mask);
}

// ---------------------------------------------------------------------------
// Streaming (non-temporal) stores: written around the cache, straight to
// memory. For results too large to stay in cache, they save the read of each
// destination line that a normal store first makes, about a third of a copy's
// memory traffic. They are weakly ordered, so every streaming entry point
// ends with a store fence: what it wrote is visible before any flag the
// caller publishes next.

#if defined(DISTML_HAVE_STREAM_STORES)
#if defined(__AVX512F__)
constexpr size_t kVec = 64;
inline void stream_vec(unsigned char* d, const unsigned char* s) {
  _mm512_stream_si512(reinterpret_cast<__m512i*>(d), _mm512_loadu_si512(s));
}
#elif defined(__AVX2__)
constexpr size_t kVec = 32;
inline void stream_vec(unsigned char* d, const unsigned char* s) {
  _mm256_stream_si256(reinterpret_cast<__m256i*>(d),
                      _mm256_loadu_si256(reinterpret_cast<const __m256i*>(s)));
}
#else
constexpr size_t kVec = 16;
inline void stream_vec(unsigned char* d, const unsigned char* s) {
  _mm_stream_si128(reinterpret_cast<__m128i*>(d), _mm_loadu_si128(reinterpret_cast<const __m128i*>(s)));
}
#endif
#endif

// dst[0, bytes) = src[0, bytes) with streaming stores where dst is aligned
// to a vector; no fence (callers fence once at the end).
inline void stream_bytes(void* dst, const void* src, size_t bytes) {
#if defined(DISTML_HAVE_STREAM_STORES)
  auto* d = static_cast<unsigned char*>(dst);
  const auto* s = static_cast<const unsigned char*>(src);
  const size_t head = min_size(bytes, (kVec - reinterpret_cast<std::uintptr_t>(d) % kVec) % kVec);
  std::memcpy(d, s, head);
  size_t i = head;
  for (; i + 4 * kVec <= bytes; i += 4 * kVec) {
    stream_vec(d + i, s + i);
    stream_vec(d + i + kVec, s + i + kVec);
    stream_vec(d + i + 2 * kVec, s + i + 2 * kVec);
    stream_vec(d + i + 3 * kVec, s + i + 3 * kVec);
  }
  for (; i + kVec <= bytes; i += kVec) stream_vec(d + i, s + i);
  std::memcpy(d + i, s + i, bytes - i);
#else
  std::memcpy(dst, src, bytes);
#endif
}

inline void store_fence() {
#if defined(DISTML_HAVE_STREAM_STORES)
  _mm_sfence();
#endif
}

void copy_stream_kernel(void* dst, const void* src, size_t bytes) {
  stream_bytes(dst, src, bytes);
  store_fence();
}

// ---------------------------------------------------------------------------
// Half types. Each is a tag with scalar conversions and block conversions
// (`widen`: n stored values -> n floats; `narrow`: n floats -> n stored
// values, round to nearest even, NaN stays a quiet NaN).

#if defined(__AVX512F__)
constexpr __mmask16 kAll16 = 0xffff;
#endif

// IEEE binary16: 1 sign, 5 exponent (bias 15), 10 mantissa bits.
struct Float16 {
  // Both scalar conversions are branch-free, so the baseline build vectorizes
  // them too; the F16C/AVX-512 builds use them only for tails.
  static float to_float(uint16_t h) {
    const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
    const uint32_t mag = h & 0x7fffu;
    // Moved into float position, a half's exponent is 127 - 15 = 112 too
    // small; one exact multiply by 2^112 fixes it and normalizes subnormals.
    uint32_t u = float_bits(bits_float(mag << 13) * 0x1p112f);
    // inf and NaN: all-ones exponent, payload kept in the top bits.
    u = select_bits(mag >= 0x7c00u, 0x7f800000u | (mag << 13), u);
    return bits_float(sign | u);
  }

  static uint16_t from_float(float f) {
    const uint32_t u = float_bits(f);
    const uint32_t sign = (u >> 16) & 0x8000u;
    const uint32_t mag = u & 0x7fffffffu;
    // Normal half (2^-14 <= |f|): rebias, then round the 13 dropped mantissa
    // bits to nearest even; a carry moves into the exponent, and past 65504
    // into infinity, which is the correct rounding.
    uint32_t normal = mag - ((127u - 15u) << 23);
    normal = (normal + 0x0fffu + ((normal >> 13) & 1u)) >> 13;
    // Subnormal half or zero (|f| < 2^-14): adding 0.5, whose ulp is 2^-24 (the
    // half subnormal step), rounds |f| to nearest even in the low bits.
    const uint32_t subnormal = float_bits(bits_float(mag) + 0.5f) - 0x3f000000u;
    uint32_t h = select_bits(mag < 0x38800000u, subnormal, normal);
    h = select_bits(mag >= 0x47800000u, 0x7c00u, h);  // |f| >= 2^16, or inf
    // NaN: force the quiet bit, keep the top payload.
    h = select_bits(mag > 0x7f800000u, 0x7e00u | ((mag >> 13) & 0x3ffu), h);
    return static_cast<uint16_t>(sign | h);
  }

  static void widen(const void* src, float* out, size_t n) {
    size_t i = 0;
#if defined(__AVX512F__)
    // The zero-masking forms with an all-ones mask are the plain conversions;
    // GCC 12's unmasked wrappers trip -Wmaybe-uninitialized in its own header.
    const auto* p = static_cast<const unsigned char*>(src);
    for (; i + 16 <= n; i += 16) {
      __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + 2 * i));
      _mm512_storeu_ps(out + i, _mm512_maskz_cvtph_ps(kAll16, h));
    }
    if (i < n) {  // the tail in one masked step
      const __mmask16 m = static_cast<__mmask16>((1u << (n - i)) - 1u);
      __m256i h = _mm256_maskz_loadu_epi16(m, p + 2 * i);
      _mm512_mask_storeu_ps(out + i, m, _mm512_maskz_cvtph_ps(m, h));
      return;
    }
#elif defined(__F16C__)
    const auto* p = static_cast<const unsigned char*>(src);
    for (; i + 8 <= n; i += 8) {
      __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p + 2 * i));
      _mm256_storeu_ps(out + i, _mm256_cvtph_ps(h));
    }
#endif
    for (; i < n; ++i) out[i] = to_float(load<uint16_t>(src, i));
  }

  static void narrow(const float* in, void* dst, size_t n) {
    size_t i = 0;
#if defined(__AVX512F__)
    auto* p = static_cast<unsigned char*>(dst);
    constexpr int kRound = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;
    for (; i + 16 <= n; i += 16) {
      __m256i h = _mm512_maskz_cvtps_ph(kAll16, _mm512_loadu_ps(in + i), kRound);
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(p + 2 * i), h);
    }
    if (i < n) {
      const __mmask16 m = static_cast<__mmask16>((1u << (n - i)) - 1u);
      __m256i h = _mm512_maskz_cvtps_ph(m, _mm512_maskz_loadu_ps(m, in + i), kRound);
      _mm256_mask_storeu_epi16(p + 2 * i, m, h);
      return;
    }
#elif defined(__F16C__)
    auto* p = static_cast<unsigned char*>(dst);
    constexpr int kRound = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;
    for (; i + 8 <= n; i += 8) {
      __m128i h = _mm256_cvtps_ph(_mm256_loadu_ps(in + i), kRound);
      _mm_storeu_si128(reinterpret_cast<__m128i*>(p + 2 * i), h);
    }
#endif
    for (; i < n; ++i) store<uint16_t>(dst, i, from_float(in[i]));
  }
};

// bfloat16: the top 16 bits of a float32. The scalar forms below are plain
// integer arithmetic, which every ISA build vectorizes in the block loops.
struct BFloat16 {
  static float to_float(uint16_t h) { return bits_float(static_cast<uint32_t>(h) << 16); }

  static uint16_t from_float(float f) {
    const uint32_t u = float_bits(f);
    // Rounding could carry a NaN's payload into the exponent, so NaNs only get
    // their quiet bit set.
    const uint32_t nan = (u >> 16) | 0x0040u;
    // Round to nearest even: add just under half an ulp, plus the lowest kept
    // bit. Large finite values carry into the exponent and become inf, as
    // they should.
    const uint32_t rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
    return static_cast<uint16_t>(select_bits((u & 0x7fffffffu) > 0x7f800000u, nan, rounded));
  }

  static void widen(const void* src, float* out, size_t n) {
    for (size_t i = 0; i < n; ++i) out[i] = to_float(load<uint16_t>(src, i));
  }

  static void narrow(const float* in, void* dst, size_t n) {
    for (size_t i = 0; i < n; ++i) store<uint16_t>(dst, i, from_float(in[i]));
  }
};

template <class E>
constexpr bool kIsHalf = std::is_same_v<E, Float16> || std::is_same_v<E, BFloat16>;

template <class E>
constexpr bool kIsFloat = kIsHalf<E> || std::is_floating_point_v<E>;

// ---------------------------------------------------------------------------
// Step ops. Integer sum and product wrap: they are computed in an unsigned
// type at least as wide as unsigned int, so neither signed overflow nor the
// promotion of small unsigned types to int can be undefined.

template <class T>
using Wide = std::conditional_t<(sizeof(T) < sizeof(unsigned)), unsigned, std::make_unsigned_t<T>>;

struct SumOp {
  template <class T>
  static T apply(T a, T b) {
    if constexpr (std::is_integral_v<T>) {
      return static_cast<T>(static_cast<Wide<T>>(static_cast<Wide<T>>(a) + static_cast<Wide<T>>(b)));
    } else {
      return a + b;
    }
  }
};

struct ProdOp {
  template <class T>
  static T apply(T a, T b) {
    if constexpr (std::is_integral_v<T>) {
      return static_cast<T>(static_cast<Wide<T>>(static_cast<Wide<T>>(a) * static_cast<Wide<T>>(b)));
    } else {
      return a * b;
    }
  }
};

// Floats follow numpy's np.minimum/np.maximum: a NaN on either side wins.
// The comparisons are combined with `|`, not `||`, so both are evaluated
// unconditionally and the loop if-converts into compare + blend.
struct MinOp {
  template <class T>
  static T apply(T a, T b) {
    if constexpr (std::is_floating_point_v<T>) {
      return ((a < b) | (a != a)) ? a : b;
    } else {
      return a < b ? a : b;
    }
  }
};

struct MaxOp {
  template <class T>
  static T apply(T a, T b) {
    if constexpr (std::is_floating_point_v<T>) {
      return ((a > b) | (a != a)) ? a : b;
    } else {
      return a > b ? a : b;
    }
  }
};

struct BandOp {
  template <class T>
  static T apply(T a, T b) { return static_cast<T>(a & b); }
};

struct BorOp {
  template <class T>
  static T apply(T a, T b) { return static_cast<T>(a | b); }
};

struct BxorOp {
  template <class T>
  static T apply(T a, T b) { return static_cast<T>(a ^ b); }
};

// ---------------------------------------------------------------------------
// Native types.

// out[i] = a[i] op b[i]. out may equal a or b exactly: each element is read
// before it is written, and the compiler's alias check admits equal pointers.
template <class T, class Op>
void combine(void* out, const void* a, const void* b, size_t n) {
  for (size_t i = 0; i < n; ++i) store<T>(out, i, Op::apply(load<T>(a, i), load<T>(b, i)));
}

template <class T, class Op>
void reduce_native(void* dst, const void* src, size_t count) {
  combine<T, Op>(dst, dst, src, count);
}

// Block by block, so each source is streamed once and dst is written once.
// With Stream, each block is reduced in a cache-resident scratch block and
// then written to dst with streaming stores (fenced at the end).
template <class T, class Op, bool Stream>
void reduce_many_native(void* dst, const void* const* srcs, int n, size_t count) {
  if (n == 1) {
    if (dst == srcs[0]) return;
    if constexpr (Stream) copy_stream_kernel(dst, srcs[0], count * sizeof(T));
    else std::memcpy(dst, srcs[0], count * sizeof(T));
    return;
  }
  constexpr size_t kBlock = kBlockBytes / sizeof(T);
  alignas(64) unsigned char scratch[Stream ? kBlockBytes : 1];
  for (size_t first = 0; first < count; first += kBlock) {
    const size_t len = min_size(kBlock, count - first);
    const size_t off = first * sizeof(T);
    unsigned char* out = Stream ? scratch : static_cast<unsigned char*>(dst) + off;
    combine<T, Op>(out, static_cast<const unsigned char*>(srcs[0]) + off,
                   static_cast<const unsigned char*>(srcs[1]) + off, len);
    for (int k = 2; k < n; ++k) {
      combine<T, Op>(out, out, static_cast<const unsigned char*>(srcs[k]) + off, len);
    }
    if constexpr (Stream) stream_bytes(static_cast<unsigned char*>(dst) + off, scratch, len * sizeof(T));
  }
  if constexpr (Stream) store_fence();
}

// ---------------------------------------------------------------------------
// Half types: widen to float blocks, reduce there, narrow.

template <class Op>
void apply_floats(float* __restrict acc, const float* __restrict in, size_t n) {
  for (size_t i = 0; i < n; ++i) acc[i] = Op::apply(acc[i], in[i]);
}

template <class H, class Op>
void reduce_half(void* dst, const void* src, size_t count) {
  float acc[kHalfBlock];
  float in[kHalfBlock];
  for (size_t first = 0; first < count; first += kHalfBlock) {
    const size_t len = min_size(kHalfBlock, count - first);
    auto* out = static_cast<unsigned char*>(dst) + 2 * first;
    H::widen(out, acc, len);
    H::widen(static_cast<const unsigned char*>(src) + 2 * first, in, len);
    apply_floats<Op>(acc, in, len);
    H::narrow(acc, out, len);
  }
}

// The whole chain accumulates in float and is rounded once, so the result
// does not depend on how many sources there are beyond float32 rounding.
// Stream as for reduce_many_native.
template <class H, class Op, bool Stream>
void reduce_many_half(void* dst, const void* const* srcs, int n, size_t count) {
  if (n == 1) {
    if (dst == srcs[0]) return;
    if constexpr (Stream) copy_stream_kernel(dst, srcs[0], count * 2);
    else std::memcpy(dst, srcs[0], count * 2);
    return;
  }
  float acc[kHalfBlock];
  float in[kHalfBlock];
  alignas(64) unsigned char narrowed[Stream ? 2 * kHalfBlock : 1];
  for (size_t first = 0; first < count; first += kHalfBlock) {
    const size_t len = min_size(kHalfBlock, count - first);
    const size_t off = 2 * first;
    H::widen(static_cast<const unsigned char*>(srcs[0]) + off, acc, len);
    for (int k = 1; k < n; ++k) {
      H::widen(static_cast<const unsigned char*>(srcs[k]) + off, in, len);
      apply_floats<Op>(acc, in, len);
    }
    if constexpr (Stream) {
      H::narrow(acc, narrowed, len);
      stream_bytes(static_cast<unsigned char*>(dst) + off, narrowed, 2 * len);
    } else {
      H::narrow(acc, static_cast<unsigned char*>(dst) + off, len);
    }
  }
  if constexpr (Stream) store_fence();
}

// ---------------------------------------------------------------------------
// scale_avg: buf[i] /= divisor, divisor >= 1.

template <class E>
void scale_avg_kernel(void* buf, size_t count, size_t divisor) {
  if constexpr (kIsHalf<E>) {
    const float d = static_cast<float>(divisor);
    float vals[kHalfBlock];
    for (size_t first = 0; first < count; first += kHalfBlock) {
      const size_t len = min_size(kHalfBlock, count - first);
      auto* p = static_cast<unsigned char*>(buf) + 2 * first;
      E::widen(p, vals, len);
      for (size_t i = 0; i < len; ++i) vals[i] /= d;
      E::narrow(vals, p, len);
    }
  } else if constexpr (std::is_floating_point_v<E>) {
    // Divide rather than multiply by a reciprocal: the result then matches
    // numpy's `x / n` exactly.
    const E d = static_cast<E>(divisor);
    for (size_t i = 0; i < count; ++i) store<E>(buf, i, load<E>(buf, i) / d);
  } else {
    using U = std::make_unsigned_t<E>;
    constexpr unsigned kBits = 8 * sizeof(E);
    if ((divisor & (divisor - 1)) == 0) {
      // A power of two: floor division is a shift (arithmetic for signed
      // types, which rounds toward -inf exactly like numpy's `//`).
      unsigned shift = 0;
      while ((size_t{1} << shift) != divisor) ++shift;
      if constexpr (std::is_signed_v<E>) {
        if (shift > kBits - 1) shift = kBits - 1;  // every value becomes 0 or -1
        for (size_t i = 0; i < count; ++i) store<E>(buf, i, static_cast<E>(load<E>(buf, i) >> shift));
      } else {
        if (shift >= kBits) {
          std::memset(buf, 0, count * sizeof(E));
          return;
        }
        for (size_t i = 0; i < count; ++i) store<E>(buf, i, static_cast<E>(load<E>(buf, i) >> shift));
      }
      return;
    }
    if constexpr (std::is_signed_v<E>) {
      // Divisors beyond the type's range leave 0 for non-negative values and
      // -1 for negative ones.
      if (divisor > static_cast<size_t>(std::numeric_limits<std::int64_t>::max())) {
        for (size_t i = 0; i < count; ++i) store<E>(buf, i, static_cast<E>(load<E>(buf, i) < 0 ? -1 : 0));
        return;
      }
      const auto d = static_cast<std::int64_t>(divisor);
      for (size_t i = 0; i < count; ++i) {
        const std::int64_t x = load<E>(buf, i);
        std::int64_t q = x / d;
        if (x % d != 0 && x < 0) --q;  // C++ truncates toward zero; numpy floors
        store<E>(buf, i, static_cast<E>(q));
      }
    } else {
      const auto d = static_cast<std::uint64_t>(divisor);
      for (size_t i = 0; i < count; ++i) {
        store<E>(buf, i, static_cast<E>(static_cast<std::uint64_t>(load<U>(buf, i)) / d));
      }
    }
  }
}

// ---------------------------------------------------------------------------
// The table.

template <class E, class Op>
constexpr ReduceFn reduce_entry() {
  if constexpr (kIsHalf<E>) {
    return &reduce_half<E, Op>;
  } else {
    return &reduce_native<E, Op>;
  }
}

template <class E, class Op, bool Stream>
constexpr detail::ReduceManyFn reduce_many_entry() {
  if constexpr (kIsHalf<E>) {
    return &reduce_many_half<E, Op, Stream>;
  } else {
    return &reduce_many_native<E, Op, Stream>;
  }
}

template <class E, class StepOp>
constexpr void set_entry(detail::KernelTable& t, DType dtype, Op op) {
  const int d = static_cast<int>(dtype);
  const int o = static_cast<int>(op);
  t.reduce[d][o] = reduce_entry<E, StepOp>();
  t.reduce_many[d][o] = reduce_many_entry<E, StepOp, false>();
  t.reduce_many_stream[d][o] = reduce_many_entry<E, StepOp, true>();
}

template <class E>
constexpr void set_dtype(detail::KernelTable& t, DType dtype) {
  set_entry<E, SumOp>(t, dtype, Op::kSum);
  set_entry<E, SumOp>(t, dtype, Op::kAvg);
  set_entry<E, ProdOp>(t, dtype, Op::kProd);
  set_entry<E, MinOp>(t, dtype, Op::kMin);
  set_entry<E, MaxOp>(t, dtype, Op::kMax);
  if constexpr (!kIsFloat<E>) {
    set_entry<E, BandOp>(t, dtype, Op::kBand);
    set_entry<E, BorOp>(t, dtype, Op::kBor);
    set_entry<E, BxorOp>(t, dtype, Op::kBxor);
  }
  t.scale_avg[static_cast<int>(dtype)] = &scale_avg_kernel<E>;
}

constexpr detail::KernelTable build_table() {
  detail::KernelTable t{};
  t.copy_stream = &copy_stream_kernel;
  t.widen_half[0] = &Float16::widen;
  t.widen_half[1] = &BFloat16::widen;
  t.narrow_half[0] = &Float16::narrow;
  t.narrow_half[1] = &BFloat16::narrow;
  set_dtype<Float16>(t, DType::kFloat16);
  set_dtype<BFloat16>(t, DType::kBFloat16);
  set_dtype<float>(t, DType::kFloat32);
  set_dtype<double>(t, DType::kFloat64);
  set_dtype<std::int8_t>(t, DType::kInt8);
  set_dtype<std::int16_t>(t, DType::kInt16);
  set_dtype<std::int32_t>(t, DType::kInt32);
  set_dtype<std::int64_t>(t, DType::kInt64);
  set_dtype<std::uint8_t>(t, DType::kUInt8);
  set_dtype<std::uint16_t>(t, DType::kUInt16);
  set_dtype<std::uint32_t>(t, DType::kUInt32);
  set_dtype<std::uint64_t>(t, DType::kUInt64);
  return t;
}

constexpr detail::KernelTable kTable = build_table();

}  // namespace
}  // namespace distml::kernels::DISTML_KERNEL_ISA

namespace distml::kernels::detail {
const KernelTable& DISTML_KERNEL_TABLE() { return DISTML_KERNEL_ISA::kTable; }
}  // namespace distml::kernels::detail

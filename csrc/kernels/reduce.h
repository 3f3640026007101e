// Reduction kernels: element-wise dtype x op, no ranks, no messages.
//
// Contract of every function here:
//   - `count` is in elements and may be 0; pointers need no alignment.
//   - dst may equal a source exactly; partial overlap is not allowed.
//   - float16/bfloat16 are widened to float32 for each step and rounded back
//     (round to nearest even) once per step.
//   - kAvg reduces as kSum; callers finish it with scale_avg().
//   - Integer sum/prod wrap around (two's complement), as numpy does.
// The instruction set is chosen once, from the CPU, the first time a kernel is
// looked up (or forced with set_isa, for tests and benchmarks).
#pragma once

#include <cstddef>
#include <string>
#include <vector>

#include "common/types.h"

namespace distml::kernels {

enum class Isa { kBaseline = 0, kAvx2 = 1, kAvx512 = 2 };

// dst[i] = dst[i] op src[i]
using ReduceFn = void (*)(void* dst, const void* src, std::size_t count);

// The best ISA this CPU and build support.
Isa best_isa();
// The ISA in use (best_isa() unless set_isa was called).
Isa current_isa();
// Forces an ISA; throws InvalidArgument if the CPU or build lacks it.
void set_isa(Isa isa);
const char* isa_name(Isa isa);
// Every ISA this CPU and build can run, baseline first.
std::vector<Isa> supported_isas();

// The two-operand reduction (dst = dst op src) for dtype x op on the current ISA. Throws
// InvalidArgument when op has no meaning for dtype.
ReduceFn lookup(DType dtype, Op op);

// dst[i] = dst[i] op src[i]
void reduce(void* dst, const void* src, std::size_t count, DType dtype, Op op);

// dst[i] = srcs[0][i] op srcs[1][i] op ... op srcs[n-1][i], with n >= 1.
// dst may equal srcs[0]. Half types accumulate the whole chain in float32 and
// round once; the shared-memory algorithms read every peer's slice this way.
void reduce_many(void* dst, const void* const* srcs, int n, std::size_t count, DType dtype,
                 Op op);

// reduce_many, with dst written by streaming (non-temporal) stores that
// bypass the cache, and a store fence at the end. For results larger than
// the cache that nothing reads back soon: it saves the read of every
// destination line a normal store makes first. Slower than reduce_many when
// dst would have stayed in cache.
void reduce_many_stream(void* dst, const void* const* srcs, int n, std::size_t count, DType dtype,
                        Op op);

// memcpy with streaming stores and a store fence; the same trade-off.
void copy_stream(void* dst, const void* src, std::size_t bytes);

// A half type (float16 or bfloat16) to float32 and back, `count` elements,
// rounding to nearest even: what the reductions do inside, for callers that
// change a buffer's format (the gradient buffer's wire formats).
void widen_half(DType from, const void* src, float* out, std::size_t count);
void narrow_half(DType to, const float* in, void* dst, std::size_t count);

// buf[i] /= divisor: finishes an average. Floats divide (half types through
// float32); integers use floor division, like numpy's `//`.
void scale_avg(void* buf, std::size_t count, DType dtype, std::size_t divisor);

}  // namespace distml::kernels

// Private to csrc/kernels: the per-ISA dispatch table.
//
// kernels_baseline.cpp, kernels_avx2.cpp and kernels_avx512.cpp each compile
// the same templates (kernels_impl.h) with their own instruction-set flags and
// export one KernelTable; dispatch.cpp picks one of them at run time. Only
// this table crosses the boundary between files built with different flags,
// so no inline function compiled for AVX-512 can be picked by the linker for
// the baseline path.
#pragma once

#include <cstddef>

#include "common/types.h"
#include "kernels/reduce.h"

namespace distml::kernels::detail {

// dst[i] = srcs[0][i] op ... op srcs[n-1][i]; n >= 1, dst may equal srcs[0]
// (or srcs[1]), and no later source may equal dst.
using ReduceManyFn = void (*)(void* dst, const void* const* srcs, int n, std::size_t count);
// buf[i] /= divisor with divisor >= 1.
using ScaleFn = void (*)(void* buf, std::size_t count, std::size_t divisor);

// Entries are null where the op has no meaning for the dtype (bitwise ops on
// floats). kAvg entries hold the kSum kernels.
struct KernelTable {
  ReduceFn reduce[kNumDTypes][kNumOps];
  ReduceManyFn reduce_many[kNumDTypes][kNumOps];
  ScaleFn scale_avg[kNumDTypes];
  // The same as reduce_many, dst written with streaming stores (then fenced).
  ReduceManyFn reduce_many_stream[kNumDTypes][kNumOps];
  // memcpy with streaming stores, then a store fence.
  void (*copy_stream)(void* dst, const void* src, std::size_t bytes);
  // The half types' conversions to and from float32 (index 0: float16,
  // 1: bfloat16), rounding to nearest even.
  void (*widen_half[2])(const void* src, float* out, std::size_t count);
  void (*narrow_half[2])(const float* in, void* dst, std::size_t count);
};

const KernelTable& baseline_table();
const KernelTable& avx2_table();
const KernelTable& avx512_table();

}  // namespace distml::kernels::detail

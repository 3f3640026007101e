// Changing a gradient's format on the way to and from the wire: float32,
// float64, float16 and bfloat16 into one another, rounding to nearest even.
#pragma once

#include <cstddef>

#include "common/types.h"

namespace distml::buffers {

// dst[i] = (to) src[i] for count elements; both dtypes floating. Buffers may
// sit at any address but must not overlap.
void convert(void* dst, DType to, const void* src, DType from, std::size_t count);

}  // namespace distml::buffers

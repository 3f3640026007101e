// Element types and reduction operators shared by every layer of the core.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace distml {

// Element types. The numbering is part of the binding's contract with
// python/distml/_dtypes.py; append only.
enum class DType : std::uint8_t {
  kFloat16 = 0,
  kBFloat16 = 1,
  kFloat32 = 2,
  kFloat64 = 3,
  kInt8 = 4,
  kInt16 = 5,
  kInt32 = 6,
  kInt64 = 7,
  kUInt8 = 8,
  kUInt16 = 9,
  kUInt32 = 10,
  kUInt64 = 11,
};
constexpr int kNumDTypes = 12;

// Reduction operators. kAvg reduces as kSum and is finished by a division by
// the number of contributions (see kernels::scale_avg).
enum class Op : std::uint8_t {
  kSum = 0,
  kAvg = 1,
  kProd = 2,
  kMin = 3,
  kMax = 4,
  kBand = 5,
  kBor = 6,
  kBxor = 7,
};
constexpr int kNumOps = 8;

std::size_t dtype_size(DType dtype);
const char* dtype_name(DType dtype);
const char* op_name(Op op);
bool is_float(DType dtype);
// True when `op` has a meaning for `dtype` (bitwise ops only for integers).
bool op_supported(DType dtype, Op op);
// The operator that combines two values in a reduction (kAvg -> kSum).
inline Op combining_op(Op op) { return op == Op::kAvg ? Op::kSum : op; }

}  // namespace distml

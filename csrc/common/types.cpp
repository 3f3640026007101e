#include "common/types.h"

#include "common/error.h"

namespace distml {

std::size_t dtype_size(DType dtype) {
  switch (dtype) {
    case DType::kInt8:
    case DType::kUInt8:
      return 1;
    case DType::kFloat16:
    case DType::kBFloat16:
    case DType::kInt16:
    case DType::kUInt16:
      return 2;
    case DType::kFloat32:
    case DType::kInt32:
    case DType::kUInt32:
      return 4;
    case DType::kFloat64:
    case DType::kInt64:
    case DType::kUInt64:
      return 8;
  }
  DISTML_THROW(InvalidArgument, "unknown dtype code " << static_cast<int>(dtype));
}

const char* dtype_name(DType dtype) {
  static const char* const names[kNumDTypes] = {
      "float16", "bfloat16", "float32", "float64", "int8",   "int16",
      "int32",   "int64",    "uint8",   "uint16",  "uint32", "uint64"};
  auto i = static_cast<int>(dtype);
  return (i >= 0 && i < kNumDTypes) ? names[i] : "unknown";
}

const char* op_name(Op op) {
  static const char* const names[kNumOps] = {"sum", "avg", "prod", "min",
                                             "max", "band", "bor", "bxor"};
  auto i = static_cast<int>(op);
  return (i >= 0 && i < kNumOps) ? names[i] : "unknown";
}

bool is_float(DType dtype) {
  return dtype == DType::kFloat16 || dtype == DType::kBFloat16 ||
         dtype == DType::kFloat32 || dtype == DType::kFloat64;
}

bool op_supported(DType dtype, Op op) {
  if (op == Op::kBand || op == Op::kBor || op == Op::kBxor) return !is_float(dtype);
  return static_cast<int>(op) < kNumOps;
}

}  // namespace distml

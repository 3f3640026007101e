// Runtime choice of the kernel table, and argument checks for the entry points
// of reduce.h.
//
// The CPU is probed once, on first use; after that a lookup is one atomic
// load and two array indexes. The choice is per process (the CPU does not
// change under a communicator); set_isa exists so tests and benchmarks can
// run every path the CPU supports.
#include <atomic>

#include "common/error.h"
#include "kernels/reduce.h"
#include "kernels/table.h"

namespace distml::kernels {
namespace {

bool cpu_supports(Isa isa) {
#if defined(__x86_64__) || defined(__i386__)
  // libgcc's probe also checks (via XGETBV) that the OS saves the wide
  // registers, so a "yes" here means the instructions are usable.
  __builtin_cpu_init();
  switch (isa) {
    case Isa::kBaseline:
      return true;
    case Isa::kAvx2:
      return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
             __builtin_cpu_supports("f16c");
    case Isa::kAvx512:
      return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
             __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl") &&
             // The AVX-512 build also uses the AVX2/FMA/F16C instructions.
             __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
             __builtin_cpu_supports("f16c");
  }
  return false;
#else
  return isa == Isa::kBaseline;
#endif
}

const detail::KernelTable& table_for(Isa isa) {
  switch (isa) {
    case Isa::kAvx512:
      return detail::avx512_table();
    case Isa::kAvx2:
      return detail::avx2_table();
    case Isa::kBaseline:
      break;
  }
  return detail::baseline_table();
}

Isa detect_best() {
  if (cpu_supports(Isa::kAvx512)) return Isa::kAvx512;
  if (cpu_supports(Isa::kAvx2)) return Isa::kAvx2;
  return Isa::kBaseline;
}

// The ISA in use, or -1 until the first lookup (or set_isa) decides it.
std::atomic<int> g_isa{-1};

Isa active_isa() {
  int isa = g_isa.load(std::memory_order_acquire);
  if (isa < 0) {
    // Only the first decision sticks, so a set_isa racing the first lookup
    // is not undone.
    int unset = -1;
    g_isa.compare_exchange_strong(unset, static_cast<int>(best_isa()));
    isa = g_isa.load(std::memory_order_acquire);
  }
  return static_cast<Isa>(isa);
}

const detail::KernelTable& active_table() { return table_for(active_isa()); }

void check_dtype_op(DType dtype, Op op) {
  const int d = static_cast<int>(dtype);
  const int o = static_cast<int>(op);
  DISTML_CHECK_ARG(d >= 0 && d < kNumDTypes, "unknown dtype code " << d);
  DISTML_CHECK_ARG(o >= 0 && o < kNumOps, "unknown op code " << o);
  DISTML_CHECK_ARG(op_supported(dtype, op),
                   "op '" << op_name(op) << "' is not defined for dtype " << dtype_name(dtype));
}

}  // namespace

Isa best_isa() {
  static const Isa best = detect_best();
  return best;
}

Isa current_isa() { return active_isa(); }

void set_isa(Isa isa) {
  const int i = static_cast<int>(isa);
  DISTML_CHECK_ARG(i >= 0 && i <= static_cast<int>(Isa::kAvx512), "unknown ISA code " << i);
  DISTML_CHECK_ARG(cpu_supports(isa), "this CPU cannot run the " << isa_name(isa) << " kernels");
  g_isa.store(i, std::memory_order_release);
}

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::kBaseline:
      return "baseline";
    case Isa::kAvx2:
      return "avx2";
    case Isa::kAvx512:
      return "avx512";
  }
  return "unknown";
}

std::vector<Isa> supported_isas() {
  std::vector<Isa> isas;
  for (Isa isa : {Isa::kBaseline, Isa::kAvx2, Isa::kAvx512}) {
    if (cpu_supports(isa)) isas.push_back(isa);
  }
  return isas;
}

ReduceFn lookup(DType dtype, Op op) {
  check_dtype_op(dtype, op);
  ReduceFn fn = active_table().reduce[static_cast<int>(dtype)][static_cast<int>(op)];
  DISTML_CHECK_ARG(fn != nullptr, "no kernel for " << dtype_name(dtype) << " " << op_name(op));
  return fn;
}

void reduce(void* dst, const void* src, std::size_t count, DType dtype, Op op) {
  ReduceFn fn = lookup(dtype, op);
  if (count == 0) return;
  DISTML_CHECK_ARG(dst != nullptr && src != nullptr, "reduce: null buffer");
  fn(dst, src, count);
}

namespace {

void check_many(void* dst, const void* const* srcs, int n, std::size_t count, DType dtype, Op op) {
  check_dtype_op(dtype, op);
  DISTML_CHECK_ARG(n >= 1, "reduce_many needs at least one source, got " << n);
  DISTML_CHECK_ARG(srcs != nullptr, "reduce_many: null source list");
  if (count == 0) return;
  DISTML_CHECK_ARG(dst != nullptr, "reduce_many: null destination");
  for (int k = 0; k < n; ++k) {
    DISTML_CHECK_ARG(srcs[k] != nullptr, "reduce_many: source " << k << " is null");
    // Blocks of dst hold partial results from the first two sources on, so a
    // later source that is dst itself would be read after being overwritten.
    DISTML_CHECK_ARG(k < 2 || srcs[k] != dst,
                     "reduce_many: source " << k << " is dst; only the first source may be");
  }
}

}  // namespace

void reduce_many(void* dst, const void* const* srcs, int n, std::size_t count, DType dtype,
                 Op op) {
  check_many(dst, srcs, n, count, dtype, op);
  if (count == 0) return;
  active_table().reduce_many[static_cast<int>(dtype)][static_cast<int>(op)](dst, srcs, n, count);
}

void reduce_many_stream(void* dst, const void* const* srcs, int n, std::size_t count, DType dtype,
                        Op op) {
  check_many(dst, srcs, n, count, dtype, op);
  if (count == 0) return;
  active_table().reduce_many_stream[static_cast<int>(dtype)][static_cast<int>(op)](dst, srcs, n,
                                                                                    count);
}

namespace {
int half_index(DType dtype) {
  DISTML_CHECK_ARG(dtype == DType::kFloat16 || dtype == DType::kBFloat16,
                   dtype_name(dtype) << " is not a half type (float16 or bfloat16)");
  return dtype == DType::kFloat16 ? 0 : 1;
}
}  // namespace

void widen_half(DType from, const void* src, float* out, std::size_t count) {
  const int i = half_index(from);
  if (count > 0) active_table().widen_half[i](src, out, count);
}

void narrow_half(DType to, const float* in, void* dst, std::size_t count) {
  const int i = half_index(to);
  if (count > 0) active_table().narrow_half[i](in, dst, count);
}

void copy_stream(void* dst, const void* src, std::size_t bytes) {
  if (bytes == 0) return;
  DISTML_CHECK_ARG(dst != nullptr && src != nullptr, "copy_stream: null buffer");
  active_table().copy_stream(dst, src, bytes);
}

void scale_avg(void* buf, std::size_t count, DType dtype, std::size_t divisor) {
  const int d = static_cast<int>(dtype);
  DISTML_CHECK_ARG(d >= 0 && d < kNumDTypes, "unknown dtype code " << d);
  DISTML_CHECK_ARG(divisor >= 1, "scale_avg: divisor must be at least 1");
  if (count == 0 || divisor == 1) return;
  DISTML_CHECK_ARG(buf != nullptr, "scale_avg: null buffer");
  active_table().scale_avg[d](buf, count, divisor);
}

}  // namespace distml::kernels

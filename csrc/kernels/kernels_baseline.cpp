// The reduction kernels of kernels_impl.h, built for baseline x86-64 (SSE2 only,
// no extra compile flags) and exported as one dispatch table.
#define DISTML_KERNEL_ISA baseline
#define DISTML_KERNEL_TABLE baseline_table
#include "kernels/kernels_impl.h"

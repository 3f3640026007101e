// The reduction kernels of kernels_impl.h, built for the avx2 instruction set
// (compile flags: see CMakeLists.txt) and exported as one dispatch table.
#define DISTML_KERNEL_ISA avx2
#define DISTML_KERNEL_TABLE avx2_table
#include "kernels/kernels_impl.h"

// MPI's own collectives: the baseline every benchmark compares against
// (algorithm="mpi"). float16 and bfloat16, which MPI has no datatype for, go
// as 2-byte contiguous types with user-defined operators that call distml's
// kernels. Reductions of more than INT_MAX elements are cut into pieces.
#pragma once

#include <cstddef>

#include "common/types.h"
#include "transport/mpi_comm.h"

namespace distml::transport {

// `op` is the combining operator (no kAvg; callers finish averages).
void mpi_allreduce(MpiComm& comm, const void* in, void* out, std::size_t count, DType dtype, Op op);
void mpi_reduce(MpiComm& comm, const void* in, void* out, std::size_t count, DType dtype, Op op,
                int root);
void mpi_broadcast(MpiComm& comm, void* buf, std::size_t bytes, int root);
void mpi_allgather(MpiComm& comm, const void* in, void* out, std::size_t block_bytes);
// Rank r receives `counts[r]` elements; `counts` has one entry per rank.
void mpi_reduce_scatter(MpiComm& comm, const void* in, void* out, const std::size_t* counts,
                        DType dtype, Op op);
void mpi_alltoall(MpiComm& comm, const void* in, void* out, std::size_t block_bytes);
// Blocks of any size in bytes, back to back in rank order (see
// algorithms/alltoallv.cpp). With MPI >= 4 sizes and offsets beyond INT_MAX
// go through MPI's large-count calls; an older MPI refuses them.
void mpi_alltoallv(MpiComm& comm, const void* in, const std::size_t* send, void* out,
                   const std::size_t* recv);
void mpi_allgatherv(MpiComm& comm, const void* in, void* out, const std::size_t* sizes);
void mpi_barrier(MpiComm& comm);

}  // namespace distml::transport

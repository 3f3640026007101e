// Dispatch: runs an agreed call's schedule, as its plan says.
#include <cstring>
#include <vector>

#include "algorithms/eager_shm.h"
#include "common/error.h"
#include "engine/communicator.h"
#include "kernels/reduce.h"
#include "transport/mpi_collectives.h"

namespace distml::engine {

namespace alg = distml::algorithms;
namespace tp = distml::transport;

void Communicator::dispatch(const Call& c, const Plan& plan) {
  auto& comm = *comm_;
  const auto& tuning = settings_.tuning;
  const std::size_t elem = dtype_size(c.dtype);
  const int P = size_, r = rank_;
  const Algo algo = plan.algo;
  const bool stream = plan.has(kStream), stream_slots = plan.has(kStreamSlots);

  // The agreement moved the data and wrote the result (agreement.cpp).
  if (plan.has(kCarried)) return;

  if (plan.has(kEager)) {
    // Every rank has arrived, with its data (arrive_through_shm).
    auto& shm = shm_group();
    alg::Reduction red(c.dtype, c.op);
    if (c.op == Op::kAvg) red.average_over = static_cast<std::size_t>(P);
    switch (c.kind) {
      case Kind::kAllreduce: alg::reduce_eager(shm, seq_, c.out, 0, c.count, red); return;
      case Kind::kReduce:
        if (r == c.root) alg::reduce_eager(shm, seq_, c.out, 0, c.count, red);
        return;
      case Kind::kBroadcast: alg::broadcast_eager(shm, seq_, c.out, c.count * elem, c.root); return;
      case Kind::kAllgather: alg::allgather_eager(shm, seq_, c.out, c.count * elem); return;
      case Kind::kAlltoall: alg::alltoall_eager(shm, seq_, c.out, c.count / P * elem); return;
      case Kind::kReduceScatter: {
        const alg::Blocks blocks{c.count, P, c.unit};
        alg::reduce_eager(shm, seq_, c.out, blocks.offset(r), blocks.size(r), red);
        return;
      }
      default: DISTML_THROW(Error, "no eager path for " << kind_name(c.kind));
    }
  }

  switch (c.kind) {
    case Kind::kBarrier:
      if (algo == Algo::kMpi) tp::mpi_barrier(comm);
      else if (algo == Algo::kShm) alg::barrier_shm(shm_group());
      else alg::barrier_dissemination(comm);
      return;

    case Kind::kAllreduce: {
      alg::Reduction red(c.dtype, c.op);
      // Schedules where one rank finalises each element finish an average
      // on their own slice; MPI's and recursive doubling's results are
      // finished here.
      const bool finishes = algo != Algo::kMpi && algo != Algo::kRecursiveDoubling;
      if (c.op == Op::kAvg && finishes) red.average_over = static_cast<std::size_t>(P);
      // plan() chose the variant of the shared-memory schedule.
      if (algo == Algo::kMpi) tp::mpi_allreduce(comm, c.in, c.out, c.count, c.dtype, red.op);
      else if (algo == Algo::kRing) alg::allreduce_ring(comm, c.in, c.out, c.count, red, tuning);
      else if (algo == Algo::kShm && plan.has(kInWindow)) {
        std::size_t offset = 0;
        auto w = shm_->find(c.in, c.count * elem, &offset);
        alg::allreduce_shm_window(shm_group(), *w, offset, c.count, red, stream);
      } else if (algo == Algo::kShm && plan.has(kCrossMemory))
        alg::allreduce_shm_single_copy(shm_group(), c.in, c.out, c.count, red, stream);
      else if (algo == Algo::kShm)
        alg::allreduce_shm(shm_group(), c.in, c.out, c.count, red, stream, stream_slots);
      else if (algo == Algo::kHalvingDoubling)
        alg::allreduce_halving_doubling(comm, c.in, c.out, c.count, red);
      else if (algo == Algo::kHierarchical)
        alg::allreduce_hierarchical(shm_group(), *across_, c.in, c.out, c.count, red, tuning,
                                    settings_.allreduce_small_bytes);
      else alg::allreduce_recursive_doubling(comm, c.in, c.out, c.count, red);
      if (c.op == Op::kAvg && !finishes) kernels::scale_avg(c.out, c.count, c.dtype, P);
      return;
    }

    case Kind::kReduce: {
      alg::Reduction red(c.dtype, c.op);
      if (algo == Algo::kMpi) tp::mpi_reduce(comm, c.in, c.out, c.count, c.dtype, red.op, c.root);
      else if (algo == Algo::kTree) alg::reduce_binomial(comm, c.in, c.out, c.count, red, c.root);
      else if (algo == Algo::kShm) alg::reduce_shm(shm_group(), c.in, c.out, c.count, red, c.root, stream_slots);
      else alg::reduce_scatter_gather(comm, c.in, c.out, c.count, red, c.root, tuning);
      if (c.op == Op::kAvg && r == c.root) kernels::scale_avg(c.out, c.count, c.dtype, P);
      return;
    }

    case Kind::kBroadcast:
      if (algo == Algo::kMpi) tp::mpi_broadcast(comm, c.out, c.count * elem, c.root);
      else if (algo == Algo::kTree) alg::broadcast_binomial(comm, c.out, c.count * elem, c.root);
      else if (algo == Algo::kShm && plan.has(kCrossMemory))
        alg::broadcast_shm_single_copy(shm_group(), c.out, c.count * elem, c.root);
      else if (algo == Algo::kShm) alg::broadcast_shm(shm_group(), c.out, c.count * elem, c.root, stream_slots);
      else alg::broadcast_scatter_allgather(comm, c.out, c.count, elem, c.root, tuning);
      return;

    case Kind::kAllgather: {
      const std::size_t block_bytes = c.count * elem;
      char* own = static_cast<char*>(c.out) + r * block_bytes;
      if (block_bytes == 0) return;
      const alg::Blocks blocks{c.count * P, P, c.count};
      if (algo == Algo::kShm && plan.has(kCrossMemory)) {
        alg::allgather_shm_single_copy(shm_group(), c.in, c.out, blocks, elem);
        return;
      }
      if (algo == Algo::kShm) {
        alg::allgather_shm(shm_group(), c.in, c.out, blocks, elem, stream_slots);
        return;
      }
      if (c.in != own) std::memcpy(own, c.in, block_bytes);
      if (algo == Algo::kMpi) tp::mpi_allgather(comm, own, c.out, block_bytes);
      else alg::allgather_ring(comm, c.out, blocks, elem, tuning);
      return;
    }

    case Kind::kReduceScatter: {
      if (c.count == 0) return;
      alg::Reduction red(c.dtype, c.op);
      const alg::Blocks blocks{c.count, P, c.unit};
      if (algo == Algo::kMpi) {
        std::vector<std::size_t> counts(P);
        for (int i = 0; i < P; ++i) counts[i] = blocks.size(i);
        tp::mpi_reduce_scatter(comm, c.in, c.out, counts.data(), c.dtype, red.op);
      } else if (algo == Algo::kShm && plan.has(kCrossMemory)) {
        alg::reduce_scatter_shm_single_copy(shm_group(), c.in, c.out, blocks, red);
      } else if (algo == Algo::kShm) {
        alg::reduce_scatter_shm(shm_group(), c.in, c.out, blocks, red, stream_slots);
      } else {
        char* work = comm.scratch().take(c.count * elem);
        alg::reduce_scatter_ring(comm, c.in, work, blocks, red, tuning);
        std::memcpy(c.out, work + blocks.offset(r) * elem, blocks.size(r) * elem);
      }
      if (c.op == Op::kAvg) kernels::scale_avg(c.out, blocks.size(r), c.dtype, P);
      return;
    }

    case Kind::kAlltoall: {
      const std::size_t block_bytes = c.count / P * elem;
      if (algo == Algo::kMpi) tp::mpi_alltoall(comm, c.in, c.out, block_bytes);
      else if (algo == Algo::kShm && plan.has(kCrossMemory))
        alg::alltoall_shm_single_copy(shm_group(), c.in, c.out, block_bytes);
      else if (algo == Algo::kShm) alg::alltoall_shm(shm_group(), c.in, c.out, block_bytes);
      else alg::alltoall_pairwise(comm, c.in, c.out, block_bytes);
      return;
    }

    case Kind::kAlltoallv:
    case Kind::kAllgatherv: {
      if (c.root == 0) {  // the sizes round: one int64 to and from every rank
        if (algo == Algo::kMpi) tp::mpi_alltoall(comm, c.in, c.out, sizeof(std::int64_t));
        else alg::alltoall_pairwise(comm, c.in, c.out, sizeof(std::int64_t));
        return;
      }
      const std::size_t row_bytes = c.unit * elem;
      if (row_bytes == 0) return;  // rows of zero elements: nothing to move
      std::vector<std::size_t> send(P), recv(P);
      const auto& rows = *c.rows;
      for (int i = 0; i < P; ++i) {
        if (c.kind == Kind::kAlltoallv) {
          send[i] = static_cast<std::size_t>(rows[i]) * row_bytes;
          recv[i] = static_cast<std::size_t>(rows[P + i]) * row_bytes;
        } else {
          send[i] = static_cast<std::size_t>(rows[r]) * row_bytes;
          recv[i] = static_cast<std::size_t>(rows[i]) * row_bytes;
        }
      }
      if (c.kind == Kind::kAlltoallv) {
        if (algo == Algo::kMpi) tp::mpi_alltoallv(comm, c.in, send.data(), c.out, recv.data());
        else if (algo == Algo::kShm) alg::alltoallv_shm(shm_group(), c.in, send.data(), c.out, recv.data());
        else alg::alltoallv_pairwise(comm, c.in, send.data(), c.out, recv.data());
      } else {
        if (algo == Algo::kMpi) tp::mpi_allgatherv(comm, c.in, c.out, recv.data());
        else if (algo == Algo::kShm) alg::allgatherv_shm(shm_group(), c.in, c.out, recv.data());
        else alg::allgatherv_pairwise(comm, c.in, c.out, recv.data());
      }
      return;
    }
  }
}
}  // namespace distml::engine

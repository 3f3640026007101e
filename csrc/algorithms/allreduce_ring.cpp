// Ring allreduce: a ring reduce-scatter leaves block r fully reduced on rank
// r, then a ring allgather hands every block to every rank. Each rank sends
// and receives 2(P-1)/P of the buffer, the bandwidth optimum.
#include "algorithms/schedule.h"

namespace distml::algorithms {

void allreduce_ring(MpiComm& comm, const void* in, void* out, std::size_t count,
                    const Reduction& red, const Tuning& tuning) {
  const Blocks blocks{count, comm.size()};
  reduce_scatter_ring(comm, in, out, blocks, red, tuning);
  red.finish(static_cast<char*>(out) + blocks.offset(comm.rank()) * red.elem,
             blocks.size(comm.rank()));
  allgather_ring(comm, out, blocks, red.elem, tuning);
}

}  // namespace distml::algorithms

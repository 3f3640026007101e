// Dissemination barrier: in round k each rank signals rank + 2^k and waits for
// rank - 2^k; after ceil(log2 P) rounds every rank has heard, directly or
// through others, from every rank.
#include "algorithms/schedule.h"
#include "transport/shm.h"

namespace distml::algorithms {

void barrier_dissemination(MpiComm& comm) {
  const int P = comm.size(), r = comm.rank();
  char token = 0, sink = 0;
  for (int dist = 1; dist < P; dist <<= 1) {
    comm.sendrecv(&token, 0, mod(r + dist, P), &sink, 0, mod(r - dist, P), kTagBarrier);
  }
}

}  // namespace distml::algorithms

namespace distml::algorithms {

// Shared-memory barrier: every rank posts the step and waits for all others
// to have posted it.
void barrier_shm(transport::ShmGroup& shm) {
  const std::uint64_t step = shm.next_step();
  shm.publish(transport::ShmGroup::Counter::kPosted, step);
  shm.wait_all(transport::ShmGroup::Counter::kPosted, step);
  shm.publish(transport::ShmGroup::Counter::kReleased, step);
}

}  // namespace distml::algorithms

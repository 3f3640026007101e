#include "transport/topology.h"

#include "common/error.h"

namespace distml::transport {

NodeLayout::NodeLayout(MpiComm& comm) : size_(comm.size()) {
  DISTML_MPI(MPI_Comm_split_type(comm.raw(), MPI_COMM_TYPE_SHARED, comm.rank(), MPI_INFO_NULL, node_.out()));
  DISTML_MPI(MPI_Comm_size(node_.get(), &node_size_));
  DISTML_MPI(MPI_Comm_rank(node_.get(), &node_rank_));
  int sizes[2] = {node_size_, -node_size_}, extremes[2] = {0, 0};
  DISTML_MPI(MPI_Allreduce(sizes, extremes, 2, MPI_INT, MPI_MAX, comm.raw()));
  largest_ = extremes[0];
  smallest_ = -extremes[1];
}

void NodeLayout::split_across(MpiComm& comm, UniqueComm& across) const {
  DISTML_MPI(MPI_Comm_split(comm.raw(), node_rank_, comm.rank(), across.out()));
}

}  // namespace distml::transport

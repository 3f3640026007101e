// Where a communicator's ranks live: the node of this rank (the ranks that
// can share memory with it, MPI_COMM_TYPE_SHARED) and how many ranks the
// nodes hold. The engine chooses from this, identically on every rank,
// between one node with shared memory for everything, several equal nodes
// with a hierarchical schedule, or plain MPI.
#pragma once

#include "transport/mpi_comm.h"
#include "transport/mpi_handles.h"

namespace distml::transport {

class NodeLayout {
 public:
  // Collective over `comm`.
  explicit NodeLayout(MpiComm& comm);

  // This rank's node, and its place there.
  MPI_Comm node() const { return node_.get(); }
  int node_rank() const { return node_rank_; }
  int node_size() const { return node_size_; }
  // The most and fewest ranks any node holds.
  int largest() const { return largest_; }
  int smallest() const { return smallest_; }
  bool one_node() const { return largest_ == size_; }
  // Several nodes of the same size, more than one rank each.
  bool equal_nodes() const { return !one_node() && smallest_ == largest_ && largest_ > 1; }

  // The ranks of `comm` with this rank's node rank, one per node, in the
  // order of `comm` (collective over `comm`).
  void split_across(MpiComm& comm, UniqueComm& across) const;

 private:
  UniqueComm node_;
  int node_rank_ = 0, node_size_ = 1, largest_ = 1, smallest_ = 1, size_ = 1;
};

}  // namespace distml::transport

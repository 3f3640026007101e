"""The implementation of :mod:`distml.torch.mpi_ops`, one module per
responsibility. Import from :mod:`distml.torch.mpi_ops` (or
:mod:`distml.torch`), not from here.

Layers, each importing only from those above it in this list:

- ``handles``: async handles, names in flight, and the issue order (the
  backlog and its issuer thread);
- ``state``: init and shutdown, ranks, build flags, process sets, the
  timeline;
- ``convert``: dtype maps, tensor checks, numpy views;
- ``control``: join(), its control rounds, and barrier();
- ``reductions``: allreduce, grouped allreduce, the reduction operators;
- ``movement``: allgather, broadcast, alltoall, sparse allreduce;
- ``reducescatter``: reducescatter (its gradient is an allgather);
- ``objects``: broadcast_object, allgather_object.

The one import against this order is ``state.add_process_set``'s use of
``objects.allgather_object``, made when it is called.
"""

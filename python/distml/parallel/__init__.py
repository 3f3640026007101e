"""Data-parallel training: gradient buffers, bucketed gradient averaging and
ZeRO-style sharded optimizers."""

from .data_parallel import DistributedOptimizer, GradientBuffer, broadcast_parameters
from .sharded import ShardedOptimizer

__all__ = ["GradientBuffer", "DistributedOptimizer", "ShardedOptimizer", "broadcast_parameters"]

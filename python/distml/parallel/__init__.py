"""Data-parallel training: gradient buffers, bucketed gradient averaging and
ZeRO-style sharded optimizers."""

from .data_parallel import DistributedOptimizer, GradientBuffer, broadcast_parameters
from .sharded import ShardedOptimizer

__all__ = ["GradientBuffer", "DistributedOptimizer", "ShardedOptimizer", "broadcast_parameters"]

# Model parallelism.
from .grid import ProcessGrid  # noqa: E402
from .pipeline import Pipeline  # noqa: E402
from .tensor_parallel import ColumnParallelLinear, RowParallelLinear  # noqa: E402

__all__ += ["ProcessGrid", "Pipeline", "ColumnParallelLinear", "RowParallelLinear"]

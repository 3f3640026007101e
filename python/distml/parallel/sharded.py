"""ZeRO-style sharded optimizer (stages 1 and 2).

Partition: all parameters, concatenated in parameter order, form one flat
vector of ``numel`` elements, padded with zeros to ``P * shard_size`` where
``shard_size = ceil(numel / P)``. Rank r owns elements
``[r * shard_size, (r + 1) * shard_size)`` — the part
``numpy.array_split(padded, P)[r]`` that ``reduce_scatter`` hands it. The
partition is a function of the shapes and P alone, computed on every rank
with no communication, and it ignores parameter boundaries: a parameter may
straddle ranks. That is what makes per-rank state exactly 1/P of the total
whatever the parameter sizes; it works because every optimizer in
:mod:`distml.optim` is element-wise, so the wrapped optimizer simply runs over
one flat parameter, this rank's shard.

One step:

1. gradients -> flat padded gradient buffer (``self.grads`` are views of it,
   so writing them there avoids the copy);
2. stage 1: allreduce(avg) of the whole buffer, the shard's part is used
   (every rank keeps the full averaged gradient, as in ZeRO-1);
   stage 2: reduce_scatter(avg) into a shard-sized buffer (only the shard of
   the averaged gradient exists anywhere);
3. the wrapped optimizer updates the shard of the flat parameters, with
   state for the shard only;
4. allgather of the shards rebuilds the flat parameters on every rank, and
   they are copied back into the caller's parameter arrays.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from .data_parallel import _default_comm, aligned_empty

__all__ = ["ShardedOptimizer"]


class ShardedOptimizer:
    """Shards optimizer state (stage 1) and reduced gradients (stage 2)
    across the ranks of ``comm``.

    Args:
        optimizer_cls: an optimizer class from :mod:`distml.optim` (or one
            with the same element-wise state contract).
        params: the parameters, replicated on every rank, updated in place
            by :meth:`step`. One dtype for all.
        comm: a :class:`distml.Communicator` or mpi4py communicator (default:
            :func:`distml.init`'s).
        stage: 1 or 2, see the module docstring.
        **optimizer_kwargs: passed to ``optimizer_cls``.

    Attributes:
        numel: elements in all parameters; shard_size: elements per rank;
        start, stop: this rank's shard of the flat vector (``stop`` may
        exceed ``numel`` on the last ranks: that part is padding).

    The constructor, :meth:`step` and :meth:`broadcast_parameters` must be
    called on all ranks.
    """

    def __init__(self, optimizer_cls: Any, params: Sequence[np.ndarray], comm: Any = None, stage: int = 1,
                 **optimizer_kwargs: Any) -> None:
        if stage not in (1, 2):
            raise ValueError(f"stage must be 1 or 2, not {stage!r}")
        params = list(params)
        if not params:
            raise ValueError("ShardedOptimizer needs at least one parameter")
        dtypes = {np.dtype(p.dtype) for p in params}
        if len(dtypes) != 1:
            raise ValueError(f"all parameters must share one dtype, got {sorted(map(str, dtypes))}")
        self.comm = _default_comm(comm)
        self.stage = stage
        self.params = params
        self.dtype = dtypes.pop()
        P, r = self.comm.size, self.comm.rank
        sizes = [int(np.prod(p.shape, dtype=np.int64)) for p in params]
        self.offsets = list(np.cumsum([0] + sizes[:-1]).astype(int))
        self.numel = int(sum(sizes))
        self.shard_size = -(-self.numel // P)
        padded = self.shard_size * P
        self.start, self.stop = r * self.shard_size, (r + 1) * self.shard_size

        self._flat_params = aligned_empty(padded, self.dtype)
        self._flat_params[self.numel:] = 0
        self._param_views = [self._flat_params[o:o + n].reshape(p.shape)
                             for o, n, p in zip(self.offsets, sizes, params)]
        for v, p in zip(self._param_views, params):
            np.copyto(v, p)
        self._flat_grads = aligned_empty(padded, self.dtype)
        self._flat_grads.fill(0)
        self.grads: List[np.ndarray] = [self._flat_grads[o:o + n].reshape(p.shape)
                                        for o, n, p in zip(self.offsets, sizes, params)]
        self._grad_shard = aligned_empty(self.shard_size, self.dtype) if stage == 2 else None
        self._send = aligned_empty(self.shard_size, self.dtype)
        self.shard = self._flat_params[self.start:self.stop]
        self.optimizer = optimizer_cls([self.shard], **optimizer_kwargs)

    # ---- stepping ------------------------------------------------------------

    def step(self, grads: Optional[Sequence[np.ndarray]] = None) -> None:
        """Averages gradients across ranks, updates this rank's shard, and
        gathers the updated parameters into ``params`` on every rank.

        Args:
            grads: this rank's gradients, one per parameter (copied into the
                flat buffer unless they are ``self.grads``); None: already in
                ``self.grads``.

        Must be called on all ranks.
        """
        if grads is not None:
            grads = list(grads)
            if len(grads) != len(self.params):
                raise ValueError(f"step got {len(grads)} gradients for {len(self.params)} parameters")
            for i, (g, v) in enumerate(zip(grads, self.grads)):
                if g is not v:
                    if np.shape(g) != v.shape:
                        raise ValueError(f"gradient {i} has shape {np.shape(g)}, expected {v.shape}")
                    np.copyto(v, g, casting="same_kind")
        if self.stage == 1:
            self.comm.allreduce(self._flat_grads, op="avg", out=self._flat_grads)
            grad_shard = self._flat_grads[self.start:self.stop]
        else:
            self.comm.reduce_scatter(self._flat_grads, op="avg", out=self._grad_shard)
            grad_shard = self._grad_shard
        self.optimizer.step([grad_shard])
        self._gather()

    def _gather(self) -> None:
        # The shard is part of the allgather's output, so it goes out from a
        # separate send buffer (allgather refuses overlapping in and out).
        np.copyto(self._send, self.shard)
        self.comm.allgather(self._send, out=self._flat_params)
        for p, v in zip(self.params, self._param_views):
            if p is not v:
                np.copyto(p, v)

    def zero_grad(self) -> None:
        self._flat_grads.fill(0)

    def broadcast_parameters(self, root: int = 0) -> None:
        """Copies the parameters from ``root`` to every rank (into ``params``
        and the flat copy). Must be called on all ranks."""
        for v, p in zip(self._param_views, self.params):
            np.copyto(v, p)
        self.comm.broadcast(self._flat_params, root=root)
        for p, v in zip(self.params, self._param_views):
            np.copyto(p, v)

    def load_parameters(self) -> None:
        """Re-reads ``params`` into the flat copy the shards update (call after
        changing the parameter arrays from outside, e.g. after loading them).
        Does not communicate."""
        for v, p in zip(self._param_views, self.params):
            np.copyto(v, p)

    # ---- state ---------------------------------------------------------------

    def state_nbytes(self) -> int:
        """Bytes of optimizer state this rank holds (about 1/P of the total)."""
        return self.optimizer.state_nbytes()

    def state_dict(self) -> Dict[str, Any]:
        """This rank's shard of the optimizer state, with the partition it
        belongs to. For a different number of ranks use
        :mod:`distml.checkpoint`, which reshards."""
        sd = self.optimizer.state_dict()
        sd["partition"] = {"rank": self.comm.rank, "size": self.comm.size, "numel": self.numel,
                           "start": self.start, "stop": self.stop}
        return sd

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        """Restores what :meth:`state_dict` returned on this rank.

        Raises:
            ValueError: it was saved for another partition (rank, size or
                parameter count).
        """
        part = state_dict.get("partition", {})
        mine = {"rank": self.comm.rank, "size": self.comm.size, "numel": self.numel}
        theirs = {k: part.get(k) for k in mine}
        if theirs != mine:
            raise ValueError(f"state_dict is for partition {theirs}, this optimizer has {mine}; "
                             "use distml.checkpoint to load across world sizes")
        sd = {k: v for k, v in state_dict.items() if k != "partition"}
        self.optimizer.load_state_dict(sd)

    def __repr__(self) -> str:
        return (f"<distml.ShardedOptimizer stage {self.stage} {type(self.optimizer).__name__}, "
                f"shard [{self.start}, {self.stop}) of {self.numel} on rank {self.comm.rank}/{self.comm.size}>")

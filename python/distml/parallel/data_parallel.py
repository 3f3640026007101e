"""Gradient buffers and the bucketed, overlapping DistributedOptimizer.

The buffer itself is a core type (``csrc/buffers/grad_buffer.h``); this
module is its numpy face. Vocabulary, used by the names below:

- *flat buffer*: one aligned allocation holding every parameter's gradient.
  Parameters sit in it in **reverse** order (the last parameter at offset 0),
  because a backward pass produces gradients last-layer first.
- *bucket*: a contiguous slice of the flat buffer holding whole gradients of
  consecutive parameters (in reverse order), about ``bucket_bytes`` long. A
  bucket is reduced by one allreduce, in place; no gradient is ever copied
  into or out of a staging area (except to change the wire format).
- *ready*: a gradient has its final value for this step. When every gradient
  of a bucket is ready, the core launches the bucket's allreduce on the
  communicator's async queue, from the thread that marked it, without the
  GIL and without returning to Python.

Invariant that keeps ranks from deadlocking: buckets are launched strictly
in bucket order (0, 1, 2, ...). A bucket that becomes complete before an
earlier one waits for it. So whatever order a rank marks gradients ready in,
every rank issues the same allreduces in the same order, which is what the
communicator's in-order async queue needs to match them up. The core keeps
this invariant (``GradBuffer::mark_ready``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, List, Optional, Sequence, Union

import numpy as np

from .. import _core
from .._dtypes import dtype_code

__all__ = ["GradientBuffer", "DistributedOptimizer", "broadcast_parameters"]

ALIGNMENT = 64  # bytes: a cache line, and an AVX-512 vector


# MPI attribute key under which an mpi4py communicator keeps the distml
# Communicator made for it (created on first use).
_COMM_KEYVAL: Optional[int] = None


def _default_comm(comm: Any) -> Any:
    """The :class:`distml.Communicator` a ``comm=`` argument stands for.

    None, or the mpi4py communicator :func:`distml.init` wraps
    (``MPI.COMM_WORLD`` unless it was given another), means the default
    communicator, created by :func:`distml.init` if there is none yet. Any
    other mpi4py communicator gets one distml Communicator, made on first use
    and kept as an MPI attribute of that communicator, so that every later
    call with it returns the same one instead of duplicating the
    communicator again. Creating one is collective: every rank of ``comm``
    passes it in the same order, as for any constructor taking ``comm``.
    """
    global _COMM_KEYVAL
    import distml
    from mpi4py import MPI

    if comm is None:
        return distml.init()
    if isinstance(comm, distml.Communicator):
        return comm
    if not isinstance(comm, MPI.Intracomm) or comm == MPI.COMM_NULL:
        return distml.Communicator(comm)  # raises the constructor's error
    wrapped = distml.get_default().mpi_comm if distml.is_initialized() else MPI.COMM_WORLD
    if MPI.Comm.Compare(comm, wrapped) == MPI.IDENT:
        return distml.init(comm)
    if _COMM_KEYVAL is None:
        _COMM_KEYVAL = MPI.Comm.Create_keyval()
    made = comm.Get_attr(_COMM_KEYVAL)
    if made is None or made._freed:
        made = distml.Communicator(comm)
        comm.Set_attr(_COMM_KEYVAL, made)
    return made


def aligned_empty(count: int, dtype: Any, alignment: int = ALIGNMENT) -> np.ndarray:
    """A 1-D array of ``count`` elements whose data starts on an
    ``alignment``-byte boundary."""
    dtype = np.dtype(dtype)
    raw = np.empty(count * dtype.itemsize + alignment, dtype=np.uint8)
    offset = (-raw.ctypes.data) % alignment
    return raw[offset:offset + count * dtype.itemsize].view(dtype)


@dataclass
class Bucket:
    """One bucket: elements ``[start, stop)`` of the flat buffer, holding the
    gradients of ``params`` (indices, in the order they sit in the buffer)."""

    index: int
    start: int
    stop: int
    params: List[int] = field(default_factory=list)

    @property
    def size(self) -> int:
        return self.stop - self.start


_WIRE_DTYPES = {None: None, "fp16": np.dtype(np.float16), "float16": np.dtype(np.float16)}


def _float_dtypes() -> set:
    import distml

    return {np.dtype(np.float16), np.dtype(distml.bfloat16), np.dtype(np.float32), np.dtype(np.float64)}


def _wire_dtype(compression: Optional[str]) -> Optional[np.dtype]:
    import distml

    if compression in ("bf16", "bfloat16"):
        return np.dtype(distml.bfloat16)
    if compression in _WIRE_DTYPES:
        return _WIRE_DTYPES[compression]
    raise ValueError(f"compression must be None, 'fp16' or 'bf16', not {compression!r}")


class GradientBuffer:
    """One flat, aligned allocation holding a gradient for every parameter:
    the numpy face of the core's gradient buffer.

    Args:
        params: the parameters (only shapes and the common dtype are used).
        bucket_bytes: target bucket size. Buckets are filled in reverse
            parameter order and closed once they reach this size; a gradient
            is never split, so a gradient larger than ``bucket_bytes`` gets a
            bucket of its own.
        comm: a :class:`distml.Communicator` the buckets are reduced over
            (None: the layout only, nothing is reduced). When its ranks all
            share one node the buffer is allocated in node-shared memory, so
            that in-place allreduces of its buckets read peers' gradients
            where they lie instead of copying them in first; creating such a
            buffer must be done on all ranks.
        compression: None, "fp16" or "bf16": the wire format of floating
            gradients (see :class:`DistributedOptimizer`).
        op: "avg" or "sum": what a bucket's allreduce computes.
        node_shared: False keeps the buffer in ordinary memory even when
            the ranks share a node.

    Attributes:
        buffer: the flat array (dtype of the parameters).
        grads: one view of ``buffer`` per parameter, in parameter order, of
            the parameter's shape. Write gradients into these.
        buckets: list of :class:`Bucket`, in launch order.
        bucket_of: bucket index of each parameter.
        offsets: each parameter's offset in ``buffer`` (elements).

    Raises:
        ValueError: no parameters, mixed dtypes, or ``bucket_bytes`` < 1.
    """

    def __init__(self, params: Sequence[np.ndarray], bucket_bytes: int = 25 << 20, comm: Any = None,
                 compression: Optional[str] = None, op: str = "avg", node_shared: bool = True) -> None:
        params = list(params)
        if not params:
            raise ValueError("GradientBuffer needs at least one parameter")
        dtypes = {np.dtype(p.dtype) for p in params}
        if len(dtypes) != 1:
            raise ValueError(f"all parameters must share one dtype, got {sorted(map(str, dtypes))}")
        if int(bucket_bytes) < 1:
            raise ValueError(f"bucket_bytes must be >= 1, not {bucket_bytes}")
        self.dtype = dtypes.pop()
        self.bucket_bytes = int(bucket_bytes)
        wire = _wire_dtype(compression)
        if wire is not None and self.dtype not in _float_dtypes():
            raise ValueError(f"compression needs floating-point gradients, not {self.dtype}")
        code = dtype_code(self.dtype, "parameters")
        sizes = [int(np.prod(p.shape, dtype=np.int64)) for p in params]
        self._core = _core.GradBuffer(
            None if comm is None else comm._core, sizes, [code] * len(params),
            op=_core.Op.avg if op == "avg" else _core.Op.sum, bucket_bytes=self.bucket_bytes,
            wire=None if wire is None else dtype_code(wire), shared=bool(node_shared and comm is not None))
        self.buffer = self._core.flat(0).view(self.dtype)
        self.offsets = [int(self._core.offset(i)) for i in range(len(params))]
        self.grads: List[np.ndarray] = [
            self.buffer[o:o + n].reshape(p.shape) for o, n, p in zip(self.offsets, sizes, params)
        ]
        self.buckets: List[Bucket] = [Bucket(k, start, stop, list(ps))
                                      for k, (_, start, stop, ps) in enumerate(self._core.buckets())]
        self.bucket_of = [0] * len(params)
        for b in self.buckets:
            for i in b.params:
                self.bucket_of[i] = b.index
        wire_bytes = self._core.wire(0)
        self.wire = None if wire_bytes is None else wire_bytes.view(wire)

    @property
    def shared(self) -> bool:
        """Whether the buffer (or its wire copy) lives in node-shared memory."""
        return bool(self._core.shared(0))

    def bucket_view(self, index: int) -> np.ndarray:
        b = self.buckets[index]
        return self.buffer[b.start:b.stop]

    def zero(self) -> None:
        self._core.zero()

    def __len__(self) -> int:
        return len(self.grads)

    def __repr__(self) -> str:
        return (f"<distml.GradientBuffer {len(self.grads)} gradients, {self.buffer.nbytes} bytes, "
                f"{len(self.buckets)} buckets>")


class DistributedOptimizer:
    """Averages gradients across ranks with bucketed allreduce, then steps a
    wrapped optimizer.

    Gradients live in a :class:`GradientBuffer` (``self.grads``). The
    simplest use is ``step(grads)``, which copies ``grads`` in (unless they
    already are ``self.grads``), reduces every bucket, and steps. To overlap
    communication with the backward pass, write gradients straight into
    ``self.grads`` (see :meth:`distml.nn.Module.bind_grads`) and call
    :meth:`mark_ready` as each is finished; a bucket's allreduce starts as
    soon as all its gradients are ready (and all earlier buckets have
    started), and runs on the communicator's background thread while the
    backward pass continues. ``step()`` then waits for what is in flight.

    Args:
        optimizer: a :class:`distml.optim.Optimizer` over this rank's
            replica of the parameters.
        comm: a :class:`distml.Communicator` or mpi4py communicator (default:
            :func:`distml.init`'s).
        bucket_bytes: bucket size in bytes of the (uncompressed) gradients.
        compression: None, ``"fp16"`` or ``"bf16"``: the gradients (of any
            floating dtype: float32, float64, or the other half type) are
            sent in that format, and the reduction accumulates in float32
            inside the core; the result is widened back to the gradients'
            dtype. Expect a relative error of the averaged gradient of about
            the format's epsilon (2**-11 for fp16, 2**-8 for bf16) per
            element. Gradients already in the wire format are sent as they
            are.
        node_shared: when the ranks share one node, keep the gradient buffer
            in node-shared memory, where the allreduce works in place
            (default True; False for ordinary memory).

    The constructor, :meth:`step`, :meth:`synchronize`,
    :meth:`broadcast_parameters` and :meth:`broadcast_optimizer_state`
    communicate and must be called on all ranks; every rank must mark the
    same gradients ready each step (in any order).
    """

    def __init__(self, optimizer: Any, comm: Any = None, bucket_bytes: int = 25 << 20,
                 compression: Optional[str] = None, *, node_shared: bool = True) -> None:
        self.optimizer = optimizer
        self.comm = _default_comm(comm)
        self.compression = compression
        wire = _wire_dtype(compression)
        if wire is not None:
            dtype = {np.dtype(p.dtype) for p in optimizer.params}
            if not dtype <= _float_dtypes():
                raise ValueError(f"compression needs floating-point gradients, not {sorted(map(str, dtype))}")
        self.grad_buffer = GradientBuffer(optimizer.params, bucket_bytes, comm=self.comm, compression=compression,
                                          node_shared=node_shared)
        self._core = self.grad_buffer._core

    # ---- views -------------------------------------------------------------

    @property
    def params(self) -> List[np.ndarray]:
        return self.optimizer.params

    @property
    def grads(self) -> List[np.ndarray]:
        """The gradient arrays (views of the flat buffer), in parameter order."""
        return self.grad_buffer.grads

    @property
    def pending(self) -> bool:
        """Whether gradients of the current step have been marked ready or are
        being reduced (cleared by :meth:`synchronize`/:meth:`step`)."""
        return bool(self._core.pending)

    @property
    def _handles(self) -> List[Any]:
        # per bucket: True once launched, else None (for tests and debugging)
        n = self._core.launched
        return [True] * n + [None] * (len(self.grad_buffer.buckets) - n)

    @property
    def _wire(self) -> List[Optional[np.ndarray]]:
        # per bucket: its slice of the wire-format buffer, or None
        w = self.grad_buffer.wire
        return [None if w is None else w[b.start:b.stop] for b in self.grad_buffer.buckets]

    # ---- the reduction -----------------------------------------------------

    def mark_ready(self, indices: Union[int, Iterable[int]]) -> None:
        """Declares gradients ``indices`` (into ``params``) final for this step.

        Launches (asynchronously) every bucket that this completes, in bucket
        order. The arrays in ``self.grads`` of a launched bucket must not be
        written until :meth:`step` or :meth:`synchronize` returns.

        Raises:
            ValueError: an index out of range, or marked twice in one step.
        """
        if isinstance(indices, (int, np.integer)):
            self._core.mark_ready(int(indices))
        else:
            self._core.mark_ready_many([int(i) for i in indices])

    def synchronize(self) -> None:
        """Launches the buckets not yet launched (treating every gradient as
        ready), waits for all of them, and leaves the averaged gradients in
        ``self.grads``. Must be called on all ranks."""
        self._core.wait_all()

    def step(self, grads: Optional[Sequence[np.ndarray]] = None) -> None:
        """Averages the gradients across ranks, then steps the optimizer.

        Args:
            grads: this rank's gradients, one per parameter; copied into the
                buffer unless they are ``self.grads`` themselves. None: the
                gradients are already in ``self.grads``.

        Raises:
            RuntimeError: ``grads`` are separate arrays but some gradients
                were already marked ready (their reduction used the buffer).

        Must be called on all ranks.
        """
        if grads is not None:
            grads = list(grads)
            if len(grads) != len(self.grads):
                raise ValueError(f"step got {len(grads)} gradients for {len(self.grads)} parameters")
            foreign = [i for i, (g, v) in enumerate(zip(grads, self.grads)) if g is not v]
            if foreign and self._core.marked:
                raise RuntimeError(
                    "step(grads) got arrays other than self.grads after mark_ready(); "
                    "write gradients into self.grads when marking them ready"
                )
            for i in foreign:
                np.copyto(self.grads[i], grads[i], casting="same_kind")
        self.synchronize()
        self.optimizer.step(self.grads)

    def zero_grad(self) -> None:
        """Sets every gradient to zero.

        Raises:
            RuntimeError: gradients of this step are marked ready or being
                reduced; zeroing now would race with the reduction (call
                :meth:`step` or :meth:`synchronize` first).
        """
        if self.pending:
            raise RuntimeError("zero_grad() called while gradient reductions are pending; call step() or "
                               "synchronize() first")
        self.grad_buffer.zero()

    # ---- making ranks start equal -------------------------------------------

    def broadcast_parameters(self, params: Optional[Sequence[np.ndarray]] = None, root: int = 0) -> None:
        """Copies ``params`` (default: the optimizer's) from ``root`` to every
        rank. Must be called on all ranks."""
        broadcast_parameters(self.params if params is None else params, root=root, comm=self.comm)

    def broadcast_optimizer_state(self, root: int = 0) -> None:
        """Copies the wrapped optimizer's step counts and state arrays from
        ``root`` to every rank. Must be called on all ranks."""
        opt = self.optimizer
        steps = np.asarray(opt.steps, dtype=np.int64)
        arrays = [steps] + [s[k] for s in opt.state for k in opt.state_keys]
        broadcast_parameters(arrays, root=root, comm=self.comm)
        opt.steps = [int(n) for n in steps]

    # ---- state ---------------------------------------------------------------

    def state_dict(self) -> dict:
        """The wrapped optimizer's state (identical on every rank)."""
        return self.optimizer.state_dict()

    def load_state_dict(self, state_dict: dict) -> None:
        self.optimizer.load_state_dict(state_dict)

    def state_nbytes(self) -> int:
        return self.optimizer.state_nbytes()

    def __repr__(self) -> str:
        return (f"<distml.DistributedOptimizer {self.optimizer!r} on {self.comm.size} ranks, "
                f"{len(self.grad_buffer.buckets)} buckets, compression={self.compression!r}>")


def broadcast_parameters(params: Sequence[np.ndarray], root: int = 0, comm: Any = None) -> None:
    """Copies every array of ``params`` from rank ``root`` into the same
    arrays on every other rank, in place (all broadcasts in flight at once).

    Must be called on all ranks, with arrays of the same shapes and dtypes.
    """
    comm = _default_comm(comm)
    handles = [comm.broadcast(p, root=root, async_op=True) for p in params]
    for h in handles:
        h.wait()

"""DistributedOptimizer for torch optimizers: gradients averaged by bucketed
allreduces that start during the backward pass.

The buffers are the core's gradient buffer (``csrc/buffers/grad_buffer.h``);
this module is its torch face. Vocabulary (as in
:mod:`distml.parallel.data_parallel`):

- *flat buffer*: one allocation per gradient dtype holding the gradients of
  all parameters of that dtype, in **reverse** parameter order (backward
  produces the last layer's gradients first). Each ``p.grad`` is set to a
  view of it (a tensor over the core's memory, no copy), so autograd
  accumulates straight into the buffer and no gradient is copied into a
  staging area.
- *bucket*: a contiguous slice of a flat buffer holding whole gradients,
  about ``bucket_bytes`` long, reduced by one allreduce in place.
- *ready*: a parameter's gradient has been accumulated
  ``backward_passes_per_step`` times since the last step; a post-accumulate
  gradient hook counts this and tells the core, which launches every bucket
  that this completes on the communicator's async queue (the wire format
  conversion included), without the GIL.

Invariant that keeps ranks from deadlocking: buckets are launched strictly in
bucket order, by the core. A bucket that is complete before an earlier one
waits for it, so every rank issues the same allreduces in the same order,
whatever order its hooks fire in. The first launch of a step is preceded by a
control round (see :mod:`distml.torch.mpi_ops`) so that ranks inside
``join()`` can stand in for this step's allreduces; and a launch waits until
the collectives :mod:`distml.torch.mpi_ops` holds back (its backlog) are
queued, so that those keep their place in the order.
"""

from __future__ import annotations

import contextlib
import warnings
from typing import Any, Iterable, Iterator, List, Optional, Tuple

import numpy as np
import torch

from .. import _core
from . import mpi_ops
from .._dtypes import dtype_code
from .compression import Compression, NoneCompressor, _CastCompressor
from .mpi_ops import (
    Average, ProcessSet, _control, _K_STEP, _np, _parse_op, _register_optimizer, global_process_set,
    sparse_allreduce_async,
)

__all__ = ["DistributedOptimizer"]

_DEFAULT_BUCKET_BYTES = 4 << 20
# Gradients from this size on are copied into the buffer with streaming
# stores, past the cache (faster for copies larger than the cache, slower
# for ones that fit; measured crossover on a 2 MiB-L2 machine: ~4 MiB).
_STREAM_BYTES = 4 << 20


def _move_into(view: torch.Tensor, grad: torch.Tensor) -> None:
    nbytes = grad.numel() * grad.element_size()
    if nbytes >= _STREAM_BYTES and grad.is_contiguous() and grad.dtype == view.dtype \
            and grad.shape == view.shape:
        _core.kernel_copy_stream(view.view(-1).view(torch.uint8).numpy(),
                                 grad.view(-1).view(torch.uint8).numpy())
    else:
        view.copy_(grad)


def _numpy_dtype(dtype: torch.dtype) -> np.dtype:
    return _np(torch.empty(0, dtype=dtype)).dtype


def _wire_code(compression: Any) -> Any:
    """The core's code of the wire format ``compression`` stands for (None: none)."""
    if isinstance(compression, type) and issubclass(compression, _CastCompressor):
        return dtype_code(_numpy_dtype(compression.wire))
    if isinstance(compression, type) and issubclass(compression, NoneCompressor):
        return None
    raise ValueError(f"DistributedOptimizer takes Compression.none, .fp16 or .bf16, not {compression!r} "
                     "(the core converts the wire format)")


class _DistributedOptimizer(torch.optim.Optimizer):
    """Methods mixed into a subclass of the wrapped optimizer's class (made by
    :func:`DistributedOptimizer`), so that the result is still an instance of
    that class (learning-rate schedulers and ``isinstance`` checks work)."""

    # ---- set-up --------------------------------------------------------------------

    def _distml_setup(self, named_parameters: Optional[Iterable[Tuple[str, torch.Tensor]]],
                      compression: Any, backward_passes_per_step: int, op: Any,
                      bucket_bytes: int, sparse_as_dense: bool = False, process_set: Any = None) -> None:
        params = [p for group in self.param_groups for p in group["params"] if p.requires_grad]
        seen = set()
        unique = []
        for p in params:
            if id(p) not in seen:
                seen.add(id(p))
                unique.append(p)
        params = unique
        if named_parameters is not None:
            named = list(named_parameters)
            names = [n for n, _ in named]
            dups = sorted({n for n in names if names.count(n) > 1})
            if dups:
                raise ValueError(f"named_parameters contains duplicate names: {dups}")
            named_ids = {id(p) for _, p in named}
            unnamed = [i for i, p in enumerate(params) if id(p) not in named_ids]
            if unnamed:
                raise ValueError("named_parameters was given, but parameters "
                                 f"{unnamed} of the optimizer are not in it")
            self._names = {id(p): n for n, p in named}
        else:
            # Horovod's default names: the group's index, then the
            # parameter's index in its group (unique across groups).
            self._names = {}
            for g, group in enumerate(self.param_groups):
                for j, p in enumerate(group["params"]):
                    self._names.setdefault(id(p), f"allreduce.noname.{g}.{j}")
        # Horovod's attribute, which user code reads: parameter -> name.
        self._parameter_names = {p: self._names[id(p)] for p in params}
        if backward_passes_per_step < 1:
            raise ValueError(f"backward_passes_per_step must be >= 1, not {backward_passes_per_step}")
        self._op = _parse_op(op, None)
        if self._op.value not in ("avg", "sum"):
            raise ValueError("DistributedOptimizer supports op=Average or op=Sum")
        self._compression = compression or Compression.none
        self._sparse_as_dense = bool(sparse_as_dense)
        self._passes_per_step = int(backward_passes_per_step)
        self._params = params
        self._process_set = process_set
        for i, p in enumerate(params):
            if p.device.type != "cpu":
                raise TypeError(f"parameter {self._names[id(p)]} is on {p.device}; "
                                "distml.torch works on CPU tensors only")
            mpi_ops._check_tensor(p, f"parameter {self._names[id(p)]}")
        self._should_synchronize = True
        self._synchronized = False
        # Every rank registers (the ids must follow the same sequence on all
        # ranks), also one outside the optimizer's process set.
        self._oid = _register_optimizer(self)
        self._outside = _outside(process_set)
        if self._outside:
            # As in Horovod: a rank outside the process set steps on its own
            # gradients, and nothing of this optimizer communicates.
            self._gb = None
            self._hooks = []
            self._passes = [0] * len(params)
            self._sparse = {}
            return
        self._comm = mpi_ops._set_comm(process_set)

        # Layout (the core's): one flat buffer per dtype, parameters in
        # reverse order. On one node the flat buffers live in node-shared
        # memory, so each bucket's in-place allreduce reads peers' gradients
        # where they lie.
        wire = _wire_code(self._compression)
        self._gb = _core.GradBuffer(self._comm._core, [p.numel() for p in params],
                                    [dtype_code(_numpy_dtype(p.dtype)) for p in params],
                                    op=_core.Op.avg if self._op.value == "avg" else _core.Op.sum,
                                    bucket_bytes=bucket_bytes, wire=wire,
                                    shared=True)
        group_dtypes = {}
        for p in params:
            group_dtypes.setdefault(p.dtype, None)
        self._flats = [torch.from_numpy(self._gb.flat(g)).view(dtype) for g, dtype in enumerate(group_dtypes)]
        self._grad_views: List[torch.Tensor] = []
        for i, p in enumerate(params):
            o = self._gb.offset(i)
            self._grad_views.append(self._flats[self._gb.group_of(i)][o:o + p.numel()].view(p.shape))
        for i, p in enumerate(params):
            if p.grad is not None:
                self._grad_views[i].copy_(p.grad)
            p.grad = self._grad_views[i]
        self._hooks = [p.register_post_accumulate_grad_hook(self._make_hook(i)) for i, p in enumerate(params)]
        self._reset()

    def _reset(self) -> None:
        self._passes = [0] * len(self._params)
        self._ctl: Optional[mpi_ops._Control] = None
        # Parameters whose gradient of this step is sparse and travels as
        # one (index -> the sparse gradient); see _keep_sparse.
        self._sparse: dict = {}
        # Parameters whose sparse gradient was reduced as a dense one and is
        # made sparse again after the reduction (sparse_as_dense=True).
        self._resparsify: set = set()

    # ---- the reduction ----------------------------------------------------------

    def _make_hook(self, i: int):
        def hook(p: torch.Tensor) -> None:
            self._passes[i] += 1
            if self._passes[i] > self._passes_per_step:
                raise RuntimeError(
                    f"the gradient of {self._names[id(p)]} was computed more than backward_passes_per_step="
                    f"{self._passes_per_step} times before step(); raise backward_passes_per_step to "
                    "accumulate gradients locally")
            view = self._grad_views[i]
            g = p.grad
            if g is not None and g.layout != torch.strided and not self._sparse_as_dense:
                self._keep_sparse(i, g)
            elif g is not None and (g.layout != torch.strided or g.data_ptr() != view.data_ptr()):
                # autograd made a fresh gradient (the first pass after a
                # zero_grad(set_to_none=True)): move it into the buffer
                if g.layout != torch.strided:
                    self._resparsify.add(i)
                _move_into(view, self._dense(g))
                p.grad = view
            if self._passes[i] == self._passes_per_step:
                if self._gb.would_launch(i):
                    self._before_launch()
                self._gb.mark_ready(i)  # the core launches what this completes

        return hook

    def _before_launch(self) -> None:
        """What must precede this step's first launch: the collectives
        mpi_ops holds back are queued (so they keep their place), then the
        control round."""
        mpi_ops._quiesce()
        if self._ctl is None and self._gb.launched == 0:
            self._ctl = _control(_K_STEP, self._oid, comm=self._comm)

    def _keep_sparse(self, i: int, grad: torch.Tensor) -> None:
        """A sparse gradient without sparse_as_dense: it stays in ``p.grad``
        and is reduced as Horovod does, by allgathering its indices and
        values (in :meth:`synchronize`, after the buckets). Its slot in the
        flat buffer goes through its bucket as zeros, so that every rank's
        buckets stay the same."""
        self._sparse[i] = grad
        self._grad_views[i].zero_()

    def _own_gradient(self, i: int) -> None:
        # A gradient replaced behind our back (model.zero_grad() sets None,
        # autograd then allocates a new one) goes back into the buffer.
        p, view = self._params[i], self._grad_views[i]
        if p.grad is None:
            view.zero_()
            p.grad = view
        elif p.grad.layout != torch.strided and not self._sparse_as_dense:
            self._keep_sparse(i, p.grad)
        elif p.grad.layout != torch.strided or p.grad.data_ptr() != view.data_ptr():
            if p.grad.layout != torch.strided:
                self._resparsify.add(i)
            view.copy_(self._dense(p.grad))
            p.grad = view

    def _dense(self, grad: torch.Tensor) -> torch.Tensor:
        if grad.layout == torch.strided:
            return grad
        if grad.layout != torch.sparse_coo:
            raise TypeError(f"a gradient is {grad.layout}; distml.torch reduces dense and sparse COO gradients")
        return grad.to_dense()

    def _stand_in(self) -> None:
        """On a rank inside join(): this step's allreduces, with zeros.

        The zeros go through the core buffer's own buckets, compressed as
        usual, so that the calls match the other ranks' exactly (node-shared
        buffer included)."""
        self._gb.zero()
        self._gb.wait_all()  # join() emptied the backlog first

    def synchronize(self) -> None:
        """Launches the buckets not launched yet (every gradient counts as
        ready), waits for all of them, and leaves the reduced gradients in
        ``p.grad``. Must be called on all ranks (of the optimizer's process
        set; on a rank outside it this does nothing).

        Averages divide by the number of ranks, those inside :func:`join`
        included (they contribute zeros), as in Horovod. Sparse gradients
        (without ``sparse_as_dense``) are reduced after the buckets, in
        parameter order, and stay sparse; with ``sparse_as_dense`` they are
        reduced in the buckets and made sparse again."""
        if self._outside:
            self._synchronized = True
            return
        for i, n in enumerate(self._passes):
            if n < self._passes_per_step:
                self._own_gradient(i)
        if self._gb.launched < len(self._gb.buckets()):
            self._before_launch()
        sparse, resparsify = self._sparse, self._resparsify
        try:
            self._gb.wait_all()
        finally:
            self._reset()
        if sparse:
            waits = [(i, sparse_allreduce_async(g, op=self._op, process_set=self._process_set))
                     for i, g in sorted(sparse.items())]
            for i, wait in waits:
                self._params[i].grad = wait().coalesce()
        for i in sorted(resparsify):
            self._params[i].grad = self._grad_views[i].to_sparse()
        self._synchronized = True

    @contextlib.contextmanager
    def skip_synchronize(self) -> Iterator[None]:
        """Within this block, ``step()`` does not synchronize (use after an
        explicit :meth:`synchronize`, e.g. to clip gradients)."""
        self._should_synchronize = False
        try:
            yield
        finally:
            self._should_synchronize = True

    def step(self, closure: Any = None) -> Any:
        """Averages (or sums) the gradients across ranks unless
        :meth:`synchronize` already did in this step, then steps the wrapped
        optimizer. Must be called on all ranks."""
        if self._should_synchronize and self._synchronized:
            warnings.warn("optimizer.step() called without optimizer.skip_synchronize() after "
                          "optimizer.synchronize(): the gradients were reduced once, by synchronize(), "
                          "and are not reduced again; call step() inside "
                          "`with optimizer.skip_synchronize():` after synchronize().", UserWarning)
        if self._should_synchronize and not self._synchronized:
            self.synchronize()
        self._synchronized = False
        return self._distml_base.step(self, closure)

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Clears the gradients. With ``set_to_none`` (the default, as in
        torch), ``p.grad`` becomes None and the next backward's gradient is
        moved into the flat buffer by its hook; otherwise the buffer is zeroed
        and gradients accumulate into it.

        Raises:
            AssertionError: gradients of this step are being reduced (called
                between backward() and step()/synchronize()), as in Horovod.
        """
        if self._outside:
            return self._distml_base.zero_grad(self, set_to_none)
        if self._gb.pending or any(self._passes):
            raise AssertionError("optimizer.zero_grad() was called after loss.backward() but before "
                                 "optimizer.step() or optimizer.synchronize(); gradients are being reduced")
        if set_to_none:
            for p in self._params:
                p.grad = None
            return
        self._gb.zero()
        for i, p in enumerate(self._params):
            if p.grad is None or p.grad.data_ptr() != self._grad_views[i].data_ptr():
                p.grad = self._grad_views[i]

    def set_backward_passes_per_step(self, passes: int) -> None:
        if passes < 1:
            raise ValueError(f"backward_passes_per_step must be >= 1, not {passes}")
        self._passes_per_step = int(passes)

    def remove_hooks(self) -> None:
        """Detaches the gradient hooks (the optimizer stops reducing during backward)."""
        for h in self._hooks:
            h.remove()
        self._hooks = []


def _outside(process_set: Any) -> bool:
    """Whether ``process_set`` is an added set this rank is not in."""
    return (isinstance(process_set, ProcessSet) and process_set is not global_process_set
            and process_set.process_set_id is not None and not process_set.included())


def DistributedOptimizer(optimizer: torch.optim.Optimizer,
                         named_parameters: Optional[Iterable[Tuple[str, torch.Tensor]]] = None,
                         compression: Any = Compression.none, backward_passes_per_step: int = 1,
                         op: Any = Average, gradient_predivide_factor: float = 1.0,
                         num_groups: int = 0, groups: Any = None, sparse_as_dense: bool = False,
                         process_set: Any = None, bucket_bytes: int = _DEFAULT_BUCKET_BYTES) -> Any:
    """Wraps a torch optimizer so that ``step()`` uses gradients reduced over
    all ranks (averaged by default).

    Each parameter's gradient is a view of a flat per-dtype buffer; a
    post-accumulate-grad hook marks it ready, and as soon as a bucket
    (``bucket_bytes``) is complete its allreduce starts in the background,
    overlapping the rest of the backward pass. ``step()`` waits for them.

    Args:
        optimizer: any ``torch.optim.Optimizer`` over this rank's replica.
        named_parameters: (name, parameter) pairs, e.g.
            ``model.named_parameters()``; used for messages and checked to
            cover every parameter of the optimizer.
        compression: ``Compression.none``, ``.fp16`` or ``.bf16``: the core
            converts the wire format inside its buckets. A custom
            :class:`~distml.torch.compression.Compressor` raises ValueError here
            (it works with the ``allreduce`` functions, ``compression=``).
        backward_passes_per_step: backward passes accumulated locally per
            reduction (gradients are summed over them, not averaged).
        op: Average or Sum (Adasum raises ValueError).
        gradient_predivide_factor: must be 1.0 (distml's average divides
            once, inside the core).
        num_groups, groups: accepted for compatibility; fusion is by
            ``bucket_bytes`` instead.
        sparse_as_dense: reduce sparse gradients (``nn.Embedding(sparse=True)``)
            as dense ones in the buckets; without it they are reduced by
            allgathering their indices and values. ``p.grad`` is sparse
            again after the reduction either way.
        process_set: reduce over this :class:`~distml.torch.ProcessSet` only
            (default: all ranks). On a rank outside the set (as in Horovod)
            the optimizer steps on this rank's own gradients and never
            communicates.
        bucket_bytes: target bucket size (a distml extension; default 4 MiB).

    Returns:
        An instance of a subclass of ``type(optimizer)`` sharing its state
        and parameter groups.

    Raises:
        ValueError: Adasum or another unsupported op, a process set not
            added, gradient_predivide_factor != 1, unnamed parameters.

    Construction, ``step()`` and ``synchronize()`` must be called on all ranks
    (of ``process_set``; on ranks outside it they do not communicate).
    """
    if not _outside(process_set):
        mpi_ops._check_process_set(process_set)
    if gradient_predivide_factor != 1.0:
        raise ValueError("gradient_predivide_factor is not supported by distml.torch (use 1.0)")
    if bucket_bytes < 1:
        raise ValueError(f"bucket_bytes must be >= 1, not {bucket_bytes}")
    base = type(optimizer)
    namespace = {k: v for k, v in _DistributedOptimizer.__dict__.items() if k not in ("__dict__", "__weakref__")}
    namespace["_distml_base"] = base
    cls = type(base.__name__, (base,), namespace)
    wrapped = cls.__new__(cls)
    wrapped.__dict__.update(optimizer.__dict__)
    wrapped._distml_setup(named_parameters, compression, backward_passes_per_step, op, int(bucket_bytes),
                          sparse_as_dense, process_set)
    return wrapped


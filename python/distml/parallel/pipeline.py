"""Pipeline parallelism: a model cut into stages, one stage per rank, a batch
cut into micro-batches that flow through the stages.

Vocabulary, used by the names below:

- *stage* i: the part of the model that rank i of the pipeline communicator
  runs (a :class:`distml.nn.Module`). S stages.
- *micro-batch* m: ``numpy.array_split(batch, M)[m]``. M micro-batches.
- *F(m)* / *B(m)*: the forward / backward pass of micro-batch m on this
  stage. F(m) needs the activation of m from stage i-1 (stage 0: the
  input); B(m) needs the gradient of m from stage i+1 (the last stage: the
  loss).
- *alive*: micro-batch m is alive on a stage between its F(m) and B(m); its
  saved forward state (the activations backward needs) is held that long.

Schedules (the order of F and B on stage i; every stage runs B in
ascending m):

- ``"gpipe"``: F(0) .. F(M-1), then B(0) .. B(M-1). All M micro-batches are
  alive at once on every stage.
- ``"1f1b"`` (PipeDream-flush): ``w = min(S - 1 - i, M)`` warm-up forwards,
  then alternate one forward and one backward until the forwards run out,
  then the last ``w`` backwards. At most ``w + 1 <= S - i`` micro-batches are
  alive on stage i: activation memory is bounded by the number of stages,
  not of micro-batches.

Both schedules flush (all backwards of a step finish before the optimizer
steps), so both compute exactly the gradient of the whole batch, and both
leave the same idle time: with equal stage times, a fraction
``(S - 1) / (M + S - 1)`` of each stage's step (the *bubble*).

Messages, on a duplicate of the pipeline communicator that this object
owns: an activation is a small header (dtype and shape) and the data, sent
with ``Isend`` so the stage goes on computing while it travels; when stage i
sends the activation of m, it posts the ``Irecv`` for the gradient of m
(whose shape is that of the activation), so that gradient lands as soon as
stage i+1 sends it. The receive of an activation blocks: F(m) cannot start
without it. Tags are ``3 m + kind``.

Why this cannot deadlock: sends never block, and each stage's F(m) waits
only for F(m) on stage i-1 and its B(m) only for B(m) on stage i+1; in both
schedules those come earlier in their own stage's order than anything that
waits on this stage, so the wait graph has no cycle.

Per-micro-batch state: :mod:`distml.nn` modules keep what backward needs in
attributes whose names start with an underscore, one micro-batch at a time.
After F(m) the pipeline saves those attributes of every module of the stage
(references, no copies: forward rebinds them), and restores them before
B(m). Stage modules must keep their forward state that way.
"""

from __future__ import annotations

import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..nn import Module
from .data_parallel import _default_comm

__all__ = ["Pipeline", "schedule_ops"]

SCHEDULES = ("gpipe", "1f1b")
_HEADER_LEN = 8  # int64s: kind of dtype, itemsize, ndim, up to 5 dims
_ACT_HEADER, _ACT_DATA, _GRAD = range(3)


def schedule_ops(schedule: str, stages: int, stage: int, micro_batches: int) -> List[Tuple[str, int]]:
    """The ordered ``("F", m)`` / ``("B", m)`` operations of ``stage``.

    Raises:
        ValueError: unknown schedule or sizes out of range.
    """
    S, i, M = int(stages), int(stage), int(micro_batches)
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {SCHEDULES}, not {schedule!r}")
    if S < 1 or not 0 <= i < S or M < 1:
        raise ValueError(f"no stage {i} of {S} with {M} micro-batches")
    if schedule == "gpipe":
        return [("F", m) for m in range(M)] + [("B", m) for m in range(M)]
    warmup = min(S - 1 - i, M)
    ops = [("F", m) for m in range(warmup)]
    for k in range(M - warmup):
        ops += [("F", warmup + k), ("B", k)]
    ops += [("B", m) for m in range(M - warmup, M)]
    return ops


def _modules(root: Any) -> List[Any]:
    """``root`` and every module reachable through its attributes (lists and
    tuples included), each once, depth first."""
    found: List[Any] = []
    seen = set()

    def visit(obj: Any) -> None:
        if id(obj) in seen:
            return
        seen.add(id(obj))
        found.append(obj)
        for value in vars(obj).values():
            items = value if isinstance(value, (list, tuple)) else (value,)
            for item in items:
                if isinstance(item, Module):
                    visit(item)

    visit(root)
    return found


def _nbytes(values: Sequence[Any]) -> int:
    seen, total = set(), 0
    for v in values:
        if isinstance(v, np.ndarray) and id(v) not in seen:
            seen.add(id(v))
            total += v.nbytes
    return total


class Pipeline:
    """Runs ``stage`` as stage ``comm.rank`` of a ``comm.size``-stage pipeline.

    Args:
        stage: this rank's part of the model (a :class:`distml.nn.Module`,
            usually a Sequential); its input is the previous stage's output.
        comm: the pipeline group: a :class:`distml.Communicator` (for
            instance ``ProcessGrid.pipeline``) or mpi4py communicator
            (default :func:`distml.init`'s). Rank i runs stage i.
        micro_batches: M, the number of micro-batches a batch is split into.
        schedule: ``"1f1b"`` or ``"gpipe"`` (see the module docstring).

    Attributes (of the last :meth:`train_step`, this stage):
        peak_activations: the most micro-batches alive at once.
        peak_activation_bytes: the most bytes of saved forward state (and, on
            the last stage, of loss gradients waiting for backward) held at
            once.
        busy_time: seconds spent in forward, loss and backward.
        step_time: seconds the whole step took on this rank.
        events: ``(kind, m, start, stop)`` per F/B, times relative to the
            start of the step.

    Creation, :meth:`train_step`, :meth:`predict` and :meth:`free` must be
    called on all ranks of ``comm``.
    """

    def __init__(self, stage: Module, comm: Any = None, micro_batches: int = 4, schedule: str = "1f1b") -> None:
        from mpi4py import MPI

        if schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, not {schedule!r}")
        if isinstance(micro_batches, bool) or int(micro_batches) != micro_batches or micro_batches < 1:
            raise ValueError(f"micro_batches must be a positive int, not {micro_batches!r}")
        self.stage = stage
        self.comm = _default_comm(comm)
        self.micro_batches = int(micro_batches)
        self.schedule = schedule
        self.num_stages, self.stage_index = self.comm.size, self.comm.rank
        tag_ub = self.comm.mpi_comm.Get_attr(MPI.TAG_UB) or 32767
        if 3 * self.micro_batches > tag_ub:
            raise ValueError(f"{micro_batches} micro-batches need tags up to {3 * micro_batches}, above MPI's {tag_ub}")
        # Our own communicator: point-to-point traffic never mixes with the
        # caller's or distml's collectives.
        self._p2p = self.comm.mpi_comm.Dup()
        self._acc: Optional[List[np.ndarray]] = None
        self._mods = _modules(stage)
        self.peak_activations = 0
        self.peak_activation_bytes = 0
        self.busy_time = 0.0
        self.step_time = 0.0
        self.events: List[Tuple[str, int, float, float]] = []

    @property
    def is_first(self) -> bool:
        return self.stage_index == 0

    @property
    def is_last(self) -> bool:
        return self.stage_index == self.num_stages - 1

    # ---- messages ------------------------------------------------------------

    def _send_activation(self, y: np.ndarray, m: int, sends: list) -> None:
        y = np.ascontiguousarray(y)
        if y.ndim > _HEADER_LEN - 3:
            raise ValueError(f"activations of {y.ndim} dimensions are not supported")
        header = np.zeros(_HEADER_LEN, dtype=np.int64)
        header[:3] = (ord(y.dtype.kind), y.dtype.itemsize, y.ndim)
        header[3:3 + y.ndim] = y.shape
        dest = self.stage_index + 1
        sends.append((self._p2p.Isend(header, dest=dest, tag=3 * m + _ACT_HEADER), header))
        sends.append((self._p2p.Isend(y, dest=dest, tag=3 * m + _ACT_DATA), y))

    def _recv_activation(self, m: int) -> np.ndarray:
        header = np.empty(_HEADER_LEN, dtype=np.int64)
        source = self.stage_index - 1
        self._p2p.Recv(header, source=source, tag=3 * m + _ACT_HEADER)
        kind, itemsize, ndim = (int(v) for v in header[:3])
        x = np.empty(tuple(int(d) for d in header[3:3 + ndim]), dtype=np.dtype(f"{chr(kind)}{itemsize}"))
        self._p2p.Recv(x, source=source, tag=3 * m + _ACT_DATA)
        return x

    # ---- state of one micro-batch ----------------------------------------------

    def _save(self) -> List[Tuple[Any, Dict[str, Any]]]:
        return [(mod, {k: v for k, v in vars(mod).items() if k.startswith("_")}) for mod in self._mods]

    @staticmethod
    def _restore(saved: List[Tuple[Any, Dict[str, Any]]]) -> None:
        for mod, attrs in saved:
            for k, v in attrs.items():
                setattr(mod, k, v)

    def _accumulate(self, first: bool) -> None:
        grads = self.stage.grads()
        if not grads:
            return
        if self._acc is None or [a.shape for a in self._acc] != [g.shape for g in grads]:
            self._acc = [np.empty_like(g) for g in grads]
        for a, g in zip(self._acc, grads):
            if first:
                np.copyto(a, g)
            else:
                a += g

    # ---- the step ------------------------------------------------------------------

    def train_step(self, x: Optional[np.ndarray], y: Optional[np.ndarray], loss: Any) -> float:
        """Forward and backward of one batch through all stages.

        Splits the batch into micro-batches, runs this stage's schedule, and
        leaves in ``stage.grads()`` the gradient of the mean loss over the
        whole batch (the micro-batches' gradients, each weighted by its share
        of the rows, summed). Does not step an optimizer.

        Args:
            x: the batch's input; used on the first stage (others may pass None).
            y: the labels; used on the last stage (others may pass None).
            loss: on the last stage, an object like
                :class:`distml.nn.SoftmaxCrossEntropy`: ``loss(output, labels)``
                returns the mean over the rows and ``loss.backward()`` its
                gradient.

        Returns:
            The mean loss over the batch, on every rank.

        Must be called on all ranks of the pipeline communicator.
        """
        M = self.micro_batches
        if self.is_first and x is None:
            raise ValueError("the first stage needs the input x")
        if self.is_last and y is None:
            raise ValueError("the last stage needs the labels y")
        self._mods = _modules(self.stage)
        x_parts = np.array_split(x, M) if self.is_first else None
        y_parts = np.array_split(np.asarray(y), M) if self.is_last else None
        total_rows = len(y) if self.is_last else 0

        sends: list = []
        grad_recvs: Dict[int, Tuple[Any, np.ndarray]] = {}
        alive: Dict[int, Tuple[list, int]] = {}  # m -> (saved state, bytes)
        loss_grads: Dict[int, np.ndarray] = {}
        loss_sum = 0.0
        alive_bytes = 0
        self.peak_activations = self.peak_activation_bytes = 0
        self.events = []
        busy = 0.0
        start = time.perf_counter()
        first_backward = True
        for kind, m in schedule_ops(self.schedule, self.num_stages, self.stage_index, M):
            if kind == "F":
                xin = x_parts[m] if self.is_first else self._recv_activation(m)
                t0 = time.perf_counter()
                out = self.stage.forward(xin)
                if self.is_last:
                    rows = len(y_parts[m])
                    value = loss(out, y_parts[m])
                    weight = rows / total_rows if total_rows else 0.0
                    loss_sum += weight * value
                    loss_grads[m] = loss.backward() * np.asarray(weight, dtype=out.dtype)
                t1 = time.perf_counter()
                if not self.is_last:
                    self._send_activation(out, m, sends)
                    g = np.empty(out.shape, dtype=out.dtype)
                    grad_recvs[m] = (self._p2p.Irecv(g, source=self.stage_index + 1, tag=3 * m + _GRAD), g)
                saved = self._save()
                nbytes = _nbytes([v for _, attrs in saved for v in attrs.values()]
                                 + ([loss_grads[m]] if m in loss_grads else []))
                alive[m] = (saved, nbytes)
                alive_bytes += nbytes
                self.peak_activations = max(self.peak_activations, len(alive))
                self.peak_activation_bytes = max(self.peak_activation_bytes, alive_bytes)
            else:
                saved, nbytes = alive.pop(m)
                self._restore(saved)
                if self.is_last:
                    g = loss_grads.pop(m)
                else:
                    request, g = grad_recvs.pop(m)
                    request.Wait()
                t0 = time.perf_counter()
                grad_in = self.stage.backward(g)
                self._accumulate(first_backward)
                first_backward = False
                t1 = time.perf_counter()
                alive_bytes -= nbytes
                if not self.is_first:
                    grad_in = np.ascontiguousarray(grad_in)
                    sends.append((self._p2p.Isend(grad_in, dest=self.stage_index - 1, tag=3 * m + _GRAD), grad_in))
            busy += t1 - t0
            self.events.append((kind, m, t0 - start, t1 - start))
        for request, _ in sends:
            request.Wait()
        if self._acc is not None:
            for g, a in zip(self.stage.grads(), self._acc):
                np.copyto(g, a)
        self.busy_time = busy
        self.step_time = time.perf_counter() - start
        value = np.array([loss_sum], dtype=np.float64)
        self._p2p.Bcast(value, root=self.num_stages - 1)
        return float(value[0])

    def predict(self, x: Optional[np.ndarray]) -> np.ndarray:
        """The model's output for ``x`` (forward only, micro-batched), on
        every rank.

        Args:
            x: the input; used on the first stage (others may pass None).

        Must be called on all ranks of the pipeline communicator.
        """
        M = self.micro_batches
        if self.is_first and x is None:
            raise ValueError("the first stage needs the input x")
        sends: list = []
        outputs = []
        for m in range(M):
            xin = np.array_split(x, M)[m] if self.is_first else self._recv_activation(m)
            out = self.stage.forward(xin)
            if self.is_last:
                outputs.append(out)
            else:
                self._send_activation(out, m, sends)
        for request, _ in sends:
            request.Wait()
        result = np.concatenate(outputs) if self.is_last else None
        return self._p2p.bcast(result, root=self.num_stages - 1)

    def free(self) -> None:
        """Frees the pipeline's own communicator. Must be called on all ranks."""
        from mpi4py import MPI

        if self._p2p != MPI.COMM_NULL:
            self._p2p.Free()

    def __repr__(self) -> str:
        return (f"<distml.parallel.Pipeline stage {self.stage_index} of {self.num_stages}, "
                f"{self.micro_batches} micro-batches, {self.schedule}>")

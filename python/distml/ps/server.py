"""The parameter server: sharded parameters, push/pull, sync / bounded / async.

Every rank runs the same script and constructs the same
:class:`ParameterServer`. The flattened parameters are split evenly into one
contiguous shard per server rank; each server keeps its shard and the
optimizer state for it, and applies the optimizer when gradients arrive.
Servers answer requests on a progress thread of the compiled core, so a
colocated rank (every rank serves, ``servers=None``) serves its shard while
its Python code computes; the thread polls MPI and sleeps between polls (it
never spins), and needs no GIL (the optimizers are implemented in C++ after
:mod:`distml.optim`'s rules). docs/ps.md explains the design.
"""

from __future__ import annotations

import os
import pickle
import zlib
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from .. import _core
from .._dtypes import bfloat16, dtype_code
from .._errors import CommunicatorError, MismatchError
from .. import optim as _optim

__all__ = ["ParameterServer"]

_MODES = ("sync", "bounded", "async")
_WIRE = {None: None, "fp16": np.dtype(np.float16), "float16": np.dtype(np.float16),
         "bf16": bfloat16, "bfloat16": bfloat16}
# Codes of csrc/ps/optimizer.h (OptimizerKind).
_SGD, _ADAM, _ADAMW = 0, 1, 2


def _optimizer_kind(cls: Any) -> int:
    if not isinstance(cls, type):
        raise TypeError(f"optimizer_cls must be a class from distml.optim, not {type(cls).__name__}")
    if issubclass(cls, _optim.AdamW):
        return _ADAMW
    if issubclass(cls, _optim.Adam):
        return _ADAM
    if issubclass(cls, _optim.SGD):
        return _SGD
    raise TypeError(f"optimizer_cls must be distml.optim.SGD, Adam or AdamW (or a subclass), not {cls.__name__}")


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "").strip()
    return int(value) if value else default


class ParameterServer:
    """Parameters held in shards by server ranks; workers push gradients and
    pull parameters at their own pace.

    Args:
        params: list of numpy arrays (float32 or float64, one dtype for all,
            C-contiguous and writable). Rank 0's values are the start; every
            rank passes arrays of the same shapes and dtype. ``pull()`` and
            ``close()`` write into them.
        optimizer_cls: ``distml.optim.SGD``, ``Adam`` or ``AdamW``; it runs on
            the servers, each on the shard it owns (its state lives only
            there: per-rank optimizer state ~ 1/number of servers).
        comm: a :class:`distml.Communicator` (default: ``distml.init()``).
        mode: ``"sync"`` (the average of every worker's clock-c gradients is
            applied once; equal to :class:`distml.DistributedOptimizer`),
            ``"bounded"`` (stale synchronous parallel: a worker at clock c
            waits only while some worker is below clock c - staleness), or
            ``"async"`` (each push applied on arrival as its own step with the
            learning rate divided by the number of workers; pulls never wait).
        staleness: the bound s of ``"bounded"`` (0 equals ``"sync"``).
        servers: None: every rank also serves a shard (colocated); an int k:
            the last k ranks only serve (dedicated). On a dedicated server the
            constructor serves until every worker has called :meth:`close`,
            then returns with ``params`` holding the final values and
            ``is_server`` true.
        compression: None, ``"fp16"`` or ``"bf16"``: the wire format of pushed
            gradients (servers widen them to the parameters' dtype).
        timeout: seconds a worker waits for the servers, and a server for a
            worker that a sync/bounded pull or a close depends on (default:
            the communicator's timeout; None: no limit). A server gives up
            on a transfer that makes no progress for 3/4 of it (see below).
        **optimizer_kwargs: the optimizer's hyperparameters (``lr``,
            ``momentum``, ``betas``, ...), checked by the optimizer's own
            constructor.

    Raises:
        TypeError, ValueError: bad arguments (on the rank that passed them;
            arguments that must agree are compared first, see below).
        distml.MismatchError: ranks passed different shapes, dtypes, modes,
            layouts, optimizers or hyperparameters (on every rank).
        distml.CommTimeoutError: (dedicated servers) a worker never pushed a
            clock a pull waited for, or never closed, or was lost (below).

    A worker that stalls in the middle of a transfer with a server (a push
    whose pieces stop arriving, a reply it stops taking) for 3/4 of the
    timeout: in sync/bounded mode that server fails, and every worker's
    next request to it raises CommTimeoutError naming the stalled worker.
    In async mode the server gives up on that worker alone (it is *lost*)
    and serves the others on: their ``stats()["lost_workers"]`` name it,
    and ``close()`` raises CommTimeoutError naming it as soon as every
    other worker has closed. The lost worker's last push or step stays
    applied to the pieces of the shard received in full before the stall
    and is dropped on the rest (each piece is applied only once received in
    full): every element holds all of that update or none of it. Its later
    calls, should it resume, raise CommTimeoutError. docs/ps.md, Failures.

    Must be called on all ranks of ``comm``.
    """

    def __init__(self, params: Sequence[np.ndarray], optimizer_cls: Any, comm: Any = None, mode: str = "async",
                 staleness: Optional[int] = None, servers: Optional[int] = None,
                 compression: Optional[str] = None, timeout: Optional[float] = None,
                 **optimizer_kwargs: Any) -> None:
        import distml

        self._core: Any = None
        self._closed = False
        comm = distml.init() if comm is None else comm
        if not isinstance(comm, distml.Communicator):
            raise TypeError(f"comm must be a distml.Communicator, not {type(comm).__name__}")
        self.comm = comm
        P = comm.size
        params = list(params)
        if not params:
            raise ValueError("ParameterServer got an empty parameter list")
        for i, p in enumerate(params):
            if not isinstance(p, np.ndarray):
                raise TypeError(f"parameter {i} is a {type(p).__name__}, expected a numpy.ndarray")
            if p.dtype not in (np.float32, np.float64):
                raise TypeError(f"parameter {i} has dtype {p.dtype}; the parameter server holds float32 or float64")
            if p.dtype != params[0].dtype:
                raise TypeError(f"parameter {i} has dtype {p.dtype}, parameter 0 {params[0].dtype}: use one dtype")
            if not (p.flags.c_contiguous and p.flags.writeable):
                raise ValueError(f"parameter {i} must be C-contiguous and writable (pulls write into it)")
        if mode not in _MODES:
            raise ValueError(f"mode must be one of {_MODES}, not {mode!r}")
        if mode == "bounded":
            if isinstance(staleness, bool) or not isinstance(staleness, (int, np.integer)) or staleness < 0:
                raise ValueError(f"mode='bounded' needs staleness=s, an int >= 0, not {staleness!r}")
        elif staleness not in (None, 0) or (mode == "async" and staleness is not None):
            raise ValueError(f"staleness is for mode='bounded' (sync is staleness 0), not mode={mode!r}")
        s = int(staleness or 0)
        if servers is None:
            server_ranks = list(range(P))
        else:
            if isinstance(servers, bool) or not isinstance(servers, (int, np.integer)) or not 1 <= servers < P:
                raise ValueError(f"servers must be None (colocated) or an int from 1 to {P - 1} (dedicated), "
                                 f"not {servers!r}")
            server_ranks = list(range(P - int(servers), P))
        if compression not in _WIRE:
            raise ValueError(f"compression must be None, 'fp16' or 'bf16', not {compression!r}")
        kind = _optimizer_kind(optimizer_cls)
        dtype = params[0].dtype
        # The optimizer's own constructor checks the hyperparameters.
        reference = optimizer_cls([np.zeros(1, dtype=dtype)], **optimizer_kwargs)
        hyper = dict(reference.defaults)
        if timeout is None:
            timeout = comm.timeout
        if timeout is not None and not timeout > 0:
            raise ValueError(f"timeout must be a positive number of seconds or None, not {timeout!r}")

        self.params: List[np.ndarray] = params
        self.mode = mode
        self.staleness = s if mode != "async" else None
        self.compression = compression
        self.timeout = timeout
        self.dtype = dtype
        self._wire = _WIRE[compression] or dtype
        self._shapes = [p.shape for p in params]
        self._sizes = [p.size for p in params]
        self._total = int(sum(self._sizes))
        self._server_ranks = server_ranks
        self.optimizer_cls = optimizer_cls
        self.optimizer_kwargs = hyper

        # The size of a pushed gradient's messages (a server applies each
        # piece as it arrives); both sides cut pushes at it, so it must agree.
        piece_bytes = _env_int("DISTML_PS_PIECE_BYTES", 1 << 21)
        if piece_bytes <= 0:
            raise ValueError(f"DISTML_PS_PIECE_BYTES must be a positive number of bytes, not {piece_bytes}")
        # How many workers' pushes a server receives at once (0: all).
        max_in_flight = _env_int("DISTML_PS_MAX_IN_FLIGHT", 1)
        if max_in_flight < 0:
            raise ValueError(f"DISTML_PS_MAX_IN_FLIGHT must be >= 0 (0: no limit), not {max_in_flight}")
        self._agree([
            ("shapes", [tuple(sh) for sh in self._shapes]), ("dtype", str(dtype)), ("mode", mode),
            ("staleness", self.staleness), ("servers", servers), ("compression", compression),
            ("optimizer", optimizer_cls.__name__), ("hyperparameters", sorted(hyper.items())),
            ("timeout", timeout), ("DISTML_PS_PIECE_BYTES", piece_bytes),
            ("DISTML_PS_MAX_IN_FLIGHT", max_in_flight),
        ])
        for p in params:
            comm.broadcast(p, root=0)

        self._core = _core.ParameterServer(
            comm.mpi_comm.py2f(), int(dtype_code(dtype)), int(dtype_code(self._wire)), [int(n) for n in self._sizes], server_ranks,
            1 if mode == "async" else 0, s, kind, hyper, float(timeout or 0.0),
            _env_int("DISTML_PS_POLL_MIN_US", 20), _env_int("DISTML_PS_POLL_MAX_US", 1000), params, piece_bytes,
            max_in_flight)
        self._flat_wire: Optional[np.ndarray] = None
        if self._core.is_worker:
            self._core.start_progress()
        else:
            self._core.serve(params)
            self._closed = True

    # ---- agreement ---------------------------------------------------------

    def _agree(self, fields: list) -> None:
        """MismatchError on every rank where ranks' arguments differ."""
        comm = self.comm
        blob = pickle.dumps(fields)
        mine = np.array([zlib.crc32(blob), len(blob)], dtype=np.int64)
        every = comm.allgather(mine).reshape(comm.size, 2)
        if (every == every[0]).all():
            return
        described = comm.allgatherv(np.frombuffer(blob, dtype=np.uint8))
        per_rank, at = [], 0
        for n in every[:, 1]:
            per_rank.append(dict(pickle.loads(described[at:at + int(n)].tobytes())))
            at += int(n)
        problems = []
        for name, _ in fields:
            values = [d[name] for d in per_rank]
            odd = [r for r, v in enumerate(values) if v != values[0]]
            if odd:
                problems.append(f"{name} differs on rank(s) {odd} from rank 0 ({values[odd[0]]!r} vs {values[0]!r})")
        raise MismatchError("ParameterServer arguments differ across ranks: " + "; ".join(problems))

    # ---- properties --------------------------------------------------------

    @property
    def is_server(self) -> bool:
        """True on a rank that serves a shard (every rank when colocated)."""
        return self._core.is_server

    @property
    def is_worker(self) -> bool:
        """True on a rank that pushes and pulls (every rank when colocated)."""
        return self._core.is_worker

    @property
    def clock(self) -> int:
        """This worker's number of pushes."""
        return int(self._core.worker_stats()["clock"])

    @property
    def server_ranks(self) -> List[int]:
        return list(self._server_ranks)

    @property
    def shard_bounds(self) -> List[int]:
        """Server i owns flat elements [bounds[i], bounds[i+1])."""
        return list(self._core.bounds)

    # ---- worker calls ------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise CommunicatorError("the parameter server was closed")

    def _arrays(self, arrays: Sequence[Any], what: str) -> List[np.ndarray]:
        arrays = list(arrays)
        if len(arrays) != len(self._shapes):
            raise ValueError(f"{what} got {len(arrays)} arrays for {len(self._shapes)} parameters")
        out = []
        for i, (a, shape) in enumerate(zip(arrays, self._shapes)):
            a = np.asarray(a)
            if a.shape != shape:
                raise ValueError(f"{what}: array {i} has shape {a.shape}, parameter {i} has shape {shape}")
            out.append(a)
        return out

    def push(self, grads: Sequence[Any]) -> None:
        """Hands this worker's gradients to the servers (one clock).

        Returns once the gradients are handed off; in async mode it never
        waits for other workers. In sync/bounded mode a worker that pushes
        again without pulling waits there for the staleness bound.

        Args:
            grads: one array per parameter, of its shape (any float dtype;
                converted to the parameters' dtype or the compression format).

        Raises:
            ValueError: wrong number or shapes of gradients.
            distml.CommTimeoutError: a server did not take them in time.
            distml.CommunicatorError: after close(), or once broken.
        """
        self._check_open()
        self._core.push(self._wire_pieces(grads, "push"))

    def _wire_pieces(self, grads: Sequence[Any], what: str) -> List[np.ndarray]:
        # The gradients as the core sends them: contiguous arrays of the
        # parameters' dtype, or one flat array of the compression format.
        grads = self._arrays(grads, what)
        if self._wire == self.dtype:
            pieces = [g if (g.dtype == self.dtype and g.flags.c_contiguous) else np.ascontiguousarray(g, self.dtype)
                      for g in grads]
        else:
            if self._flat_wire is None:
                self._flat_wire = np.empty(self._total, dtype=self._wire)
            at = 0
            for g, n in zip(grads, self._sizes):
                self._flat_wire[at:at + n] = g.reshape(-1)
                at += n
            pieces = [self._flat_wire]
        return pieces

    def pull(self, out: Optional[Sequence[np.ndarray]] = None) -> List[np.ndarray]:
        """Copies the latest parameters into ``out`` (default: the ``params``
        given to the constructor), in place.

        In sync mode it waits for the update of this worker's clock; in
        bounded mode until every worker has reached clock - staleness; in
        async mode it returns what the servers hold now.

        Returns:
            ``out``.

        Raises:
            TypeError, ValueError: ``out`` of the wrong dtype or shapes.
            distml.CommTimeoutError: a worker this pull waits for did not push
                in time (naming it), or a server did not answer (naming it).
            distml.CommunicatorError: after close(), or once broken.
        """
        self._check_open()
        targets, direct = self._targets(out, "pull")
        self._core.pull(direct)
        return self._copy_back(targets, direct)

    def _targets(self, out: Optional[Sequence[np.ndarray]], what: str):
        # The arrays the caller gets, and the contiguous ones the core writes.
        targets = self.params if out is None else self._arrays(out, what)
        direct = []
        for i, a in enumerate(targets):
            if a.dtype != self.dtype:
                raise TypeError(f"{what}: out[{i}] has dtype {a.dtype}, the parameters {self.dtype}")
            if not a.flags.writeable:
                raise ValueError(f"{what}: out[{i}] is read-only")
            direct.append(a if a.flags.c_contiguous else np.empty(a.shape, a.dtype))
        return targets, direct

    @staticmethod
    def _copy_back(targets: Sequence[np.ndarray], direct: Sequence[np.ndarray]) -> List[np.ndarray]:
        for a, d in zip(targets, direct):
            if a is not d:
                a[...] = d
        return list(targets)

    def step(self, grads: Sequence[Any], out: Optional[Sequence[np.ndarray]] = None) -> List[np.ndarray]:
        """``push(grads)`` then ``pull(out)``, with the same results, waits
        and exceptions.

        In async mode it is one request per server: the gradients go out in
        pieces and each server sends back each piece of its shard as soon as
        it has applied it, so the reply overlaps the update (and the shard
        is read while in cache). The parameters returned include this
        worker's own update, as a pull right after the push would.

        Returns:
            ``out`` (default: the ``params`` given to the constructor).
        """
        self._check_open()
        pieces = self._wire_pieces(grads, "step")
        targets, direct = self._targets(out, "step")
        self._core.step(pieces, direct)
        return self._copy_back(targets, direct)

    def stats(self) -> Dict[str, Any]:
        """Counters of this rank.

        Returns:
            A dict: ``clock``, ``updates_applied`` (the smallest shard version
            in this worker's last pull: clocks applied in sync/bounded mode,
            pushes applied in async mode), ``max_staleness`` (sync/bounded:
            the most clocks of its own a pull's parameters lacked; async: the
            most updates applied to a shard between this worker's pull and
            its next gradient's application), ``bytes_pushed``,
            ``bytes_pulled``, ``wait_seconds`` (blocked in push/pull),
            ``wait_for_server_seconds`` (the part of ``wait_seconds`` in
            pulls, steps and closes before every server had begun
            answering: queued behind other workers, or waiting for a clock),
            ``shard_versions`` (per server, the shard version its last reply
            to this worker carried; after an async step, the version that
            step's update made), ``lost_workers`` (async: the workers the
            servers have given up on, as their replies to this worker
            named them), and on server ranks ``server`` (a dict:
            ``updates_applied``, ``applied_per_worker`` by rank,
            ``max_staleness``, ``optimizer_state_bytes``, ``shard_elements``,
            ``bytes_received``, ``bytes_sent``, ``busy_seconds`` in updates,
            ``most_in_flight``: the most pushes or steps, of different
            workers, the server was receiving at once, ``lost_workers``:
            the workers this server has given up on, in that order) and
            ``progress_cpu_seconds`` (the progress thread's CPU time so far,
            while it runs).
        """
        out: Dict[str, Any] = dict(self._core.worker_stats())
        if self._core.is_server:
            out["server"] = dict(self._core.server_stats())
            cpu = self._core.progress_cpu_seconds()
            if cpu >= 0:
                out["progress_cpu_seconds"] = cpu
        return out

    def close(self) -> None:
        """Drains every pending push; afterwards every rank's ``params`` hold
        the same final values. Later push/pull calls raise CommunicatorError.

        Raises:
            distml.CommTimeoutError: a worker never closed, or a server never
                answered, within the timeout (naming it); or a server has
                given up on a worker (async: lost in the middle of a
                transfer), at once when every other worker has closed
                (naming it).

        Must be called on all worker ranks (dedicated servers have closed in
        their constructor; calling it there does nothing).
        """
        if self._closed:
            return
        try:
            self._core.close(self.params)
        finally:
            self._closed = True

    def __enter__(self) -> "ParameterServer":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        layout = "colocated" if len(self._server_ranks) == self.comm.size else f"{len(self._server_ranks)} dedicated"
        mode = f"bounded(s={self.staleness})" if self.mode == "bounded" else self.mode
        return (f"<distml.ps.ParameterServer {mode}, {layout} servers, {self._total} parameters, "
                f"{self.optimizer_cls.__name__}>")

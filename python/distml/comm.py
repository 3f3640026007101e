"""The Communicator: numpy arrays in, collectives of the compiled core out.

This layer validates arguments (before any communication), prepares
contiguous buffers and output arrays, and hands raw pointers to the core.
Every collective must be called on all ranks of the communicator, in the
same order.
"""

from __future__ import annotations

import atexit
import math
import os
import weakref
from typing import Any, Callable, Optional

import numpy as np

from . import _core
from ._dtypes import _DTYPE_CODES, dtype_code, op_code
from ._errors import DistmlError
from ._partition import part_size

__all__ = ["Communicator", "Handle"]

# The core's codes of collectives; _NO_OP stands for the operator of those
# that do not reduce. The core's calls take them as plain ints, which convert
# faster than its enum members (those are accepted too, and the general
# paths pass dtype_code's and op_code's).
_K = _core.Kind
_ALLREDUCE, _REDUCE, _BROADCAST, _ALLGATHER, _REDUCE_SCATTER, _ALLTOALL, _BARRIER = (
    int(_K.allreduce), int(_K.reduce), int(_K.broadcast), int(_K.allgather), int(_K.reduce_scatter),
    int(_K.alltoall), int(_K.barrier))
_ALLTOALLV, _ALLGATHERV = int(_K.alltoallv), int(_K.allgatherv)
_NO_OP = int(_core.Op.sum)
_U8 = int(_core.DType.uint8)

# The short paths' codes as ints: every dtype the core knows, and the
# (op, dtype) pairs named by strings seen so far (filled by _short_op).
_DTYPE_INTS = {dtype: int(code) for dtype, code in _DTYPE_CODES.items()}
_OP_INTS: dict = {}


def _short_op(op: Any, dtype: np.dtype) -> Optional[int]:
    """The code of ``op`` (a string) on ``dtype``, or None where op_code
    would raise (the general path then raises it) or ``op`` is no string."""
    if not isinstance(op, str):
        return None
    try:
        code = int(op_code(op, dtype))
    except (TypeError, ValueError):
        return None
    if len(_OP_INTS) < 1024:
        _OP_INTS[(op, dtype)] = code
    return code

_live: "weakref.WeakSet[Communicator]" = weakref.WeakSet()


_created = 0  # communicators created by this process so far


def _abandon_all() -> None:
    # Registered after mpi4py's own exit handler, so it runs before
    # MPI_Finalize: background threads stop (after the work queued on them).
    # Nothing is freed here: freeing is collective, and whether every rank
    # reaches this point together is not known (one may be leaving on an
    # exception). MPI_Finalize releases what is left. Communicators the
    # program made itself and never freed are named on stderr, as leaks.
    import sys

    for comm in sorted(_live, key=lambda c: c._order, reverse=True):
        if comm._freed:
            continue
        comm._freed = True
        comm._core.abandon()
        if comm._created_at is not None:
            sys.stderr.write(
                f"distml: warning: the communicator created at {comm._created_at} was never freed; it is "
                "left to MPI_Finalize (call free() on all ranks, or use it in a with block)\n"
            )


atexit.register(_abandon_all)


# Size settings of the schedules that the environment may set (bytes):
# variable -> attribute of the core communicator.
_SHM_SIZE_ENV = {
    "DISTML_CARRY_BYTES": "carry_bytes",
    "DISTML_SHM_ONE_SHOT_BYTES": "shm_one_shot_bytes",
    "DISTML_SHM_SINGLE_COPY_BYTES": "shm_single_copy_bytes",
    "DISTML_SHM_SINGLE_COPY_MAX_BYTES": "shm_single_copy_max_bytes",
    "DISTML_SHM_SINGLE_COPY_BLOCKS_BYTES": "shm_single_copy_blocks_bytes",
    "DISTML_SHM_STREAM_BYTES": "shm_stream_bytes",
}


# New results (``y = comm.allreduce(x)``) from this size on come from the
# communicator's result pool (see Communicator._empty); smaller ones from
# numpy, whose allocator already reuses small blocks (allreduce's short
# path in the core makes those itself, below the same size).
_POOL_MIN_BYTES = _core.SHORT_FRESH_MAX_BYTES
_POOL_DEFAULT_CAP = 1 << 30


def _pool_cap() -> int:
    cap = _env_bytes("DISTML_RESULT_POOL_BYTES")
    return _POOL_DEFAULT_CAP if cap is None else cap


_BYTE_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}


def _env_bytes(name: str) -> Optional[int]:
    """The size in environment variable ``name``: a whole number of bytes,
    optionally with a binary unit (64K, 8M, 1G; KiB, MiB, GiB too); None
    where it is unset or empty."""
    value = os.environ.get(name)
    if value is None or value.strip() == "":
        return None
    text = value.strip().lower()
    for suffix in ("ib", "b"):
        if text.endswith(suffix) and text[:-len(suffix)][-1:] in ("k", "m", "g"):
            text = text[:-len(suffix)]
            break
    unit = text[-1:] if text[-1:] in ("k", "m", "g") else ""
    number = text[:-1] if unit else text
    try:
        count: Optional[float] = float(number)
    except ValueError:
        count = None
    if count is None or not math.isfinite(count) or (not unit and not count.is_integer()):
        raise ValueError(f"{name}={value!r} is not a number of bytes (examples: 65536, 64K, 8M, 1G)")
    if count < 0:
        raise ValueError(f"{name}={value!r} is negative")
    return int(count * _BYTE_UNITS[unit])


def _caller() -> str:
    """Where user code created a communicator (file:line), for leak reports."""
    import sys

    frame = sys._getframe(1)
    here = os.path.dirname(os.path.abspath(__file__))
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(here):
        frame = frame.f_back
    return "an unknown place" if frame is None else f"{frame.f_code.co_filename}:{frame.f_lineno}"


def _env_float(name: str) -> Optional[float]:
    value = os.environ.get(name)
    if value is None or value == "":
        return None
    try:
        return float(value)
    except ValueError:
        raise ValueError(f"{name}={value!r} is not a number of seconds") from None


def _env_flag(name: str) -> bool:
    """Environment variable ``name`` as a switch that is on unless set to
    0, false, no or off."""
    return os.environ.get(name, "1").strip().lower() not in ("0", "false", "no", "off")


def _as_array(x: Any, argname: str = "x") -> np.ndarray:
    """``x`` as a numpy array, without a copy where numpy can avoid one."""
    if isinstance(x, np.ndarray):
        arr = x
    elif hasattr(x, "__dlpack__") and not hasattr(x, "__array_interface__"):
        arr = np.from_dlpack(x)
    else:
        arr = np.asarray(x)
    dtype_code(arr.dtype, argname)
    return arr


def _check_out(out: Any, shape: tuple, dtype: np.dtype) -> np.ndarray:
    if not isinstance(out, np.ndarray):
        raise TypeError(f"out must be a numpy.ndarray, not {type(out).__name__}")
    if out.dtype != dtype:
        raise TypeError(f"out has dtype {out.dtype}, expected {dtype}")
    if out.shape != tuple(shape):
        raise ValueError(f"out has shape {out.shape}, expected {tuple(shape)}")
    if not out.flags.writeable:
        raise ValueError("out is read-only")
    return out


def _same_buffer(a: np.ndarray, b: np.ndarray) -> bool:
    if a is b:
        return True
    return (
        np.may_share_memory(a, b)
        and a.__array_interface__["data"][0] == b.__array_interface__["data"][0]
        and a.shape == b.shape
        and a.strides == b.strides
    )


def _delivery(dst: Optional[np.ndarray], ret: Optional[np.ndarray]) -> Callable[[], Any]:
    """What runs once a collective is done: copy the core's result ``dst``
    into the array the caller gets (``ret``, when they differ: a
    non-contiguous ``out=`` or input) and return that array."""

    def finish() -> Any:
        if ret is not None and dst is not ret:
            ret[...] = dst
        return ret

    return finish


def _shape_list(shape: tuple) -> list:
    return [int(d) for d in shape]


class Handle:
    """An async collective in flight (from ``async_op=True``).

    ``wait()`` blocks until it completes and returns the collective's result,
    raising its error if it failed; ``test()`` says whether it has completed.
    The arrays passed to the collective must not be modified or resized until
    ``wait()`` returns.
    """

    def __init__(self, work: Any, finish: Callable[[], Any], keep: tuple) -> None:
        self._work = work
        self._finish = finish
        self._keep = keep  # arrays the core reads or writes until done
        self._done = False
        self._result: Any = None

    def wait(self) -> Any:
        if not self._done:
            self._work.wait()
            self._result = self._finish()
            self._done = True
            self._keep = ()
        return self._result

    def test(self) -> bool:
        return self._done or bool(self._work.test())

    def __repr__(self) -> str:
        return f"<distml.Handle {'done' if self.test() else 'pending'}>"


class Communicator:
    """A group of ranks that run collectives together.

    Wraps a duplicate of an mpi4py communicator, so that distml's messages
    never mix with the caller's own traffic on ``comm``.

    Args:
        comm: an mpi4py intracommunicator (default ``MPI.COMM_WORLD``).
        timeout: seconds a collective may take before it raises
            :class:`distml.CommTimeoutError` (default: ``DISTML_TIMEOUT``, or
            no timeout).
        check: compare each collective's arguments across ranks and raise
            :class:`distml.MismatchError` where they differ (default: on,
            unless ``DISTML_CHECK=0``).
        segment_bytes: size of the pieces large messages move in (tuning and
            tests).
        stall_warning: with a timeout, seconds after which a rank (rank 0, or on
            one node the lowest-numbered rank present) warns on
            stderr about ranks that have not arrived at a collective
            (default: ``DISTML_STALL_WARNING``, or half the timeout).
        shared_memory: use node-shared memory (the "shm" and "hierarchical"
            algorithms) where the ranks share nodes (default: on, unless
            ``DISTML_SHM=0``). ``DISTML_SHM_SLOT_BYTES`` tunes its chunk
            size, ``DISTML_SHM_ONE_SHOT_BYTES`` the size up to which
            allreduce takes one step, ``DISTML_SHM_SINGLE_COPY_BYTES`` and
            ``DISTML_SHM_SINGLE_COPY_MAX_BYTES`` the sizes between which
            allreduce reads peers' arrays directly,
            ``DISTML_SHM_SINGLE_COPY_BLOCKS_BYTES`` the size from which
            allgather, reduce_scatter and alltoall move blocks between
            the ranks' arrays directly, and
            ``DISTML_SHM_STREAM_BYTES`` the size from which results are
            written past the cache (streaming stores).
        tune: let ``algorithm="auto"`` follow the table measured by
            ``python -m distml.tune`` for this world size and topology, if
            there is one (see :mod:`distml.tune`).

    New arrays that collectives return (when no ``out=`` is given) of 128 KiB
    or more come from a pool of memory that stays mapped: an array's memory
    goes back to the pool when the array and all its views are gone, and the
    next result of a similar size reuses it, so a collective does not spend
    its time faulting in fresh pages. At most ``DISTML_RESULT_POOL_BYTES``
    (default 1 GiB; 0 turns the pool off) of returned memory is kept, and
    :meth:`free` releases it. (Such arrays do not own their data: numpy's
    ``ndarray.resize`` refuses them.)

    With a timeout, every collective starts with an arrival round through
    rank 0 (which also carries the mismatch check), so that a timeout can
    name the ranks that never arrived. Where the ranks do not share one
    node, an allreduce of at most ``DISTML_CARRY_BYTES`` (default 8 KiB)
    moves its data in that round, or in the mismatch check's own messages
    without a timeout, instead of after it. Without a timeout and with one
    rank per node, every recursive-doubling allreduce (up to 64 KiB)
    carries the check, unless ``DISTML_CARRY_BYTES`` is 0.

    Creating a communicator must be done on all ranks of ``comm``.
    """

    def __init__(
        self,
        comm: Any = None,
        *,
        timeout: Optional[float] = None,
        check: Optional[bool] = None,
        segment_bytes: Optional[int] = None,
        stall_warning: Optional[float] = None,
        tune: bool = True,
        shared_memory: Optional[bool] = None,
    ) -> None:
        from mpi4py import MPI

        if comm is None:
            comm = MPI.COMM_WORLD
        if not isinstance(comm, MPI.Intracomm):
            raise TypeError(f"comm must be an mpi4py intracommunicator, not {type(comm).__name__}")
        if comm == MPI.COMM_NULL:
            raise ValueError("comm is MPI.COMM_NULL")
        if timeout is None:
            timeout = _env_float("DISTML_TIMEOUT")
        if timeout is not None and not timeout > 0:
            raise ValueError(f"timeout must be a positive number of seconds, not {timeout!r}")
        if check is None:
            check = _env_flag("DISTML_CHECK")
        if segment_bytes is not None and (not isinstance(segment_bytes, int) or segment_bytes <= 0):
            raise ValueError(f"segment_bytes must be a positive int, not {segment_bytes!r}")
        if stall_warning is None:
            stall_warning = _env_float("DISTML_STALL_WARNING")
        self.mpi_comm = comm
        cap = _pool_cap()
        self._pool = _core.ResultPool(cap) if cap > 0 else None
        if shared_memory is None:
            shared_memory = _env_flag("DISTML_SHM")
        slot = _env_bytes("DISTML_SHM_SLOT_BYTES")
        # Read before the core communicator exists: a bad value raises on
        # every rank before any rank has communicated.
        sizes = {attr: _env_bytes(env) for env, attr in _SHM_SIZE_ENV.items()}
        shm_tune = _env_flag("DISTML_SHM_TUNE")
        self._core = _core.Communicator(
            comm.py2f(), float(timeout or 0.0), bool(check), int(segment_bytes or 0),
            bool(shared_memory), int(slot or 0),
        )
        # Fixed for the communicator's life; plain attributes, because the
        # short paths below read them on every call.
        self._rank, self._size = self._core.rank, self._core.size
        for attr, value in sizes.items():
            if value is not None:
                setattr(self._core, attr, value)
        if not shm_tune:
            self._core.shm_tune = False
        if stall_warning is not None:
            self._core.stall_warning = float(stall_warning)
        global _created
        _created += 1
        self._order = _created
        self._freed = False
        self._created_at = _caller()
        _live.add(self)
        try:
            if tune:
                from . import tune as _tune

                _tune.apply_table(self, _tune.load_table(self))
            # Settings that select schedules (DISTML_SHM_*, the tune table,
            # check, ...) must be the same on every rank.
            self._core.agree_settings()
        except BaseException:
            # Every rank raises here together (the agreement is collective),
            # so freeing together is safe.
            self._freed = True
            self._core.free()
            raise
        from . import timeline as _timeline

        _timeline._attach(self)  # DISTML_TIMELINE, or a timeline.start() running

    # ---- properties --------------------------------------------------------

    @property
    def rank(self) -> int:
        """This process's rank in the communicator."""
        return self._rank

    @property
    def size(self) -> int:
        """The number of ranks."""
        return self._size

    @property
    def timeout(self) -> Optional[float]:
        """Seconds a collective may take, or None for no limit."""
        t = self._core.timeout
        return t if t > 0 else None

    @timeout.setter
    def timeout(self, seconds: Optional[float]) -> None:
        if seconds is not None and not seconds > 0:
            raise ValueError(f"timeout must be a positive number of seconds or None, not {seconds!r}")
        self._core.timeout = float(seconds or 0.0)

    @property
    def check(self) -> bool:
        """Whether arguments are compared across ranks before each collective
        (chosen at creation: ``Communicator(check=...)`` or ``DISTML_CHECK``)."""
        return self._core.check

    def free(self) -> None:
        """Waits for async work, then releases the communicator. Later calls raise
        :class:`distml.CommunicatorError`. Must be called on all ranks."""
        if not self._freed:
            from . import timeline as _timeline

            _timeline.flush(self)
            self._freed = True
            self._core.free()
            if self._pool is not None:
                self._pool.close()  # arrays still held keep their memory until they go

    def __enter__(self) -> "Communicator":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.free()

    def __repr__(self) -> str:
        return f"<distml.Communicator rank {self.rank} of {self.size}>"

    # ---- helpers -----------------------------------------------------------

    def _root(self, root: Any) -> int:
        if isinstance(root, (bool, np.bool_)) or not isinstance(root, (int, np.integer)):
            raise TypeError(f"root must be an int, not {type(root).__name__}")
        if not 0 <= root < self.size:
            raise ValueError(f"root {root} is out of range for a communicator of size {self.size}")
        return int(root)

    @staticmethod
    def _algorithm(algorithm: Any) -> str:
        if not isinstance(algorithm, str):
            raise TypeError(f"algorithm must be a str, not {type(algorithm).__name__}")
        return algorithm

    def _launch(
        self,
        kind: Any,
        src: np.ndarray,
        dst: Optional[np.ndarray],
        *,
        dtype: int,
        op: Any = _NO_OP,
        count: int = 0,
        unit: int = 1,
        root: int = 0,
        algorithm: str = "auto",
        shape: tuple = (),
        async_op: bool = False,
        finish: Callable[[], Any] = lambda: None,
    ) -> Any:
        args = (
            kind,
            dtype,
            op,
            int(count),
            int(unit),
            root,
            algorithm,
            _shape_list(shape),
            src,
            dst,
        )
        if async_op:
            return Handle(self._core.submit(*args), finish, (src, dst))
        self._core.run(*args)
        return finish()

    def _refuse(self, kind: Any, dtype: int, op: int, count: int, root: int, algorithm: str, error: Exception):
        """Raises ``error``, a problem only this rank can see (the root's
        ``out=``, memory for a result), after taking part in the collective's
        agreement as unable to run it, so that the other ranks raise
        MismatchError instead of waiting."""
        if self.size > 1:
            try:
                self._core.refuse(kind, dtype, op, int(count), root, algorithm, isinstance(error, MemoryError))
            except (DistmlError, ValueError, MemoryError):
                pass
        raise error

    def _local(self, kind: Any, dtype: int, op: int, count: int, root: int, algorithm: str,
               prepare: Callable[[], Any]) -> Any:
        """``prepare()`` (copies and result arrays, work only this rank
        does), refused through the agreement if it runs out of memory."""
        try:
            return prepare()
        except MemoryError as e:
            self._refuse(kind, dtype, op, count, root, algorithm, e)

    @staticmethod
    def _contiguous_in(x: np.ndarray) -> np.ndarray:
        return x if x.flags.c_contiguous else np.ascontiguousarray(x)

    def _empty(self, shape: tuple, dtype: np.dtype) -> np.ndarray:
        """A new C-contiguous array for a collective's result: from the
        result pool when it is large (see the class docstring)."""
        pool = self._pool
        if pool is not None and dtype.itemsize * math.prod(shape) >= _POOL_MIN_BYTES:
            return pool.empty(shape, dtype)
        return np.empty(shape, dtype=dtype)

    def _short_out(self, x: np.ndarray, out: Any, shape: tuple) -> Optional[np.ndarray]:
        """The short paths' result array: a new one, or ``out`` when it is a
        writable C-contiguous array of ``shape`` and x's dtype; None sends
        the call down the general path (which raises what is wrong, or
        refuses through the agreement when memory runs out). Overlap with
        ``x`` is the core's to refuse (ValueError): any but exactly x's
        memory, and for allgather and reduce_scatter any at all. (That test
        of two addresses costs the core nothing; numpy's may_share_memory
        cost a quarter of a small call's Python time.)"""
        if out is None:
            try:
                return self._empty(shape, x.dtype)
            except MemoryError:
                return None
        if type(out) is np.ndarray and out.dtype == x.dtype and out.shape == shape:
            flags = out.flags
            if flags.c_contiguous and flags.writeable:
                return out
        return None

    def _result_buffer(self, x: np.ndarray, out: Optional[np.ndarray], shape: tuple):
        """(buffer the core writes, array to return)."""
        if out is None:
            buf = self._empty(shape, x.dtype)
            return buf, buf
        _check_out(out, shape, x.dtype)
        if out.flags.c_contiguous:
            return out, out
        return self._empty(shape, x.dtype), out

    # ---- collectives -------------------------------------------------------

    def allreduce(
        self,
        x: Any,
        op: Any = "sum",
        out: Optional[np.ndarray] = None,
        algorithm: str = "auto",
        async_op: bool = False,
    ) -> Any:
        """Reduces ``x`` element-wise over all ranks; every rank gets the result.

        Args:
            x: array-like of a supported dtype; the same shape on every rank.
            op: "sum", "avg", "prod", "min", "max", or for integers "band",
                "bor", "bxor" (or a :class:`distml.Op`). Integer "avg" is the
                sum floor-divided by the number of ranks.
            out: array for the result (same shape and dtype as ``x``); may be
                ``x`` itself for an in-place reduction. By default a new array
                (from the result pool when large: see :class:`Communicator`).
            algorithm: "auto", "ring", "recursive_doubling",
                "halving_doubling" (reduce-scatter by recursive halving, then
                allgather by recursive doubling) or "mpi"; "shm" and
                "hierarchical" where the layout allows them.
            async_op: return a :class:`Handle` instead of the result.

        Returns:
            The result array (``out`` if given), or a Handle.

        Raises:
            TypeError: unsupported dtype, op undefined for the dtype, bad ``out``.
            ValueError: unknown op or algorithm, ``out`` of the wrong shape or
                read-only or overlapping ``x``.
            distml.MismatchError: ranks passed different shapes, dtypes, ops.

        Must be called on all ranks.
        """
        # The common case, kept short because small allreduces are latency
        # bound: contiguous arrays, blocking, out absent or a matching
        # contiguous array. The core takes it whole (Communicator.short in
        # csrc/bindings/module.cpp, NotImplemented for anything else); new
        # results from the pool's size on, and bfloat16, come through the
        # Python short path below. (Partial overlap of x and out is refused
        # by the core.) Everything else takes the general path. All pass the
        # shape, which ranks compare: equal counts in different shapes are a
        # mismatch. (A 1-D shape is passed as (): the count says it all, and
        # a 1-D call still differs from an N-D one.)
        if not async_op:
            result = self._core.short(_ALLREDUCE, x, op, out, algorithm, 0)
            if result is not NotImplemented:
                return result
        if type(x) is np.ndarray and not async_op and type(algorithm) is str:
            code = _DTYPE_INTS.get(x.dtype)
            opc = _OP_INTS.get((op, x.dtype)) if isinstance(op, str) else None
            if opc is None:
                opc = _short_op(op, x.dtype)
            if code is not None and opc is not None and x.flags.c_contiguous:
                if out is None:
                    try:
                        if x.nbytes >= _POOL_MIN_BYTES and self._pool is not None:
                            dst = self._pool.empty(x.shape, x.dtype)
                        else:
                            dst = np.empty(x.shape, x.dtype)
                    except MemoryError as e:
                        self._refuse(_ALLREDUCE, code, opc, x.size, 0, algorithm, e)
                    shape = x.shape if x.ndim > 1 else ()
                    self._core.run(_ALLREDUCE, code, opc, x.size, 1, 0, algorithm, shape, x, dst)
                    return dst
                if (type(out) is np.ndarray and out.dtype == x.dtype and out.shape == x.shape
                        and out.flags.c_contiguous and out.flags.writeable):
                    shape = x.shape if x.ndim > 1 else ()
                    self._core.run(_ALLREDUCE, code, opc, x.size, 1, 0, algorithm, shape, x, out)
                    return out
        arr = _as_array(x)
        code = dtype_code(arr.dtype)
        opc = op_code(op, arr.dtype)
        algorithm = self._algorithm(algorithm)
        if out is not None and _same_buffer(out, arr):
            _check_out(out, arr.shape, arr.dtype)
            buf = self._local(_ALLREDUCE, code, opc, arr.size, 0, algorithm, lambda: self._contiguous_in(arr))
            src, dst, ret = buf, buf, out
        else:
            if out is not None and np.may_share_memory(out, arr):
                raise ValueError("out overlaps x without being x; pass out=x for an in-place reduction")
            src, (dst, ret) = self._local(
                _ALLREDUCE, code, opc, arr.size, 0, algorithm,
                lambda: (self._contiguous_in(arr), self._result_buffer(arr, out, arr.shape)))

        finish = _delivery(dst, ret)
        return self._launch(_ALLREDUCE, src, dst, dtype=code, op=opc, count=arr.size, algorithm=algorithm,
                            shape=arr.shape if arr.ndim > 1 else (), async_op=async_op, finish=finish)

    def reduce(
        self,
        x: Any,
        root: int = 0,
        op: Any = "sum",
        out: Optional[np.ndarray] = None,
        algorithm: str = "auto",
        async_op: bool = False,
    ) -> Any:
        """Reduces ``x`` element-wise over all ranks into ``root``.

        Args:
            x: array-like; the same shape on every rank.
            root: the rank that receives the result.
            op: as for :meth:`allreduce`.
            out: on the root, array for the result (may be ``x``); ignored
                elsewhere.
            algorithm: "auto", "tree", "ring" or "mpi".
            async_op: return a :class:`Handle`.

        Returns:
            The result on the root, None on other ranks (or a Handle).

        Must be called on all ranks.
        """
        # The common case, kept short (see allreduce).
        if not async_op:
            result = self._core.short(_REDUCE, x, op, out, algorithm, root)
            if result is not NotImplemented:
                return result
        if (type(x) is np.ndarray and not async_op and type(root) is int and 0 <= root < self._size
                and type(algorithm) is str and x.flags.c_contiguous):
            code = _DTYPE_INTS.get(x.dtype)
            opc = _OP_INTS.get((op, x.dtype)) if isinstance(op, str) else None
            if opc is None:
                opc = _short_op(op, x.dtype)
            if code is not None and opc is not None:
                if self._rank != root:
                    self._core.run(_REDUCE, code, opc, x.size, 1, root, algorithm, (), x, None)
                    return None
                dst = x if out is x and x.flags.writeable else self._short_out(x, out, x.shape)
                if dst is not None:
                    self._core.run(_REDUCE, code, opc, x.size, 1, root, algorithm, (), x, dst)
                    return dst
        arr = _as_array(x)
        code = dtype_code(arr.dtype)
        opc = op_code(op, arr.dtype)
        root = self._root(root)
        algorithm = self._algorithm(algorithm)
        src = self._local(_REDUCE, code, opc, arr.size, root, algorithm, lambda: self._contiguous_in(arr))
        dst = ret = None
        if self.rank == root:
            try:
                if out is not None and _same_buffer(out, arr):
                    _check_out(out, arr.shape, arr.dtype)
                    dst, ret = src, out
                else:
                    if out is not None and np.may_share_memory(out, arr):
                        raise ValueError("out overlaps x without being x; pass out=x for an in-place reduction")
                    dst, ret = self._result_buffer(arr, out, arr.shape)
            except (TypeError, ValueError, MemoryError) as e:
                self._refuse(_REDUCE, code, opc, arr.size, root, algorithm, e)

        finish = _delivery(dst, ret)
        return self._launch(_REDUCE, src, dst, dtype=code, op=opc, count=arr.size, root=root,
                            algorithm=algorithm, async_op=async_op, finish=finish)

    def broadcast(self, x: Any, root: int = 0, algorithm: str = "auto", async_op: bool = False) -> Any:
        """Copies ``x`` from ``root`` into ``x`` on every other rank, in place.

        Args:
            x: a writable array of the same shape and dtype on every rank
                (read-only is allowed on the root).
            root: the rank whose data is sent.
            algorithm: "auto", "tree", "scatter_allgather" or "mpi".
            async_op: return a :class:`Handle`.

        Returns:
            ``x`` (or a Handle whose ``wait()`` returns it).

        Raises:
            MismatchError: where the ranks' calls differ (size, dtype, root,
                algorithm, or another collective). A small blocking
                broadcast on one node (up to 16 KiB, where ``auto`` or "shm"
                moves the data with the arrival) is one-way: the root
                returns once its data is posted, without waiting for the
                other ranks, and each other rank waits for the root alone.
                A rank whose call differs from the root's raises at once;
                the root, and any rank whose call matched the root's, raise
                from their next collective on this communicator, which then
                does not run (so the ranks stay in step and the communicator
                stays usable). A rank that makes no further call never
                learns of it: end with a barrier where that matters. Async
                broadcasts, larger ones and other layouts raise on every
                rank from the call itself.

        Must be called on all ranks.
        """
        # The common case, kept short (see allreduce).
        if not async_op:
            result = self._core.short(_BROADCAST, x, None, None, algorithm, root)
            if result is not NotImplemented:
                return result
        if (type(x) is np.ndarray and not async_op and type(root) is int and 0 <= root < self._size
                and type(algorithm) is str):
            code = _DTYPE_INTS.get(x.dtype)
            flags = x.flags
            if code is not None and flags.c_contiguous and flags.writeable:
                self._core.run(_BROADCAST, code, _NO_OP, x.size, 1, root, algorithm, (), x, x)
                return x
        arr = _as_array(x)
        code = dtype_code(arr.dtype)
        root = self._root(root)
        algorithm = self._algorithm(algorithm)
        if self.rank != root and not arr.flags.writeable:
            self._refuse(_BROADCAST, code, _NO_OP, arr.size, root, algorithm,
                         ValueError("x is read-only; broadcast writes into x on every rank but the root"))
        buf = self._local(_BROADCAST, code, _NO_OP, arr.size, root, algorithm, lambda: self._contiguous_in(arr))

        finish = _delivery(buf, arr)
        return self._launch(_BROADCAST, buf, buf, dtype=code, count=arr.size, root=root,
                            algorithm=algorithm, async_op=async_op, finish=finish)

    def allgather(
        self, x: Any, out: Optional[np.ndarray] = None, algorithm: str = "auto", async_op: bool = False
    ) -> Any:
        """Concatenates every rank's ``x`` along axis 0, in rank order.

        Args:
            x: array-like, the same shape on every rank (a 0-d array counts as
                shape ``(1,)``).
            out: array of shape ``(size * x.shape[0],) + x.shape[1:]``.
            algorithm: "auto", "ring" or "mpi".
            async_op: return a :class:`Handle`.

        Returns:
            The gathered array (``out`` if given), or a Handle.

        Must be called on all ranks.
        """
        # The common case, kept short (see allreduce).
        if not async_op:
            result = self._core.short(_ALLGATHER, x, None, out, algorithm, 0)
            if result is not NotImplemented:
                return result
        if type(x) is np.ndarray and not async_op and type(algorithm) is str and x.ndim and x.flags.c_contiguous:
            code = _DTYPE_INTS.get(x.dtype)
            if code is not None:
                shape = x.shape
                dst = self._short_out(x, out, (self._size * shape[0],) + shape[1:] if len(shape) > 1 else
                                      (self._size * shape[0],))
                if dst is not None:
                    self._core.run(_ALLGATHER, code, _NO_OP, x.size, 1, 0, algorithm, x.shape, x, dst)
                    return dst
        arr = _as_array(x)
        if arr.ndim == 0:
            arr = arr.reshape(1)
        code = dtype_code(arr.dtype)
        algorithm = self._algorithm(algorithm)
        shape = (self.size * arr.shape[0],) + arr.shape[1:]
        if out is not None and np.may_share_memory(out, arr):
            raise ValueError("out overlaps x; allgather needs separate input and output")
        src, (dst, ret) = self._local(_ALLGATHER, code, _NO_OP, arr.size, 0, algorithm,
                                      lambda: (self._contiguous_in(arr), self._result_buffer(arr, out, shape)))

        finish = _delivery(dst, ret)
        return self._launch(_ALLGATHER, src, dst, dtype=code, count=arr.size, algorithm=algorithm,
                            shape=arr.shape, async_op=async_op, finish=finish)

    def reduce_scatter(
        self,
        x: Any,
        op: Any = "sum",
        out: Optional[np.ndarray] = None,
        algorithm: str = "auto",
        async_op: bool = False,
    ) -> Any:
        """Reduces ``x`` over all ranks, then splits it along axis 0 as
        ``numpy.array_split(result, size)``; rank r gets part r.

        Args:
            x: array-like with at least one dimension, the same shape on every rank.
            op: as for :meth:`allreduce`.
            out: array for this rank's part.
            algorithm: "auto", "ring" or "mpi".
            async_op: return a :class:`Handle`.

        Returns:
            This rank's part (``out`` if given), or a Handle.

        Must be called on all ranks.
        """
        # The common case, kept short (see allreduce).
        if not async_op:
            result = self._core.short(_REDUCE_SCATTER, x, op, out, algorithm, 0)
            if result is not NotImplemented:
                return result
        if type(x) is np.ndarray and not async_op and type(algorithm) is str and x.ndim and x.flags.c_contiguous:
            code = _DTYPE_INTS.get(x.dtype)
            opc = _OP_INTS.get((op, x.dtype)) if isinstance(op, str) else None
            if opc is None:
                opc = _short_op(op, x.dtype)
            if code is not None and opc is not None:
                rows, size = x.shape[0], self._size  # numpy.array_split's part of this rank
                shape = (rows // size + (self._rank < rows % size),)
                if x.ndim > 1:
                    shape += x.shape[1:]
                dst = self._short_out(x, out, shape)
                if dst is not None:
                    unit = 1 if x.ndim == 1 else int(np.prod(x.shape[1:], dtype=np.int64))
                    self._core.run(_REDUCE_SCATTER, code, opc, x.size, unit, 0, algorithm, x.shape, x, dst)
                    return dst
        arr = _as_array(x)
        if arr.ndim == 0:
            raise ValueError("reduce_scatter needs x with at least one dimension")
        code = dtype_code(arr.dtype)
        opc = op_code(op, arr.dtype)
        algorithm = self._algorithm(algorithm)
        rows, size = arr.shape[0], self.size
        mine = part_size(rows, size, self.rank)
        shape = (mine,) + arr.shape[1:]
        if out is not None and np.may_share_memory(out, arr):
            raise ValueError("out overlaps x; reduce_scatter needs separate input and output")
        src, (dst, ret) = self._local(_REDUCE_SCATTER, code, opc, arr.size, 0, algorithm,
                                      lambda: (self._contiguous_in(arr), self._result_buffer(arr, out, shape)))
        unit = int(np.prod(arr.shape[1:], dtype=np.int64)) if arr.ndim > 1 else 1

        finish = _delivery(dst, ret)
        return self._launch(_REDUCE_SCATTER, src, dst, dtype=code, op=opc, count=arr.size, unit=unit,
                            algorithm=algorithm, shape=arr.shape, async_op=async_op, finish=finish)

    def alltoall(
        self, x: Any, out: Optional[np.ndarray] = None, algorithm: str = "auto", async_op: bool = False
    ) -> Any:
        """Exchanges equal parts of ``x`` between all ranks.

        Axis 0 of ``x`` is split into ``size`` equal parts; part d goes to rank
        d. The result concatenates, in rank order, the parts each rank sent
        here.

        Args:
            x: array-like whose first dimension is divisible by the number of
                ranks, the same shape on every rank.
            out: array of the shape of ``x`` (may be ``x`` itself).
            algorithm: "auto", "pairwise", "mpi" or "shm" (every rank on one node).
            async_op: return a :class:`Handle`.

        Returns:
            The exchanged array (``out`` if given), or a Handle.

        Must be called on all ranks.
        """
        # The common case, kept short (see allreduce).
        if not async_op:
            result = self._core.short(_ALLTOALL, x, None, out, algorithm, 0)
            if result is not NotImplemented:
                return result
        if (type(x) is np.ndarray and not async_op and type(algorithm) is str and x.ndim and x.flags.c_contiguous
                and x.shape[0] % self._size == 0):
            code = _DTYPE_INTS.get(x.dtype)
            if code is not None:
                dst = x if out is x and x.flags.writeable else self._short_out(x, out, x.shape)
                if dst is not None:
                    self._core.run(_ALLTOALL, code, _NO_OP, x.size, 1, 0, algorithm, x.shape, x, dst)
                    return dst
        arr = _as_array(x)
        if arr.ndim == 0:
            raise ValueError("alltoall needs x with at least one dimension")
        code = dtype_code(arr.dtype)
        algorithm = self._algorithm(algorithm)
        if arr.shape[0] % self.size:
            raise ValueError(
                f"alltoall needs x.shape[0] divisible by the number of ranks; got {arr.shape[0]} for {self.size} ranks"
            )
        if out is not None and _same_buffer(out, arr):
            _check_out(out, arr.shape, arr.dtype)
            src = self._local(_ALLTOALL, code, _NO_OP, arr.size, 0, algorithm, lambda: self._contiguous_in(arr))
            dst, ret = src, out
        else:
            if out is not None and np.may_share_memory(out, arr):
                raise ValueError("out overlaps x without being x; pass out=x for an in-place alltoall")
            src, (dst, ret) = self._local(
                _ALLTOALL, code, _NO_OP, arr.size, 0, algorithm,
                lambda: (self._contiguous_in(arr), self._result_buffer(arr, out, arr.shape)))

        finish = _delivery(dst, ret)
        return self._launch(_ALLTOALL, src, dst, dtype=code, count=arr.size, algorithm=algorithm,
                            shape=arr.shape, async_op=async_op, finish=finish)

    def _sizes_round(self, kind: Any, code: int, shape: tuple, algorithm: str, mine: np.ndarray) -> np.ndarray:
        """The first round of alltoallv and allgatherv: one int64 from every
        rank to every rank (``mine[d]`` goes to rank d). Ranks compare the
        collective, dtype, row shape and algorithm here, before any row moves."""
        got = np.empty(self.size, dtype=np.int64)
        self._core.run(kind, code, _NO_OP, self.size, 1, 0, algorithm, _shape_list(shape), mine, got)
        return got

    def _rows_round(self, kind: Any, code: int, arr: np.ndarray, unit: int, algorithm: str, rows: np.ndarray,
                    out: Optional[np.ndarray], shape: tuple, async_op: bool, result: Callable[[Any], Any]) -> Any:
        """The second round: this rank's result array (checked ``out``, or a new
        one; a failure here is refused through the agreement), then the rows."""
        def prepare():
            if out is not None and np.may_share_memory(out, arr):
                raise ValueError("out overlaps x; this collective needs separate input and output")
            return self._contiguous_in(arr), self._result_buffer(arr, out, shape)

        try:
            src, (dst, ret) = prepare()
        except (TypeError, ValueError, MemoryError) as e:
            self._refuse(kind, code, _NO_OP, arr.size, 1, algorithm, e)
        finish = _delivery(dst, ret)
        args = (kind, code, int(arr.size), int(unit), algorithm, _shape_list(arr.shape), src, dst,
                [int(n) for n in rows])
        if async_op:
            return Handle(self._core.run_rows(*args, True), lambda: result(finish()), (src, dst))
        self._core.run_rows(*args, False)
        return result(finish())

    def alltoallv(
        self,
        x: Any,
        send_counts: Any,
        out: Optional[np.ndarray] = None,
        algorithm: str = "auto",
        async_op: bool = False,
    ) -> Any:
        """Exchanges parts of ``x`` of any size between all ranks.

        The first ``send_counts[0]`` rows of ``x`` (along axis 0) go to rank 0,
        the next ``send_counts[1]`` to rank 1, and so on. Each rank receives
        the rows every rank sent it, concatenated in source-rank order.

        It runs as two rounds: the ranks first exchange their counts (one
        int64 per pair, always blocking; the ranks compare the collective,
        dtype, row shape and algorithm there), then the rows (asynchronously
        with ``async_op``).

        Args:
            x: array-like with at least one dimension; the shape beyond axis
                0 and the dtype must be the same on every rank, the number
                of rows may differ.
            send_counts: ``size`` non-negative integers adding up to
                ``x.shape[0]``.
            out: array for the received rows, of shape
                ``(recv_counts.sum(),) + x.shape[1:]`` (known only after the
                counts round; a wrong one makes every rank raise). It must
                not overlap ``x``.
            algorithm: "auto", "pairwise", "mpi" or "shm" (every rank on one node).
            async_op: return a :class:`Handle` whose ``wait()`` returns the
                pair below.

        Returns:
            ``(received, recv_counts)``: the received rows (``out`` if given)
            and an int64 array of how many came from each rank.

        Raises:
            TypeError: unsupported dtype, ``out`` of another dtype.
            ValueError: ``send_counts`` of the wrong length, negative, or
                not adding up to ``x.shape[0]``; a bad ``out``; unknown
                algorithm. The other ranks raise MismatchError.
            distml.MismatchError: ranks passed different dtypes, row shapes
                or algorithms (or another rank's arguments were invalid).

        Must be called on all ranks.
        """
        arr = _as_array(x)
        if arr.ndim == 0:
            raise ValueError("alltoallv needs x with at least one dimension")
        code = dtype_code(arr.dtype)
        algorithm = self._algorithm(algorithm)
        size = self.size
        try:
            counts = np.asarray(send_counts)
            if counts.shape != (size,):
                raise ValueError(f"send_counts must hold one count per rank ({size}), got shape {counts.shape}")
            if counts.dtype.kind not in "iu" and not (counts.dtype.kind == "f" and np.all(counts == np.floor(counts))):
                raise ValueError(f"send_counts must be integers, got dtype {counts.dtype}")
            counts = counts.astype(np.int64)
            if np.any(counts < 0):
                raise ValueError(f"send_counts must be non-negative, got {counts.tolist()}")
            if int(counts.sum()) != arr.shape[0]:
                raise ValueError(f"send_counts add up to {int(counts.sum())}, but x has {arr.shape[0]} rows")
        except ValueError as e:
            self._refuse(_ALLTOALLV, code, _NO_OP, size, 0, algorithm, e)
        recv_counts = self._sizes_round(_ALLTOALLV, code, arr.shape, algorithm, counts)
        unit = int(np.prod(arr.shape[1:], dtype=np.int64)) if arr.ndim > 1 else 1
        shape = (int(recv_counts.sum()),) + arr.shape[1:]
        rows = np.concatenate([counts, recv_counts])
        return self._rows_round(_ALLTOALLV, code, arr, unit, algorithm, rows, out, shape, async_op,
                                lambda got: (got, recv_counts))

    def allgatherv(
        self, x: Any, out: Optional[np.ndarray] = None, algorithm: str = "auto", async_op: bool = False
    ) -> Any:
        """Concatenates every rank's ``x`` along axis 0, in rank order; the
        number of rows may differ between ranks.

        Like :meth:`alltoallv` it runs as a counts round (blocking; the ranks
        compare dtype, row shape and algorithm there) and a rows round.

        Args:
            x: array-like with at least one dimension (a 0-d array counts as
                shape ``(1,)``); the shape beyond axis 0 and the dtype must be
                the same on every rank.
            out: array of shape ``(total rows,) + x.shape[1:]``, not
                overlapping ``x``.
            algorithm: "auto", "pairwise", "mpi" or "shm" (every rank on one node).
            async_op: return a :class:`Handle`.

        Returns:
            The gathered array (``out`` if given), or a Handle.

        Raises:
            TypeError: unsupported dtype.
            ValueError: a bad ``out`` (the other ranks raise MismatchError).
            distml.MismatchError: ranks passed different dtypes, row shapes
                or algorithms.

        Must be called on all ranks.
        """
        arr = _as_array(x)
        if arr.ndim == 0:
            arr = arr.reshape(1)
        code = dtype_code(arr.dtype)
        algorithm = self._algorithm(algorithm)
        counts = self._sizes_round(_ALLGATHERV, code, arr.shape, algorithm,
                                   np.full(self.size, arr.shape[0], dtype=np.int64))
        unit = int(np.prod(arr.shape[1:], dtype=np.int64)) if arr.ndim > 1 else 1
        shape = (int(counts.sum()),) + arr.shape[1:]
        return self._rows_round(_ALLGATHERV, code, arr, unit, algorithm, counts, out, shape, async_op,
                                lambda got: got)

    def barrier(self, algorithm: str = "auto", async_op: bool = False) -> Any:
        """Returns once every rank has entered the barrier. Must be called on all ranks."""
        if not async_op and type(algorithm) is str:
            self._core.run(_BARRIER, _U8, _NO_OP, 0, 1, 0, algorithm, (), None, None)
            return None
        algorithm = self._algorithm(algorithm)
        return self._launch(_BARRIER, None, None, dtype=_core.DType.uint8, algorithm=algorithm, async_op=async_op)

    # ---- node-shared buffers -------------------------------------------------

    def empty(self, shape: Any, dtype: Any = np.float32) -> np.ndarray:
        """A new uninitialised array in node-shared memory.

        ``allreduce(a, out=a)`` on such an array (the same array, at the same
        place, on every rank) reduces it where it lies, skipping the copy
        into shared memory. Otherwise it is an ordinary numpy array.

        The memory lives as long as the communicator; it is released by
        :meth:`free` unless some rank still holds an array in it (it then
        stays mapped until the process exits).

        Raises:
            ValueError: the ranks are not all on one node.

        Must be called on all ranks, with the same shape and dtype.
        """
        dt = np.dtype(dtype)
        dtype_code(dt, "dtype")
        shape = (int(shape),) if np.isscalar(shape) else tuple(int(d) for d in shape)
        count = int(np.prod(shape, dtype=np.int64))
        holder = self._core.allocate_shared(max(1, count * dt.itemsize))
        return np.frombuffer(holder, dtype=np.uint8, count=count * dt.itemsize).view(dt).reshape(shape)

    def zeros(self, shape: Any, dtype: Any = np.float32) -> np.ndarray:
        """Like :meth:`empty`, filled with zeros. Must be called on all ranks."""
        a = self.empty(shape, dtype)
        a[...] = 0
        return a

    @property
    def shared_memory(self) -> str:
        """How this communicator uses node-shared memory: "one node" (every
        rank on one node), "hierarchical" (several equal nodes) or "none"."""
        if self._core.one_node:
            return "one node"
        return "hierarchical" if self._core.hierarchical else "none"

    # ---- diagnostics -------------------------------------------------------

    def algorithm_for(self, collective: str, nbytes: int) -> str:
        """The algorithm ``"auto"`` picks for ``collective`` on ``nbytes`` bytes of uint8."""
        kinds = [k for k in _K.__members__ if k not in ("alltoallv", "allgatherv")]
        if collective not in kinds:
            raise ValueError(f"unknown collective {collective!r}; expected one of {', '.join(kinds)}")
        return self._core.resolve(_K.__members__[collective], _core.DType.uint8, int(nbytes), "auto")


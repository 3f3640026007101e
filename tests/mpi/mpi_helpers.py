"""Inputs, numpy references and deferred checks for the multi-rank tests.

Inputs are deterministic: the input of rank r for a case is drawn from a
generator seeded with (SEED, case key, r), so every rank can regenerate every
other rank's input and compute the expected result with numpy alone. distml is
never used to compute a reference.

Results are checked only after a test's collectives have all run (see
conftest.py): ``Checker.expect`` records a case, ``Checker.verify`` asserts.
"""

from __future__ import annotations

import weakref
import zlib
from typing import Any, Callable, List, Optional

import ml_dtypes
import numpy as np
import pytest

SEED = 20240611

BF16 = np.dtype(ml_dtypes.bfloat16)
FLOAT_DTYPES = [np.dtype(np.float16), BF16, np.dtype(np.float32), np.dtype(np.float64)]
INT_DTYPES = [np.dtype(t) for t in (np.int8, np.int16, np.int32, np.int64,
                                    np.uint8, np.uint16, np.uint32, np.uint64)]
ALL_DTYPES = FLOAT_DTYPES + INT_DTYPES
DTYPE_IDS = [str(d) for d in ALL_DTYPES]

FLOAT_OPS = ["sum", "avg", "prod", "min", "max"]
INT_OPS = FLOAT_OPS + ["band", "bor", "bxor"]

ALGORITHMS = {
    "allreduce": ["auto", "ring", "recursive_doubling", "halving_doubling", "mpi"],
    "reduce": ["auto", "tree", "ring", "mpi"],
    "broadcast": ["auto", "tree", "scatter_allgather", "mpi"],
    "allgather": ["auto", "ring", "mpi"],
    "reduce_scatter": ["auto", "ring", "mpi"],
    "alltoall": ["auto", "pairwise", "mpi"],
    "barrier": ["auto", "dissemination", "mpi"],
}

# Algorithms that depend on where the ranks run: "shm" needs every rank on one
# node (and P > 1), "hierarchical" several nodes with equally many ranks each
# (MPIR_CVAR_NUM_CLIQUES=2 makes one machine look like two). Tests of these
# skip, on every rank alike, where the communicator cannot run them.
TOPOLOGY_ALGORITHMS = {
    "allreduce": ["shm", "hierarchical"],
    "reduce": ["shm"],
    "broadcast": ["shm"],
    "allgather": ["shm"],
    "reduce_scatter": ["shm"],
    "alltoall": ["shm"],
    "barrier": ["shm"],
}


def all_algorithms(collective: str) -> List[str]:
    return ALGORITHMS[collective] + TOPOLOGY_ALGORITHMS[collective]


def comm_algorithms(collective: str):
    """(segment size name, algorithm) pairs for ``collective``.

    Every algorithm runs with the default segment size; those that cut
    messages into segments also run with 64-byte segments ("mpi" hands whole
    buffers to MPI, and the shared-memory ones have their own slot size). Use
    with ``indirect=["comm"]``.
    """
    return [
        pytest.param(seg, alg, id=f"{seg}-{alg}")
        for alg in all_algorithms(collective)
        for seg in ("seg_default", "seg64")
        if not (seg == "seg64" and (alg == "mpi" or alg in TOPOLOGY_ALGORITHMS[collective]))
    ]


# With 64-byte segments, one dtype per element size (and both half types,
# which widen to float32 per step) keeps the sweep affordable at P = 4.
SEG64_DTYPES = [np.dtype(np.float16), BF16, np.dtype(np.float64), np.dtype(np.int8), np.dtype(np.uint32)]


def comm_algorithm_dtypes(collective: str):
    """(segment size name, algorithm, dtype) triples: every algorithm x every
    dtype with the default segments, plus SEG64_DTYPES with 64-byte segments.
    Use with ``indirect=["comm"]``."""
    return [
        pytest.param(p.values[0], p.values[1], dtype, id=f"{p.id}-{dtype}")
        for p in comm_algorithms(collective)
        for dtype in (ALL_DTYPES if p.values[0] == "seg_default" else SEG64_DTYPES)
    ]


_available: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def available(comm: Any, collective: str, algorithm: str) -> bool:
    """Whether ``comm`` runs ``algorithm`` for ``collective`` here.

    Probes with a tiny call (collective: every rank must ask, in the same
    order); an algorithm the communicator cannot use raises ValueError
    before any communication, on every rank alike.
    """
    known = _available.setdefault(comm, {})
    key = (collective, algorithm)
    if key not in known:
        try:
            if collective == "barrier":
                comm.barrier(algorithm=algorithm)
            else:
                getattr(comm, collective)(np.zeros(comm.size, np.float32), algorithm=algorithm)
            known[key] = True
        except ValueError:
            known[key] = False
    return known[key]


def require(comm: Any, collective: str, algorithm: str) -> None:
    """Skips the test (on every rank) if ``algorithm`` is unavailable."""
    if not available(comm, collective, algorithm):
        pytest.skip(f"{collective} algorithm {algorithm!r} is not available for this communicator "
                    f"(P={comm.size})")


# Unit roundoff-sized epsilons (machine epsilon) per float dtype.
EPS = {
    np.dtype(np.float16): 2.0 ** -10,
    BF16: 2.0 ** -7,
    np.dtype(np.float32): 2.0 ** -23,
    np.dtype(np.float64): 2.0 ** -52,
}


def is_float(dtype: np.dtype) -> bool:
    return np.dtype(dtype) in EPS


def ops_for(dtype: np.dtype) -> List[str]:
    return FLOAT_OPS if is_float(dtype) else INT_OPS


def counts_for(P: int) -> List[int]:
    """Zero, one, odd, not divisible by P (for P > 1), and a few thousand."""
    return [0, 1, 7, 2 * P + 1, 2999]


def uint_of(dtype: np.dtype) -> np.dtype:
    return np.dtype(f"u{np.dtype(dtype).itemsize}")


# ---- inputs ------------------------------------------------------------------


def _rng(key: Any, rank: int) -> np.random.Generator:
    return np.random.default_rng([SEED, zlib.crc32(repr(key).encode()), rank])


def _values(rng: np.random.Generator, dtype: np.dtype, shape: tuple, kind: str) -> np.ndarray:
    dtype = np.dtype(dtype)
    n = int(np.prod(shape, dtype=np.int64))
    if kind == "bits":
        # Any bit pattern (NaNs included): for collectives that only move data.
        raw = rng.integers(0, 256, size=n * dtype.itemsize, dtype=np.uint8)
        return raw.view(dtype).reshape(shape)
    if kind == "small":
        # Small integers: sums over 4 ranks are exact in every dtype.
        lo, hi = (0, 16) if dtype.kind == "u" else (-8, 8)
        return rng.integers(lo, hi, size=shape, endpoint=True).astype(dtype)
    if kind == "prod":
        # Products over 4 ranks stay within 2**4.
        choices = [1, 2] if dtype.kind == "u" else [1, -1, 2]
        return rng.choice(choices, size=shape).astype(dtype)
    if kind == "full":
        # Integers over their whole range (sums wrap, as documented); floats
        # spread widely, so that min/max meet many exponents.
        if dtype.kind in "iu":
            info = np.iinfo(dtype)
            return rng.integers(info.min, info.max, size=shape, endpoint=True, dtype=dtype)
        span = 60000.0 if dtype == np.float16 else 1e30
        return (rng.uniform(-1, 1, size=shape) * span).astype(dtype)
    if kind == "real":
        # Positive reals: no cancellation, so rounding error stays relative.
        return rng.uniform(0.5, 2.0, size=shape).astype(dtype)
    raise ValueError(kind)


def inputs(key: Any, dtype: np.dtype, shape: tuple, kind: str, P: int) -> List[np.ndarray]:
    """Every rank's input for case ``key`` (list index = rank)."""
    return [_values(_rng(key, r), dtype, tuple(shape), kind) for r in range(P)]


def reduction_cases(dtype: np.dtype):
    """(op, value kind, comparison) for every op valid for ``dtype``.

    Comparison is "exact", or "tol" with a relative tolerance of a few
    epsilons of the dtype (float averages, and sums of non-integer values,
    which each rounding step may perturb).
    """
    cases = []
    for op in ops_for(dtype):
        if op in ("band", "bor", "bxor", "min", "max"):
            cases.append((op, "full", "exact"))
        elif op == "prod":
            cases.append((op, "prod", "exact"))
        elif op == "sum":
            if is_float(dtype):
                cases.append((op, "small", "exact"))
                cases.append((op, "real", "tol"))
            else:
                cases.append((op, "full", "exact"))
        elif op == "avg":
            cases.append((op, "small", "tol" if is_float(dtype) else "exact"))
            if is_float(dtype):
                cases.append((op, "real", "tol"))
    return cases


# ---- references --------------------------------------------------------------


def reduce_ref(xs: List[np.ndarray], op: str) -> np.ndarray:
    """The element-wise reduction of the arrays ``xs`` (one per rank).

    Floats reduce in float64 (the result is float64; compare after casting);
    integers reduce in their own dtype with wrap-around, and "avg" is the sum
    floor-divided by the number of ranks.
    """
    P = len(xs)
    dtype = xs[0].dtype
    st = np.stack(xs)
    if is_float(dtype):
        f = st.astype(np.float64)
        if op == "sum":
            return f.sum(axis=0)
        if op == "avg":
            return f.sum(axis=0) / P
        if op == "prod":
            return f.prod(axis=0)
        if op == "min":
            return f.min(axis=0)
        if op == "max":
            return f.max(axis=0)
        raise ValueError(op)
    if op == "sum":
        return st.sum(axis=0, dtype=dtype)
    if op == "avg":
        return st.sum(axis=0, dtype=dtype) // dtype.type(P)
    if op == "prod":
        return st.prod(axis=0, dtype=dtype)
    if op == "min":
        return st.min(axis=0)
    if op == "max":
        return st.max(axis=0)
    if op == "band":
        return np.bitwise_and.reduce(st, axis=0)
    if op == "bor":
        return np.bitwise_or.reduce(st, axis=0)
    if op == "bxor":
        return np.bitwise_xor.reduce(st, axis=0)
    raise ValueError(op)


def alltoall_ref(xs: List[np.ndarray], rank: int) -> np.ndarray:
    P = len(xs)
    return np.concatenate([np.array_split(x, P, axis=0)[rank] for x in xs], axis=0)


def reduce_scatter_ref(xs: List[np.ndarray], op: str, rank: int) -> np.ndarray:
    return np.array_split(reduce_ref(xs, op), len(xs), axis=0)[rank]


def allgather_ref(xs: List[np.ndarray]) -> np.ndarray:
    return np.concatenate([x.reshape(1) if x.ndim == 0 else x for x in xs], axis=0)


# ---- running and checking ----------------------------------------------------


def traced(comm: Any, fn: Callable[[], Any]) -> List[dict]:
    """The timeline events (drain_trace's dicts) of the collectives ``fn``
    runs on ``comm``, with tracing on only while it runs."""
    core = comm._core
    core.drain_trace()
    core.set_trace(True)
    try:
        fn()
        return core.drain_trace()
    finally:
        core.set_trace(False)


def call(fn: Callable[[], Any]) -> Any:
    """``fn()``, or the exception it raised (so later collectives still run)."""
    try:
        return fn()
    except Exception as exc:  # noqa: BLE001 - recorded and reported by Checker
        return exc


def raised(fn: Callable[[], Any]) -> Optional[BaseException]:
    """The exception ``fn()`` raised, or None (so later collectives still run)."""
    try:
        fn()
    except Exception as exc:  # noqa: BLE001 - recorded, checked after the collectives
        return exc
    return None


def _tolerance(dtype: np.dtype, P: int) -> float:
    # Each of the P - 1 combining steps and the final division may round once
    # (half types: once per step, after widening to float32).
    return (P + 2) * EPS[np.dtype(dtype)]


class Checker:
    """Collects expectations during a test and asserts them all at the end."""

    def __init__(self, P: int) -> None:
        self.P = P
        self.failures: List[str] = []
        self.count = 0

    def fail(self, label: str, message: str) -> None:
        self.failures.append(f"{label}: {message}")

    def expect(self, label: str, got: Any, expected: Optional[np.ndarray], mode: str = "exact",
               dtype: Optional[np.dtype] = None, same: Any = None) -> None:
        """Records that ``got`` should equal ``expected``.

        ``expected`` None means the result must be None. ``mode``: "exact"
        (values, compared as floats for float dtypes), "tol" (relative
        tolerance for floats), or "bits" (identical bytes). ``dtype`` is the
        dtype ``got`` must have (default: that of ``expected``); ``same`` an
        object ``got`` must be (identity).
        """
        self.count += 1
        if isinstance(got, BaseException):
            self.fail(label, f"raised {type(got).__name__}: {got}")
            return
        if expected is None:
            if got is not None:
                self.fail(label, f"expected None, got {type(got).__name__}")
            return
        if same is not None and got is not same:
            self.fail(label, "did not return the array passed as out/x")
        if not isinstance(got, np.ndarray):
            self.fail(label, f"expected an ndarray, got {type(got).__name__}")
            return
        want_dtype = np.dtype(dtype if dtype is not None else expected.dtype)
        if got.dtype != want_dtype:
            self.fail(label, f"dtype {got.dtype}, expected {want_dtype}")
            return
        if got.shape != expected.shape:
            self.fail(label, f"shape {got.shape}, expected {expected.shape}")
            return
        if mode == "bits":
            u = uint_of(got.dtype)
            ok = np.array_equal(got.view(u), np.asarray(expected, dtype=got.dtype).view(u))
            bad = None if ok else np.flatnonzero(got.view(u) != np.asarray(expected, dtype=got.dtype).view(u))
        elif is_float(got.dtype):
            g = got.astype(np.float64)
            e = np.asarray(expected, dtype=np.float64)
            if mode == "exact":
                # The reference is exactly representable in these cases; cast
                # it so that float64 references of float16 results compare.
                e = e.astype(got.dtype).astype(np.float64)
                mism = ~((g == e) | (np.isnan(g) & np.isnan(e)))
            else:
                rtol = _tolerance(got.dtype, self.P)
                with np.errstate(invalid="ignore"):
                    mism = ~(np.abs(g - e) <= rtol * np.abs(e) + 1e-300)
            bad = np.flatnonzero(mism) if mism.any() else None
        else:
            e = np.asarray(expected)
            bad = None if np.array_equal(got, e) else np.flatnonzero(got != e)
        if bad is not None:
            i = int(bad[0])
            flat_g, flat_e = got.reshape(-1), np.asarray(expected).reshape(-1)
            self.fail(label, f"{bad.size} of {got.size} elements differ; first at flat index {i}: "
                             f"got {flat_g[i]!r}, expected {flat_e[i]!r}")

    def expect_true(self, label: str, condition: Any) -> None:
        self.count += 1
        if isinstance(condition, BaseException):
            self.fail(label, f"raised {type(condition).__name__}: {condition}")
        elif not condition:
            self.fail(label, "condition does not hold")

    def expect_raises(self, label: str, got: Any, exc_type: type) -> None:
        self.count += 1
        if not isinstance(got, exc_type):
            what = f"{type(got).__name__}: {got}" if isinstance(got, BaseException) else f"returned {type(got).__name__}"
            self.fail(label, f"expected {exc_type.__name__}, {what}")

    def verify(self) -> None:
        if self.failures:
            shown = "\n  ".join(self.failures[:25])
            more = f"\n  ... and {len(self.failures) - 25} more" if len(self.failures) > 25 else ""
            raise AssertionError(f"{len(self.failures)} of {self.count} checks failed:\n  {shown}{more}")

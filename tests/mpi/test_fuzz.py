"""Property-based fuzzing of the collectives' arguments (hypothesis).

Random collective, dtype (unsupported ones included), shape (0-d, empty,
non-contiguous), op (invalid ones included), root (out of range included),
``out=`` variant and async flag. Each call must return the numpy reference or
raise TypeError/ValueError, and raise exactly when the arguments are bad;
anything else (another exception, a wrong result, a crash) fails.

Every rank draws the same examples (derandomize=True, no database, no
timing-based health checks) and each example ends with a verdict agreed over
MPI.COMM_WORLD, so hypothesis takes the same path on every rank, shrinking
included, and the ranks' collectives stay in step. Arguments that only some
ranks can see as bad (reduce's out= on the root, broadcast of a read-only x)
are left out at P > 1: they are covered by tests/test_faults.py.
"""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import distml
from mpi4py import MPI
from mpi_helpers import allgather_ref, alltoall_ref, reduce_ref

WORLD = MPI.COMM_WORLD
P, RANK = WORLD.size, WORLD.rank

SUPPORTED = [np.float16, ml_dtypes.bfloat16, np.float32, np.float64, np.int8, np.int16, np.int32, np.int64,
             np.uint8, np.uint16, np.uint32, np.uint64]
UNSUPPORTED = [np.bool_, np.complex64, np.complex128, object, "U2", "S3", "datetime64[s]",
               np.dtype(np.float32).newbyteorder(), np.dtype(np.int32).newbyteorder()]
OPS = ["sum", "avg", "prod", "min", "max", "band", "bor", "bxor", "SUM", distml.Op.MAX,
       "median", "", 3, None]
OUTS = ["none", "good", "x", "readonly", "wrong_shape", "wrong_dtype", "noncontig"]
KINDS = ["allreduce", "reduce", "broadcast", "allgather", "reduce_scatter", "alltoall"]

SETTINGS = settings(
    derandomize=True, database=None, deadline=None, max_examples=int(__import__("os").environ.get(
        "DISTML_FUZZ_EXAMPLES", "400")),
    suppress_health_check=list(HealthCheck), print_blob=False,
)


@pytest.fixture(scope="module")
def fuzz_comm():
    comm = distml.Communicator(WORLD, timeout=30.0)
    yield comm
    comm.free()


def _data(seed: int, rank: int, dtype, shape, noncontig: bool) -> np.ndarray:
    rng = np.random.default_rng([seed, rank])
    dt = np.dtype(dtype)
    full = shape[:-1] + (2 * shape[-1],) if (noncontig and shape) else shape
    if dt.kind == "u":
        vals = rng.integers(0, 4, size=full)
    elif dt.kind in "if" or dt == np.dtype(ml_dtypes.bfloat16):
        vals = rng.integers(-3, 4, size=full)
    elif dt.kind == "c":
        vals = rng.integers(-3, 4, size=full) + 1j
    elif dt.kind == "b":
        vals = rng.integers(0, 2, size=full)
    elif dt.kind in "USO":
        vals = rng.integers(0, 9, size=full).astype(str)
    else:
        vals = rng.integers(0, 9, size=full)
    a = np.asarray(vals).astype(dt)
    return a[..., ::2] if (noncontig and shape) else a


def _supported(dtype) -> bool:
    dt = np.dtype(dtype)
    return dt.isnative and any(dt == np.dtype(s) for s in SUPPORTED)


def _op_error(op, dtype):
    valid = {"sum", "avg", "prod", "min", "max", "band", "bor", "bxor"}
    name = op.value if isinstance(op, distml.Op) else (op.lower() if isinstance(op, str) else None)
    if name not in valid:
        return ValueError
    if name in ("band", "bor", "bxor") and np.dtype(dtype).kind not in "iu":
        return TypeError
    return None


def _result_shape(kind, shape, rank):
    if kind == "allgather":
        s = shape if shape else (1,)
        return (P * s[0],) + s[1:]
    if kind == "reduce_scatter" and shape:
        return (len(range(rank, shape[0], P)),) + shape[1:]
    return shape


def _expected_errors(kind, dtype, shape, op, root, out):
    """The exception classes this call may raise (empty: it must succeed)."""
    errors = set()
    if not _supported(dtype):
        return {TypeError}  # checked first
    if kind in ("allreduce", "reduce", "reduce_scatter"):
        e = _op_error(op, dtype)
        if e:
            errors.add(e)
    if kind in ("reduce", "broadcast") and not 0 <= root < P:
        errors.add(ValueError)
    if kind in ("reduce_scatter", "alltoall") and not shape:
        errors.add(ValueError)
        return errors
    if kind == "broadcast":
        # x is the output; read-only is allowed on the root only.
        if out == "readonly" and RANK != root and 0 <= root < P:
            errors.add(ValueError)
        return errors
    if kind == "alltoall" and shape[0] % P:
        errors.add(ValueError)
    if kind == "reduce" and RANK != root and 0 <= root < P:
        return errors  # out is ignored off the root
    if out == "x" and kind in ("allgather", "reduce_scatter") and (
            int(np.prod(shape)) > 0 or _result_shape(kind, shape, RANK) != shape):
        errors.add(ValueError)  # overlaps x, or has the wrong shape (empty arrays overlap nothing)
    if out in ("readonly", "wrong_shape"):
        errors.add(ValueError)
    if out == "wrong_dtype":
        errors.add(TypeError)
    return errors


def _make_out(kind, x, shape, out):
    rshape = _result_shape(kind, shape, RANK)
    if out == "none" or kind == "broadcast":
        return None
    if out == "x":
        return x
    if out == "good":
        return np.zeros(rshape, x.dtype)
    if out == "noncontig":
        return np.zeros(rshape[:-1] + (2 * rshape[-1],), x.dtype)[..., ::2] if rshape else np.zeros(rshape, x.dtype)
    if out == "readonly":
        a = np.zeros(rshape, x.dtype)
        a.flags.writeable = False
        return a
    if out == "wrong_shape":
        return np.zeros(rshape + (1,), x.dtype)
    if out == "wrong_dtype":
        return np.zeros(rshape, np.float64 if x.dtype != np.float64 else np.float32)
    raise ValueError(out)


def _reference(kind, xs, op, root):
    name = (op.value if isinstance(op, distml.Op) else op).lower() if kind in (
        "allreduce", "reduce", "reduce_scatter") else None
    if kind == "allreduce":
        return reduce_ref(xs, name)
    if kind == "reduce":
        return reduce_ref(xs, name) if RANK == root else None
    if kind == "broadcast":
        return xs[root]
    if kind == "allgather":
        return allgather_ref(xs)
    if kind == "reduce_scatter":
        return np.array_split(reduce_ref(xs, name), P, axis=0)[RANK]
    return alltoall_ref(xs, RANK)


def _close(got, want, dtype) -> bool:
    if want is None:
        return got is None
    if not isinstance(got, np.ndarray) or got.shape != np.shape(want) or got.dtype != np.dtype(dtype):
        return False
    if np.dtype(dtype).kind in "iu":
        return np.array_equal(got, np.asarray(want).astype(dtype))
    # Small integers: sums and products are exact; avg rounds once.
    return np.allclose(got.astype(np.float64), np.asarray(want, dtype=np.float64), rtol=1e-2, atol=0)


@given(
    kind=st.sampled_from(KINDS),
    dtype=st.sampled_from(SUPPORTED + UNSUPPORTED),
    shape=st.lists(st.integers(0, 5), min_size=0, max_size=3).map(tuple),
    noncontig=st.booleans(),
    op=st.sampled_from(OPS),
    root=st.integers(-2, P + 1),
    out=st.sampled_from(OUTS),
    async_op=st.booleans(),
    algorithm=st.sampled_from(["auto", "mpi"]),
    seed=st.integers(0, 2**16),
)
@SETTINGS
def test_fuzz_collective_arguments(fuzz_comm, kind, dtype, shape, noncontig, op, root, out, async_op, algorithm,
                                   seed):
    comm = fuzz_comm
    if P > 1:
        # Bad arguments only the root sees: the others would start the collective alone.
        assume(not (kind == "reduce" and out in ("readonly", "wrong_shape", "wrong_dtype")))
        assume(not (kind == "broadcast" and out == "readonly"))
    if kind == "alltoall" and shape and P > 1:
        # Mostly divisible shapes, so that most alltoall examples move data.
        shape = (shape[0] * P if seed % 4 else shape[0],) + shape[1:]
    xs = [_data(seed, r, dtype, shape, noncontig) for r in range(P)]
    x = xs[RANK].copy() if not noncontig else _data(seed, RANK, dtype, shape, noncontig)
    if kind == "broadcast" and out == "readonly":
        x.flags.writeable = False
    expected = _expected_errors(kind, dtype, shape, op, root, out)
    problem = None
    o = _make_out(kind, x, shape, out)
    try:
        kw = {"algorithm": algorithm, "async_op": async_op}
        if kind in ("allreduce", "reduce", "reduce_scatter"):
            kw["op"] = op
        if kind in ("reduce", "broadcast"):
            kw["root"] = root
        if kind != "broadcast":
            kw["out"] = o
        got = getattr(comm, kind)(x, **kw)
        if async_op:
            got = got.wait()
    except (TypeError, ValueError) as exc:
        if type(exc) not in expected:
            problem = f"raised {type(exc).__name__}: {exc}; expected {sorted(e.__name__ for e in expected) or 'success'}"
    except Exception as exc:  # noqa: BLE001 - any other exception is a failure, reported on every rank
        problem = f"raised {type(exc).__name__}: {exc}"
    else:
        if expected:
            problem = f"returned, but expected {sorted(e.__name__ for e in expected)}"
        elif not _close(got, _reference(kind, xs, op, root), dtype):
            problem = f"wrong result: {got!r}, expected {_reference(kind, xs, op, root)!r}"
        elif o is not None and got is not None and got is not o:
            problem = "did not return the out= array"
    verdicts = WORLD.allgather(problem)
    bad = [(r, p) for r, p in enumerate(verdicts) if p]
    assert not bad, "; ".join(f"rank {r}: {p}" for r, p in bad)


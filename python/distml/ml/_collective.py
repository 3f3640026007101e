"""Collective building blocks shared by the estimators of distml.ml.

Vocabulary used throughout the package: every rank holds its own *rows*; the
*global order* of the rows is rank 0's rows, then rank 1's, and so on; a row's
*global index* is its position in that order. Anything random is drawn per
global index (see :func:`uniform`), so that a data set split into contiguous
blocks gives the same draws whatever the number of ranks.

Agreement before communication: an estimator first calls ``agree``, one
allgather of a fixed-size record per rank carrying this rank's local problem
(if any), its row and feature counts and hashes of its hyper-parameters. If
any rank found a problem, every rank raises the same error; otherwise every
rank knows every rank's counts. Only after that do shape-dependent
collectives run, so bad input on one rank can never leave its peers waiting
in a collective of another shape.
"""

from __future__ import annotations

import zlib
from typing import Any, List, Sequence, Tuple

import numpy as np

from .._agree import InputProblem, agree  # noqa: F401 - used as shared.agree / shared.InputProblem
from .._errors import MismatchError


def resolve_comm(comm: Any) -> Any:
    """``comm``, or the default communicator (:func:`distml.init`) for None."""
    if comm is None:
        import distml

        return distml.get_default()
    return comm


def crc(*parts: Any) -> int:
    """A 32-bit checksum of ``parts`` (arrays by their bytes, others by repr)."""
    value = 0
    for part in parts:
        if isinstance(part, np.ndarray):
            value = zlib.crc32(repr((part.dtype.str, part.shape)).encode(), value)
            value = zlib.crc32(np.ascontiguousarray(part).tobytes(), value)
        else:
            value = zlib.crc32(repr(part).encode(), value)
    return value


def require_same(values: np.ndarray, what: str) -> int:
    """The common value of ``values`` (one per rank), or MismatchError naming
    the ranks that differ. Call with gathered values, so that every rank
    raises alike."""
    if values.size and np.any(values != values[0]):
        shown = ", ".join(f"rank {r}: {int(v)}" for r, v in enumerate(values))
        raise MismatchError(f"ranks passed different {what} ({shown})")
    return int(values[0]) if values.size else 0


def as_rows(X: Any, name: str = "X") -> np.ndarray:
    """``X`` as a 2-D float64 array with finite values, or InputProblem."""
    try:
        arr = np.asarray(X, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise InputProblem(f"{name} cannot be converted to float64: {e}", TypeError) from None
    if arr.ndim != 2:
        raise InputProblem(f"{name} must be 2-D (rows x features), got {arr.ndim}-D with shape {arr.shape}")
    if arr.shape[1] == 0:
        raise InputProblem(f"{name} has no features (shape {arr.shape})")
    if not np.isfinite(arr).all():
        raise InputProblem(f"{name} contains NaN or infinity")
    return np.ascontiguousarray(arr)


def row_layout(rows: np.ndarray, rank: int) -> Tuple[int, int]:
    """(total rows, global index of rank ``rank``'s first row) given every
    rank's row count."""
    rows = np.asarray(rows, dtype=np.int64)
    return int(rows.sum()), int(rows[:rank].sum())


def allgather_rows(comm: Any, local: np.ndarray, counts: Sequence[int]) -> np.ndarray:
    """Every rank's ``local`` rows concatenated in rank order.

    Args:
        comm: the communicator.
        local: this rank's rows, shape (counts[rank],) + tail; the tail and
            dtype the same on every rank.
        counts: every rank's row count (known to all ranks).

    Must be called on all ranks.
    """
    counts = [int(c) for c in counts]
    widest = max(counts) if counts else 0
    tail = local.shape[1:]
    if widest == 0:
        return np.empty((0,) + tail, dtype=local.dtype)
    padded = np.zeros((widest,) + tail, dtype=local.dtype)
    padded[: local.shape[0]] = local
    gathered = comm.allgather(padded)
    return np.concatenate([gathered[r * widest: r * widest + c] for r, c in enumerate(counts)], axis=0)


def rows_at(comm: Any, X: np.ndarray, first: int, indices: np.ndarray) -> np.ndarray:
    """The rows of global indices ``indices`` (same on every rank), on every rank.

    The rank that holds a row writes it into a zero array and one allreduce
    of sums delivers all of them (adding zeros is exact).

    Must be called on all ranks.
    """
    indices = np.asarray(indices, dtype=np.int64)
    out = np.zeros((indices.size, X.shape[1]), dtype=np.float64)
    mine = (indices >= first) & (indices < first + X.shape[0])
    out[mine] = X[indices[mine] - first]
    return comm.allreduce(out, out=out)


def sum_all(comm: Any, values: Sequence[float]) -> np.ndarray:
    """Element-wise float64 sum of ``values`` over all ranks. Must be called on all ranks."""
    buf = np.array(values, dtype=np.float64)
    return comm.allreduce(buf, out=buf)


# ---- counter-based random numbers --------------------------------------------

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)


def _mix64(z: np.ndarray) -> np.ndarray:
    # SplitMix64's finaliser: a bijection of uint64 with full avalanche.
    z = (z ^ (z >> np.uint64(30))) * _M1
    z = (z ^ (z >> np.uint64(27))) * _M2
    return z ^ (z >> np.uint64(31))


def uniform(seed: int, stream: int, indices: np.ndarray) -> np.ndarray:
    """Uniform draws in [0, 1), one per global index, from (seed, stream).

    A pure function of (seed, stream, index): any rank can draw the number
    of any row without communication, and a row gets the same number whatever
    the number of ranks.
    """
    key = _mix64(np.array([(int(seed) * 0x100000001B3 + int(stream)) & 0xFFFFFFFFFFFFFFFF], dtype=np.uint64)
                 + _GOLDEN)
    z = _mix64(np.asarray(indices, dtype=np.uint64) * _GOLDEN + key)
    z = _mix64(z + key)
    return (z >> np.uint64(11)).astype(np.float64) * (1.0 / 9007199254740992.0)


def labels_of(comm: Any, y: np.ndarray, kinds: np.ndarray, widths: np.ndarray) -> np.ndarray:
    """The sorted union over all ranks of the distinct labels in ``y``.

    Args:
        comm: the communicator.
        y: this rank's labels (1-D).
        kinds: every rank's label kind (see :func:`label_kind`); 0 for ranks
            without rows.
        widths: every rank's longest string label (0 unless strings).

    Must be called on all ranks.
    """
    present = kinds[kinds != 0]
    kind = int(present[0]) if present.size else _KIND_FLOAT
    mine = np.unique(y) if y.size else y
    if kind == _KIND_STR:
        width = max(1, int(widths.max()))
        local = np.asarray(mine, dtype=f"<U{width}").view(np.uint32).reshape(-1, width).astype(np.int64)
    elif kind in (_KIND_INT, _KIND_BOOL):
        local = np.asarray(mine, dtype=np.int64).reshape(-1, 1)
    else:
        local = np.asarray(mine, dtype=np.float64).reshape(-1, 1)
    counts = comm.allgather(np.array([local.shape[0]], dtype=np.int64))
    everything = allgather_rows(comm, np.ascontiguousarray(local), counts)
    if kind == _KIND_STR:
        width = everything.shape[1]
        strings = np.ascontiguousarray(everything.astype(np.uint32)).view(f"<U{width}").reshape(-1)
        return np.unique(strings)
    flat = np.unique(everything.reshape(-1))
    return flat.astype(bool) if kind == _KIND_BOOL else flat


_KIND_FLOAT, _KIND_INT, _KIND_BOOL, _KIND_STR = 1, 2, 3, 4


def label_kind(y: np.ndarray) -> Tuple[int, int]:
    """(kind code, longest string) of a label array; kind 0 for no rows.

    Raises:
        InputProblem: labels that are neither numbers, booleans nor strings,
            or NaN labels.
    """
    if y.size == 0:
        return 0, 0
    if y.dtype.kind == "b":
        return _KIND_BOOL, 0
    if y.dtype.kind in "iu":
        return _KIND_INT, 0
    if y.dtype.kind == "f":
        if not np.isfinite(y).all():
            raise InputProblem("y contains NaN or infinity")
        return _KIND_FLOAT, 0
    if y.dtype.kind == "U":
        return _KIND_STR, int(y.dtype.itemsize // 4)
    raise InputProblem(f"labels of dtype {y.dtype} are not supported (use numbers, booleans or str)", TypeError)


def label_array(y: Any, rows: int) -> np.ndarray:
    """``y`` as a 1-D array of ``rows`` labels, or InputProblem."""
    arr = np.asarray(y)
    if arr.dtype.kind == "O":
        try:
            arr = arr.astype(str)
        except (TypeError, ValueError):
            raise InputProblem("y has object dtype that does not convert to str", TypeError) from None
    if arr.ndim != 1:
        raise InputProblem(f"y must be 1-D, got shape {arr.shape}")
    if arr.shape[0] != rows:
        raise InputProblem(f"X has {rows} rows but y has {arr.shape[0]}")
    return arr


def chunks(n: int, size: int = 65536) -> List[slice]:
    """Row slices of at most ``size`` rows covering ``range(n)``."""
    return [slice(s, min(n, s + size)) for s in range(0, n, size)] or [slice(0, 0)]

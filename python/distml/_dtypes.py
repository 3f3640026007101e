"""Element types and reduction operators, and their codes in the core."""

from __future__ import annotations

import enum

import ml_dtypes
import numpy as np

from . import _core

bfloat16 = np.dtype(ml_dtypes.bfloat16)

# The core's code for each dtype (its names are numpy's, bfloat16 ml_dtypes').
_DTYPE_CODES = {(bfloat16 if name == "bfloat16" else np.dtype(name)): code
                for name, code in _core.DType.__members__.items()}

SUPPORTED_DTYPES = tuple(_DTYPE_CODES)


class Op(str, enum.Enum):
    """Reduction operators. Strings with the same names are accepted anywhere."""

    SUM = "sum"
    AVG = "avg"
    PROD = "prod"
    MIN = "min"
    MAX = "max"
    BAND = "band"
    BOR = "bor"
    BXOR = "bxor"

    def __str__(self) -> str:
        return self.value


_OP_CODES = {op: _core.Op.__members__[op.value] for op in Op}
_BITWISE = (Op.BAND, Op.BOR, Op.BXOR)


def dtype_code(dtype: np.dtype, argname: str = "x") -> int:
    """The core's code for ``dtype``; TypeError when distml cannot reduce it."""
    dtype = np.dtype(dtype)
    if not dtype.isnative:
        raise TypeError(f"{argname} has non-native byte order ({dtype}); convert it with astype first")
    code = _DTYPE_CODES.get(dtype)
    if code is None:
        names = ", ".join(str(d) for d in SUPPORTED_DTYPES)
        raise TypeError(f"{argname} has unsupported dtype {dtype}; distml supports {names}")
    return code


def parse_op(op: object) -> Op:
    """``op`` as an :class:`Op`; ValueError naming the accepted ones if unknown."""
    if isinstance(op, Op):
        return op
    if isinstance(op, str):
        try:
            return Op(op.lower())
        except ValueError:
            pass
    names = ", ".join(repr(o.value) for o in Op)
    raise ValueError(f"unknown op {op!r}; expected one of {names} or a distml.Op")


_op_cache: dict = {}


def op_code(op: object, dtype: np.dtype) -> int:
    """The core's code for ``op`` applied to ``dtype``.

    Raises:
        ValueError: ``op`` is not an operator distml knows.
        TypeError: ``op`` has no meaning for ``dtype`` (bitwise ops on floats).
    """
    key = (op, dtype)
    try:
        return _op_cache[key]
    except (KeyError, TypeError):
        pass
    parsed = parse_op(op)
    if parsed in _BITWISE and (np.dtype(dtype).kind == "f" or np.dtype(dtype) == bfloat16):
        raise TypeError(f"op {parsed.value!r} is not defined for dtype {dtype} (bitwise ops need integers)")
    code = _OP_CODES[parsed]
    if isinstance(op, (str, Op)) and len(_op_cache) < 1024:
        _op_cache[key] = code
    return code

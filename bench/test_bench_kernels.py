"""Reduction kernels: distml's SIMD ``reduce(dst, src)`` against numpy's
``np.add(dst, src, out=dst)``, single-threaded, per dtype and size.

Under mpiexec every rank runs these at once (they do not communicate), so
they then measure P processes sharing the memory system; take kernel figures
from a P = 1 run.
"""

from __future__ import annotations

import numpy as np
import pytest

import distml
from distml import _core

from conftest import ROTATE

DTYPES = {name: (np.dtype(distml.bfloat16 if name == "bfloat16" else name), _core.DType.__members__[name])
          for name in ("float32", "bfloat16", "float16")}
OP_SUM = _core.Op.sum
SIZES = {"4KiB": 4 << 10, "1MiB": 1 << 20, "64MiB": 64 << 20}


@pytest.mark.parametrize("impl", ["distml", "numpy"])
@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("size", list(SIZES))
def test_reduce_sum(run_rotating, benchmark, impl, dtype, size):
    dt, code = DTYPES[dtype]
    nbytes = SIZES[size]
    n = nbytes // dt.itemsize
    benchmark.group = f"kernel sum {dtype} {size}"
    # Ones added to ones: the sums stay finite (fp16 and bf16 saturate at a
    # finite value), so no inf or NaN path is timed.
    sets = [(np.ones(n, dt), np.ones(n, dt)) for _ in range(ROTATE)]
    if impl == "distml":
        def target(dst, src):
            _core.kernel_reduce(dst, src, code, OP_SUM)
    else:
        def target(dst, src):
            np.add(dst, src, out=dst)
    run_rotating(target, sets, nbytes, sync=False)

"""The reduction kernels (csrc/kernels) against numpy, on every instruction set.

Every ISA this CPU runs x every dtype x every op that has a meaning for it x
lengths 0, 1, odd, and past the vector and block sizes, with buffers at odd
byte addresses and with dst aliasing a source. float16/bfloat16 references
are computed in float32 and rounded once, which is the kernels' contract.
"""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest

from distml import _core

# The core's codes, by the names it gives them (numpy's dtype names).
DTYPE_CODES = {np.dtype(ml_dtypes.bfloat16 if name == "bfloat16" else name): code
               for name, code in _core.DType.__members__.items()}
OP_CODES = dict(_core.Op.__members__)

DTYPES = list(DTYPE_CODES)
HALF_DTYPES = {np.dtype(np.float16), np.dtype(ml_dtypes.bfloat16)}
FLOAT_DTYPES = HALF_DTYPES | {np.dtype(np.float32), np.dtype(np.float64)}
BITWISE_OPS = ("band", "bor", "bxor")
LENGTHS = (0, 1, 7, 33, 1000, 4099)

# avg reduces as sum; scale_avg finishes it (tested separately).
UFUNCS = {
    "sum": np.add,
    "avg": np.add,
    "prod": np.multiply,
    "min": np.minimum,
    "max": np.maximum,
    "band": np.bitwise_and,
    "bor": np.bitwise_or,
    "bxor": np.bitwise_xor,
}

ISAS = _core.kernel_isas()


VALID_PAIRS = [
    pytest.param(dtype, op, id=f"{dtype.name}-{op}")
    for dtype in DTYPES
    for op in OP_CODES
    if not (dtype in FLOAT_DTYPES and op in BITWISE_OPS)
]


@pytest.fixture(params=ISAS)
def isa(request):
    """Runs the test on one instruction set and restores the previous one."""
    before = _core.kernel_current_isa()
    _core.kernel_set_isa(request.param)
    try:
        yield request.param
    finally:
        _core.kernel_set_isa(before)


def random_values(rng, dtype, n):
    """Values that reach the edges: NaN, inf, signed zero, subnormals, overflow."""
    if dtype in FLOAT_DTYPES:
        wide = np.float64 if dtype == np.float64 else np.float32
        scale = rng.choice([1e-40, 1e-7, 1.0, 1e3, 3e4, 1e38], size=n)
        with np.errstate(all="ignore"):
            x = (rng.standard_normal(n) * scale).astype(wide)
            specials = np.array([np.nan, np.inf, -np.inf, -0.0, 0.0], dtype=wide)
            pick = rng.random(n) < 0.05
            x[pick] = rng.choice(specials, size=int(pick.sum()))
            return x.astype(dtype)
    info = np.iinfo(dtype)
    return rng.integers(info.min, info.max, size=n, endpoint=True, dtype=dtype)


def unaligned_copy(x):
    """A copy of x that starts one byte past an aligned address."""
    raw = np.zeros(x.nbytes + 1, dtype=np.uint8)
    out = raw[1:].view(x.dtype)
    out[...] = x
    assert x.size == 0 or out.ctypes.data % 2 == 1
    return out


def ref_chain(srcs, dtype, op):
    """srcs[0] op srcs[1] op ... in order; half types in float32, rounded once."""
    ufunc = UFUNCS[op]
    with np.errstate(all="ignore"):
        if dtype in HALF_DTYPES:
            acc = srcs[0].astype(np.float32)
            for s in srcs[1:]:
                acc = ufunc(acc, s.astype(np.float32))
            return acc.astype(dtype)
        acc = srcs[0].copy()
        for s in srcs[1:]:
            acc = ufunc(acc, s)
        return acc


def assert_same(got, want):
    assert got.dtype == want.dtype and got.shape == want.shape
    if got.dtype in FLOAT_DTYPES:
        # Widening is exact; NaNs must sit in the same places.
        np.testing.assert_array_equal(got.astype(np.float64), want.astype(np.float64))
    else:
        np.testing.assert_array_equal(got, want)


def codes(dtype, op):
    return DTYPE_CODES[dtype], OP_CODES[op]


@pytest.mark.parametrize("n", LENGTHS)
@pytest.mark.parametrize(("dtype", "op"), VALID_PAIRS)
def test_reduce(isa, dtype, op, n):
    rng = np.random.default_rng([n, int(DTYPE_CODES[dtype]), int(OP_CODES[op])])
    a, b = random_values(rng, dtype, n), random_values(rng, dtype, n)
    want = ref_chain([a, b], dtype, op)

    dst = a.copy()
    _core.kernel_reduce(dst, b, *codes(dtype, op))
    assert_same(dst, want)

    # Both operands at odd addresses.
    dst, src = unaligned_copy(a), unaligned_copy(b)
    _core.kernel_reduce(dst, src, *codes(dtype, op))
    assert_same(dst, want)
    assert_same(src, b)

    # dst is also the source: a op a.
    dst = unaligned_copy(a)
    _core.kernel_reduce(dst, dst, *codes(dtype, op))
    assert_same(dst, ref_chain([a, a], dtype, op))


@pytest.mark.parametrize("stream", (False, True), ids=("cached", "stream"))
@pytest.mark.parametrize("nsrc", (1, 2, 3, 5))
@pytest.mark.parametrize(("dtype", "op"), VALID_PAIRS)
def test_reduce_many(isa, dtype, op, nsrc, stream):
    # The streaming form writes whole aligned vectors from a scratch block
    # of 8 KiB: lengths past a block, and unaligned starts, reach its head,
    # body and tail.
    for n in LENGTHS + ((5000,) if stream else ()):
        rng = np.random.default_rng([n, nsrc, int(DTYPE_CODES[dtype]), int(OP_CODES[op])])
        srcs = [random_values(rng, dtype, n) for _ in range(nsrc)]
        want = ref_chain(srcs, dtype, op)

        dst = np.empty_like(srcs[0])
        _core.kernel_reduce_many(dst, srcs, *codes(dtype, op), stream)
        assert_same(dst, want)

        # Unaligned, and dst is the first source.
        moved = [unaligned_copy(s) for s in srcs]
        _core.kernel_reduce_many(moved[0], moved, *codes(dtype, op), stream)
        assert_same(moved[0], want)
        for s, orig in zip(moved[1:], srcs[1:]):
            assert_same(s, orig)


def test_copy_stream(isa):
    rng = np.random.default_rng(7)
    src_raw = rng.integers(0, 256, 20000, dtype=np.uint8)
    for n in (0, 1, 63, 64, 65, 255, 256, 257, 1000, 4096 + 17, 19000):
        for d_off, s_off in ((0, 0), (1, 0), (0, 3), (63, 17), (32, 32)):
            dst_raw = np.zeros(n + 128, np.uint8)
            dst = dst_raw[d_off:d_off + n]
            src = src_raw[s_off:s_off + n]
            _core.kernel_copy_stream(dst, src)
            assert np.array_equal(dst, src), (n, d_off, s_off)
            assert not dst_raw[:d_off].any() and not dst_raw[d_off + n:].any(), "wrote outside dst"


def test_reduce_many_rounds_half_types_once(isa):
    # 2048 + 1 + 1 in float16: step by step each +1 rounds back to 2048
    # (ties to even); accumulated in float32 the chain gives 2050.
    srcs = [np.full(9, v, dtype=np.float16) for v in (2048.0, 1.0, 1.0)]
    dst = np.empty_like(srcs[0])
    _core.kernel_reduce_many(dst, srcs, *codes(np.dtype(np.float16), "sum"))
    assert np.all(dst == 2050.0)
    step = srcs[0].copy()
    for s in srcs[1:]:
        _core.kernel_reduce(step, s, *codes(np.dtype(np.float16), "sum"))
    assert np.all(step == 2048.0)


def test_reduce_many_rejects_dst_as_a_later_source():
    x = np.ones(8, np.float32)
    y = np.ones(8, np.float32)
    with pytest.raises(ValueError):
        _core.kernel_reduce_many(x, [y, y, x], *codes(np.dtype(np.float32), "sum"))


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.name)
def test_scale_avg(isa, dtype):
    for n in LENGTHS:
        for divisor in (1, 2, 3, 4, 7, 8, 200, 256, 1000, 2**40):
            rng = np.random.default_rng([n, divisor % 1001, int(DTYPE_CODES[dtype])])
            x = random_values(rng, dtype, n)
            with np.errstate(all="ignore"):
                if dtype in HALF_DTYPES:
                    want = (x.astype(np.float32) / np.float32(divisor)).astype(dtype)
                elif dtype in FLOAT_DTYPES:
                    want = x / dtype.type(divisor)
                elif np.issubdtype(dtype, np.signedinteger):
                    want = (x.astype(np.int64) // np.int64(divisor)).astype(dtype)
                else:
                    want = (x.astype(np.uint64) // np.uint64(divisor)).astype(dtype)
            buf = unaligned_copy(x)
            _core.kernel_scale_avg(buf, DTYPE_CODES[dtype], divisor)
            assert_same(buf, want)


@pytest.mark.parametrize("dtype", sorted(FLOAT_DTYPES, key=lambda d: int(DTYPE_CODES[d])), ids=lambda d: d.name)
@pytest.mark.parametrize("op", BITWISE_OPS)
def test_bitwise_on_floats_raises(dtype, op):
    x = np.zeros(4, dtype)
    with pytest.raises(ValueError, match=op):
        _core.kernel_reduce(x, x.copy(), *codes(dtype, op))
    with pytest.raises(ValueError, match=op):
        _core.kernel_reduce_many(x, [x.copy(), x.copy()], *codes(dtype, op))


def test_codes_are_the_cores_enums():
    # Every dtype distml supports has a code, named as numpy names it.
    assert len(DTYPE_CODES) == 12 and set(OP_CODES) == {"sum", "avg", "prod", "min", "max", "band", "bor", "bxor"}
    x = np.zeros(4, np.float32)
    # A bare integer is not a code: only the enums cross the binding.
    with pytest.raises(TypeError):
        _core.kernel_reduce(x, x.copy(), int(DTYPE_CODES[x.dtype]), 0)
    with pytest.raises(ValueError):
        _core.kernel_scale_avg(x, DTYPE_CODES[x.dtype], 0)
    # The item size must match the code.
    with pytest.raises(ValueError, match="item size"):
        _core.kernel_reduce(x, x.copy(), DTYPE_CODES[np.dtype(np.float64)], OP_CODES["sum"])


def test_isa_selection():
    assert ISAS[0] == "baseline"
    assert set(ISAS) <= {"baseline", "avx2", "avx512"}
    assert _core.kernel_current_isa() in ISAS
    with pytest.raises(ValueError):
        _core.kernel_set_isa("sse9")


def test_set_isa_switches_kernels(isa):
    assert _core.kernel_current_isa() == isa


@pytest.mark.parametrize("dtype", sorted(HALF_DTYPES, key=lambda d: d.name), ids=lambda d: d.name)
@pytest.mark.parametrize("n", LENGTHS)
def test_widen_and_narrow_half(isa, dtype, n):
    """The half types to float32 and back (the gradient buffer's wire formats)
    against numpy's casts, which round to nearest even: every float32 value
    class (normal, subnormal in the half type, overflow, inf, NaN)."""
    rng = np.random.default_rng([n, int(DTYPE_CODES[dtype])])
    specials = np.array([0.0, -0.0, 1.0, -2.5, 65504.0, 65520.0, 1e-7, 6e-8, 3e38, np.inf, -np.inf],
                        np.float32)
    x = np.concatenate([specials, (rng.standard_normal(n) * 10.0 ** rng.integers(-8, 6, n)).astype(np.float32)])
    half = np.empty(x.size, dtype)
    _core.kernel_narrow_half(x, DTYPE_CODES[dtype], half)
    with np.errstate(over="ignore"):  # overflow to inf is part of the contract
        want = x.astype(dtype)
    np.testing.assert_array_equal(half.view(np.uint16), want.view(np.uint16))
    back = np.empty(x.size, np.float32)
    _core.kernel_widen_half(half, DTYPE_CODES[dtype], back)
    np.testing.assert_array_equal(back, half.astype(np.float32))
    nan = np.full(3, np.nan, np.float32)
    _core.kernel_narrow_half(nan, DTYPE_CODES[dtype], half[:3])
    assert np.isnan(half[:3].astype(np.float32)).all()


def test_widen_half_refuses_other_dtypes():
    x = np.zeros(4, np.float32)
    with pytest.raises(ValueError, match="not a half type"):
        _core.kernel_widen_half(x, DTYPE_CODES[np.dtype(np.float32)], x)

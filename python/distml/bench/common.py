"""What the sweep covers: collectives and their bus-bandwidth factors, the
baseline's name, message sizes, and sizes as people write them."""

from __future__ import annotations

import argparse
from typing import Callable, Dict, List


# The collectives swept, in order, and the NCCL-tests bus-bandwidth factor of
# each as a function of P (the algorithms come from the core: see
# sweep.accepted_algorithms).
COLLECTIVES: Dict[str, Callable[[int], float]] = {
    "allreduce": lambda p: 2.0 * (p - 1) / p,
    "reduce": lambda p: 1.0,
    "broadcast": lambda p: 1.0,
    "allgather": lambda p: (p - 1) / p,
    "reduce_scatter": lambda p: (p - 1) / p,
    "alltoall": lambda p: (p - 1) / p,
    # No data: timed once per sweep, as a message of 0 bytes.
    "barrier": lambda p: 0.0,
}

BASELINE = "mpi4py"
KiB, MiB = 1 << 10, 1 << 20
DEFAULT_SIZES = [8 ** k for k in range(1, 10)]  # 8 B .. 128 MiB by powers of 8
DEFAULT_SIZES.append(256 * MiB)                 # and the largest size the protocol asks for
MEMCPY_BYTES = 256 * MiB


def parse_size(text: str) -> int:
    """'8', '64K', '4MiB', '1g' -> bytes."""
    t = text.strip().lower().replace("ib", "").rstrip("b")
    mult = 1
    for suffix, m in (("k", KiB), ("m", MiB), ("g", 1 << 30)):
        if t.endswith(suffix):
            t, mult = t[:-1], m
            break
    try:
        value = int(float(t) * mult)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (examples: 8, 64K, 4M, 1G)") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"size must be positive: {text!r}")
    return value


def format_size(nbytes: float) -> str:
    for unit, m in (("GiB", 1 << 30), ("MiB", MiB), ("KiB", KiB)):
        if nbytes >= m:
            v = nbytes / m
            return f"{v:.0f} {unit}" if v == int(v) else f"{v:.1f} {unit}"
    return f"{int(nbytes)} B"


def _csv(text: str) -> List[str]:
    return [t.strip() for t in text.split(",") if t.strip()]

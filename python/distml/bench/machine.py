"""The machine a sweep ran on: CPU, caches, load, and its memory-bandwidth
ceiling (a large memcpy timed in the same run)."""

from __future__ import annotations

import os
import platform
import time
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from .common import MEMCPY_BYTES


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _cache_sizes() -> Dict[str, str]:
    caches: Dict[str, str] = {}
    base = "/sys/devices/system/cpu/cpu0/cache"
    try:
        for entry in sorted(os.listdir(base)):
            d = os.path.join(base, entry)
            try:
                with open(os.path.join(d, "level")) as f:
                    level = f.read().strip()
                with open(os.path.join(d, "type")) as f:
                    kind = f.read().strip()
                with open(os.path.join(d, "size")) as f:
                    size = f.read().strip()
            except OSError:
                continue
            if kind in ("Data", "Unified"):
                caches[f"L{level}"] = size
    except OSError:
        pass
    return caches


def machine_info(nranks: int) -> Dict[str, Any]:
    import mpi4py
    from mpi4py import MPI

    import distml
    from distml import _core

    return {
        "cpu_model": _cpu_model(),
        "cores": os.cpu_count(),
        "caches_cpu0": _cache_sizes(),
        "kernel_isa": _core.kernel_current_isa(),
        "kernel_isas": list(_core.kernel_isas()),
        "mpi_library": " ".join(MPI.Get_library_version().strip().splitlines()[0].split()),
        "mpi_standard": "%d.%d" % MPI.Get_version(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "numpy": np.__version__,
        "mpi4py": mpi4py.__version__,
        "distml": distml.__version__,
        "P": nranks,
    }


def _loadavg() -> Optional[List[float]]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def _quiet_barrier(mcomm: Any) -> None:
    """A barrier whose waiting ranks sleep instead of polling, so that they
    leave the cores to a rank that is measuring something."""
    req = mcomm.Ibarrier()
    while not req.Test():
        time.sleep(0.0005)


# The machine's phase (bench/results/host_phases.md): two threads, one pinned
# to each of two CPUs, move PHASE_BYTES of cache lines; the reading is the
# time to rewrite lines the other core has just read over the time of the
# same copy within one core (the fastest of PHASE_REPS rounds each). On the
# AMD EPYC machines these runs use it takes two clusters of values, 5.6-7.7
# in the fast phase and 19-26 in the slow one, in 550 readings over 90 s;
# SLOW_PHASE_RATIO sits between them. Rows keep their raw readings, so a
# machine with other clusters can be classified again.
PHASE_BYTES = 64 << 10
PHASE_REPS = 5
SLOW_PHASE_RATIO = 12.0


def phase_cpus() -> Optional[Tuple[int, int]]:
    """The two CPUs the phase is read between: the first two this process
    may run on, or None where it may run on one only (e.g. a rank bound to
    a core)."""
    try:
        cpus = sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return None
    return (cpus[0], cpus[1]) if len(cpus) >= 2 else None


def cross_core_ratio(cpus: Tuple[int, int]) -> float:
    """One reading of the phase between ``cpus`` (see SLOW_PHASE_RATIO)."""
    from distml import _core

    r = _core.cross_core(cpus[0], cpus[1], PHASE_BYTES, PHASE_REPS)
    return r["rewrite_s"] / r["local_s"]


def phase_reading(mcomm: Any, cpus: Optional[Tuple[int, int]]) -> Optional[float]:
    """Collective over ``mcomm``: rank 0 reads the phase (cross_core_ratio)
    while the others wait in a sleeping barrier; every rank gets the reading,
    None where rank 0 has no two CPUs to read it between."""
    value = None
    if mcomm.Get_rank() == 0 and cpus is not None:
        value = cross_core_ratio(cpus)
    _quiet_barrier(mcomm)
    return mcomm.bcast(value, root=0)


def memcpy_ceiling(mcomm: Any, nbytes: int = MEMCPY_BYTES, iters: int = 10) -> Dict[str, Any]:
    """Rank 0's ``np.copyto`` bandwidth on ``nbytes`` (median), the others idle.

    The other ranks wait in a polled, sleeping non-blocking barrier rather
    than MPI_Barrier, whose busy polling would take a core from the copy on
    an oversubscribed machine. Bandwidth counts the bytes copied once (the
    memory system moves twice that: a read and a write).
    """
    result: Dict[str, Any] = {}
    if mcomm.Get_rank() == 0:
        src = np.ones(nbytes, dtype=np.uint8)
        dst = np.zeros(nbytes, dtype=np.uint8)
        np.copyto(dst, src)  # fault pages in
        times = []
        for _ in range(iters):
            t0 = time.perf_counter()
            np.copyto(dst, src)
            times.append(time.perf_counter() - t0)
        med = float(np.median(times))
        result = {"bytes": nbytes, "iters": iters, "time_s": med, "bandwidth_GBps": nbytes / med / 1e9,
                  "min_time_s": float(np.min(times))}
        del src, dst
    _quiet_barrier(mcomm)
    return mcomm.bcast(result, root=0)

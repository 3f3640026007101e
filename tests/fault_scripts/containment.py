"""Containment cases for tests/test_containment.py, run under mpiexec.

    mpiexec -n P python tests/fault_scripts/containment.py CASE [VARIANT ...]

Like faults.py, each rank reports what it saw as ``FAULT {json}`` lines, and
the launcher makes the assertions (a rank that never reports shows up as a
missing line).

Cases:
    nomem       the last rank cannot allocate a collective's scratch memory
                (RLIMIT_AS): every rank must raise, quickly, and the
                communicator stays usable (variants: timeout, notimeout)
    inject      DISTML_INJECT_FAULT makes one rank fail right after the
                agreement: with a timeout every rank raises and the
                communicator is broken; without one the job is aborted
    settings    ranks with different schedule settings: at creation
                (environment) and after it (a setter on one rank)
    gcdrop      one rank drops a communicator the others keep: its
                destructor must not wait for them
"""

from __future__ import annotations

import gc
import os
import resource
import sys
import time
import weakref

import numpy as np

import distml
from mpi4py import MPI

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from faults import attempt, follow_up, report  # noqa: E402

WORLD = MPI.COMM_WORLD
RANK, P = WORLD.rank, WORLD.size
TIMEOUT = 2.0
# For cases where the timeout must never expire: the refusal comes from the
# agreement at once, but on a loaded machine (4 ranks, 2 cores, the starved
# rank's rlimit dance) a peer can reach that agreement more than 2 s after
# another, which a 2 s timeout rightly turns into a broken communicator.
# The test bounds the refusal's time well below this.
LONG_TIMEOUT = 30.0


def _vm_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmSize in /proc/self/status")


def case_nomem(variants) -> None:
    timeout = LONG_TIMEOUT if "timeout" in variants else None
    comm = distml.Communicator(WORLD, timeout=timeout)
    starved = P - 1
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    # Each call needs memory that the starved rank lacks: the core's scratch
    # (reduce_scatter over the ring needs as much as its input), or the
    # result array Python allocates (allgather: P times the input).
    calls = {
        "scratch": (np.ones(1 << 25, np.float32), lambda x: comm.reduce_scatter(x, algorithm="ring")),
        "result": (np.ones(1 << 24, np.float32), lambda x: comm.allgather(x)),
    }
    for what, (x, fn) in calls.items():
        if RANK == starved:
            # Room for small allocations, not for another 128 MiB.
            resource.setrlimit(resource.RLIMIT_AS, (_vm_bytes() + (80 << 20), hard))
        saw, msg, seconds, _ = attempt(lambda: fn(x))
        if RANK == starved:
            resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
        report("nomem", variant=f"{variants[0]}:{what}", saw=saw, msg=msg, seconds=seconds, starved=starved,
               after=follow_up(comm))
    comm.free()


def case_inject(variants) -> None:
    # DISTML_INJECT_FAULT=1:3 (set by the launcher): rank 1 fails collective #3.
    # A further variant names the allreduce algorithm (default "auto").
    timeout = TIMEOUT if "timeout" in variants else None
    algorithm = variants[1] if len(variants) > 1 else "auto"
    comm = distml.Communicator(WORLD, timeout=timeout)
    x = np.ones(1 << 16, np.float32)
    comm.allreduce(x, algorithm=algorithm)
    comm.allreduce(x, algorithm=algorithm)
    report("inject", variant=variants[0], role="before", t=time.time())
    saw, msg, seconds, _ = attempt(lambda: comm.allreduce(x, algorithm=algorithm))
    later, later_msg, _, _ = attempt(lambda: comm.allreduce(x, algorithm=algorithm))
    report("inject", variant=variants[0], role="after", saw=saw, msg=msg, seconds=seconds, later=later,
           later_msg=later_msg)
    WORLD.Barrier()
    comm.free()


# (variable, this rank's value) for the rank that differs; the values change
# the schedule on one node of any size.
_ENV_SETTINGS = {
    "one_shot": ("DISTML_SHM_ONE_SHOT_BYTES", "128"),
    "stream": ("DISTML_SHM_STREAM_BYTES", "4096"),
    "single_copy": ("DISTML_SHM_SINGLE_COPY_BYTES", "1024"),
}


def case_settings(variants) -> None:
    odd = P - 1
    for name, (var, value) in _ENV_SETTINGS.items():
        saved = os.environ.get(var)
        if RANK == odd:
            os.environ[var] = value
        saw, msg, seconds, comm = attempt(lambda: distml.Communicator(WORLD))
        if saved is None:
            os.environ.pop(var, None)
        else:
            os.environ[var] = saved
        report("settings", variant=f"create:{name}", saw=saw, msg=msg, seconds=seconds, odd=odd, var=var)
        if comm is not None:
            comm.free()
    # After creation: a setter on one rank only. The next collective that the
    # setting would send down another path is refused on every rank.
    comm = distml.Communicator(WORLD)
    x = np.ones(1 << 15, np.float32)  # 128 KiB: one-shot on one rank, staged on the other
    comm.allreduce(x)
    before = comm._core.shm_one_shot_bytes
    if RANK == odd:
        comm._core.shm_one_shot_bytes = 1 << 20
    saw, msg, seconds, _ = attempt(lambda: comm.allreduce(x))
    if RANK == odd:
        comm._core.shm_one_shot_bytes = before
    report("settings", variant="setter", saw=saw, msg=msg, seconds=seconds, odd=odd, after=follow_up(comm))
    comm.free()


def case_gcdrop(variants) -> None:
    comm = distml.Communicator(WORLD)
    comm.allreduce(np.ones(8))
    shared = comm.zeros(1024, np.float32)  # a shared window too
    comm.allreduce(shared, out=shared)
    WORLD.Barrier()
    if RANK == 0:
        ref = weakref.ref(comm)
        start = time.monotonic()
        del comm, shared
        gc.collect()
        report("gcdrop", role="dropper", seconds=time.monotonic() - start, collected=ref() is None)
    else:
        time.sleep(5.0)  # a destructor that waits for the others waits this long
        report("gcdrop", role="keeper", seconds=0.0)
        KEPT.append(comm)  # alive until exit: left to MPI_Finalize, named on stderr
    WORLD.Barrier()


KEPT: list = []

CASES = {name[len("case_"):]: fn for name, fn in globals().items() if name.startswith("case_")}

if __name__ == "__main__":
    CASES[sys.argv[1]](sys.argv[2:])

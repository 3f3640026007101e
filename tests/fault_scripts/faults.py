"""Fault cases for tests/test_faults.py, run under mpiexec.

    mpiexec -n P python tests/fault_scripts/faults.py CASE [VARIANT ...]

Each rank reports what it saw as lines ``FAULT {json}`` on stdout, one per
observation: the case and variant, the rank, the exception type (or "ok"),
its message and how long the call took. The launcher collects every rank's
lines and makes the assertions, so a rank that never reports (killed, hung)
shows up as a missing line rather than as a silent pass.

Cases:
    mismatch    ranks pass different arguments; every rank must raise
                MismatchError naming the field, and the next collective works
    stall       one rank stops arriving; the others time out (one variant
                per argument: auto, ring, mpi, nocheck, root_absent, late,
                late_small, late_large, init)
    kill        one rank SIGKILLs itself inside a large allreduce
    abort       distml.abort() after a timeout, with a rank still asleep
    free        every collective after free()
    badinput    the bad-argument table, on every rank and on one rank alone
    oneside     bad arguments only some ranks can see (reduce out=, broadcast
                read-only x): the others must raise MismatchError, with or
                without a timeout
    exit_many   several communicators still alive at exit
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time

import numpy as np

import distml
from mpi4py import MPI

WORLD = MPI.COMM_WORLD
RANK, P = WORLD.rank, WORLD.size
TIMEOUT = 2.0


def report(case: str, **fields) -> None:
    fields = {"case": case, "rank": RANK, "size": P, **fields}
    sys.stdout.write("FAULT " + json.dumps(fields, default=str) + "\n")
    sys.stdout.flush()


def attempt(fn):
    """(type name or "ok", message, seconds, result) of calling ``fn``."""
    start = time.monotonic()
    try:
        result = fn()
    except Exception as exc:  # noqa: BLE001 - the type is what we report
        return type(exc).__name__, str(exc), time.monotonic() - start, None
    return "ok", "", time.monotonic() - start, result


def attempt_mismatched(comm, fn):
    """attempt(fn), where a call that returned (the root of a one-way small
    broadcast on one node, or a rank whose call matched the root's) reports
    what its next collective raised: that is where such a rank learns of the
    mismatch. The seconds cover both calls."""
    saw, msg, seconds, result = attempt(fn)
    if saw == "ok":
        saw, msg, more, result = attempt(lambda: comm.barrier())
        seconds += more
    return saw, msg, seconds, result


def follow_up(comm) -> str:
    """A correct allreduce on ``comm``: "ok" if it gives the right sum."""
    x = np.arange(7, dtype=np.int64) + RANK
    want = np.arange(7, dtype=np.int64) * P + P * (P - 1) // 2
    saw, msg, _, got = attempt(lambda: comm.allreduce(x))
    if saw != "ok":
        return f"{saw}: {msg}"
    return "ok" if np.array_equal(got, want) else f"wrong result {got}"


class StderrTee:
    """Copies this process's fd 2 through a pipe, timestamping each line, so
    that a test can tell when the core (C code writing to stderr) warned."""

    def __init__(self) -> None:
        self.lines: list = []
        self._orig = os.dup(2)
        r, w = os.pipe()
        os.dup2(w, 2)
        os.close(w)
        self._r = r
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        pending = b""
        while True:
            chunk = os.read(self._r, 65536)
            if not chunk:
                return
            os.write(self._orig, chunk)
            pending += chunk
            while b"\n" in pending:
                line, pending = pending.split(b"\n", 1)
                self.lines.append((time.monotonic(), line.decode(errors="replace")))

    def since(self, t0: float) -> list:
        return [(round(t - t0, 3), text) for t, text in self.lines if t >= t0]


# ---- mismatch ------------------------------------------------------------------


def _mismatch_calls(odd: int):
    """(label, field, what the odd rank passes as it appears in the message, call(comm))."""
    n = 2 * P
    base = np.arange(n * 3, dtype=np.float32).reshape(n, 3)
    mine = RANK == odd

    def x(dtype=np.float32):
        return base.astype(dtype)

    return [
        ("dtype", "dtype", "float64", lambda c: c.allreduce(x(np.float64 if mine else np.float32))),
        ("count", "count", str(base.size + 3), lambda c: c.allreduce(np.zeros(base.size + (3 if mine else 0), np.float32))),
        ("shape allgather", "shape", f"({n * 3},)",
         lambda c: c.allgather(base.reshape(-1) if mine else base)),
        ("shape reduce_scatter", "shape", f"({P}, 6)",
         lambda c: c.reduce_scatter(base.reshape(P, 6) if mine else base)),
        ("op", "op", "max", lambda c: c.allreduce(base, op="max" if mine else "sum")),
        ("root reduce", "root", "1", lambda c: c.reduce(base, root=1 if mine else 0)),
        ("root broadcast", "root", "1", lambda c: c.broadcast(base.copy(), root=1 if mine else 0)),
        ("algorithm", "algorithm", "ring", lambda c: c.allreduce(base, algorithm="ring" if mine else "mpi")),
        ("collective kind", "collective", "broadcast",
         lambda c: c.broadcast(base.copy()) if mine else c.allreduce(base)),
        ("barrier vs allreduce", "collective", "barrier", lambda c: c.barrier() if mine else c.allreduce(base)),
        ("async op", "op", "min",
         lambda c: c.allreduce(base, op="min" if mine else "sum", async_op=True).wait()),
    ]


def case_mismatch(variants) -> None:
    comms = {"no timeout": distml.Communicator(WORLD), "timeout": distml.Communicator(WORLD, timeout=10.0)}
    for comm_label, comm in comms.items():
        for odd in sorted({P - 1, 0}):
            for label, field, value, call in _mismatch_calls(odd):
                WORLD.Barrier()
                one_way = label in ("root broadcast", "collective kind")  # a broadcast on some rank
                saw, msg, seconds, _ = (attempt_mismatched(comm, lambda: call(comm)) if one_way
                                        else attempt(lambda: call(comm)))
                report("mismatch", variant=f"{label} / odd rank {odd} / {comm_label}", field=field, value=value,
                       odd=odd, saw=saw, msg=msg, seconds=seconds, after=follow_up(comm))
    for comm in comms.values():
        comm.free()


# ---- stall -----------------------------------------------------------------------


STALL_VARIANTS = ["auto", "ring", "mpi", "nocheck", "root_absent", "late", "late_small", "late_large", "init"]
# The allreduce's size in each variant: 16 KiB, except for a late rank's call
# of 1 KiB and 256 KiB (on one node: data moved with the arrival up to 16 KiB,
# by a shared-memory schedule above).
STALL_ELEMENTS = {"late_small": 1 << 8, "late_large": 1 << 16}


def _stall_one(variant: str, tee) -> None:
    sleeper = 0 if variant == "root_absent" else P - 1
    algorithm = variant if variant in ("ring", "mpi") else "auto"
    if variant == "nocheck":
        # Both settings from the environment, read when the communicator is made.
        os.environ["DISTML_CHECK"] = "0"
        os.environ["DISTML_TIMEOUT"] = str(TIMEOUT)
        comm = distml.Communicator(WORLD)
        del os.environ["DISTML_CHECK"], os.environ["DISTML_TIMEOUT"]
    elif variant == "init":
        comm = distml.init(timeout=TIMEOUT)
    else:
        comm = distml.Communicator(WORLD, timeout=TIMEOUT)
    x = np.ones(STALL_ELEMENTS.get(variant, 1 << 12), np.float32)
    call = (lambda: distml.allreduce(x)) if variant == "init" else (lambda: comm.allreduce(x, algorithm=algorithm))
    warm = attempt(call)[0]
    WORLD.Barrier()
    t0 = time.monotonic()
    common = dict(variant=variant, sleeper=sleeper, timeout=comm.timeout, check=comm.check, warm=warm)
    if RANK == sleeper:
        time.sleep(TIMEOUT + 0.75)
        if variant.startswith("late"):
            saw, msg, seconds, _ = attempt(call)
            later = attempt(call)
            report("stall", role="late", saw=saw, msg=msg, seconds=seconds, later=later[0],
                   later_seconds=later[2], **common)
        else:
            report("stall", role="sleeper", saw="skipped", msg="", seconds=time.monotonic() - t0, **common)
    else:
        saw, msg, seconds, _ = attempt(call)
        later = attempt(call)
        time.sleep(0.1)  # let the tee thread take in anything written just before the raise
        report("stall", role="waiter", saw=saw, msg=msg, seconds=seconds, later=later[0], later_msg=later[1],
               later_seconds=later[2], stderr=tee.since(t0) if tee else [], **common)
    WORLD.Barrier()
    if variant == "init":
        distml.shutdown()
    else:
        comm.free()


def case_stall(variants) -> None:
    tee = StderrTee()  # every rank: on one node the warning may come from rank 1
    for variant in variants or STALL_VARIANTS:
        _stall_one(variant, tee)
    report("stall", role="exit", t=time.time())


# ---- kill --------------------------------------------------------------------------


def _shm_mapped() -> set:
    """Names of the /dev/shm files this process has mapped."""
    names = set()
    with open("/proc/self/maps") as f:
        for line in f:
            path = line.split(None, 5)[5].strip() if len(line.split(None, 5)) == 6 else ""
            if path.startswith("/dev/shm/"):
                names.add(path[len("/dev/shm/"):].replace(" (deleted)", ""))
    return names


def case_kill(variants) -> None:
    algorithm = variants[0] if variants else "auto"
    at_init = _shm_mapped()  # MPI_Init's own segments
    comm = distml.Communicator(WORLD, timeout=5.0)
    x = np.ones(1 << 26, np.float32)  # 256 MiB: each allreduce takes a good fraction of a second
    comm.allreduce(x, out=x, algorithm=algorithm)
    report("kill", role="ready", mpi_init_shm=sorted(at_init), distml_shm=sorted(_shm_mapped() - at_init))
    WORLD.Barrier()
    victim = P - 1
    if RANK == victim:
        def die() -> None:
            report("kill", role="victim", t=time.time())
            os.kill(os.getpid(), 9)
        threading.Timer(0.3, die).start()
    t0 = time.monotonic()
    saw, msg, seconds, _ = attempt(lambda: [comm.allreduce(x, out=x, algorithm=algorithm) for _ in range(200)])
    # Only reached if mpiexec lets the survivors live on.
    report("kill", role="survivor", saw=saw, msg=msg, seconds=time.monotonic() - t0)


# ---- abort ---------------------------------------------------------------------------


def case_abort(variants) -> None:
    comm = distml.Communicator(WORLD, timeout=TIMEOUT)
    comm.barrier()
    if RANK == P - 1:
        report("abort", role="sleeper", t=time.time())
        time.sleep(120)
        report("abort", role="sleeper woke")  # must never be seen
        return
    saw, msg, seconds, _ = attempt(lambda: comm.allreduce(np.ones(4)))
    report("abort", role="waiter", saw=saw, msg=msg, seconds=seconds, t=time.time())
    if RANK == 0:
        time.sleep(0.5)  # let the other waiters report first
        distml.abort(3)
    time.sleep(120)
    report("abort", role="waiter lived on")  # must never be seen


# ---- use after free --------------------------------------------------------------------


def case_free(variants) -> None:
    comm = distml.Communicator(WORLD)
    x = np.arange(2 * P * 3, dtype=np.float32).reshape(2 * P, 3)
    comm.allreduce(x)
    comm.free()
    calls = {
        "allreduce": lambda: comm.allreduce(x), "reduce": lambda: comm.reduce(x),
        "broadcast": lambda: comm.broadcast(x.copy()), "allgather": lambda: comm.allgather(x),
        "reduce_scatter": lambda: comm.reduce_scatter(x), "alltoall": lambda: comm.alltoall(x),
        "barrier": comm.barrier, "allreduce async": lambda: comm.allreduce(x, async_op=True),
        "empty": lambda: comm.empty(4),
    }
    for label, call in calls.items():
        saw, msg, seconds, _ = attempt(call)
        report("free", variant=label, saw=saw, msg=msg, seconds=seconds)
    fresh = distml.Communicator(WORLD)
    report("free", variant="a new communicator afterwards", saw=follow_up(fresh), msg="", seconds=0.0)
    fresh.free()


# ---- bad input -------------------------------------------------------------------------


def bad_inputs():
    """(label, expected exception, call(comm)) for every bad argument of the issue."""
    import distml as d

    n = 2 * P
    x = np.arange(n * 3, dtype=np.float32).reshape(n, 3)
    readonly = np.zeros_like(x)
    readonly.flags.writeable = False
    big = np.zeros((2 * n + 2, 3), np.float32)
    table = [
        ("unknown op 'median' (allreduce)", ValueError, lambda c: c.allreduce(x, op="median")),
        ("unknown op 7 (reduce_scatter)", ValueError, lambda c: c.reduce_scatter(x, op=7)),
        ("unknown op async (allreduce)", ValueError, lambda c: c.allreduce(x, op="mean", async_op=True)),
        ("band on float32 (allreduce)", TypeError, lambda c: c.allreduce(x, op="band")),
        ("bor on float16 (reduce_scatter)", TypeError, lambda c: c.reduce_scatter(x.astype(np.float16), op="bor")),
        ("bxor on bfloat16 (reduce)", TypeError, lambda c: c.reduce(x.astype(d.bfloat16), op=d.Op.BXOR)),
        ("object dtype (allreduce)", TypeError, lambda c: c.allreduce(np.array([1, "a"] * P, dtype=object))),
        ("str dtype (allgather)", TypeError, lambda c: c.allgather(np.array(["ab"] * n))),
        ("complex64 (broadcast)", TypeError, lambda c: c.broadcast(np.zeros(n, np.complex64))),
        ("complex128 (alltoall)", TypeError, lambda c: c.alltoall(np.zeros(n, np.complex128))),
        ("bool (reduce_scatter)", TypeError, lambda c: c.reduce_scatter(np.zeros(n, bool))),
        ("read-only out (allreduce)", ValueError, lambda c: c.allreduce(x, out=readonly)),
        ("read-only out (alltoall)", ValueError, lambda c: c.alltoall(x, out=readonly)),
        ("wrong-shape out (allgather)", ValueError, lambda c: c.allgather(x, out=np.zeros((n, 3), np.float32))),
        ("wrong-shape out (allreduce)", ValueError, lambda c: c.allreduce(x, out=np.zeros(x.size, np.float32))),
        ("wrong-dtype out (reduce_scatter)", TypeError,
         lambda c: c.reduce_scatter(x, out=np.zeros((len(np.array_split(x, P)[RANK]), 3), np.float64))),
        ("out not an ndarray (allreduce)", TypeError, lambda c: c.allreduce(x, out=x.tolist())),
        ("root = P (reduce)", ValueError, lambda c: c.reduce(x, root=P)),
        ("root = -1 (broadcast)", ValueError, lambda c: c.broadcast(x.copy(), root=-1)),
        ("root = 1.0 (reduce)", TypeError, lambda c: c.reduce(x, root=1.0)),
        ("overlapping out (allreduce)", ValueError, lambda c: c.allreduce(big[:n], out=big[1:n + 1])),
        ("overlapping out (allgather)", ValueError, lambda c: c.allgather(big[:1], out=big[:P])),
        ("overlapping out (reduce_scatter)", ValueError,
         lambda c: c.reduce_scatter(big[:n], out=big[:len(np.array_split(x, P)[RANK])])),
        ("unknown algorithm (allreduce)", ValueError, lambda c: c.allreduce(x, algorithm="bogus")),
        ("algorithm of another collective (broadcast 'ring')", ValueError,
         lambda c: c.broadcast(x.copy(), algorithm="ring")),
        ("0-d input (reduce_scatter)", ValueError, lambda c: c.reduce_scatter(np.float32(1.0))),
    ]
    if P > 1:
        table.append(("alltoall rows P+1", ValueError, lambda c: c.alltoall(np.zeros((P + 1, 2), np.float32))))
        # One node here, so the core refuses this before the first message.
        table.append(("'hierarchical' on one node (allreduce)", ValueError,
                      lambda c: c.allreduce(x, algorithm="hierarchical")))
    return table


def case_badinput(variants) -> None:
    # With a timeout: a rank that started communicating alone would wait for
    # the others and raise CommTimeoutError after 3 s instead.
    comm = distml.Communicator(WORLD, timeout=3.0)
    for label, exc, call in bad_inputs():
        saw, msg, seconds, _ = attempt(lambda: call(comm))
        # Rank 0 alone: the others make no call at all.
        alone = attempt(lambda: call(comm)) if RANK == 0 else ("not called", "", 0.0, None)
        report("badinput", variant=label, expected=exc.__name__, saw=saw, msg=msg, seconds=seconds,
               alone=alone[0], alone_seconds=alone[2], after=follow_up(comm))
    comm.free()
    freed = distml.Communicator(WORLD)
    freed.free()
    saw, msg, seconds, _ = attempt(lambda: freed.allreduce(np.ones(3)))
    report("badinput", variant="use after free (allreduce)", expected="CommunicatorError", saw=saw, msg=msg,
           seconds=seconds, alone="-", alone_seconds=0.0, after="-")


def case_oneside(variants) -> None:
    x = np.arange(2 * P * 3, dtype=np.float32).reshape(2 * P, 3)
    readonly = np.zeros_like(x)
    readonly.flags.writeable = False
    cases = {
        "reduce out= read-only on every rank (checked on the root only)": lambda c: c.reduce(x, out=readonly),
        "broadcast of a read-only x on every rank (allowed on the root)": lambda c: c.broadcast(readonly),
    }
    for (label, call), timeout in [(item, t) for item in cases.items() for t in (TIMEOUT, None)]:
        comm = distml.Communicator(WORLD, timeout=timeout)
        WORLD.Barrier()
        saw, msg, seconds, _ = (attempt_mismatched(comm, lambda: call(comm)) if "broadcast" in label
                                else attempt(lambda: call(comm)))
        report("oneside", variant=f"{label}, timeout {timeout}", saw=saw, msg=msg, seconds=seconds)
        WORLD.Barrier()
        comm.free()


def case_exit_many(variants) -> None:
    count = int(variants[0]) if variants else 8
    # Held by the module, so that they are still alive at exit: no free(),
    # distml's exit handler frees them (a local list would be freed in list
    # order when the function returns, which hides the problem).
    KEPT.extend(distml.Communicator(WORLD) for _ in range(count))
    for c in KEPT:
        c.allreduce(np.ones(4))
    report("exit_many", role="exit", t=time.time())


KEPT: list = []


CASES = {name[len("case_"):]: fn for name, fn in globals().items() if name.startswith("case_")}

if __name__ == "__main__":
    CASES[sys.argv[1]](sys.argv[2:])

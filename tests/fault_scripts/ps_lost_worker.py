"""An async parameter-server worker stops for good (SIGSTOP) in the middle of
a step or a pull, while the others train on.

    mpiexec -n P python ps_lost_worker.py SERVERS TIMEOUT MIB CALL OUTDIR

CALL is "step", "pull" or "pull-small-arrays" (a pull, of parameters in
many small arrays).

The last SERVERS ranks are dedicated servers; the victim is the last worker;
the parameters are MIB MiB of float64. After a few full steps the victim
makes CALL ("step" or "pull") while a second thread watches the arrays the
reply is written into, and stops the process once the first element of
server 0's shard has arrived and the middle one has not. A step's reply comes
piece by piece, each piece once its server has applied that piece of the
push, so its push and its reply are both under way; a pull's reply comes
one message per parameter. (If no call is caught in the middle, it stops
after its last attempt and says so.) Its gradients are 1000 (the
survivors' are 1), so any part of an update of its that reaches a shard
shows. It writes OUTDIR/victim.json (its updates completed and begun)
first.

Each survivor worker steps until its stats() report the victim lost, then
12 more steps, checking after each that every shard moved by exactly the
updates its version counter says were applied, all of them the survivors'
(SGD without momentum: each update moves every element by lr / workers
times its gradient). It then checks that the victim's last update reached
each element whole or not at all, in whole pieces of the shard taken in
order, waits for the other survivors (files in OUTDIR) and closes. Every
survivor writes OUTDIR/rank-R.json; then it waits to be killed (the test
ends the job; MPI_Finalize would wait for the stopped rank).
"""
from __future__ import annotations

import faulthandler
import json
import os
import signal
import sys
import threading
import time

import numpy as np

import distml
from distml import optim
from distml.ps import ParameterServer

# A rank that has not reported when the test gives up dumps every thread's
# stack on SIGUSR1 (run_job in tests/test_ps_faults.py), into the output the
# test shows.
faulthandler.register(signal.SIGUSR1, all_threads=True)

LR = 0.01
VICTIM_GRAD = 1000.0
STEPS_AFTER = 12
ATTEMPTS = 40
WARM = 3  # full steps of the victim first: every rank's buffers are touched, steps take their usual time


def write(path, fields):
    with open(path + ".tmp", "w") as f:
        json.dump(fields, f)
    os.replace(path + ".tmp", path)


def piece_cuts(sizes, lo, hi, limit):
    """Where a push to the shard [lo, hi) is cut (csrc/ps/wire.h, cuts()):
    at every parameter's start and every `limit` elements from it."""
    out, start = [], 0
    for n in sizes:
        a0, b0 = max(lo, start), min(hi, start + n)
        a = a0
        while a < b0:
            b = min(b0, start + ((a - start) // limit + 1) * limit)
            out.append((a, b))
            a = b
        start += n
    return out


def victim_loop(ps, params, rank, outdir, call):
    # Stops once the first element of server 0's shard has arrived and the
    # middle one has not: half the reply is still to come, so the call
    # cannot end between the look and the signal.
    lo, hi = ps.shard_bounds[0], ps.shard_bounds[1]
    mid = (lo + hi) // 2
    sizes = [p.size for p in params]

    def element(arrays, i):
        for p, n in zip(arrays, sizes):
            if i < n:
                return p.reshape(-1)[i]
            i -= n
        raise IndexError(i)

    grads = [np.full_like(p, VICTIM_GRAD) for p in params]
    steps = 0
    for attempt in range(ATTEMPTS):
        if attempt < WARM:
            ps.step(grads)
            steps += 1
            continue
        if call == "step":
            # The reply lands in params: an element has arrived once changed.
            out = params
            first, middle = element(out, lo), element(out, mid)
            arrived = lambda i, was: element(out, i) != was  # noqa: E731
        else:
            # A pull into arrays of NaN: an element has arrived once a number.
            out = [np.full_like(p, np.nan) for p in params]
            first = middle = None
            arrived = lambda i, was: not np.isnan(element(out, i))  # noqa: E731
        stop = threading.Event()
        caught = threading.Event()
        began = steps + (1 if call == "step" else 0)  # updates of the victim begun, this call's included
        # Written before the call: nothing may delay the signal once the
        # watcher has looked (a call that ends uncaught rewrites it).
        write(os.path.join(outdir, "victim.json"), {"rank": rank, "pid": os.getpid(), "steps": steps,
                                                    "began": began, "caught": True, "attempt": attempt})

        def watch():
            while not stop.is_set():
                if arrived(lo, first) and not arrived(mid, middle):
                    os.kill(os.getpid(), signal.SIGSTOP)
                    caught.set()
                    return
                time.sleep(0.0002)

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        if call == "step":
            ps.step(grads)
        else:
            ps.pull(out)
        stop.set()
        watcher.join()
        if caught.is_set():
            time.sleep(600)  # continued only to be killed
        steps = began
    write(os.path.join(outdir, "victim.json"),
          {"rank": rank, "pid": os.getpid(), "steps": steps, "began": steps, "caught": False})
    os.kill(os.getpid(), signal.SIGSTOP)
    time.sleep(600)


def survivor_loop(ps, params, rank, victim, workers, outdir, timeout, piece_elems):
    rep = {"rank": rank, "role": "worker", "victim": victim, "train_error": None, "checks": [], "problems": []}
    sizes = [p.size for p in params]
    bounds = ps.shard_bounds
    scale = LR / len(workers)
    flat = lambda: np.concatenate([p.reshape(-1) for p in params])  # noqa: E731
    grads = [np.ones_like(p) for p in params]
    started = time.monotonic()
    steps = 0
    try:
        # Until the servers report the victim lost (they answer this
        # worker's steps meanwhile), then STEPS_AFTER more.
        while victim not in ps.stats().get("lost_workers", []):
            if time.monotonic() - started > 6 * timeout + 30:
                raise RuntimeError(f"the victim was never reported lost: {ps.stats()}")
            ps.step(grads)
            steps += 1
            time.sleep(0.005)
        rep["lost_after_steps"] = steps
        rep["lost_seen_after"] = round(time.monotonic() - started, 3)
        before, versions = flat(), list(ps.stats()["shard_versions"])
        for _ in range(STEPS_AFTER):
            ps.step(grads)
            steps += 1
            after, now = flat(), list(ps.stats()["shard_versions"])
            for i in range(len(bounds) - 1):
                a, b = bounds[i], bounds[i + 1]
                moved = now[i] - versions[i]  # updates applied since the last reply, this one's included
                ok = moved >= 1 and np.allclose(after[a:b] - before[a:b], -scale * moved, rtol=0, atol=1e-9)
                rep["checks"].append(bool(ok))
                if not ok:
                    rep["problems"].append(f"shard {i}: versions {versions[i]} -> {now[i]}, moved "
                                           f"{np.unique(np.round((before[a:b] - after[a:b]) / scale, 6))[:5]}")
            before, versions = after, now
            time.sleep(0.005)
        rep["steps"] = steps
        rep["lost_workers"] = ps.stats().get("lost_workers")
        # The victim's last update: whole pieces, in order, or nothing.
        with open(os.path.join(outdir, "victim.json")) as f:
            v = json.load(f)
        rep["victim_caught"] = v["caught"]
        final = flat()
        for i in range(len(bounds) - 1):
            a, b = bounds[i], bounds[i + 1]
            # value = -scale * (survivor updates + VICTIM_GRAD * victim updates);
            # the victim began v["began"] updates (a stalled step's included).
            survivor_updates = versions[i] - v["began"]
            victim_updates = (-final[a:b] / scale - survivor_updates) / VICTIM_GRAD
            whole = np.round(victim_updates)
            if not np.allclose(victim_updates, whole, rtol=0, atol=1e-6):
                rep["problems"].append(f"shard {i}: a fraction of a victim update: {victim_updates[:3]}")
                continue
            got = set(np.unique(whole).astype(int).tolist())
            if not got <= {v["steps"], v["began"]}:
                rep["problems"].append(f"shard {i}: victim updates {sorted(got)}, expected {v['steps']} or "
                                       f"{v['began']}")
                continue
            applied = []
            for pa, pb in piece_cuts(sizes, a, b, piece_elems):
                vals = set(whole[pa - a:pb - a].astype(int).tolist())
                if len(vals) != 1:
                    rep["problems"].append(f"shard {i}: piece [{pa}, {pb}) applied in part")
                    break
                applied.append(vals.pop() == v["began"] != v["steps"])
            else:
                if applied != sorted(applied, reverse=True):
                    rep["problems"].append(f"shard {i}: pieces applied out of order: {applied}")
                rep.setdefault("pieces_applied", []).append([sum(applied), len(applied)])
    except Exception as e:  # noqa: BLE001 - reported, checked by the test
        rep["train_error"] = f"{type(e).__name__}: {e}"[:1000]
        rep["steps"] = steps
    # Close together (a survivor closing long before the others would be
    # reported for not closing, rightly).
    write(os.path.join(outdir, f"ready-{rank}.json"), {"rank": rank})
    until = time.monotonic() + 4 * timeout + 20
    while time.monotonic() < until and not all(
            os.path.exists(os.path.join(outdir, f"ready-{w}.json")) for w in workers if w != victim):
        time.sleep(0.01)
    t0 = time.monotonic()
    try:
        ps.close()
        rep["close"] = "ok"
        rep["close_msg"] = ""
    except Exception as e:  # noqa: BLE001
        rep["close"] = type(e).__name__
        rep["close_msg"] = str(e)[:500]
    rep["close_seconds"] = round(time.monotonic() - t0, 3)
    return rep


def main() -> None:
    servers, timeout, mib, call, outdir = (int(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3]), sys.argv[4],
                                           sys.argv[5])
    comm = distml.init()
    rank, P = comm.rank, comm.size
    workers = list(range(P - servers))
    victim = workers[-1]
    # MIB MiB of float64 in two parameters; a pull's reply comes one message
    # per parameter, so there the large one comes last (see victim_loop).
    # "pull-small-arrays": MIB MiB in arrays of 1000 (8000 B each, one small
    # message apiece in a pull's reply, so that the replies still owed to
    # the stopped victim outnumber MPICH's 64 shared-memory cells).
    params = [np.zeros((mib * 128, 1024)), np.zeros(1000)]
    if call == "pull":
        params.reverse()
    elif call == "pull-small-arrays":
        params = [np.zeros(1000) for _ in range(mib * (1 << 20) // 8000)]
        call = "pull"
    piece_elems = int(os.environ.get("DISTML_PS_PIECE_BYTES", str(1 << 21))) // 8
    rep = {"rank": rank, "role": "server", "victim": victim}
    t0 = time.monotonic()
    try:
        ps = ParameterServer(params, optim.SGD, comm=comm, mode="async", servers=servers, timeout=timeout, lr=LR)
    except Exception as e:  # noqa: BLE001 - a dedicated server's constructor serves, then raises
        rep.update(saw=type(e).__name__, msg=str(e)[:500], seconds=round(time.monotonic() - t0, 3))
    else:
        if not ps.is_worker:
            rep.update(saw="ok", msg="", seconds=round(time.monotonic() - t0, 3))
        elif rank == victim:
            victim_loop(ps, params, rank, outdir, call)
        else:
            rep = survivor_loop(ps, params, rank, victim, workers, outdir, timeout, piece_elems)
    write(os.path.join(outdir, f"rank-{rank}.json"), rep)
    time.sleep(600)
    os._exit(0)


if __name__ == "__main__":
    main()

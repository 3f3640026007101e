"""Is a new result's excess over `out=x` the cost of a destination not in cache?

For each size, two groups of rows, each group timed interleaved as the
bench does (python/distml/bench/sweep.py, time_interleaved): a new order
every round, a barrier before every call, each call's time the maximum over
ranks, the median over rounds (the per-rank median then the maximum over
ranks is recorded too, as fresh_interleaved.py took it). Three buffer sets
rotate, as in the bench.

distml rows (allreduce, algorithm "auto", float32):
  mpi          MPI_Allreduce(ins, outs): the bench's baseline, on the shared sets
  out          allreduce(ins, out=outs): the bench's distml:auto row, shared sets
  inplace_hot  allreduce(outs, out=outs): the bench's distml:in-place row, shared sets
  inplace_own  allreduce(own, out=own) on three sets only this row touches
  fresh        allreduce(ins): a new result, from the result pool
  out_cold     allreduce(ins, out=y), y one numpy array only this row touches
  out_coldpool allreduce(ins, out=y), y one pool block held by this row only
  out_coldhuge allreduce(ins, out=y), y only this row's, on 2 MiB pages (MADV_HUGEPAGE)
  fresh_np     allreduce(ins, out=np.empty(...)): a new numpy array
  and, by default (--extra), the bench's other rows on the shared sets:
  allreduce(ins, out=outs) by ring, recursive_doubling, halving_doubling,
  shm and mpi; MPI_Allreduce(IN_PLACE, outs); the in-place call on
  comm.empty() arrays. (--extra "" leaves them out: then only mpi, out and
  inplace_hot write the shared sets, one write per set per round, as often as
  fresh and out_cold write theirs.)
numpy rows, no distml (a, b, c the shared sets; z only its rows'):
  np_out       np.add(a, b, out=c)
  np_inplace_hot  np.add(a, b, out=a)
  np_inplace_own  np.add(a2, b2, out=a2), a2, b2 only this row's
  np_new       np.add(a, b): a new array
  np_out_cold  np.add(a, b, out=z)
  np1_inplace_hot, np1_new, np1_out_cold: the same with one input,
               np.add(a, 1.0), an allreduce's footprint (one in, one out)
  np1_out_hot  np.add(a, 1.0, out=c): a destination other rows write too
  copy         np.copyto of 4 MiB, more memory traffic between calls

    flock -x /tmp/distml-quiet.lock timeout 600 mpiexec -n 2 .venv/bin/python \\
        bench/results/readme_allreduce/fresh_cold.py --out bench/results/readme_allreduce/fresh_cold_P2_run1.json
    (runs 1-2, and -n 4 with _P4_; the text beside each JSON is its stdout)
"""
import argparse
import json
import mmap
import sys
import time

import numpy as np
from mpi4py import MPI

import distml


def huge_array(n):
    """n float32 in memory of its own, 2 MiB aligned, MADV_HUGEPAGE, faulted in."""
    m = mmap.mmap(-1, n * 4 + (2 << 20))
    base = np.frombuffer(m, np.uint8)
    off = -base.__array_interface__["data"][0] % (2 << 20)
    m.madvise(mmap.MADV_HUGEPAGE, off, n * 4)
    a = base[off:off + n * 4].view(np.float32)
    a[...] = 1
    return a


p = argparse.ArgumentParser()
p.add_argument("--sizes", default="1,2,4", help="MiB")
p.add_argument("--rounds", type=int, default=400)
p.add_argument("--warmup", type=int, default=50)
p.add_argument("--out", default=None)
p.add_argument("--extra", default="ring,recursive_doubling,halving_doubling,shm,mpi_algo,mpi_inplace,shared",
               help="rows added to the distml group, comma-separated: the bench's other rows (the default) "
                    "or copyK (a copy of K MiB); \"\" for none")
p.add_argument("--no-numpy", action="store_true")
args = p.parse_args()

w = MPI.COMM_WORLD
mw = w.Dup()
comm = distml.Communicator(w)


def timed(runs):
    names = list(runs)
    total = args.warmup + args.rounds
    T = np.empty((len(names), total))
    orders = np.random.default_rng(12345).permuted(np.tile(np.arange(len(names)), (total, 1)), axis=1)
    perf = time.perf_counter
    for i in range(total):
        for j in range(len(names)):
            k = int(orders[i, j])
            mw.Barrier()
            t = perf()
            runs[names[k]](i * len(names) + j)
            T[k, i] = perf() - t
    T = np.ascontiguousarray(T[:, args.warmup:])
    per_rank = np.median(T, axis=1)
    mw.Allreduce(MPI.IN_PLACE, per_rank, op=MPI.MAX)
    mw.Allreduce(MPI.IN_PLACE, T, op=MPI.MAX)
    return {k: {"median_us": float(np.median(T[i])) * 1e6, "rank_median_max_us": float(per_rank[i]) * 1e6}
            for i, k in enumerate(names)}


results = {"P": w.size, "rounds": args.rounds, "warmup": args.warmup, "command": " ".join(sys.argv),
           "algorithm": {}, "sizes": {}}
for mib in [float(s) for s in args.sizes.split(",")]:
    nbytes = int(mib * (1 << 20))
    n = nbytes // 4
    ones = lambda: np.ones(n, np.float32)
    ins = [ones() for _ in range(3)]
    outs = [ones() for _ in range(3)]
    zeros = lambda: np.full(n, 0.0, np.float32)  # written, so faulted in; stays 0 under repeated sums
    own = [zeros() for _ in range(3)]
    y = ones()
    ypool = comm._pool.empty((n,), np.dtype(np.float32))
    ypool[...] = 1
    yhuge = huge_array(n)
    dist = {
        "mpi": lambda i: mw.Allreduce(ins[i % 3], outs[i % 3], op=MPI.SUM),
        "out": lambda i: comm.allreduce(ins[i % 3], out=outs[i % 3]),
        "inplace_hot": lambda i: comm.allreduce(outs[i % 3], out=outs[i % 3]),
        "inplace_own": lambda i: comm.allreduce(own[i % 3], out=own[i % 3]),
        "fresh": lambda i: comm.allreduce(ins[i % 3]),
        "out_cold": lambda i: comm.allreduce(ins[i % 3], out=y),
        "out_coldpool": lambda i: comm.allreduce(ins[i % 3], out=ypool),
        "fresh_np": lambda i: comm.allreduce(ins[i % 3], out=np.empty(n, np.float32)),
        "out_coldhuge": lambda i: comm.allreduce(ins[i % 3], out=yhuge),
    }
    for e in filter(None, args.extra.split(",")):
        if e in ("ring", "recursive_doubling", "halving_doubling", "shm"):
            dist[e] = (lambda alg: lambda i: comm.allreduce(ins[i % 3], out=outs[i % 3], algorithm=alg))(e)
        elif e == "mpi_algo":
            dist[e] = lambda i: comm.allreduce(ins[i % 3], out=outs[i % 3], algorithm="mpi")
        elif e == "mpi_inplace":
            dist[e] = lambda i: mw.Allreduce(MPI.IN_PLACE, outs[i % 3], op=MPI.SUM)
        elif e == "shared":
            shared = [comm.empty((n,), np.dtype(np.float32)) for _ in range(3)]
            for s_ in shared:
                s_[...] = 1
            dist[e] = lambda i: comm.allreduce(shared[i % 3], out=shared[i % 3])
        elif e.startswith("copy"):
            k = int(e[4:]) << 20
            csrc, cdst = np.ones(k // 4, np.float32), np.ones(k // 4, np.float32)
            dist[e] = (lambda s_, d_: lambda i: np.copyto(d_, s_))(csrc, cdst)
        else:
            raise SystemExit(f"unknown extra row {e}")
    r = timed(dist)
    del ypool
    a = [ones() for _ in range(3)]
    b = [ones() for _ in range(3)]
    c = [ones() for _ in range(3)]
    a2 = [zeros() for _ in range(3)]
    b2 = [ones() for _ in range(3)]
    z = ones()
    src = np.ones((4 << 20) // 4, np.float32)
    dst = np.ones_like(src)
    nump = {
        "np_out": lambda i: np.add(a[i % 3], b[i % 3], out=c[i % 3]),
        "np_inplace_hot": lambda i: np.add(a[i % 3], b[i % 3], out=a[i % 3]),
        "np_inplace_own": lambda i: np.add(a2[i % 3], b2[i % 3], out=a2[i % 3]),
        "np_new": lambda i: np.add(a[i % 3], b[i % 3]),
        "np_out_cold": lambda i: np.add(a[i % 3], b[i % 3], out=z),
        "np1_inplace_hot": lambda i: np.add(a[i % 3], 1.0, out=a[i % 3]),
        "np1_new": lambda i: np.add(a[i % 3], 1.0),
        "np1_out_cold": lambda i: np.add(a[i % 3], 1.0, out=z),
        "np1_out_hot": lambda i: np.add(a[i % 3], 1.0, out=c[i % 3]),
        "copy": lambda i: np.copyto(dst, src),
    }
    if not args.no_numpy:
        r.update(timed(nump))
    key = f"{mib:g}MiB"
    results["sizes"][key] = r
    results["algorithm"][key] = comm.algorithm_for("allreduce", nbytes)
    if w.rank == 0:
        m = {k: v["median_us"] for k, v in r.items()}
        print(f"P={w.size} {key} algo={results['algorithm'][key]}: " + " ".join(f"{k}:{v:.0f}" for k, v in m.items()))
        print(f"  fresh/inplace_hot {m['fresh'] / m['inplace_hot']:.2f}  out_cold/inplace_hot "
              f"{m['out_cold'] / m['inplace_hot']:.2f}  inplace_own/inplace_hot {m['inplace_own'] / m['inplace_hot']:.2f}  "
              f"fresh/out_cold {m['fresh'] / m['out_cold']:.2f}", flush=True)
        if "np_new" in m:
            print(f"  np_new/np_inplace_hot {m['np_new'] / m['np_inplace_hot']:.2f}  np_out_cold/np_inplace_hot "
                  f"{m['np_out_cold'] / m['np_inplace_hot']:.2f}  np1_new/np1_inplace_hot "
                  f"{m['np1_new'] / m['np1_inplace_hot']:.2f}  np1_out_cold/np1_inplace_hot "
                  f"{m['np1_out_cold'] / m['np1_inplace_hot']:.2f}  np1_new/np1_out_hot {m['np1_new'] / m['np1_out_hot']:.2f}  "
                  f"np1_out_cold/np1_out_hot {m['np1_out_cold'] / m['np1_out_hot']:.2f}", flush=True)
results["pool_stats_rank0"] = comm._pool.stats()
if w.rank == 0 and args.out:
    with open(args.out, "w") as f:
        json.dump(results, f, indent=1)
comm.free()
mw.Free()

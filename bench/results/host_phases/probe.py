"""Two ranks, one node: how fast data written by one rank reaches the other
through shared memory, sampled over time beside the collectives that depend
on it.

    DISTML_SHM_SINGLE_COPY_BLOCKS_BYTES=1073741824 mpiexec -n 2 .venv/bin/python \
        bench/results/host_phases/probe.py SECONDS > OUT.txt

Every sample (about every 0.3 s) prints, as medians of 40 calls:
- handoff: rank 0 writes 1 MiB into a shared window (MPI_Win_allocate_shared),
  then rank 1 copies it out, timed on rank 1 (the lines move between cores
  dirty, as in a staged shared-memory schedule);
- rewrite: rank 0's write of those lines, which rank 1 read in the round
  before (as a staged schedule refills a slot its peer has read);
- local: the same 1 MiB copy within one rank (private to private);
- distml's reduce_scatter of 1 MiB float32 (staged through the slots when
  the environment above turns the single copy off), and MPI_Reduce_scatter_block;
- distml's broadcast of 1 MiB (a single copy between the ranks, the kernel's);
- allreduce in place, distml (auto) and MPI_Allreduce, of 128 KiB and of
  16 MiB (8 calls each).
"""
import sys
import time

import numpy as np
from mpi4py import MPI

import distml

N = 1 << 20


def main(seconds: float) -> None:
    comm = distml.init()
    w = MPI.COMM_WORLD
    assert w.size == 2, "two ranks"
    win = MPI.Win.Allocate_shared(N if w.rank == 0 else 0, 1, comm=w)
    buf, _ = win.Shared_query(0)
    shared = np.frombuffer(buf, np.uint8, N)
    src = np.full(N, 1, np.uint8)
    mine = np.empty(N, np.uint8)
    x = np.ones(N // 4, np.float32)
    out = np.empty(N // 8, np.float32)
    mout = np.empty(N // 8, np.float32)
    b = np.ones(N // 4, np.float32)
    small = np.ones((128 << 10) // 4, np.float32)
    big = np.ones((16 << 20) // 4, np.float32)

    def timed(f, reps=40):
        ts = []
        for _ in range(reps):
            w.Barrier()
            t = time.perf_counter()
            f()
            ts.append(time.perf_counter() - t)
        return float(np.median(ts)) * 1e6

    def handoff():
        ts = []
        for _ in range(40):
            w.Barrier()
            if w.rank == 0:
                t = time.perf_counter()
                np.copyto(shared, src)
                ts.append(time.perf_counter() - t)
            w.Barrier()
            if w.rank == 1:
                t = time.perf_counter()
                np.copyto(mine, shared)
                ts.append(time.perf_counter() - t)
        return float(np.median(ts)) * 1e6

    start = time.time()
    if w.rank == 0:
        print("seconds handoff_us rewrite_us local_us distml_rs_us mpi_rs_us distml_bcast_us "
              "distml_ar128K_us mpi_ar128K_us distml_ar16M_us mpi_ar16M_us", flush=True)
    while True:
        go = w.bcast(time.time() - start < seconds, root=0)
        if not go:
            break
        h = handoff()
        hw, h = w.gather(h, root=0) or (0.0, 0.0)
        local = timed(lambda: np.copyto(mine, src))
        rs = timed(lambda: comm.reduce_scatter(x, out=out))
        mrs = timed(lambda: w.Reduce_scatter_block(x, mout))
        bc = timed(lambda: comm.broadcast(b, root=0))
        ar_s = timed(lambda: comm.allreduce(small, out=small))
        mar_s = timed(lambda: w.Allreduce(MPI.IN_PLACE, small))
        ar_b = timed(lambda: comm.allreduce(big, out=big), reps=8)
        mar_b = timed(lambda: w.Allreduce(MPI.IN_PLACE, big), reps=8)
        if w.rank == 0:
            print(f"{time.time() - start:.1f} {h:.0f} {hw:.0f} {local:.0f} {rs:.0f} {mrs:.0f} {bc:.0f} "
                  f"{ar_s:.0f} {mar_s:.0f} {ar_b:.0f} {mar_b:.0f}", flush=True)
        time.sleep(0.2)
    win.Free()


if __name__ == "__main__":
    main(float(sys.argv[1]) if len(sys.argv) > 1 else 60.0)

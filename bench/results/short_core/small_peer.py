"""Small in-place allreduce at P=2: distml's Python call, distml's core call
alone, DeepSpeed's shm allreduce, MPI in place; interleaved, barrier before
each call, median over rounds, slowest rank."""
import os, sys, time, numpy as np
from mpi4py import MPI
import distml
from distml.bench.peers import open_peers, close_peers
from distml.bench.sweep import time_interleaved
w = MPI.COMM_WORLD; m = w.Dup()
comm = distml.Communicator(w)
peers, refused = open_peers(["deepspeed"], np.dtype(np.float32), comm, m)
import distml.comm as dc
for nb in [8, 64, 512, 4096]:
    n = nb // 4
    bufs = [np.ones(n, np.float32) for _ in range(3)]
    core = comm._core
    comm.allreduce(bufs[0], out=bufs[0]); code = dc._DTYPE_INTS[np.dtype(np.float32)]; opc = int(dc.op_code("sum", np.dtype(np.float32)))
    runs = {
        "distml": lambda i: comm.allreduce(bufs[i % 3], out=bufs[i % 3]),
        "core": lambda i: core.run(dc._ALLREDUCE, code, opc, n, 1, 0, "auto", (), bufs[i % 3], bufs[i % 3]),
        "mpi_inplace": lambda i: m.Allreduce(MPI.IN_PLACE, bufs[i % 3], op=MPI.SUM),
        "empty": lambda i: None,
    }
    if peers:
        runs["deepspeed"] = peers[0].call(bufs)
    names = list(runs)
    t = time_interleaved(m, [runs[k] for k in names], 3000, 300)
    if w.rank == 0:
        print(f"{nb} B: " + "  ".join(f"{k} {np.median(t[i])*1e6:.2f}" for i, k in enumerate(names)), flush=True)
close_peers(peers, m)
comm.free()

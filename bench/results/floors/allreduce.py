"""The least an allreduce (float32 sum) on private arrays can take here,
timed beside MPI_Allreduce and distml's allreduce in the same rounds.

Every element of every rank's input must be read once by the rank that
sums it, and every rank's output must be written whole. With private arrays
a block crosses between processes either by the kernel's copy
(process_vm_readv / process_vm_writev, one copy) or by two memcpys through
shared memory. The "floor" rows make only those copies and the sums, with
no agreement and no flags (a barrier where a step needs the peers' sums):

    floor:halves     each rank sums its 1/P slice: it reads that slice of
                     every peer's input (process_vm_readv, in pieces of
                     256 KiB into a scratch array) and adds it to its own
                     into its output; then writes its summed slice into
                     every peer's output (process_vm_writev)
    floor:whole      (two ranks) each reads the peer's whole input into its
                     output and adds its own: one crossing, each rank sums
                     everything
    floor:staged     each rank copies its input into a shared window; a
                     barrier; each sums its slice of every rank's window
                     copy into its output and into a second window; a
                     barrier; each copies the other slices out
    calls:X          floor:X's Python calls, each on 64 bytes, the kernel's
                     copies inside this rank (barriers kept): the share of
                     floor:X that is the interpreter's

Sums are numpy's (np.add, vectorised). Timing: floorlib.spans. The ratio
MPI / min(floor:X - calls:X) is the most a schedule making these copies
and sums can show against MPI at that size in that run.

    mpiexec -n P python bench/results/floors/allreduce.py [SIZES] [ITERS]

SIZES: comma-separated byte counts of each rank's input, default
1M,2M,4M,16M; FLOOR_OUT=file.json keeps the rows.
"""
import numpy as np
from mpi4py import MPI

import distml
from floorlib import NSETS, arguments, check, kernel_copy, libc, measure, node, rows, variant_comms, write_rows

w = MPI.COMM_WORLD
P, me = w.size, w.rank
sizes, iters = arguments()
PIECE = 256 << 10

pids, shared = node(w)
comm = distml.Communicator()
variants = variant_comms(("single", "staged", "staged_stream_out"))
readv, writev = libc.process_vm_readv, libc.process_vm_writev
results = []
for nbytes in sizes:
    count = nbytes // 4
    assert count % P == 0
    sl = count // P  # elements of one rank's slice
    lo, hi = me * sl, (me + 1) * sl
    ins = [np.arange(count, dtype=np.float32) % 97 + me + s for s in range(NSETS)]
    outs = [np.zeros(count, np.float32) for _ in range(NSETS)]
    scratch = np.zeros(max(sl, PIECE // 4), np.float32)
    scratch_addr = scratch.ctypes.data
    in_addr = [w.allgather(a.ctypes.data) for a in ins]
    out_addr = [w.allgather(a.ctypes.data) for a in outs]
    win_in = MPI.Win.Allocate_shared(nbytes, 4, comm=shared)
    win_sum = MPI.Win.Allocate_shared(sl * 4, 4, comm=shared)
    copies = [np.frombuffer(win_in.Shared_query(r)[0], np.float32, count) for r in range(P)]
    sums = [np.frombuffer(win_sum.Shared_query(r)[0], np.float32, sl) for r in range(P)]

    def halves(tiny):
        piece = PIECE // 4
        n = 16 if tiny else piece  # elements per step

        def run(i):
            s = i % NSETS
            x, y = ins[s], outs[s]
            for off in range(lo, hi, piece):
                e = min(hi, off + n)
                np.copyto(y[off:e], x[off:e])
                for k in range(1, P):
                    r = me if tiny else (me + k) % P
                    kernel_copy(readv, pids[r], scratch_addr, in_addr[s][r] + off * 4, (e - off) * 4)
                    np.add(y[off:e], scratch[:e - off], out=y[off:e])
            for k in range(1, P):
                r = (me + k) % P
                if tiny:
                    kernel_copy(writev, pids[me], out_addr[s][me] + lo * 4, out_addr[s][me] + (hi - 16) * 4, 64)
                else:
                    kernel_copy(writev, pids[r], out_addr[s][me] + lo * 4, out_addr[s][r] + lo * 4, sl * 4)
        return run

    def whole(tiny):  # two ranks
        n = 16 if tiny else count

        def run(i):
            s = i % NSETS
            x, y = ins[s], outs[s]
            r = me if tiny else 1 - me
            kernel_copy(readv, pids[r], out_addr[s][me], in_addr[s][r], n * 4)
            np.add(y[:n], x[:n], out=y[:n])
        return run

    def staged(tiny):
        a, b = (0, 16) if tiny else (lo, hi)

        def run(i):
            s = i % NSETS
            x, y = ins[s], outs[s]
            np.copyto(copies[me][:16] if tiny else copies[me], x[:16] if tiny else x)
            shared.Barrier()
            np.add(copies[0][a:b], copies[1][a:b], out=sums[me][:b - a])
            for r in range(2, P):
                np.add(sums[me][:b - a], copies[r][a:b], out=sums[me][:b - a])
            np.copyto(y[a:b], sums[me][:b - a])
            shared.Barrier()
            for k in range(1, P):
                r = (me + k) % P
                if tiny:
                    np.copyto(y[:16], sums[r][:16])
                else:
                    np.copyto(y[r * sl:(r + 1) * sl], sums[r])
            shared.Barrier()  # the windows are reused by the next call
        return run

    floors = {"floor:halves": halves, "floor:staged": staged}
    if P == 2:
        floors["floor:whole"] = whole
    tiny_ins = [a[:16].copy() for a in ins]
    tiny_outs = [np.zeros(16, np.float32) for _ in ins]
    impls = rows(w.Allreduce, lambda c, x, y: c.allreduce(x, out=y), comm, ins, outs, floors,
                 tiny_ins, tiny_outs, variants)
    check(w, impls, outs, lambda s: sum(np.arange(count, dtype=np.float32) % 97 + r + s for r in range(P)), "summed wrong")
    row = measure(w, impls, floors, nbytes, iters)
    results.append(row)
    copies.clear()
    sums.clear()
    win_in.Free()
    win_sum.Free()
comm.free()
for c in variants.values():
    c.free()
write_rows(w, results)

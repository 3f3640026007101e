"""The least an allgather on private arrays can take here, timed beside
MPI_Allgather and distml's allgather in the same rounds.

Every rank's own block must be copied into its output (one memcpy of N/P
bytes) and every other block must cross from the peer's private memory into
this rank's output. Across processes that is either the kernel's copy
(process_vm_writev / process_vm_readv: one copy) or two memcpys through
shared memory. The "floor" rows do exactly those copies and nothing else:
no agreement, no flags, no checks.

    floor:write      own block, then process_vm_writev of it (hot in this
                     core's cache) into every peer's output
    floor:write/C    the same in chunks of C bytes: a chunk is copied into
                     place and at once written to every peer
    floor:read       own block, then process_vm_readv of every peer's input
    floor:staged     own block and the input into a shared window, a
                     barrier, then every peer's block out of the window
                     (MPI's path; the barrier is the one synchronisation)
    calls:X          floor:X's Python calls, each on 64 bytes, the kernel's
                     copies inside this rank (barriers kept): the share of
                     floor:X that is the interpreter's

Timing: floorlib.spans. The ratio MPI / min(floor:X - calls:X) is the
most any schedule making these copies can show against MPI at that size in
that run.

    mpiexec -n P python bench/results/floors/allgather.py [SIZES] [ITERS]

SIZES: comma-separated byte counts of the gathered output (the sweep's
`bytes`), default 1M,2M,4M,16M.
"""
import numpy as np
from mpi4py import MPI

import distml
from floorlib import NSETS, arguments, check, kernel_copy, libc, measure, node, rows, variant_comms, write_rows

w = MPI.COMM_WORLD
P, me = w.size, w.rank
sizes, iters = arguments()

pids, shared = node(w)
comm = distml.Communicator()
variants = variant_comms(("single", "staged"))
results = []
for nbytes in sizes:
    blk = nbytes // P  # bytes of one rank's block
    count = blk // 4
    ins = [np.full(count, me + s, np.float32) for s in range(NSETS)]
    outs = [np.zeros(count * P, np.float32) for _ in range(NSETS)]
    in_addr = [w.allgather(a.ctypes.data) for a in ins]
    out_addr = [w.allgather(a.ctypes.data) for a in outs]
    win = MPI.Win.Allocate_shared(blk, 1, comm=shared)
    slots = []
    for r in range(P):
        buf, _ = win.Shared_query(r)
        slots.append(np.frombuffer(buf, np.float32, count))

    # Each floor row is made twice: whole, and with its Python calls alone
    # (tiny=True: every copy 16 elements, the kernel's copies inside this
    # rank, the same number of calls and barriers).
    def own(s, tiny):
        n = 16 if tiny else count
        np.copyto(outs[s][me * count:me * count + n], ins[s][:n])

    def peer(r, tiny):
        return me if tiny else r

    def write(tiny):
        n = 64 if tiny else blk

        def run(i):
            s = i % NSETS
            own(s, tiny)
            src = out_addr[s][me] + me * blk
            for k in range(1, P):
                r = (me + k) % P
                dst = out_addr[s][me] + r * blk if tiny else out_addr[s][r] + me * blk
                kernel_copy(libc.process_vm_writev, pids[peer(r, tiny)], src, dst, n)
        return run

    def write_chunked(chunk):
        def make(tiny):
            def run(i):
                s = i % NSETS
                o, src = outs[s], ins[s]
                c = chunk // 4
                for off in range(0, count, c):
                    e = min(count, off + (16 if tiny else c))
                    np.copyto(o[me * count + off:me * count + e], src[off:e])
                    a = out_addr[s][me] + me * blk + off * 4
                    for k in range(1, P):
                        r = (me + k) % P
                        dst = out_addr[s][me] + r * blk if tiny else out_addr[s][r] + me * blk + off * 4
                        kernel_copy(libc.process_vm_writev, pids[peer(r, tiny)], a, dst, (e - off) * 4)
            return run
        return make

    def read(tiny):
        n = 64 if tiny else blk

        def run(i):
            s = i % NSETS
            own(s, tiny)
            for k in range(1, P):
                r = (me + k) % P
                kernel_copy(libc.process_vm_readv, pids[peer(r, tiny)], out_addr[s][me] + r * blk,
                            in_addr[s][peer(r, tiny)], n)
        return run

    def staged(tiny):
        n = 16 if tiny else count

        def run(i):
            s = i % NSETS
            own(s, tiny)
            np.copyto(slots[me][:n], ins[s][:n])
            shared.Barrier()
            for k in range(1, P):
                r = (me + k) % P
                np.copyto(outs[s][r * count:r * count + n], slots[r][:n])
            shared.Barrier()  # the window is reused by the next call
        return run

    floors = {"floor:write": write, "floor:read": read, "floor:staged": staged}
    for chunk in (64 << 10, 256 << 10):
        if chunk < blk:
            floors[f"floor:write/{chunk >> 10}K"] = write_chunked(chunk)
    tiny_ins = [a[:16].copy() for a in ins]
    tiny_outs = [np.zeros(16 * P, np.float32) for _ in ins]
    impls = rows(w.Allgather, lambda c, x, y: c.allgather(x, out=y), comm, ins, outs, floors,
                 tiny_ins, tiny_outs, variants)
    check(w, impls, outs, lambda s: np.repeat(np.arange(P, dtype=np.float32) + s, count), "gathered wrong values")
    row = measure(w, impls, floors, nbytes, iters)
    results.append(row)
    slots.clear()
    win.Free()
comm.free()
for c in variants.values():
    c.free()
write_rows(w, results)

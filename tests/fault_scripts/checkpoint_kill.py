"""A rank killed (SIGKILL) in the middle of distml.checkpoint.save.

    mpiexec -n P python checkpoint_kill.py DIR WHERE

Saves a first checkpoint of known parameters and optimizer state into DIR,
changes them, then starts a second save and kills one rank with SIGKILL at
WHERE: "shard" (the last rank, while writing its shard file, after half of
its bytes) or "commit" (rank 0, just before it writes the manifest). mpiexec
then ends the job; the test loads DIR afterwards and expects the first
checkpoint.
"""

from __future__ import annotations

import os
import signal
import sys

import numpy as np
from mpi4py import MPI

import distml
from distml import checkpoint, optim

directory, where = sys.argv[1], sys.argv[2]
world = MPI.COMM_WORLD
comm = distml.Communicator(world)
rng = np.random.default_rng(7)
params = [rng.standard_normal((37, 5)), rng.standard_normal(11)]
opt = optim.Adam(params, lr=0.1)
opt.step([np.ones_like(p) for p in params])  # some optimizer state
checkpoint.save(directory, params=params, optimizer=opt, comm=comm)

for p in params:
    p += 100.0
opt.step([np.ones_like(p) for p in params])

victim = world.size - 1 if where == "shard" else 0
if comm.rank == victim:
    if where == "shard":
        def dying_write(path, arrays):
            # Leave a partial temporary file behind, as a crash would.
            with open(path + ".partial-tmp", "wb") as f:
                np.savez(f, **arrays)
                f.truncate(f.tell() // 2)
                f.flush()
                os.fsync(f.fileno())
            os.kill(os.getpid(), signal.SIGKILL)

        checkpoint._write_shard = dying_write
    else:
        def dying_commit(path, manifest):
            os.kill(os.getpid(), signal.SIGKILL)

        checkpoint._write_manifest = dying_commit
checkpoint.save(directory, params=params, optimizer=opt, comm=comm)
print("the second save finished: the kill did not happen", flush=True)

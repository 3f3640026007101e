"""Elastic training: committed state, and recovery after a lost rank.

    import distml
    from distml import elastic

    comm = distml.init()
    opt = distml.DistributedOptimizer(distml.optim.Adam(params, lr=3e-3), comm=comm)
    state = elastic.State(params, opt, epoch=0, step=0)

    def train(state):
        while state.step < total_steps:
            ...                      # one step on elastic.batch_indices(...)
            state.step += 1
            state.progress()
            if state.step % 10 == 0:
                state.commit()

    elastic.run(train, state, min_ranks=2)

launched as ``distmlrun -n 4 --max-restarts 3 train.py``. When a rank dies,
the launcher relaunches the job on the ranks that are left; ``run`` restores
the last commit at the new size (parameters, optimizer state and ZeRO shards
resharded through :mod:`distml.checkpoint`), the training function picks up
from the restored fields, and data shards follow the new size. Relaunching
with more ranks (scale-up) goes through the same restore. docs/elastic.md
explains why recovery happens by relaunch and not inside the job on MPICH
from PyPI (its ULFM calls cannot be used there), with the measurements.
"""

from __future__ import annotations

from ._run import EXIT_BELOW_MIN_RANKS, EXIT_PEER_LOST, ElasticError, RanksBelowMinimum, run
from ._state import State, batch_indices, restart_count, run_dir

__all__ = ["State", "run", "batch_indices", "restart_count", "run_dir", "ElasticError", "RanksBelowMinimum",
           "EXIT_PEER_LOST", "EXIT_BELOW_MIN_RANKS"]

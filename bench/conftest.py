"""pytest-benchmark set-up for distml's benchmarks, at any world size.

Run on one process::

    pytest --benchmark-only bench/

or on P ranks (every rank runs every benchmark, in the same order, with the
same fixed rounds, so the collectives inside them stay matched)::

    mpiexec -n 2 python -m pytest --benchmark-only bench/ -p no:cacheprovider

Only rank 0 prints the table and saves results (``--benchmark-autosave``,
``--benchmark-json``); the times it reports are rank 0's. Other ranks run
silently. bench/ is not in the test paths: a plain ``pytest`` never collects it.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
from mpi4py import MPI

import distml

WORLD = MPI.COMM_WORLD
RANK, SIZE = WORLD.Get_rank(), WORLD.Get_size()

# Buffer sets used in rotation, so a message that fits in cache is not timed
# warm from the previous round.
ROTATE = 3


@pytest.hookimpl(trylast=True)
def pytest_configure(config: pytest.Config) -> None:
    if RANK == 0:
        return
    # Silence this rank: the benchmark session exists by now (created in the
    # plugin's own pytest_configure), so switch its outputs off, and point the
    # terminal at /dev/null.
    session = getattr(config, "_benchmarksession", None)
    if session is not None:
        session.save = session.autosave = session.json = session.histogram = False
        session.compare = session.compare_fail = None
    reporter = config.pluginmanager.getplugin("terminalreporter")
    if reporter is not None:
        from _pytest._io import TerminalWriter

        devnull = open(os.devnull, "w")  # closed at process exit
        reporter._tw = TerminalWriter(devnull)


def pytest_benchmark_update_machine_info(config: pytest.Config, machine_info: dict) -> None:
    machine_info["mpi_ranks"] = SIZE
    machine_info["mpi_library"] = " ".join(MPI.Get_library_version().strip().splitlines()[0].split())
    machine_info["distml"] = distml.__version__
    machine_info["distml_kernel_isa"] = distml._core.kernel_current_isa()


@pytest.fixture(scope="session")
def world() -> MPI.Intracomm:
    """A duplicate of COMM_WORLD for the mpi4py baselines and barriers."""
    comm = WORLD.Dup()
    yield comm
    comm.Free()


@pytest.fixture(scope="session")
def dcomm() -> distml.Communicator:
    """distml's communicator over all ranks (default settings)."""
    comm = distml.Communicator(WORLD)
    yield comm
    comm.free()


class Rotation:
    """Hands out ``ROTATE`` argument tuples in turn; ``setup`` for
    ``benchmark.pedantic``, with a barrier so every round starts together."""

    def __init__(self, sets: list, barrier=None) -> None:
        self.sets = sets
        self.barrier = barrier
        self.i = 0

    def __call__(self):
        args = self.sets[self.i % len(self.sets)]
        self.i += 1
        if self.barrier is not None:
            self.barrier()
        return args, {}


def rounds_for(nbytes: int) -> tuple:
    """(rounds, warm-up rounds): fixed, the same on every rank."""
    if nbytes <= 64 << 10:
        return 200, 20
    if nbytes <= 4 << 20:
        return 30, 3
    return 6, 1


@pytest.fixture
def run_rotating(benchmark, world):
    """``run_rotating(target, sets, nbytes, sync=True)``: benchmarks
    ``target(*sets[i % len(sets)])`` with fixed rounds for ``nbytes``, a
    barrier before every round when ``sync`` (for collectives)."""

    def run(target, sets, nbytes, sync=True):
        rounds, warmup = rounds_for(nbytes)
        benchmark.extra_info.update(bytes=int(nbytes), ranks=SIZE, buffer_sets=len(sets))
        setup = Rotation(sets, world.Barrier if sync else None)
        return benchmark.pedantic(target, setup=setup, rounds=rounds, warmup_rounds=warmup, iterations=1)

    return run

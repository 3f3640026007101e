"""Multi-rank test support: run with ``mpiexec -n P python -m pytest tests/mpi``.

Every rank runs the same tests in the same order. Each phase of each test
(setup, call, teardown) ends with a verdict agreed by all ranks over
``MPI.COMM_WORLD``: if the phase failed on any rank it fails on every rank,
and the failing ranks' messages are shown everywhere. That keeps the ranks
in step, so that no rank runs ahead into a collective its peers skipped.

The agreement travels on ``MPI.COMM_WORLD`` itself, while distml works on a
duplicate of it, so the two never mix. A test must not leave a distml
collective half-entered: tests run all their collectives first (recording
results and exceptions) and compare afterwards, so an assertion that fails
on one rank happens after the collective sequence is complete everywhere.

Outside mpiexec (a plain ``pytest`` over the whole tree) this directory is
not collected; ``tests/test_mpi.py`` runs it at P = 1..4. Set
``DISTML_MPI_TESTS=1`` to collect it in a single process anyway.
"""

from __future__ import annotations

import os
import traceback

import pytest

_LAUNCHED = any(k in os.environ for k in ("PMI_RANK", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "DISTML_MPI_TESTS"))

# Communicator timeout (seconds) for the test communicators: a collective that
# some rank never joins raises CommTimeoutError instead of hanging forever.
# DISTML_TEST_DEFAULT_CONFIG=1 runs them in the library's default
# configuration instead, with no timeout: collectives then take the paths
# without an arrival round through rank 0, and ranks on several nodes compare
# arguments by the fingerprint check. The launcher's time limit
# (tests/test_mpi.py) still turns a hang into a failure.
DEFAULT_CONFIG = os.environ.get("DISTML_TEST_DEFAULT_CONFIG", "0").strip() not in ("", "0")
COMM_TIMEOUT = None if DEFAULT_CONFIG else 120.0


def pytest_ignore_collect(collection_path, config):
    if not _LAUNCHED and collection_path.suffix == ".py":
        return True
    return None


# ---- agreement ---------------------------------------------------------------

_OK, _SKIPPED, _FAILED = 0, 1, 2


def _describe(exc: BaseException) -> str:
    text = "".join(traceback.format_exception_only(type(exc), exc)).strip()
    tb = traceback.extract_tb(exc.__traceback__)
    if tb:
        last = tb[-1]
        text += f"\n    at {os.path.basename(last.filename)}:{last.lineno} in {last.name}"
    return text[:3000]


def _agree(phase: str, exc: BaseException | None) -> None:
    """Combines this rank's outcome of ``phase`` with every other rank's.

    Raises on every rank if the phase failed anywhere, or if ranks disagree
    on skipping (which would leave the skipping ranks out of collectives).
    A rank that failed itself re-raises its own exception (the caller does).
    """
    from mpi4py import MPI

    world = MPI.COMM_WORLD
    if exc is None:
        state = _OK
    elif isinstance(exc, pytest.skip.Exception):
        state = _SKIPPED
    else:
        state = _FAILED
    message = _describe(exc) if state == _FAILED else ""
    states = world.allgather((state, message))
    failed = [(r, m) for r, (s, m) in enumerate(states) if s == _FAILED]
    skipped = [r for r, (s, _) in enumerate(states) if s == _SKIPPED]
    if state == _FAILED:
        return  # the caller re-raises this rank's own error
    if failed:
        details = "\n".join(f"  rank {r}: {m}" for r, m in failed)
        raise AssertionError(
            f"{phase} failed on rank(s) {[r for r, _ in failed]} of {world.size} "
            f"(this is rank {world.rank}):\n{details}"
        )
    if skipped and len(skipped) != world.size:
        raise AssertionError(f"{phase} skipped on rank(s) {skipped} only; skips must agree on all ranks")


if _LAUNCHED:

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_setup(item):
        try:
            result = yield
        except BaseException as exc:
            _agree("setup", exc)
            raise
        _agree("setup", None)
        return result

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_call(item):
        try:
            result = yield
        except BaseException as exc:
            _agree("call", exc)
            raise
        _agree("call", None)
        return result

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_teardown(item, nextitem):
        try:
            result = yield
        except BaseException as exc:
            _agree("teardown", exc)
            raise
        _agree("teardown", None)
        return result


def pytest_report_header(config):
    if not _LAUNCHED:
        return None
    from mpi4py import MPI

    config = "default configuration (no timeout)" if DEFAULT_CONFIG else f"communicator timeout {COMM_TIMEOUT:g}s"
    return f"distml MPI tests: rank {MPI.COMM_WORLD.rank} of {MPI.COMM_WORLD.size}, {config}"


# ---- fixtures ----------------------------------------------------------------

# Segment sizes the test communicators use: the library default, and 64 bytes,
# so that inputs of a few hundred bytes already take the multi-segment
# pipelined paths of the ring schedules.
SEGMENTS = {"seg_default": None, "seg64": 64}


@pytest.fixture(scope="session")
def world():
    from mpi4py import MPI

    return MPI.COMM_WORLD


@pytest.fixture(scope="session")
def comms():
    """One communicator per entry of SEGMENTS, created on first use.

    Creation is collective; every rank asks for the same communicators in the
    same order because every rank runs the same tests.
    """
    import distml

    made: dict = {}

    def get(name: str):
        if name not in made:
            made[name] = distml.Communicator(segment_bytes=SEGMENTS[name], timeout=COMM_TIMEOUT)
        return made[name]

    yield get
    for name in list(made):
        made.pop(name).free()


@pytest.fixture
def comm(request, comms):
    """The communicator named by the test's indirect parameter (default:
    the library's segment size); see mpi_helpers.comm_algorithms."""
    return comms(getattr(request, "param", "seg_default"))


@pytest.fixture
def comm_default(comms):
    """The communicator with the library's default segment size."""
    return comms("seg_default")

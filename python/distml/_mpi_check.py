"""Refuse to run when distml's core and mpi4py use different MPI libraries."""

from __future__ import annotations


def _family(version: str) -> str:
    v = version.lower()
    if "open mpi" in v:
        return "Open MPI"
    if "intel" in v:
        return "Intel MPI"
    if "mpich" in v or "cray" in v or "mvapich" in v:
        return "MPICH"
    return version.split()[0] if version.split() else "unknown"


def check_same_mpi(core) -> None:
    """Raises ImportError if the MPI library the core was built against is not
    the one mpi4py has loaded."""
    from mpi4py import MPI

    mpi4py_lib = MPI.Get_library_version().strip()
    core_built = core.compiled_mpi()
    core_runtime = core.runtime_mpi().strip()
    if _family(core_built) != _family(mpi4py_lib) or core_runtime != mpi4py_lib:
        raise ImportError(
            "distml's compiled core and mpi4py use different MPI libraries:\n"
            f"  distml was built against {core_built} and loaded: {core_runtime.splitlines()[0]}\n"
            f"  mpi4py uses: {mpi4py_lib.splitlines()[0]}\n"
            "Build both against the same MPI: either the default (pip install mpich mpi4py, "
            "then pip install distml), or a system MPI for both "
            "(DISTML_MPI=system pip install --no-build-isolation --no-binary mpi4py mpi4py distml); "
            "see the README, 'Using a system MPI'."
        )

"""``python -m distml.info``: what this distml installation is built with and will do.

Prints the version, the MPI library (compiled against and loaded), mpi4py and
its MPI, the reduction kernels' instruction set, shared-memory support on
``MPI.COMM_WORLD``, the algorithm thresholds of ``"auto"`` and the tuning
table in use. Under mpiexec only rank 0 prints (all ranks must run it, since
making a communicator is collective).
"""

from __future__ import annotations

import json
import sys
from typing import Any, Dict


def collect() -> Dict[str, Any]:
    """The diagnostics as a dict. Collective over ``MPI.COMM_WORLD``."""
    import mpi4py
    from mpi4py import MPI

    import distml
    from distml import _core, tune

    comm = distml.Communicator(MPI.COMM_WORLD, tune=True)
    try:
        table = tune.default_path()
        info = {
            "distml": distml.__version__,
            "mpi_compiled": _core.compiled_mpi(),
            "mpi_runtime": _core.runtime_mpi().strip().splitlines()[0],
            "mpi_standard": ".".join(map(str, _core.mpi_version())),
            "mpi4py": mpi4py.__version__,
            "mpi4py_mpi": MPI.Get_library_version().strip().splitlines()[0],
            "mpi4py_config": {k: str(v) for k, v in mpi4py.get_config().items()},
            "world_size": comm.size,
            "kernel_isa": _core.kernel_current_isa(),
            "kernel_isas_available": list(_core.kernel_isas()),
            "shared_memory": comm.shared_memory,
            "thresholds_bytes": dict(comm._core.thresholds()),
            "auto_allreduce_1MiB": comm.algorithm_for("allreduce", 1 << 20),
            "tune_table": str(table),
            "tune_table_exists": table.exists(),
        }
    finally:
        comm.free()
    try:
        import torch

        info["torch"] = torch.__version__
    except ImportError:
        info["torch"] = None
    return info


def main(argv: Any = None) -> int:
    as_json = "--json" in (argv if argv is not None else sys.argv[1:])
    info = collect()
    from mpi4py import MPI

    if MPI.COMM_WORLD.rank != 0:
        return 0
    if as_json:
        print(json.dumps(info, indent=1))
        return 0
    width = max(len(k) for k in info)
    for k, v in info.items():
        if isinstance(v, dict):
            v = ", ".join(f"{a}={b}" for a, b in v.items())
        elif isinstance(v, list):
            v = ", ".join(map(str, v))
        print(f"{k.ljust(width)}  {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

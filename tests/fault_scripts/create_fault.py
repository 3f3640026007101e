"""Communicator creation that fails halfway, many times over, must free what
it had made (tests/test_containment.py)."""

import json
import sys

from mpi4py import MPI

import distml

ROUNDS = int(sys.argv[1])
saw = {}
for _ in range(ROUNDS):
    try:
        distml.Communicator(MPI.COMM_WORLD, tune=False).free()
        saw["ok"] = saw.get("ok", 0) + 1
    except Exception as exc:  # noqa: BLE001 - the type and message are what we report
        key = f"{type(exc).__name__}: {str(exc)[:120]}"
        saw[key] = saw.get(key, 0) + 1
sys.stdout.write("FAULT " + json.dumps({"case": "create", "rank": MPI.COMM_WORLD.rank, "saw": saw}) + "\n")

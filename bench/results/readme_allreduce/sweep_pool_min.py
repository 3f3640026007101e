"""The bench sweep with distml.comm._POOL_MIN_BYTES set from DISTML_TRY_POOL_MIN: new results
below it come from numpy (glibc), from it from the result pool. A trial that leaves comm.py alone:

    DISTML_TRY_POOL_MIN=4194304 flock -x /tmp/distml-quiet.lock timeout 600 mpiexec -n 2 .venv/bin/python \
        bench/results/readme_allreduce/sweep_pool_min.py --collectives allreduce --sizes 1M,2M,4M --quiet --no-memcpy \
        --out bench/results/readme_allreduce/fresh_sweep_pool4M_P2_run1.json
"""
import os
import runpy
import sys

import distml.comm

distml.comm._POOL_MIN_BYTES = int(os.environ["DISTML_TRY_POOL_MIN"])
sys.argv = ["distml.bench"] + sys.argv[1:]
runpy.run_module("distml.bench", run_name="__main__")

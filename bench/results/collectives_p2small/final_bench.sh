#!/bin/sh
# Interleaved: the tree before this work (b6a7d93, built in /tmp/p2s/basepy) and after, P = 2 and 4, three runs.
cd /work/main
B="--collectives reduce,allgather,reduce_scatter,alltoall,broadcast,barrier --sizes 8,512,4K,16K,32K --quiet"
D=bench/results/collectives_p2small
for K in 1 2 3; do
  for P in 2 4; do
    flock -x /tmp/distml-quiet.lock timeout 900 .venv/bin/mpiexec -n $P .venv/bin/python /tmp/p2s/run_base.py $B --out $D/base_P${P}_run$K.json > /dev/null
    flock -x /tmp/distml-quiet.lock timeout 900 .venv/bin/mpiexec -n $P .venv/bin/python -m distml.bench $B --out $D/after_P${P}_run$K.json > /dev/null
  done
done
echo done

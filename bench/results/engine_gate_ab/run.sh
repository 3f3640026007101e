#!/bin/bash
# The engine with the arrival gate and one small-message path (this tree's
# .venv) against fbf8795 (/tmp/oldvenv), alternating, three sweeps each.
set -u
cd "$(dirname "$0")/../../.."
OUT=bench/results/engine_gate_ab
for P in 2 4; do
  for i in 1 2 3; do
    if [ $((i % 2)) = 1 ]; then order="old new"; else order="new old"; fi
    for impl in $order; do
      if [ $impl = old ]; then V=/tmp/oldvenv; else V=$PWD/.venv; fi
      echo "$(date +%T) P=$P $impl $i load $(cut -d' ' -f1 /proc/loadavg)" >> $OUT/load.log
      (cd /tmp && timeout 900 $V/bin/mpiexec -n $P $V/bin/python -m distml.bench --collectives allreduce,broadcast,allgather,reduce_scatter \
        --sizes 8,4K,12K,16K,64K,1M,16M --no-extras --out $OLDPWD/$OUT/${impl}_P${P}_$i.json > /dev/null 2>&1)
    done
  done
done
echo "$(date +%T) done" >> $OUT/load.log

#!/bin/bash
# numpy DistributedOptimizer only, longer (31 steps), old and new alternating, P = 2.
set -u
cd "$(dirname "$0")/../../.."
OUT=bench/results/buffers_quiet
P=2
for k in 1 2 3; do
  if [ $((k % 2)) = 1 ]; then order="old new"; else order="new old"; fi
  for impl in $order; do
    if [ $impl = old ]; then V=/tmp/oldvenv; else V=$PWD/.venv; fi
    echo "$(date +%T) P=$P run=$k $impl train31 load $(cut -d' ' -f1 /proc/loadavg)" >> $OUT/load.log
    timeout 900 $V/bin/mpiexec -n $P $V/bin/python bench/bench_training.py --steps 31 --json $OUT/training31_${impl}_P${P}_run$k.json > $OUT/training31_${impl}_P${P}_run$k.log 2>&1
  done
done
echo "$(date +%T) train31 done" >> $OUT/load.log

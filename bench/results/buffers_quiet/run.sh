#!/bin/bash
# Old (fbf8795, /tmp/oldvenv) against new (.venv) on a quiet machine:
# P = 2 and 4, three runs each, the order alternating between runs.
set -u
cd "$(dirname "$0")/../../.."
OUT=bench/results/buffers_quiet
OLD=/tmp/oldvenv NEW=$PWD/.venv
for P in 2 4; do
  for k in 1 2 3; do
    if [ $((k % 2)) = 1 ]; then order="old new"; else order="new old"; fi
    for impl in $order; do
      if [ $impl = old ]; then V=$OLD; else V=$NEW; fi
      echo "$(date +%T) P=$P run=$k $impl load $(cut -d' ' -f1 /proc/loadavg)" >> $OUT/load.log
      timeout 900 $V/bin/mpiexec -n $P $V/bin/python bench/bench_training.py --steps 11 --json $OUT/training_${impl}_P${P}_run$k.json > $OUT/training_${impl}_P${P}_run$k.log 2>&1
      echo "$(date +%T) P=$P run=$k $impl torch load $(cut -d' ' -f1 /proc/loadavg)" >> $OUT/load.log
      timeout 900 $V/bin/mpiexec -n $P $V/bin/python bench/bench_torch.py --rounds 20 --port $((29600 + P * 10 + k)) --out $OUT/torch_${impl}_P${P}_run$k.json > $OUT/torch_${impl}_P${P}_run$k.log 2>&1
    done
  done
done
echo "$(date +%T) done" >> $OUT/load.log

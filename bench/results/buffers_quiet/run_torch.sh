#!/bin/bash
# distml.torch only, longer (40 rounds), old and new alternating, P = 4 then 2.
set -u
cd "$(dirname "$0")/../../.."
OUT=bench/results/buffers_quiet
for P in 4 2; do
  for k in 1 2 3; do
    if [ $((k % 2)) = 1 ]; then order="old new"; else order="new old"; fi
    for impl in $order; do
      if [ $impl = old ]; then V=/tmp/oldvenv; else V=$PWD/.venv; fi
      echo "$(date +%T) P=$P run=$k $impl torch40 load $(cut -d' ' -f1 /proc/loadavg)" >> $OUT/load.log
      timeout 900 $V/bin/mpiexec -n $P $V/bin/python bench/bench_torch.py --rounds 40 --port $((29700 + P * 10 + k)) --out $OUT/torch40_${impl}_P${P}_run$k.json > $OUT/torch40_${impl}_P${P}_run$k.log 2>&1
    done
  done
done
echo "$(date +%T) torch40 done" >> $OUT/load.log

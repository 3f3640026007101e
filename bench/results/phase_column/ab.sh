#!/bin/bash
# Does reading the phase between rounds move the rows? Sweeps with and
# without it, alternating, N pairs at P ranks (run from the project root):
#   bash bench/results/phase_column/ab.sh P N
set -e
P=$1; N=$2
dir=bench/results/phase_column/P$P
mkdir -p $dir
for i in $(seq 1 $N); do
  for mode in phase nophase; do
    extra=""; [ $mode = nophase ] && extra="--no-phase"
    mpiexec -n $P .venv/bin/python -m distml.bench --collectives allreduce,allgather,reduce_scatter,broadcast \
      --algorithms auto --sizes 8,32K,256K,1M,2M,4M --no-extras --quiet $extra --out $dir/${mode}_run$i.json > /dev/null
  done
done

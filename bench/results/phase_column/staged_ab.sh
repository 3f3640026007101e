#!/bin/bash
# The shared-memory schedules staged through the slots against the kernel's
# single copy, by phase: sweeps alternating the defaults (single copy from
# 256 KiB for allreduce, 32 KiB for the block collectives) with both
# thresholds raised past every size (staged), N pairs at P ranks (run from
# the project root):
#   bash bench/results/phase_column/staged_ab.sh P N
set -e
P=$1; N=$2
dir=bench/results/phase_column/staged_P$P
mkdir -p $dir
for i in $(seq 1 $N); do
  for mode in single staged; do
    if [ $mode = staged ]; then
      export DISTML_SHM_SINGLE_COPY_BYTES=1G DISTML_SHM_SINGLE_COPY_BLOCKS_BYTES=1G
    else
      unset DISTML_SHM_SINGLE_COPY_BYTES DISTML_SHM_SINGLE_COPY_BLOCKS_BYTES
    fi
    mpiexec -n $P .venv/bin/python -m distml.bench --collectives allreduce,allgather,reduce_scatter \
      --algorithms auto --sizes 256K,1M,2M,4M --no-extras --quiet --out $dir/${mode}_run$i.json > /dev/null
  done
done

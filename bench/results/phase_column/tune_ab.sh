#!/bin/bash
# The variant tuner (engine/variant_tuner.h) against the single copy alone
# and the staged schedule alone, by phase: sweeps rotating the three, N
# rounds at P ranks (run from the project root):
#   [FIRST=K] bash bench/results/phase_column/tune_ab.sh P N [COLLECTIVES [SIZES]]
# (FIRST numbers the runs from K, to add to an earlier set; MODES picks
# some of "tuned single staged"; DIR the output directory.)
set -e
P=$1; N=$2
COLL=${3:-allreduce,allgather,reduce_scatter}; SIZES=${4:-64K,256K,1M,2M,4M}
dir=${DIR:-bench/results/phase_column/tune_P$P}
mkdir -p $dir
first=${FIRST:-1}
for i in $(seq $first $((first + N - 1))); do
  for mode in ${MODES:-tuned single staged}; do
    unset DISTML_SHM_TUNE DISTML_SHM_SINGLE_COPY_BYTES DISTML_SHM_SINGLE_COPY_BLOCKS_BYTES
    case $mode in
      single) export DISTML_SHM_TUNE=0 ;;
      staged) export DISTML_SHM_TUNE=0 DISTML_SHM_SINGLE_COPY_BYTES=1G DISTML_SHM_SINGLE_COPY_BLOCKS_BYTES=1G ;;
    esac
    mpiexec -n $P .venv/bin/python -m distml.bench --collectives $COLL \
      --algorithms auto --sizes $SIZES --no-extras --quiet --out $dir/${mode}_run$i.json > /dev/null
  done
done

#!/bin/bash
# Every collective against MPI's own, and allreduce against the peers, in
# one set of runs: for each K given, P = 2 then P = 4, all under the
# exclusive benchmark lock (hold it around this script).
#
#   flock -x /tmp/distml-quiet.lock bash bench/results/closing/run.sh 1 2 3
#
# Needs the peers: pip install '.[peers]' and oneCCL in .venv/oneccl
# (bench/results/peers.md, "Commands").
set -e
cd "$(dirname "$0")/../../.."
export PATH="$PWD/.venv/bin:$PATH"
D=bench/results/closing
SIZES=8,64,512,4K,32K,256K,1M,2M,4M,16M,64M
for K in "$@"; do
  for P in 2 4; do
    mpiexec -n $P python -m distml.bench --collectives allreduce --algorithms auto \
      --sizes $SIZES,128M,256M --quiet --out $D/allreduce_P${P}_run$K.json
    mpiexec -n $P python -m distml.bench --collectives broadcast,reduce,allgather,reduce_scatter,alltoall,barrier \
      --algorithms auto --sizes $SIZES --quiet --out $D/others_P${P}_run$K.json
    for peer in deepspeed oneccl gloo; do
      DISTML_ONECCL_PREFIX=.venv/oneccl OMP_NUM_THREADS=1 mpiexec -n $P python -m distml.bench \
        --collectives allreduce --algorithms auto --sizes 8,64,4K,32K,256K,2M,16M,128M,256M --quiet \
        --peers $peer --no-extras --out $D/${peer}_P${P}_run$K.json
    done
  done
done

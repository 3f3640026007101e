#!/bin/bash
# The floor runs of bench/results/floors.md: ROUNDS rounds (default 4), each
# allgather at P = 2 and 4 and allreduce at P = 2, under the exclusive
# benchmark lock; rows in allgather$SET/ and allreduce$SET/, printed lines in
# their out.txt.
#   [FIRST=K] [SET=suffix] bash bench/results/floors/run.sh [ROUNDS]   (runs numbered from K)
set -e
cd "$(dirname "$0")"
first=${FIRST:-1}
for k in $(seq "$first" $((first + ${1:-4} - 1))); do
  for job in "allgather 2" "allgather 4" "allreduce 2"; do
    set -- $job
    mkdir -p "$1${SET:-}"
    FLOOR_OUT=$1${SET:-}/P$2_run$k.json flock -x /tmp/distml-quiet.lock timeout 900 \
      mpiexec -n "$2" python "$1.py" 1M,2M,4M,16M 200 2>&1 | grep '^P=' | tee -a "$1${SET:-}/out.txt"
  done
done

#!/bin/bash
# Sweeps alternating between the build before the change (OLD_PY, its
# mpiexec beside it) and this one, N rounds, under the exclusive benchmark
# lock, from the project root:
#   OLD_PY=/path/to/old/venv/bin/python bash bench/results/own_segment/old_new.sh P N COLL SIZES DIR
P=$1; N=$2; COLL=$3; SIZES=$4; DIR=$5
# EXTRAS: more flags for both (default --no-extras; EXTRAS= keeps the extra rows)
EXTRAS=${EXTRAS---no-extras}
mkdir -p "$DIR"
for i in $(seq 1 "$N"); do
  for mode in old new; do
    if [ $mode = old ]; then py=$OLD_PY; else py=$PWD/.venv/bin/python; fi
    flock -x /tmp/distml-quiet.lock "$(dirname "$py")/mpiexec" -n "$P" "$py" -m distml.bench --collectives "$COLL" \
      --algorithms auto --sizes "$SIZES" $EXTRAS --quiet --out "$DIR/${mode}_run$i.json" > /dev/null
  done
done

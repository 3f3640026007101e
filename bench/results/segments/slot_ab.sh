#!/bin/bash
# Sweeps alternating between the default slot (1 MiB) and smaller slots for
# every shared-memory schedule (DISTML_SHM_SLOT_BYTES), N pairs at P ranks,
# under the exclusive benchmark lock, from the project root:
#   bash bench/results/segments/slot_ab.sh P N SLOT COLLS SIZES DIR
P=$1; N=$2; SLOT=$3; COLLS=$4; SIZES=$5; DIR=$6
mkdir -p "$DIR"
for i in $(seq 1 "$N"); do
  for mode in default small; do
    if [ $mode = small ]; then export DISTML_SHM_SLOT_BYTES=$SLOT; else unset DISTML_SHM_SLOT_BYTES; fi
    flock -x /tmp/distml-quiet.lock .venv/bin/mpiexec -n "$P" .venv/bin/python -m distml.bench --collectives "$COLLS" \
      --algorithms auto --sizes "$SIZES" --no-extras --quiet --out "$DIR/${mode}_run$i.json" > /dev/null
  done
done

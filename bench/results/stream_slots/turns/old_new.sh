#!/bin/bash
# old (1ecf945) and new tuner alternating, N rounds: oldnew.sh P N COLL SIZES DIR
P=$1; N=$2; COLL=$3; SIZES=$4; DIR=$5
mkdir -p $DIR
for i in $(seq 1 $N); do
  for mode in old new; do
    if [ $mode = old ]; then cd /tmp/old; py=/tmp/oldvenv/bin/python; mpx=/tmp/oldvenv/bin/mpiexec; else cd /work/main; py=/work/main/.venv/bin/python; mpx=/work/main/.venv/bin/mpiexec; fi
    $mpx -n $P $py -m distml.bench --collectives $COLL --algorithms auto --sizes $SIZES --no-extras --quiet --out $DIR/${mode}_run$i.json > /dev/null
  done
done

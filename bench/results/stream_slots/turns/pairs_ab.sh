#!/bin/bash
# turns of one call (a76a7b0, in /tmp/oldvenv) against turns of two calls (the working tree),
# and each variant alone: ab4.sh P N COLL SIZES DIR
P=$1; N=$2; COLL=$3; SIZES=$4; DIR=$5
mkdir -p $DIR
for i in $(seq 1 $N); do
  for mode in ones pairs single staged; do
    unset DISTML_SHM_TUNE DISTML_SHM_SINGLE_COPY_BYTES DISTML_SHM_SINGLE_COPY_BLOCKS_BYTES
    if [ $mode = ones ]; then cd /tmp/old; py=/tmp/oldvenv/bin/python; mpx=/tmp/oldvenv/bin/mpiexec; else cd /work/main; py=/work/main/.venv/bin/python; mpx=/work/main/.venv/bin/mpiexec; fi
    case $mode in
      single) export DISTML_SHM_TUNE=0 ;;
      staged) export DISTML_SHM_TUNE=0 DISTML_SHM_SINGLE_COPY_BYTES=1G DISTML_SHM_SINGLE_COPY_BLOCKS_BYTES=1G ;;
    esac
    $mpx -n $P $py -m distml.bench --collectives $COLL --algorithms auto --sizes $SIZES --no-extras --quiet --out $DIR/${mode}_run$i.json > /dev/null
  done
done

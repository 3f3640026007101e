#!/bin/bash
# usage (as root, from the repository): bench/results/carried/threshold/sweep.sh RUN...
# Where 4 hosts x 1 rank should switch from recursive doubling to
# halving-doubling: for each RUN, 4x1 without and with the 1 Gbit/s limit,
# one after the other, each under the exclusive lock, 4-64 KiB (json and
# load.log into THRESHOLD_DIR, default bench/results/carried/threshold).
set -u
cd /work/main
for run in "$@"; do
  for tag in 4x1 4x1_1gbit; do
    CARRIED_DIR=${THRESHOLD_DIR:-bench/results/carried/threshold} DISTML_NETNS_PREFIX=th$$ flock -x /tmp/distml-quiet.lock \
      bench/results/carried/run.sh "$tag" "$run" --iters 1000 --warmup 100 \
      --algorithms auto,recursive_doubling,halving_doubling \
      --sizes 4K,8K,12K,16K,24K,32K,64K
  done
done

#!/bin/bash
# usage (as root, from the repository): bench/results/carried/halving/sweep.sh RUN...
# For each RUN (1 2 3): 4 hosts x 1 rank and 2 hosts x 2 ranks, without and
# with the 1 Gbit/s limit, one after the other (so the runs interleave the
# configurations), each under the exclusive lock, through ../run.sh with the
# halving-doubling schedule beside recursive doubling, the ring and the
# hierarchical schedule, 8 B to 1 MiB. Large sizes run fewer iterations
# (--byte-budget: 1 MiB 128, 512 KiB 256, 256 KiB 512).
set -u
cd /work/main
for run in "$@"; do
  for tag in 4x1 4x1_1gbit 2x2 2x2_1gbit; do
    CARRIED_DIR=bench/results/carried/halving DISTML_NETNS_PREFIX=hd$$ flock -x /tmp/distml-quiet.lock \
      bench/results/carried/run.sh "$tag" "$run" --iters 1000 --warmup 100 --byte-budget 128M \
      --algorithms auto,recursive_doubling,halving_doubling,ring,hierarchical \
      --sizes 8,64,512,4K,16K,32K,64K,128K,256K,512K,1M
  done
done

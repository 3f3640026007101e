#!/bin/bash
# usage (as root, from the repository): bench/results/netns_large/sweep.sh RUN...
# Large allreduces on 2 virtual hosts x 2 ranks, without and with a 1 Gbit/s
# limit on each host's link, float32 and bfloat16, 1-32 MiB; per RUN the
# four configurations one after the other, each under the exclusive lock.
set -u
cd /work/main
dir=bench/results/netns_large
for run in "$@"; do
  for rate in none 1gbit; do
    for dtype in float32 bfloat16; do
      limit=(); [ "$rate" != none ] && limit=(--rate "$rate")
      load=$(cut -d' ' -f1-3 /proc/loadavg)
      DISTML_NETNS_PREFIX=nl$$ MPIEXEC=.venv/bin/mpiexec flock -x /tmp/distml-quiet.lock \
        tools/netns_cluster.sh run 2 --ranks-per-host 2 "${limit[@]}" -- .venv/bin/python -m distml.bench \
        --collectives allreduce --algorithms auto,hierarchical,ring --dtype "$dtype" --sizes 1M,8M,32M \
        --min-iters 5 --byte-budget 256M --no-extras --no-memcpy --quiet \
        --out "$dir/2x2_${rate}_${dtype}_run${run}.json"
      echo "2x2 $rate $dtype run$run load_before $load load_after $(cut -d' ' -f1-3 /proc/loadavg)" >> "$dir/load.log"
    done
  done
done

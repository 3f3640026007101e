#!/bin/bash
# Small allreduces across virtual hosts (tools/netns_cluster.sh), the build
# before the core's short paths (8bbffaa, installed beside the editable one and
# run through bench/results/short_core/old_run.py) against the build after,
# alternating. As root, from the repository:
#   flock -x /tmp/distml-quiet.lock bench/results/carried/short_core/run_ab.sh K
set -u
cd /work/main
K=$1
dir=bench/results/carried/short_core
export DISTML_NETNS_PREFIX=w11s MPIEXEC=.venv/bin/mpiexec
args=(--collectives allreduce --algorithms auto --sizes 8,64,512,4K,16K,32K,64K --no-extras --no-memcpy --quiet --iters 1000 --warmup 100)
for tag in 2x2 4x1; do
  case $tag in
    2x2) hosts=(run 2 --ranks-per-host 2) ;;
    4x1) hosts=(run 4) ;;
  esac
  tools/netns_cluster.sh "${hosts[@]}" -- .venv/bin/python bench/results/short_core/old_run.py -m distml.bench "${args[@]}" --out $dir/before_${tag}_run$K.json > /dev/null
  tools/netns_cluster.sh "${hosts[@]}" -- .venv/bin/python -m distml.bench "${args[@]}" --out $dir/after_${tag}_run$K.json > /dev/null
done

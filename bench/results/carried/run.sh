#!/bin/bash
# usage (as root, from the repository): flock -x /tmp/distml-quiet.lock bench/results/carried/run.sh TAG RUN [bench args]
#   TAG: cliques, 2x2, 2x2_1gbit, 4x1, 4x1_1gbit, or one of these with _nocarry
#   (DISTML_CARRY_BYTES=0) or _carry64k (DISTML_CARRY_BYTES=65536)
# Environment: CARRIED_DIR (default bench/results/carried) for the json and
# load.log; DISTML_NETNS_PREFIX (default w14b) names the namespaces.
set -u
cd /work/main
tag=$1; run=$2; shift 2
dir=${CARRIED_DIR:-bench/results/carried}
out=$dir/${tag}_run${run}.json
mkdir -p "$dir"
export DISTML_NETNS_PREFIX=${DISTML_NETNS_PREFIX:-w14b}
args=(--collectives allreduce --algorithms auto,recursive_doubling,hierarchical --sizes 8,64,512,4K,16K,32K,64K --no-extras --no-memcpy --out $out --quiet)
load=$(cut -d' ' -f1-3 /proc/loadavg)
start=$(date +%T)
base=$tag
if [[ $tag == *_nocarry ]]; then export DISTML_CARRY_BYTES=0; base=${tag%_nocarry}; fi
if [[ $tag == *_carry64k ]]; then export DISTML_CARRY_BYTES=65536; base=${tag%_carry64k}; fi
case $base in
  cliques) MPIR_CVAR_NUM_CLIQUES=2 .venv/bin/mpiexec -n 4 .venv/bin/python -m distml.bench "${args[@]}" "$@" ;;
  2x2) MPIEXEC=.venv/bin/mpiexec tools/netns_cluster.sh run 2 --ranks-per-host 2 -- .venv/bin/python -m distml.bench "${args[@]}" "$@" ;;
  2x2_1gbit) MPIEXEC=.venv/bin/mpiexec tools/netns_cluster.sh run 2 --ranks-per-host 2 --rate 1gbit -- .venv/bin/python -m distml.bench "${args[@]}" "$@" ;;
  4x1) MPIEXEC=.venv/bin/mpiexec tools/netns_cluster.sh run 4 -- .venv/bin/python -m distml.bench "${args[@]}" "$@" ;;
  4x1_1gbit) MPIEXEC=.venv/bin/mpiexec tools/netns_cluster.sh run 4 --rate 1gbit -- .venv/bin/python -m distml.bench "${args[@]}" "$@" ;;
esac
echo "$tag run$run start $start load_before $load load_after $(cut -d' ' -f1-3 /proc/loadavg)" >> "$dir/load.log"

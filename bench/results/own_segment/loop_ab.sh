#!/bin/bash
# allgather in a loop of its own (loop.py), the build before the change
# (OLD_PY, its mpiexec beside it) and this one alternating, 4 rounds, the
# staged schedule forced and the tuned choice, 256 KiB / 1 MiB / 2 MiB
# gathered; the machine's phase read after each loop. From the project root:
#   OLD_PY=/path/to/old/venv/bin/python bash bench/results/own_segment/loop_ab.sh > loop_ab.txt
for round in 1 2 3 4; do
 for build in old new; do
  if [ $build = old ]; then PY=$OLD_PY; else PY=$PWD/.venv/bin/python; fi
  for mode in staged tuned; do
   unset DISTML_SHM_TUNE DISTML_SHM_SINGLE_COPY_BYTES DISTML_SHM_SINGLE_COPY_BLOCKS_BYTES
   [ $mode = staged ] && export DISTML_SHM_TUNE=0 DISTML_SHM_SINGLE_COPY_BYTES=1G DISTML_SHM_SINGLE_COPY_BLOCKS_BYTES=1G
   for n in 262144 1048576 2097152; do
     r=$(flock -x /tmp/distml-quiet.lock timeout 120 "$(dirname "$PY")/mpiexec" -n 2 "$PY" bench/results/own_segment/loop.py $n)
     ph=$($PY -c "from distml.bench import machine as m; print(round(m.cross_core_ratio(m.phase_cpus()),1))")
     echo "round $round $build $mode $n $r phase $ph"
   done
  done
 done
done

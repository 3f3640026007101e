#!/usr/bin/env bash
# A cluster of virtual hosts on one machine, for multi-node runs of distml:
# each host is a Linux network namespace with its own address on a private
# bridge (and, for the processes launched there, its own hostname through a
# UTS namespace), so MPI sees separate nodes that talk TCP to each other.
# Links can be limited with a token-bucket filter, so that the network, not
# memory, is the bottleneck. Needs root (ip netns, veth, tc).
#
#   tools/netns_cluster.sh run HOSTS [--ranks-per-host K] [--rate RATE] -- PROGRAM [ARGS...]
#       builds HOSTS hosts, runs `mpiexec -n HOSTS*K PROGRAM ARGS` across them
#       (K ranks on each host), tears everything down (also on failure or
#       interruption) and exits with mpiexec's code. RATE is tc's notation
#       (10gbit, 1gbit, 500mbit); each host's sending side is limited to it.
#   tools/netns_cluster.sh up HOSTS [--rate RATE]    build only
#   tools/netns_cluster.sh down                      remove every host of this cluster
#   tools/netns_cluster.sh check                     exit 0 if namespaces can be made here
#
# Environment: DISTML_NETNS_PREFIX (default "dml") names the namespaces
# PREFIX-sw (the bridge) and PREFIX-h0, PREFIX-h1, ...; DISTML_NETNS_SUBNET
# (default 10.213.0) is the /24 of the hosts: host i is .(10+i), and mpiexec
# itself runs in PREFIX-head at .2. MPIEXEC picks Hydra's mpiexec (default:
# the one on PATH). Traffic stays inside these namespaces.
set -euo pipefail

PREFIX=${DISTML_NETNS_PREFIX:-dml}
SUBNET=${DISTML_NETNS_SUBNET:-10.213.0}
SELF=$(readlink -f "$0")

addr_of() { echo "$SUBNET.$((10 + $1))"; }

down() {
  local ns
  for ns in $(ip netns list 2>/dev/null | awk '{print $1}' | grep -E "^${PREFIX}-(h[0-9]+|head|sw)$" || true); do
    # Whatever still runs in a host is part of the run being torn down.
    ip netns pids "$ns" 2>/dev/null | xargs -r kill -9 2>/dev/null || true
    ip netns delete "$ns" 2>/dev/null || true
  done
}

# One end of a veth pair in namespace $1 (named eth0, address $2), the other
# on the bridge.
attach() {
  local ns=$1 addr=$2 tag=$3 rate=$4
  ip netns add "$ns"
  ip link add "${PREFIX}${tag}h" type veth peer name "${PREFIX}${tag}b"
  ip link set "${PREFIX}${tag}h" netns "$ns"
  ip link set "${PREFIX}${tag}b" netns "$PREFIX-sw"
  ip netns exec "$PREFIX-sw" ip link set "${PREFIX}${tag}b" master br0
  ip netns exec "$PREFIX-sw" ip link set "${PREFIX}${tag}b" up
  ip netns exec "$ns" ip link set "${PREFIX}${tag}h" name eth0
  ip netns exec "$ns" ip addr add "$addr/24" dev eth0
  ip netns exec "$ns" ip link set eth0 up
  ip netns exec "$ns" ip link set lo up
  if [ -n "$rate" ]; then
    # Token bucket on the sending side: at most RATE leaves this host.
    ip netns exec "$ns" tc qdisc add dev eth0 root tbf rate "$rate" burst 1mbit latency 50ms
  fi
}

up() {
  local hosts=$1 rate=$2 i
  down
  ip netns add "$PREFIX-sw"
  ip netns exec "$PREFIX-sw" ip link add br0 type bridge
  ip netns exec "$PREFIX-sw" ip link set br0 up
  ip netns exec "$PREFIX-sw" ip link set lo up
  attach "$PREFIX-head" "$SUBNET.2" hd ""
  for ((i = 0; i < hosts; i++)); do
    attach "$PREFIX-h$i" "$(addr_of "$i")" "$i" "$rate"
  done
}

find_mpiexec() {
  if [ -n "${MPIEXEC:-}" ]; then echo "$MPIEXEC"; return; fi
  command -v mpiexec
}

case "${1:-}" in
  agent)
    # What Hydra runs instead of ssh (through the wrapper `run` writes):
    # [options] HOST COMMAND. HOST is a host's address; the command runs in
    # that host's namespaces.
    shift
    while [ $# -gt 0 ]; do case "$1" in -*) shift ;; *) break ;; esac; done
    host=$1
    shift
    i=$(( ${host##*.} - 10 ))
    exec ip netns exec "$PREFIX-h$i" unshare --uts sh -c 'hostname "$0" && exec sh -c "$1"' "$PREFIX-h$i" "$*"
    ;;
  check)
    probe="$PREFIX-probe$$"
    if ip netns add "$probe" 2>/dev/null; then
      ok=0
      ip netns exec "$probe" unshare --uts true 2>/dev/null || ok=1
      ip netns delete "$probe"
      exit $ok
    fi
    exit 1
    ;;
  up)
    shift
    hosts=$1
    shift
    rate=""
    while [ $# -gt 0 ]; do
      case "$1" in
        --rate) rate=$2; shift 2 ;;
        *) echo "netns_cluster.sh: unknown option $1" >&2; exit 2 ;;
      esac
    done
    up "$hosts" "$rate"
    ;;
  down)
    down
    ;;
  run)
    shift
    hosts=$1
    shift
    per=1
    rate=""
    while [ $# -gt 0 ]; do
      case "$1" in
        --ranks-per-host) per=$2; shift 2 ;;
        --rate) rate=$2; shift 2 ;;
        --) shift; break ;;
        *) echo "netns_cluster.sh: unknown option $1" >&2; exit 2 ;;
      esac
    done
    [ $# -gt 0 ] || { echo "netns_cluster.sh run: no program" >&2; exit 2; }
    mpiexec=$(find_mpiexec)
    # Hydra runs its launcher as `LAUNCHER [options] HOST COMMAND`, like ssh.
    agent_dir=$(mktemp -d)
    printf '#!/bin/sh\nexec "%s" agent "$@"\n' "$SELF" > "$agent_dir/ssh"
    chmod +x "$agent_dir/ssh"
    trap 'down; rm -rf "$agent_dir"' EXIT
    trap 'exit 130' INT TERM
    up "$hosts" "$rate"
    list=""
    for ((i = 0; i < hosts; i++)); do list="$list${list:+,}$(addr_of "$i"):$per"; done
    # Between hosts, MPI must use the network: UCX and libfabric would
    # otherwise find the peer on the same machine and move the data through
    # shared memory or cross-memory attach, past the namespaces and the rate
    # limit. (Ranks on one host still share memory through MPI's own shm.)
    export UCX_TLS=${UCX_TLS:-tcp,self}
    export FI_PROVIDER=${FI_PROVIDER:-tcp}
    set +e
    ip netns exec "$PREFIX-head" "$mpiexec" -launcher ssh -launcher-exec "$agent_dir/ssh" -localhost "$SUBNET.2" \
      -hosts "$list" -n $((hosts * per)) "$@"
    code=$?
    set -e
    exit $code
    ;;
  *)
    sed -n '2,25p' "$SELF" >&2
    exit 2
    ;;
esac

"""``distmlrun --max-restarts N``: relaunch a job on the ranks that are left.

One *launch* is one ``mpiexec`` run. Each rank of a launch that goes through
:func:`distml.elastic.run` leaves a small record in the run directory
(``launch-K/rank-R.json``: process id, host, ``min_ranks``, the /dev/shm
segments it maps). Each rank runs under a witness (_witness.py), its parent
process, which records ``launch-K/ended-PID.json`` when the rank ends on its
own before it ends itself with the same status: the process manager, which
then ends all the other ranks, hears of the death only after the record
exists, so the ranks with a record are exactly the lost ones. The supervisor
also watches the ranks through pidfds and notes which ended first, the
fallback when no witness could record (a host gone). A rank that leaves
through Python (an exception in the training function) writes
``launch-K/exit-R.json`` first,
which tells a program error (not relaunched) from a lost rank.

When a launch fails because ranks were lost, the supervisor

1. kills whatever is left of the launch (its process group, and every
   registered rank still alive: on the netns test bed the ranks are not in
   mpiexec's process group) and waits for them;
2. removes the /dev/shm segments the launch's ranks mapped that no process
   maps any more (MPICH leaves its node segment behind when its ranks are
   killed);
3. relaunches with the lost ranks' slots taken away (their hosts' slot
   counts lowered when hosts are given), unless fewer than ``min_ranks``
   would be left or the restarts are used up.

The run directory (default: in /dev/shm) also holds the commits of
:class:`distml.elastic.State`; it is removed at the end unless the caller
chose it.
"""

from __future__ import annotations

import json
import os
import select
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from typing import Callable, Dict, List, Optional, Sequence, Set, Tuple

from ._run import EXIT_BELOW_MIN_RANKS
from ._state import ENV_RESTART, ENV_RUN, read_json
from ._witness import FAULT_SIGNALS

__all__ = ["supervise", "witness_command", "parse_hosts", "format_hosts", "leaked_segments", "remove_segments"]

Hosts = List[Tuple[str, int]]


def _say(msg: str) -> None:
    print(f"distmlrun: {msg}", file=sys.stderr, flush=True)


# ---- hosts and slots ------------------------------------------------------------------


def parse_hosts(hosts: Optional[str] = None, hostfile: Optional[str] = None) -> Optional[Hosts]:
    """[(host, slots)] from ``-H a:2,b:2`` or a host file (``host[:slots]`` per line)."""
    items: List[str] = []
    if hosts:
        items = [h for h in hosts.split(",") if h.strip()]
    elif hostfile:
        with open(hostfile) as f:
            items = [line.split("#")[0].strip() for line in f]
        items = [i for i in items if i]
    if not items:
        return None
    out: Hosts = []
    for item in items:
        name, _, slots = item.strip().partition(":")
        out.append((name, int(slots) if slots else 1))
    return out


def format_hosts(hosts: Hosts) -> str:
    return ",".join(f"{h}:{s}" for h, s in hosts if s > 0)


def host_of_rank(hosts: Hosts, rank: int) -> int:
    """Index of the host Hydra puts ``rank`` on (hosts filled in order, up to
    their slots; beyond all slots it wraps round)."""
    total = sum(s for _, s in hosts) or 1
    r = rank % total
    for i, (_, s) in enumerate(hosts):
        if r < s:
            return i
        r -= s
    return len(hosts) - 1


# ---- /dev/shm ---------------------------------------------------------------------------


def _mapped_everywhere() -> Set[str]:
    """Every /dev/shm path some process on this machine maps or holds open."""
    found: Set[str] = set()
    try:
        pids = os.listdir("/proc")
    except OSError:
        return found
    for pid in pids:
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/maps") as f:
                for line in f:
                    at = line.find("/dev/shm/")
                    if at >= 0:
                        found.add(line[at:].strip().split(" ")[0])
        except OSError:
            continue
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                try:
                    target = os.readlink(f"/proc/{pid}/fd/{fd}")
                except OSError:
                    continue
                if target.startswith("/dev/shm/"):
                    found.add(target.split(" (deleted)")[0])
        except OSError:
            continue
    return found


def leaked_segments(candidates: Sequence[str]) -> List[str]:
    """Those of ``candidates`` (paths in /dev/shm) that exist and that no process maps or holds open."""
    present = [p for p in candidates if os.path.exists(p)]
    if not present or not os.path.isdir("/proc/self"):  # no way to tell what is in use
        return []
    used = _mapped_everywhere()
    return [p for p in present if p not in used]


def remove_segments(candidates: Sequence[str]) -> List[str]:
    """Removes the leaked ones of ``candidates``; returns what was removed."""
    removed = []
    for p in leaked_segments(candidates):
        try:
            os.remove(p)
            removed.append(p)
        except OSError:
            pass
    return removed


# ---- watching the ranks of one launch ---------------------------------------------------


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class _Watch(threading.Thread):
    """Opens a pidfd for every rank that registers and notes which ended first."""

    def __init__(self, launch_dir: str) -> None:
        super().__init__(daemon=True)
        self.launch_dir = launch_dir
        self.pids: Dict[int, int] = {}      # rank -> pid
        self.fds: Dict[int, int] = {}       # fd -> rank
        self.ended: Dict[int, float] = {}   # rank -> time seen ended
        self.first: Optional[Tuple[float, List[int]]] = None
        self.done = threading.Event()
        self.lock = threading.Lock()
        self.poller = select.poll()

    def _scan(self) -> None:
        try:
            names = os.listdir(self.launch_dir)
        except OSError:
            return
        for name in names:
            if not (name.startswith("rank-") and name.endswith(".json")):
                continue
            rec = read_json(os.path.join(self.launch_dir, name))
            if not rec or rec.get("rank") in self.pids:
                continue
            rank, pid = int(rec["rank"]), int(rec["pid"])
            with self.lock:
                self.pids[rank] = pid
            if not hasattr(os, "pidfd_open"):  # not Linux: polled by signal 0 in run()
                continue
            try:
                fd = os.pidfd_open(pid)
            except OSError:  # already gone
                self._ended([rank])
                continue
            self.fds[fd] = rank
            self.poller.register(fd, select.POLLIN)

    def _ended(self, ranks: List[int]) -> None:
        now = time.time()
        with self.lock:
            for r in ranks:
                self.ended.setdefault(r, now)
            if self.first is None and ranks:
                self.first = (now, sorted(ranks))

    def run(self) -> None:
        while not self.done.is_set():
            self._scan()
            ranks = []
            if hasattr(os, "pidfd_open"):
                for fd, _ in self.poller.poll(10):
                    ranks.append(self.fds[fd])
                    self.poller.unregister(fd)
            else:
                time.sleep(0.01)
                for rank, pid in list(self.pids.items()):
                    if rank not in self.ended and not _alive(pid):
                        ranks.append(rank)
            if ranks:
                self._ended(ranks)
        self._scan()

    def stop(self) -> None:
        self.done.set()
        self.join(timeout=5)

    def kill_left(self) -> List[int]:
        """SIGKILLs every registered rank still alive and waits for it; returns their pids."""
        killed = []
        if not hasattr(os, "pidfd_open"):
            for rank, pid in self.pids.items():
                if rank not in self.ended and _alive(pid):
                    try:
                        os.kill(pid, signal.SIGKILL)
                        killed.append(pid)
                    except OSError:
                        pass
            return killed
        for fd, rank in list(self.fds.items()):
            if rank in self.ended:
                continue
            try:
                signal.pidfd_send_signal(fd, signal.SIGKILL)
                killed.append(self.pids[rank])
            except OSError:
                pass
            select.select([fd], [], [], 5.0)
            self.ended.setdefault(rank, time.time())
        return killed

    def close(self) -> None:
        for fd in list(self.fds):
            try:
                os.close(fd)
            except OSError:
                pass
        self.fds.clear()


# ---- the loop ---------------------------------------------------------------------------


def _records(launch_dir: str, prefix: str, key: str = "rank") -> Dict[int, dict]:
    """The launch's ``prefix*.json`` records, by their field ``key``."""
    out: Dict[int, dict] = {}
    try:
        names = os.listdir(launch_dir)
    except OSError:
        return out
    for name in names:
        if name.startswith(prefix) and name.endswith(".json"):
            rec = read_json(os.path.join(launch_dir, name))
            if rec is not None and key in rec:
                out[int(rec[key])] = rec
    return out


def witness_command(program: Sequence[str]) -> List[str]:
    """``program`` run under the witness (_witness.py), which records how the
    rank ended before the process manager hears of it."""
    return [sys.executable, "-S", os.path.join(os.path.dirname(os.path.abspath(__file__)), "_witness.py"),
            *program]


def _witnessed_losses(launch_dir: str, ranks: Dict[int, dict], exits: Dict[int, dict], exited: float,
                      killed: Sequence[int]) -> List[int]:
    """Ranks whose witness saw them end on their own, without a word
    (no exit record), before mpiexec ended and not killed here.

    A rank that faulted (SIGSEGV and the like) while another rank was
    killed or exited is that loss's casualty, not a loss of its own: MPICH's
    TCP netmod can crash a survivor inside MPI_Isend to a peer that has just
    died (seen in core dumps of the cross-host tests). Its slot is sound, so
    it is relaunched. Its witness holds the fault back from the process
    manager (_witness._hold), so that the peer's end is on record too. When
    every recorded end is a fault, the first one is the loss."""
    by_pid = {int(rec["pid"]): r for r, rec in ranks.items() if "pid" in rec}
    ended = []
    for pid, rec in _records(launch_dir, "ended-", key="pid").items():
        rank = by_pid.get(pid)
        when = float(rec.get("time", exited))
        if rank is None or rank in exits or pid in killed or when > exited:
            continue
        ended.append((when, rank, rec.get("signal") in FAULT_SIGNALS))
    if not ended:
        return []
    not_faults = [rank for _, rank, fault in ended if not fault]
    return sorted(not_faults) if not_faults else [min(ended)[1]]


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except OSError:
        pass


def supervise(command: Callable[[int, Optional[Hosts]], List[str]], nprocs: int, hosts: Optional[Hosts],
              max_restarts: int, min_ranks: int = 1, run_directory: Optional[str] = None,
              report: Optional[str] = None) -> int:
    """Runs ``command(n, hosts)`` and relaunches it on the ranks left after a lost rank.

    Args:
        command: builds the mpiexec command line for n ranks on ``hosts``.
        nprocs: ranks of the first launch.
        hosts: [(host, slots)] or None (this machine).
        max_restarts: relaunches allowed.
        min_ranks: never relaunch with fewer ranks (the ranks' own
            ``min_ranks`` of :func:`distml.elastic.run` counts too).
        run_directory: where the ranks' records and default commits go
            (kept afterwards); default a fresh directory in /dev/shm,
            removed at the end.
        report: write a JSON account of every launch to this file.

    Returns:
        The exit code: 0 once a launch succeeds, otherwise the last launch's.
    """
    own_dir = run_directory is None
    if own_dir:
        base = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
        run_directory = tempfile.mkdtemp(prefix="distml-elastic-", dir=base)
    else:
        os.makedirs(run_directory, exist_ok=True)
        # Records of an earlier run in this directory (its commits stay).
        for name in os.listdir(run_directory):
            if name.startswith("launch-"):
                shutil.rmtree(os.path.join(run_directory, name), ignore_errors=True)
            elif name == "progress.json":
                os.remove(os.path.join(run_directory, name))
    launches: List[dict] = []
    stopping: List[int] = []
    waiting = [False]

    def on_signal(signum: int, _frame: object) -> None:
        stopping.append(signum)
        if waiting[0]:  # otherwise the launch is being cleaned up already; stop after that
            raise KeyboardInterrupt

    handlers = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGHUP)}
    n, restarts, code = nprocs, 0, 1
    hosts = [tuple(h) for h in hosts] if hosts else None  # type: ignore[misc]
    try:
        while True:
            launch_dir = os.path.join(run_directory, f"launch-{restarts}")
            os.makedirs(launch_dir, exist_ok=True)
            cmd = command(n, hosts)
            env = dict(os.environ)
            env[ENV_RUN] = run_directory
            env[ENV_RESTART] = str(restarts)
            _say(f"launch {restarts}: {n} rank(s): " + " ".join(shlex.quote(c) for c in cmd))
            watch = _Watch(launch_dir)
            watch.start()
            started = time.time()
            proc = subprocess.Popen(cmd, env=env, start_new_session=True)
            while True:
                try:
                    waiting[0] = True
                    code = proc.wait()
                    break
                except KeyboardInterrupt:  # Ctrl-C (mpiexec has its own session) or SIGTERM/SIGHUP
                    stopping.append(signal.SIGINT)
                    _kill_group(proc)
                finally:
                    waiting[0] = False
            exited = time.time()
            code = code if code >= 0 else 128 - code
            watch.stop()
            _kill_group(proc)
            killed = watch.kill_left()
            exits = _records(launch_dir, "exit-")
            ranks = _records(launch_dir, "rank-")
            segments = sorted({s for rec in list(ranks.values()) + list(exits.values())
                               for s in rec.get("segments", []) if "/dev/shm/" in s})
            removed = remove_segments(segments)
            watch.close()
            first = watch.first
            entry = {"launch": restarts, "ranks": n, "hosts": format_hosts(hosts) if hosts else None,
                     "command": cmd, "exit_code": code, "started": started, "exited": exited,
                     "pids": {str(r): rec["pid"] for r, rec in sorted(ranks.items())},
                     "registered": max((rec.get("time", 0.0) for rec in ranks.values()), default=None),
                     "first_ended": first[1] if first else None, "first_ended_at": first[0] if first else None,
                     "killed_after": killed, "segments": segments, "segments_removed": removed,
                     "resumed": read_json(os.path.join(launch_dir, "resumed.json"))}
            launches.append(entry)
            if removed:
                _say(f"launch {restarts}: removed {len(removed)} shared-memory segment(s) the job left: "
                     + " ".join(os.path.basename(p) for p in removed))
            if stopping:
                entry["outcome"] = "interrupted"
                _say(f"interrupted; launch {restarts} ended and cleaned up")
                return 128 + int(stopping[0])
            if code == 0:
                entry["outcome"] = "done"
                if restarts:
                    _say(f"done after {restarts} restart(s); {n} rank(s) at the end")
                    for before, after in zip(launches, launches[1:]):
                        resumed = after.get("resumed") or {}
                        if before.get("first_ended_at") and resumed.get("time"):
                            after["recovery_seconds"] = resumed["time"] - before["first_ended_at"]
                            _say(f"  launch {before['launch']} -> {after['launch']}: lost rank(s) "
                                 f"{before.get('lost')}, {before['ranks']} -> {after['ranks']} rank(s); "
                                 f"{resumed.get('redone_steps', '?')} step(s) redone; training resumed "
                                 f"{after['recovery_seconds']:.1f} s after the loss")
                return 0
            # Why did it end?
            lost: List[int] = []
            witnessed = _witnessed_losses(launch_dir, ranks, exits, exited, killed)
            if witnessed:
                # The witnesses recorded these ranks' ends before the process
                # manager could hear of them: exact, whatever the watch saw.
                lost = witnessed
            elif first is not None:
                # Ranks that ended without a word (killed, crashed) are the lost ones.
                lost = [r for r in first[1] if r not in exits]
                if not lost and all(exits[r].get("reason") == "peer_lost" for r in first[1]):
                    # The first to end had timed out waiting for a peer that hung
                    # (stopped, cut off). Its timeout named the ranks that never
                    # arrived; failing that, the lost ones are those that never
                    # said anything, ended afterwards by the process manager or here.
                    named = {m for rec in exits.values() if rec.get("reason") == "peer_lost"
                             for m in rec.get("missing") or []}
                    lost = sorted(r for r in named if r in ranks and r not in exits) \
                        or sorted(r for r in ranks if r not in exits)
            program_error = [r for r, rec in exits.items() if rec.get("reason") in ("error", "below_min_ranks")
                             and (first is None or r in first[1])]
            entry["lost"] = lost
            if program_error or code == EXIT_BELOW_MIN_RANKS:
                entry["outcome"] = "program error"
                rec = exits.get(program_error[0]) if program_error else None
                _say(f"launch {restarts} failed (exit code {code}) with an error in the program, not a lost rank"
                     + (f": rank {rec['rank']}: {rec.get('message', '')}" if rec else "") + "; not restarting")
                return code
            if not lost:
                entry["outcome"] = "failed"
                _say(f"launch {restarts} failed (exit code {code}) before its ranks registered with "
                     "distml.elastic.run; not restarting")
                return code
            pids = ", ".join(f"rank {r} (pid {ranks[r]['pid']})" if r in ranks else f"rank {r}" for r in lost)
            took = (exited - first[0]) if first else float("nan")
            _say(f"launch {restarts}: lost {pids}; mpiexec ended {took:.2f} s later with exit code {code}")
            need = max([min_ranks] + [int(rec.get("min_ranks", 1)) for rec in ranks.values()])
            if hosts:
                slots = [list(h) for h in hosts]
                for r in lost:
                    slots[host_of_rank(hosts, r)][1] -= 1
                hosts = [(h, s) for h, s in slots if s > 0]
            left = n - len(lost)
            if left < need:
                entry["outcome"] = "below min_ranks"
                _say(f"{left} rank(s) left after losing {len(lost)}, fewer than min_ranks={need}: "
                     f"not restarting (exit code {code})")
                return code if code else 1
            if restarts >= max_restarts:
                entry["outcome"] = "restarts used up"
                _say(f"no restarts left (--max-restarts {max_restarts}); exit code {code}")
                return code
            entry["outcome"] = "relaunched"
            restarts += 1
            n = left
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
        if report:
            try:
                with open(report, "w") as f:
                    json.dump({"run_directory": run_directory, "launches": launches}, f, indent=1)
            except OSError as exc:
                _say(f"cannot write {report}: {exc}")
        if own_dir:
            shutil.rmtree(run_directory, ignore_errors=True)


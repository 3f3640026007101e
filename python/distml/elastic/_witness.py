"""The parent of one rank under ``distmlrun --max-restarts``: it records how the rank ended.

    mpiexec -n P python -S .../_witness.py program args...

The supervisor must tell the rank that was lost from the ranks the process
manager ended because of it. Watching the ranks from outside cannot do that
when the machine is busy: Hydra ends the others a few milliseconds after the
first death, and a watcher that is not scheduled in between sees them all end
at once. The witness makes the order causal instead. It forks the rank and
waits for it; when the rank ends on its own (a signal, a crash, an exit
code), the witness writes ``launch-K/ended-PID.json`` and only then ends with
the same status, so the process manager hears of the death after the record
exists. When the process manager ends the witness itself (SIGTERM then
SIGKILL to the process it started), the rank follows at once through
``PR_SET_PDEATHSIG`` and nothing is recorded: those ranks were not lost.
A rank that faults (SIGSEGV and the like) is recorded at once but reported
to the process manager up to FAULT_GRACE seconds later (``_hold``): such a
fault is most often a casualty of a peer's death, and that death must be on
record first.

It runs as a file (not ``-m distml...``) so that it imports nothing of
distml, and with ``-S``; only the standard library is used.
"""

import ctypes
import json
import os
import signal
import sys
import time

_PR_SET_PDEATHSIG = 1
ENV_RUN = "DISTML_ELASTIC_RUN"          # the same names as distml.elastic._state
ENV_RESTART = "DISTML_ELASTIC_RESTART"
# Signals of a fault inside the rank, as opposed to one sent to it (the supervisor's too).
FAULT_SIGNALS = frozenset(int(s) for s in (signal.SIGSEGV, signal.SIGBUS, signal.SIGABRT, signal.SIGFPE,
                                           signal.SIGILL))
FAULT_GRACE = 2.0  # seconds a fault is held back from the process manager (_hold)


def _launch_dir():
    base = os.environ.get(ENV_RUN)
    if not base:
        return None
    try:
        return os.path.join(base, f"launch-{int(os.environ.get(ENV_RESTART, '0'))}")
    except ValueError:
        return None


def _record(launch_dir: str, pid: int, status: int) -> None:
    rec = {"pid": pid, "time": time.time()}
    if os.WIFSIGNALED(status):
        rec["signal"] = os.WTERMSIG(status)
    else:
        rec["exit_code"] = os.waitstatus_to_exitcode(status)
    path = os.path.join(launch_dir, f"ended-{pid}.json")
    tmp = f"{path}.tmp"
    try:
        os.makedirs(launch_dir, exist_ok=True)
        with open(tmp, "w") as f:
            json.dump(rec, f)
        os.rename(tmp, path)
    except OSError:
        pass


def _hold(asked: set) -> None:
    """Keeps a rank's fault from the process manager for FAULT_GRACE seconds,
    or until it asks the witness to end (a signal lands in ``asked``).

    A rank that faults has most often been crashed by a peer's death:
    MPICH's TCP netmod can fault inside a send to a peer that just died.
    The peer's witness must record that death before the process manager
    ends the job, or the supervisor, finding only the fault, takes the
    casualty for the loss. Hearing of the fault at once, the process manager
    could end the peer's witness before it was scheduled to write; held
    back, the fault reaches it only after the peer's witness has recorded
    and ended, which ends the job."""
    deadline = time.monotonic() + FAULT_GRACE
    while not asked and time.monotonic() < deadline:
        time.sleep(0.02)


def main(argv) -> int:
    if not argv:
        print("distml witness: no program given", file=sys.stderr)
        return 2
    launch_dir = _launch_dir()
    if launch_dir is None:  # not under the supervisor: nothing to record
        os.execvp(argv[0], argv)
    parent = os.getpid()
    pid = rank_pid = os.fork()
    if pid == 0:
        for sig in (signal.SIGPIPE, signal.SIGXFSZ):
            signal.signal(sig, signal.SIG_DFL)  # as a process started by mpiexec has them
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
        if os.getppid() != parent:  # the witness ended before prctl took effect
            os._exit(1)
        try:
            os.execvp(argv[0], argv)
        except OSError as exc:
            print(f"distml witness: cannot run {argv[0]}: {exc}", file=sys.stderr)
            os._exit(127)
    # Signals meant for the rank go on to it; a death by one of them is not
    # a loss (somebody asked for it). SIGKILL cannot be caught: the process
    # manager's SIGTERM + SIGKILL end the witness, and the rank with it.
    forwarded = set()

    def forward(signum, _frame):
        forwarded.add(signum)
        if pid > 0:
            try:
                os.kill(pid, signum)
            except OSError:
                pass

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2):
        signal.signal(sig, forward)
    _, status = os.waitpid(pid, 0)  # retried after a handler ran (PEP 475)
    pid = -1  # reaped: its number may be reused, so nothing is forwarded to it now
    if not (os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0) \
            and not (os.WIFSIGNALED(status) and os.WTERMSIG(status) in forwarded):
        _record(launch_dir, rank_pid, status)
        if os.WIFSIGNALED(status) and os.WTERMSIG(status) in FAULT_SIGNALS:
            _hold(forwarded)
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        if sig not in (signal.SIGKILL, signal.SIGSTOP):  # the two whose action cannot be set
            signal.signal(sig, signal.SIG_DFL)
        sys.stdout.flush()
        os.kill(os.getpid(), sig)
        return 128 + sig  # a signal whose default is not to end the process
    return os.WEXITSTATUS(status)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

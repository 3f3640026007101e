"""Launcher: ``python -m distml.run -n 4 train.py args...`` (or ``distmlrun``).

Runs the program under the ``mpiexec`` of the MPI library distml was built
against, with defaults that work on a laptop, and prints the command first.
It looks for ``mpiexec`` in this order: ``--mpiexec``, ``DISTML_MPIEXEC``,
the interpreter's own bin directory (where the PyPI ``mpich`` package puts
it), then ``PATH``. It asks that ``mpiexec`` for its version and refuses to
run (exit code 2, nothing started) when it belongs to another MPI family
than the one distml's core was compiled with: ranks started by a foreign
launcher would each come up as a separate world of size 1.

Defaults added:

- MPICH (Hydra): none needed; Hydra binds no cores by default and allows
  more ranks than cores.
- Open MPI: ``--oversubscribe --bind-to none`` (more ranks than cores, and
  no pinning that piles ranks onto one core), plus ``--allow-run-as-root``
  when running as root.

Everything after the program name is passed to it unchanged; options for
``mpiexec`` itself go after ``--mpiexec-args`` as one quoted string.

With ``--max-restarts N`` the job is elastic (:mod:`distml.elastic`): when
ranks are lost, the launcher cleans up what the job left (processes,
/dev/shm segments) and relaunches it on the ranks that are left, at most N
times and never below ``--min-ranks``; the program resumes from its last
commit.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import subprocess
import sys
from typing import List, Optional, Tuple

__all__ = ["main", "find_mpiexec", "mpi_family", "build_command"]


def mpi_family(text: str) -> Tuple[str, str]:
    """(family, version) named by an MPI version banner (``mpiexec --version``
    output or the core's ``compiled_mpi()``)."""
    t = text.lower()
    version = ""
    if "open mpi" in t or "openrte" in t or "prrte" in t or "open-mpi" in t:
        m = re.search(r"\(open mpi\)\s*([\w.]+)", text, re.I) or re.search(r"open mpi\D*([\d.]+)", text, re.I)
        return "Open MPI", m.group(1) if m else version
    if "intel(r) mpi" in t or "intel mpi" in t:
        m = re.search(r"version\s*([\w.]+)", text, re.I)
        return "Intel MPI", m.group(1) if m else version
    if "hydra" in t or "mpich" in t or "mvapich" in t or "cray" in t:
        m = re.search(r"version:?\s*([\d][\w.]*)", text, re.I) or re.search(r"mpich\s+([\d][\w.]*)", text, re.I)
        return "MPICH", m.group(1) if m else version
    first = text.strip().splitlines()[0] if text.strip() else "unknown"
    return first, version


def _compiled() -> str:
    from . import _core

    return _core.compiled_mpi()


def find_mpiexec(explicit: Optional[str] = None) -> Tuple[Optional[str], str]:
    """(path or None, where it came from)."""
    if explicit:
        found = shutil.which(explicit) or (explicit if os.path.isfile(explicit) else None)
        return found, "--mpiexec"
    env = os.environ.get("DISTML_MPIEXEC")
    if env:
        return (shutil.which(env) or (env if os.path.isfile(env) else None)), "DISTML_MPIEXEC"
    beside = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    if os.path.isfile(beside) and os.access(beside, os.X_OK):
        return beside, "the interpreter's bin directory"
    return shutil.which("mpiexec"), "PATH"


def _version_banner(mpiexec: str) -> str:
    try:
        proc = subprocess.run([mpiexec, "--version"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"(could not run {mpiexec} --version: {exc})"
    return proc.stdout


def build_command(mpiexec: str, family: str, nprocs: int, program: List[str], extra: List[str],
                  hostfile: Optional[str] = None, hosts: Optional[str] = None) -> List[str]:
    cmd = [mpiexec, "-n", str(nprocs)]
    if family == "Open MPI":
        cmd += ["--oversubscribe", "--bind-to", "none"]
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            cmd.append("--allow-run-as-root")
        if hostfile:
            cmd += ["--hostfile", hostfile]
        if hosts:
            cmd += ["--host", hosts]
    else:  # Hydra (MPICH, Intel MPI)
        if hostfile:
            cmd += ["-f", hostfile]
        if hosts:
            cmd += ["-hosts", hosts]
    return cmd + extra + program


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(
        prog="distmlrun",
        description="Run a program on N ranks with the mpiexec matching distml's MPI.",
        usage="distmlrun -n N [options] (script.py | -m module | command) [args...]")
    ap.add_argument("-n", "-np", dest="nprocs", type=int, required=True, help="number of ranks")
    ap.add_argument("--mpiexec", help="mpiexec to use (default: see module docs)")
    ap.add_argument("--mpiexec-args", default="", help="extra options for mpiexec, as one string")
    ap.add_argument("--hostfile", help="host file (one host per line, optionally host:slots)")
    ap.add_argument("-H", "--hosts", help="comma-separated host list")
    ap.add_argument("--dry-run", action="store_true", help="print the command without running it")
    ap.add_argument("--max-restarts", type=int, default=None,
                    help="elastic: relaunch on the ranks that are left after a lost rank, up to N times "
                         "(the program uses distml.elastic.run)")
    ap.add_argument("--min-ranks", type=int, default=1, help="elastic: never relaunch with fewer ranks")
    ap.add_argument("--elastic-dir", default=None,
                    help="elastic: run directory for the ranks' records and default commits "
                         "(default: a fresh one in /dev/shm, removed at the end)")
    ap.add_argument("--elastic-report", default=None, help="elastic: write a JSON account of every launch here")
    ap.add_argument("-m", dest="module", help="run a module, like python -m")
    ap.add_argument("program", nargs=argparse.REMAINDER, help="script.py or command, then its arguments")
    args = ap.parse_args(argv)
    if args.nprocs < 1:
        ap.error("-n must be at least 1")
    if args.module:
        program = [sys.executable, "-m", args.module] + args.program
    elif args.program:
        first = args.program[0]
        program = ([sys.executable] + args.program) if first.endswith(".py") else list(args.program)
    else:
        ap.error("give a script, -m module or a command to run")

    mpiexec, source = find_mpiexec(args.mpiexec)
    if mpiexec is None:
        print(f"distmlrun: no mpiexec found (looked at {source}); install the mpich package "
              "(pip install mpich) or pass --mpiexec", file=sys.stderr)
        return 2
    banner = _version_banner(mpiexec)
    fam, ver = mpi_family(banner)
    compiled = _compiled()
    want, want_ver = mpi_family(compiled)
    if fam != want:
        print(f"distmlrun: refusing to run {mpiexec} (from {source}): it is {fam} {ver}".rstrip()
              + f", but distml was built against {compiled}.\n"
              "  Ranks started by another MPI's launcher would not find each other (each would be "
              "rank 0 of 1).\n"
              f"  Use the mpiexec of {want}: e.g. the one installed by the mpich package beside "
              "this Python, or pass --mpiexec /path/to/mpiexec; or rebuild distml and mpi4py "
              "against this MPI (README, 'Using a system MPI').", file=sys.stderr)
        return 2
    if ver and want_ver and ver.split(".")[:2] != want_ver.split(".")[:2]:
        print(f"distmlrun: warning: {mpiexec} is {fam} {ver}, distml was built against {compiled}",
              file=sys.stderr)
    if args.max_restarts is not None:
        if args.max_restarts < 0:
            ap.error("--max-restarts must be at least 0")
        return _elastic(args, mpiexec, fam, program)
    cmd = build_command(mpiexec, fam, args.nprocs, program, shlex.split(args.mpiexec_args),
                        args.hostfile, args.hosts)
    print("distmlrun: " + " ".join(shlex.quote(c) for c in cmd), file=sys.stderr, flush=True)
    if args.dry_run:
        return 0
    proc = subprocess.Popen(cmd)
    while True:
        try:
            code = proc.wait()
            break
        except KeyboardInterrupt:  # mpiexec got the signal too (same process group); wait for it
            continue
    return code if code >= 0 else 128 - code


def _elastic(args: argparse.Namespace, mpiexec: str, family: str, program: List[str]) -> int:
    """``--max-restarts``: run under distml.elastic's supervisor, which
    relaunches the job on the ranks left after a lost rank."""
    from .elastic._supervisor import format_hosts, parse_hosts, supervise, witness_command

    extra = shlex.split(args.mpiexec_args)
    hosts = parse_hosts(args.hosts, args.hostfile)

    def command(n: int, hosts_now: Optional[list]) -> List[str]:
        return build_command(mpiexec, family, n, witness_command(program), extra, None,
                             format_hosts(hosts_now) if hosts_now else None)

    if args.dry_run:
        print("distmlrun: " + " ".join(shlex.quote(c) for c in command(args.nprocs, hosts)), file=sys.stderr)
        return 0
    return supervise(command, args.nprocs, hosts, args.max_restarts, args.min_ranks,
                     run_directory=args.elastic_dir, report=args.elastic_report)


def console_main() -> None:
    sys.exit(main())


if __name__ == "__main__":
    console_main()

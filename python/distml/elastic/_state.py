"""Committed training state: what the ranks roll back to after a lost rank.

A :class:`State` names the parameters, the optimizer and a few user fields
(epoch, step, ...). ``commit()`` writes them as a :mod:`distml.checkpoint`
(sharded, atomic, loadable at any number of ranks) into the state's
directory and remembers the fields it committed; ``restore()`` loads the last
commit at whatever number of ranks the job now has, which is how parameters,
replicated optimizer state and ZeRO shards are resharded after a restart
with fewer (or more) ranks. Under ``distmlrun --max-restarts`` the directory
defaults to one in ``/dev/shm`` (the node's memory) that the launcher removes
when the job ends.
"""

from __future__ import annotations

import json
import os
import socket
import time
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from .. import checkpoint as _checkpoint

__all__ = ["State", "batch_indices"]

ENV_RUN = "DISTML_ELASTIC_RUN"          # the launcher's run directory
ENV_RESTART = "DISTML_ELASTIC_RESTART"  # 0 for the first launch, then 1, 2, ...


def restart_count() -> int:
    """How many times the launcher has relaunched this job (0: first launch,
    or not under ``distmlrun --max-restarts``)."""
    try:
        return int(os.environ.get(ENV_RESTART, "0"))
    except ValueError:
        return 0


def run_dir() -> Optional[str]:
    """The launcher's run directory, or None outside ``distmlrun --max-restarts``."""
    return os.environ.get(ENV_RUN) or None


def _write_json(path: str, record: Dict[str, Any]) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(record, f)
    os.replace(tmp, path)


def _shm_segments() -> List[str]:
    """The files in /dev/shm this process maps (MPI's node segments)."""
    found = set()
    try:
        with open("/proc/self/maps") as f:
            for line in f:
                at = line.find("/dev/shm/")
                if at >= 0:
                    found.add(line[at:].strip().split(" ")[0])
    except OSError:
        pass
    return sorted(found)


def batch_indices(n: int, global_batch: int, epoch: int, step: int, rank: int, size: int,
                  seed: int = 0) -> np.ndarray:
    """This rank's sample indices for global step ``step`` of ``epoch``.

    The global batch of a step is the same at every number of ranks: samples
    ``[step * global_batch, (step + 1) * global_batch)`` of the epoch's
    permutation (:func:`distml.data.shard_indices` with ``(seed, epoch)``),
    split so that rank r of P takes every P-th of them. So a job that goes on
    at P - 1 ranks after a restart trains on exactly the batches it would
    have trained on at P, and an averaging optimizer computes the same
    gradient.

    Raises:
        ValueError: ``global_batch`` is not divisible by ``size`` (the ranks'
            shares would differ in size, and an average of their gradients
            would not be the batch's gradient), or the step lies past the
            epoch's last full batch.
    """
    from ..data import shard_indices

    if global_batch % size:
        raise ValueError(f"the global batch {global_batch} is not divisible by {size} ranks")
    if (step + 1) * global_batch > n:
        raise ValueError(f"step {step} of a {n}-sample epoch with batches of {global_batch} is past the last full batch")
    local = global_batch // size
    mine = shard_indices(n, rank, size, seed=seed, epoch=epoch)
    return mine[step * local:(step + 1) * local]


class State:
    """Parameters, optimizer state and user fields that can be committed and restored.

    Args:
        params: the model's parameters (numpy arrays, updated in place by
            :meth:`restore`). May be empty when ``optimizer`` is a
            :class:`distml.ShardedOptimizer` (its parameters are used).
        optimizer: a :class:`distml.optim.Optimizer`,
            :class:`distml.DistributedOptimizer` or
            :class:`distml.ShardedOptimizer`, or None.
        comm: the ranks that commit together (default: the optimizer's,
            else :func:`distml.get_default`).
        directory: where commits go. Default: ``checkpoint/`` in the run
            directory of ``distmlrun --max-restarts`` (node memory, removed
            when the job ends). Outside such a launcher it must be given.
        **fields: user fields (JSON values: numbers, strings, lists, dicts),
            read and written as attributes: ``state.epoch += 1``.

    Attributes:
        commits: commits made by this job, this launch included.
        committed: the fields of the last commit (a dict), or None.
        restored_from: the world size of the commit ``restore()`` loaded, or
            None if nothing was restored.
    """

    _OWN = {"params", "optimizer", "comm", "directory", "commits", "committed", "restored_from", "_fields",
            "_last_progress"}

    def __init__(self, params: Sequence[np.ndarray] = (), optimizer: Any = None, *, comm: Any = None,
                 directory: Optional[str] = None, **fields: Any) -> None:
        if comm is None:
            comm = getattr(optimizer, "comm", None)
        if comm is None:
            import distml

            comm = distml.get_default()
        if directory is None:
            base = run_dir()
            if base is None:
                raise ValueError("State needs a directory for its commits: pass directory=..., or launch "
                                 "under distmlrun --max-restarts N (which provides one)")
            directory = os.path.join(base, "checkpoint")
        for name in fields:
            if name in self._OWN or name.startswith("_") or hasattr(type(self), name):
                raise ValueError(f"{name!r} cannot be a user field of State")
        object.__setattr__(self, "params", list(params))
        object.__setattr__(self, "optimizer", optimizer)
        object.__setattr__(self, "comm", comm)
        object.__setattr__(self, "directory", directory)
        object.__setattr__(self, "commits", 0)
        object.__setattr__(self, "committed", None)
        object.__setattr__(self, "restored_from", None)
        object.__setattr__(self, "_fields", dict(fields))
        object.__setattr__(self, "_last_progress", 0.0)

    # ---- user fields -----------------------------------------------------------------

    def __getattr__(self, name: str) -> Any:
        fields = self.__dict__.get("_fields", {})
        if name in fields:
            return fields[name]
        raise AttributeError(f"State has no field {name!r}")

    def __setattr__(self, name: str, value: Any) -> None:
        if name in self._OWN:
            object.__setattr__(self, name, value)
        elif name in self._fields:
            self._fields[name] = value
        else:
            raise AttributeError(f"State has no field {name!r} (fields are fixed when it is made: "
                                 f"{sorted(self._fields)})")

    @property
    def fields(self) -> Dict[str, Any]:
        """A copy of the user fields."""
        return json.loads(json.dumps(self._fields))

    # ---- commit and restore ----------------------------------------------------------

    def _save_params(self) -> Optional[List[np.ndarray]]:
        return self.params or None

    def commit(self) -> None:
        """Saves parameters, optimizer state and fields as the point to roll back to.

        Must be called on all ranks of the state's communicator, at the same
        point of training (after the same step). Each rank writes its shard;
        the commit is complete once rank 0 has written the manifest, and a
        rank lost before that leaves the previous commit in force.

        Raises:
            CheckpointError: on every rank alike, if writing failed anywhere.
        """
        extra = {"fields": self._fields, "world_size": self.comm.size, "commit": self.commits + 1,
                 "restart": restart_count(), "time": time.time()}
        _checkpoint.save(self.directory, params=self._save_params(), optimizer=self.optimizer, comm=self.comm,
                         extra=extra)
        self._committed(self.commits + 1)

    def _committed(self, number: int) -> None:
        """Bookkeeping once commit ``number`` is in force on every rank."""
        self.commits = number
        self.committed = self.fields
        if _registered_min_ranks is not None:
            register(self.comm, _registered_min_ranks)  # segments made since the last look
        if self.comm.rank == 0:
            self._note("progress.json", {"fields": self._fields, "time": time.time(), "committed": True})

    def has_commit(self) -> bool:
        """Whether the directory holds a commit (read on this rank, no communication)."""
        return os.path.exists(os.path.join(self.directory, _checkpoint.MANIFEST))

    def restore(self) -> bool:
        """Loads the last commit, if there is one, into parameters, optimizer and fields.

        Works at any number of ranks: each rank takes from the committed
        shards what it needs now (all parameters; its own ZeRO shard of the
        optimizer state, or all of it for a replicated optimizer).

        Returns:
            True if a commit was loaded, False if there was none (nothing changes).

        Raises:
            CheckpointError: on every rank alike, if the commit cannot be read.

        Must be called on all ranks.
        """
        # Every rank looks for the manifest itself; the load agrees on the outcome.
        found = np.array([1 if self.has_commit() else 0], dtype=np.int64)
        self.comm.allreduce(found, op="min", out=found)
        if not found[0]:
            return False
        manifest = _checkpoint.load(self.directory, params=self._save_params(), optimizer=self.optimizer,
                                    comm=self.comm)
        extra = manifest.get("extra") or {}
        self._fields.update(extra.get("fields") or {})
        self.commits = int(extra.get("commit", 0))
        self.committed = self.fields
        self.restored_from = int(extra.get("world_size", manifest.get("world_size", 0)))
        return True

    def sync(self, root: int = 0) -> None:
        """Makes every rank's parameters, optimizer state and fields equal to ``root``'s.

        For a fresh start without a commit: call it once before training.
        Must be called on all ranks.
        """
        opt = self.optimizer
        if opt is not None and hasattr(opt, "broadcast_parameters"):
            opt.broadcast_parameters(root=root)
        else:
            for p in self.params:
                self.comm.broadcast(p, root=root)
        if opt is not None and hasattr(opt, "broadcast_optimizer_state"):
            opt.broadcast_optimizer_state(root=root)
        data = np.frombuffer(json.dumps(self._fields).encode().ljust(4096), dtype=np.uint8).copy() \
            if len(json.dumps(self._fields)) <= 4096 else None
        if data is None:
            raise ValueError("the user fields take more than 4096 bytes as JSON")
        self.comm.broadcast(data, root=root)
        self._fields.clear()
        self._fields.update(json.loads(data.tobytes().decode().rstrip()))

    # ---- what the launcher is told -------------------------------------------------------

    def progress(self, min_interval: float = 0.0) -> None:
        """Tells the launcher how far training has got (rank 0 only; no
        communication): after a failure, the restarted job reports how much
        work since the last commit is redone. Cheap (one small file write);
        call it once per step, or pass ``min_interval`` seconds to write
        less often. Does nothing outside ``distmlrun --max-restarts``.
        """
        if self.comm.rank != 0 or run_dir() is None:
            return
        now = time.time()
        if now - self._last_progress < min_interval:
            return
        self._last_progress = now
        self._note("progress.json", {"fields": self._fields, "time": now, "committed": False})

    def _note(self, name: str, record: Dict[str, Any]) -> None:
        base = run_dir()
        if base is None:
            return
        try:
            _write_json(os.path.join(base, name), record)
        except OSError:
            pass


_registered_min_ranks: Optional[int] = None
_registered_at: Optional[float] = None


def register(comm: Any, min_ranks: int) -> None:
    """Tells the launcher this rank's process id, host and shared-memory
    segments (so that it can tell which rank was lost, and clean up)."""
    global _registered_min_ranks, _registered_at
    base = run_dir()
    if base is None:
        return
    _registered_min_ranks = int(min_ranks)
    if _registered_at is None:
        _registered_at = time.time()
    gen = os.path.join(base, f"launch-{restart_count()}")
    try:
        os.makedirs(gen, exist_ok=True)
        _write_json(os.path.join(gen, f"rank-{comm.rank}.json"),
                    {"rank": comm.rank, "size": comm.size, "pid": os.getpid(), "host": socket.gethostname(),
                     "min_ranks": int(min_ranks), "segments": _shm_segments(), "time": _registered_at})
    except OSError:
        pass


def note_exit(comm: Any, reason: str, message: str = "", missing: Optional[List[int]] = None) -> None:
    """Records why this rank is leaving (``done``, ``error``, ``peer_lost``,
    ``below_min_ranks``) for the launcher; ``missing``: the ranks a timeout
    named as never arrived."""
    base = run_dir()
    if base is None:
        return
    gen = os.path.join(base, f"launch-{restart_count()}")
    try:
        os.makedirs(gen, exist_ok=True)
        _write_json(os.path.join(gen, f"exit-{comm.rank}.json"),
                    {"rank": comm.rank, "reason": reason, "message": message[:2000], "time": time.time(),
                     "segments": _shm_segments(), "missing": list(missing or [])})
    except OSError:
        pass


def note_resumed(record: Dict[str, Any]) -> None:
    base = run_dir()
    if base is None:
        return
    try:
        _write_json(os.path.join(base, f"launch-{restart_count()}", "resumed.json"), record)
    except OSError:
        pass


def read_json(path: str) -> Optional[Dict[str, Any]]:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


"""``hvd.elastic`` for torch: training that survives a lost rank.

Horovod's elastic API on distml's recovery model. Horovod re-forms the job
in the same processes; distml relaunches it (``distmlrun --max-restarts N``
starts the job again on the ranks that are left, see docs/elastic.md), so
the same user code means this here:

- ``state.commit()`` writes the state (model and optimizer ``state_dict``,
  the samplers' progress, the other fields) to the run directory: rank 0
  writes one file, then a small pointer to it is replaced atomically, which
  is the commit point. Every rank learns of a failure to write.
- ``@hvd.elastic.run`` registers the rank with the launcher, loads the last
  commit if the job was relaunched (at any size: the state is replicated),
  otherwise makes every rank equal to rank 0 (``state.sync()``), and runs
  the training function. A lost peer surfaces as a communication error
  (the communicator gets a 60 s timeout unless it has one); the rank then
  leaves with exit code 75 and the launcher relaunches from the last commit.
- After a relaunch that restored a commit, the reset callbacks run (e.g. to
  scale the learning rate to the new size), as after a reset in Horovod.
- ``check_host_updates()`` has nothing to do: hosts change only by a
  relaunch.

Everything in a state is replicated: every rank must hold the same model
and optimizer state at a commit (what ``DistributedOptimizer`` keeps).
"""

from __future__ import annotations

import functools
import json
import math
import os
import random
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence

import torch

from ..checkpoint import CheckpointError, _write_atomically
from ..elastic import _state as _estate
from ..elastic._run import run as _elastic_run
from .functions import broadcast_optimizer_state, broadcast_parameters
from .mpi_ops import allgather_object, broadcast_object, get_communicator, rank, size

__all__ = ["run", "State", "ObjectState", "TorchState", "ElasticSampler"]

_POINTER = "torch-commit.json"


def _json_value(v: Any) -> bool:
    try:
        json.dumps(v)
        return True
    except (TypeError, ValueError):
        return False


def _has_state_dict(v: Any) -> bool:
    return callable(getattr(v, "state_dict", None)) and callable(getattr(v, "load_state_dict", None))


class State(_estate.State):
    """What an elastic torch job commits and restores, with Horovod's reset callbacks.

    Keyword arguments become attributes (``state.epoch``, ``state.batch``):
    JSON values (numbers, strings, lists, dicts) are fields, which the
    launcher's log shows; anything else is an object, committed through
    ``torch.save``: its ``state_dict()`` if it has one with
    ``load_state_dict()`` (samplers, learning-rate schedulers; restored in
    place), else the object itself (restored by assignment).
    """

    _OWN = _estate.State._OWN | {"_objects", "_callbacks", "_extra_saves"}

    def __init__(self, *, directory: Optional[str] = None, **kwargs: Any) -> None:
        fields = {k: v for k, v in kwargs.items() if _json_value(v)}
        objects = {k: v for k, v in kwargs.items() if k not in fields}
        super().__init__((), None, comm=get_communicator(), directory=directory, **fields)
        for name in objects:
            if name.startswith("_") or hasattr(type(self), name) or name in self._OWN:
                raise ValueError(f"{name!r} cannot be a name in an elastic state")
        object.__setattr__(self, "_objects", objects)
        object.__setattr__(self, "_callbacks", [])

    def __getattr__(self, name: str) -> Any:
        objects = self.__dict__.get("_objects", {})
        if name in objects:
            return objects[name]
        return super().__getattr__(name)

    def __setattr__(self, name: str, value: Any) -> None:
        if name in self.__dict__.get("_objects", {}):
            self._objects[name] = value
        else:
            super().__setattr__(name, value)

    # ---- Horovod's callbacks -----------------------------------------------------------

    def register_reset_callbacks(self, callbacks: Sequence[Callable[[], None]]) -> None:
        """Functions called after a relaunch restored this state (the number
        of ranks may have changed)."""
        self._callbacks.extend(callbacks)

    def on_reset(self) -> None:
        for cb in self._callbacks:
            cb()

    def on_hosts_updated(self, timestamp: Any = None, update_res: Any = None) -> None:
        """Kept for Horovod's API; hosts change only by a relaunch here."""

    def check_host_updates(self) -> None:
        """Nothing to check: hosts change only by a relaunch (see the module docs)."""

    # ---- what is saved ---------------------------------------------------------------------

    def _to_save(self) -> Dict[str, Any]:
        return {name: (obj.state_dict() if _has_state_dict(obj) else obj) for name, obj in self._objects.items()}

    def _load_saved(self, saved: Dict[str, Any]) -> None:
        for name, value in saved.items():
            if name not in self._objects:
                continue
            obj = self._objects[name]
            if _has_state_dict(obj):
                obj.load_state_dict(value)
            else:
                self._objects[name] = value

    def _before_save(self) -> None:
        """Collective work before rank 0 writes (samplers gather their progress)."""
        for obj in self._objects.values():
            if isinstance(obj, ElasticSampler):
                obj.sync()

    # ---- commit and restore ------------------------------------------------------------

    def save(self) -> None:
        """Writes the state as the point to roll back to (what ``commit`` does,
        without the host check). Must be called on all ranks at the same point.

        Raises:
            CheckpointError: on every rank, if rank 0 could not write it.
        """
        self._before_save()
        number = self.commits + 1
        error = ""
        if self.comm.rank == 0:
            try:
                self._write(number)
            except Exception as exc:  # noqa: BLE001 - every rank must learn of it
                error = f"rank 0 could not commit to {self.directory}: {type(exc).__name__}: {exc}"
        error = broadcast_object(error, 0)
        if error:
            raise CheckpointError(error)
        self._committed(number)

    def commit(self) -> None:
        """``save()``, then ``check_host_updates()``."""
        self.save()
        self.check_host_updates()

    def _write(self, number: int) -> None:
        os.makedirs(self.directory, exist_ok=True)
        name = f"torch-state-{number:06d}-{os.getpid()}.pt"
        payload = {"objects": self._to_save(), "fields": self._fields, "world_size": self.comm.size,
                   "commit": number, "restart": _estate.restart_count()}
        payload.update(self._extra_payload())
        _write_atomically(os.path.join(self.directory, name), lambda f: torch.save(payload, f))
        pointer = json.dumps({"file": name, "commit": number, "world_size": self.comm.size}).encode()
        _write_atomically(os.path.join(self.directory, _POINTER), lambda f: f.write(pointer))  # the commit point
        for entry in os.listdir(self.directory):
            if entry.startswith("torch-state-") and entry != name:
                try:
                    os.remove(os.path.join(self.directory, entry))
                except OSError:
                    pass

    def _extra_payload(self) -> Dict[str, Any]:
        return {}

    def _load_extra(self, payload: Dict[str, Any]) -> None:
        pass

    def has_commit(self) -> bool:
        return os.path.exists(os.path.join(self.directory, _POINTER))

    def restore(self) -> bool:
        """Loads the last commit, if there is one, on every rank.

        Returns:
            True if a commit was loaded, False if there was none.

        Raises:
            CheckpointError: on every rank alike, if any rank cannot read it.

        Must be called on all ranks.
        """
        found = min(allgather_object(self.has_commit()))
        if not found:
            return False
        error, payload = "", None
        try:
            with open(os.path.join(self.directory, _POINTER)) as f:
                pointer = json.load(f)
            with open(os.path.join(self.directory, pointer["file"]), "rb") as f:
                payload = torch.load(f, map_location="cpu", weights_only=False)
        except Exception as exc:  # noqa: BLE001 - every rank must learn of it
            error = f"rank {self.comm.rank}: cannot read the commit in {self.directory}: {type(exc).__name__}: {exc}"
        errors = [e for e in allgather_object(error) if e]
        if errors:
            raise CheckpointError(errors[0])
        assert payload is not None
        self._load_extra(payload)
        self._load_saved(payload["objects"])
        self._fields.update(payload.get("fields") or {})
        self.commits = int(payload["commit"])
        self.committed = self.fields
        self.restored_from = int(payload["world_size"])
        return True

    def sync(self, root: int = 0) -> None:
        """Makes every rank's state equal to ``root``'s (a fresh start).
        Must be called on all ranks."""
        fields = broadcast_object(dict(self._fields) if rank() == root else None, root)
        self._fields.clear()
        self._fields.update(fields or {})
        saved = broadcast_object(self._to_save() if rank() == root else None, root)
        self._load_saved(saved)


class ObjectState(State):
    """A state of plain Python objects (fields and picklable objects)."""


class TorchState(ObjectState):
    """A model, its optimizer and other values, committed and restored together.

    Args:
        model: a ``torch.nn.Module`` (its ``state_dict()``: parameters and
            buffers), or None.
        optimizer: a ``torch.optim.Optimizer`` (or distml.torch's
            ``DistributedOptimizer``), or None.
        directory: where commits go (default: the run directory of
            ``distmlrun --max-restarts``; outside it, required).
        **kwargs: more values, see :class:`State` (e.g. ``epoch=0,
            batch=0, train_sampler=ElasticSampler(...)``).
    """

    _OWN = State._OWN | {"model"}

    def __init__(self, model: Optional[torch.nn.Module] = None, optimizer: Any = None, *,
                 directory: Optional[str] = None, **kwargs: Any) -> None:
        if model is not None and not isinstance(model, torch.nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, not {type(model).__name__}")
        if optimizer is not None and not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(f"optimizer must be a torch.optim.Optimizer, not {type(optimizer).__name__}")
        super().__init__(directory=directory, **kwargs)
        object.__setattr__(self, "model", model)
        object.__setattr__(self, "optimizer", optimizer)

    def _extra_payload(self) -> Dict[str, Any]:
        return {"model": self.model.state_dict() if self.model is not None else None,
                "optimizer": self.optimizer.state_dict() if self.optimizer is not None else None}

    def _load_extra(self, payload: Dict[str, Any]) -> None:
        if self.model is not None and payload.get("model") is not None:
            self.model.load_state_dict(payload["model"])
        if self.optimizer is not None and payload.get("optimizer") is not None:
            self.optimizer.load_state_dict(payload["optimizer"])

    def sync(self, root: int = 0) -> None:
        if self.model is not None:
            broadcast_parameters(self.model.state_dict(), root_rank=root)
        if self.optimizer is not None:
            broadcast_optimizer_state(self.optimizer, root_rank=root)
        super().sync(root)


def run(func: Callable[..., Any]) -> Callable[..., Any]:
    """Horovod's ``@hvd.elastic.run``: ``func(state, *args, **kwargs)`` survives lost ranks.

    The wrapped function registers the rank with ``distmlrun
    --max-restarts``, restores the last commit (then runs the reset
    callbacks) or, on a fresh start, syncs the state from rank 0, and calls
    ``func``. See the module docs and :func:`distml.elastic.run`, which it
    runs on; the fewest ranks to go on with is the launcher's
    ``--min-ranks``.
    """

    @functools.wraps(func)
    def wrapper(state: State, *args: Any, **kwargs: Any) -> Any:
        if not isinstance(state, State):
            raise TypeError(f"the first argument must be a distml.torch.elastic State, not {type(state).__name__}")

        def body(s: State) -> Any:
            if s.restored_from is None:
                s.sync()
            else:
                s.on_reset()
            return func(s, *args, **kwargs)

        return _elastic_run(body, state)

    return wrapper


class ElasticSampler(torch.utils.data.Sampler):
    """Splits a dataset's indices over the ranks and remembers which were
    processed this epoch, so that a job relaunched at another size goes on
    with exactly the samples left.

    Per epoch the indices (shuffled with ``seed + epoch`` if ``shuffle``)
    minus the processed ones are padded to a multiple of the number of ranks
    by repeating the first ones, and rank r takes every size-th from r.
    Call ``record_batch(i, batch_size)`` after this rank's batch ``i`` of
    the epoch is done (or ``record_indices``), ``set_epoch(e)`` at the start
    of each epoch. A commit of the state that holds the sampler gathers the
    processed indices of all ranks.
    """

    def __init__(self, dataset: Any, shuffle: bool = True, seed: int = 0) -> None:
        self.dataset = dataset
        self.shuffle = shuffle
        self.seed = seed
        self.epoch = 0
        self.processed_indices: set = set()
        self.reset()

    def reset(self) -> None:
        """Recomputes this rank's share (the number of ranks or the processed set changed)."""
        self.num_replicas = size()
        self.rank = rank()
        n = len(self.dataset)
        order = list(range(n))
        if self.shuffle:
            random.Random(self.seed + self.epoch).shuffle(order)
        self.remaining_indices = [i for i in order if i not in self.processed_indices]
        self.num_samples = int(math.ceil(len(self.remaining_indices) / self.num_replicas))
        self.total_size = self.num_samples * self.num_replicas
        padded = self.remaining_indices + self.remaining_indices[: self.total_size - len(self.remaining_indices)]
        self.indices: List[int] = padded[self.rank:self.total_size:self.num_replicas]

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        self.processed_indices = set()
        self.reset()

    def get_indices(self, batch_idx: int, batch_size: int) -> List[int]:
        """This rank's indices of its batch ``batch_idx`` (of ``batch_size``) this epoch."""
        start = batch_idx * batch_size
        return self.indices[start:start + batch_size]

    def record_batch(self, batch_idx: int, batch_size: int) -> None:
        self.record_indices(self.get_indices(batch_idx, batch_size))

    def record_indices(self, indices: Sequence[int]) -> None:
        self.processed_indices.update(int(i) for i in indices)

    def sync(self) -> None:
        """Collective: every rank's processed set becomes the union of all ranks'."""
        union: set = set()
        for part in allgather_object(sorted(self.processed_indices)):
            union.update(part)
        self.processed_indices = union

    def state_dict(self) -> Dict[str, Any]:
        return {"epoch": self.epoch, "processed_indices": sorted(self.processed_indices)}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.epoch = int(state["epoch"])
        self.processed_indices = set(int(i) for i in state["processed_indices"])
        self.reset()

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return self.num_samples

"""Sharded, atomic checkpoints that load at any number of ranks.

Layout of a checkpoint directory::

    manifest.json                         the commit record (written last)
    shard-<generation>-<rank>-of-<P>.npz  one file per rank of the save

What is saved lives in one *flat element space*: the parameters concatenated
in order (``numel`` elements), and for each element-wise optimizer state key
(``exp_avg``, ...) a vector of the same length. Rank r of a save writes the
elements ``[start, stop)`` it is responsible for: the shard it owns for a
:class:`distml.ShardedOptimizer`, otherwise ``numpy.array_split`` part r of
the range. No data is gathered to any rank. Step counts and
hyperparameters are small and go into the manifest.

Atomicity. A save writes files of a fresh *generation* (a random token rank 0
draws and broadcasts), so it never touches the files the current manifest
names. Each file is written to a temporary name, fsync'ed and renamed into
place. Ranks then exchange their files' sha256 digests; only after every
rank has finished does rank 0 write ``manifest.json`` the same way (temporary
file, fsync, ``os.replace``, fsync of the directory). The rename of the
manifest is the commit point: a crash at any moment before it leaves the
previous manifest and the files it names intact, so the previous checkpoint
still loads. Files of older generations are removed after the commit.

Loading reads the manifest, checks every file's size and sha256 (a missing
or corrupted file raises :class:`CheckpointError` naming it), and takes from
the files whatever ranges this rank needs: all of the parameters, and the
optimizer state of its own shard (sharded) or all of it (replicated). That
is how a checkpoint saved by P ranks loads at Q ranks, 1 included. Every
rank reads every file, so every rank reaches the same verdict without
communicating.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ._errors import DistmlError

__all__ = ["save", "load", "CheckpointError", "MANIFEST"]

MANIFEST = "manifest.json"
FORMAT = "distml-checkpoint"
VERSION = 1
_SHARD_RE = re.compile(r"^shard-([0-9a-f]+)-\d+-of-\d+\.npz$")


class CheckpointError(DistmlError):
    """A checkpoint is missing, incomplete, corrupted or does not fit the
    parameters and optimizer it is loaded into."""


# ---- views of the things being saved ------------------------------------------------


class _Flat:
    """The parameters as one flat element space."""

    def __init__(self, params: Sequence[np.ndarray]) -> None:
        self.params = list(params)
        dtypes = {np.dtype(p.dtype) for p in self.params}
        if len(dtypes) > 1:
            raise ValueError(f"checkpoints need parameters of one dtype, got {sorted(map(str, dtypes))}")
        self.dtype = dtypes.pop() if dtypes else np.dtype(np.float32)
        self.sizes = [int(p.size) for p in self.params]
        self.offsets = [int(o) for o in np.cumsum([0] + self.sizes[:-1])] if self.params else []
        self.numel = sum(self.sizes)

    def read(self, arrays: Sequence[np.ndarray], lo: int, hi: int) -> np.ndarray:
        """Elements [lo, hi) of the concatenation of ``arrays`` (shaped like params)."""
        out = np.empty(hi - lo, dtype=self.dtype)
        for a, o, n in zip(arrays, self.offsets, self.sizes):
            a0, a1 = max(lo, o), min(hi, o + n)
            if a0 < a1:
                out[a0 - lo:a1 - lo] = a.reshape(-1)[a0 - o:a1 - o]
        return out

    def write(self, arrays: Sequence[np.ndarray], flat: np.ndarray) -> None:
        """Scatters a full flat vector into ``arrays``."""
        for a, o, n in zip(arrays, self.offsets, self.sizes):
            np.copyto(a, flat[o:o + n].reshape(a.shape))


def _unwrap(optimizer: Any) -> Tuple[str, Any]:
    """("sharded", ShardedOptimizer) or ("replicated", base optimizer)."""
    from .optim import Optimizer
    from .parallel import DistributedOptimizer, ShardedOptimizer

    if isinstance(optimizer, ShardedOptimizer):
        return "sharded", optimizer
    if isinstance(optimizer, DistributedOptimizer):
        return "replicated", optimizer.optimizer
    if isinstance(optimizer, Optimizer):
        return "replicated", optimizer
    raise TypeError(f"cannot checkpoint an optimizer of type {type(optimizer).__name__}")


def _comm_of(optimizer: Any, comm: Any) -> Any:
    if comm is not None:
        from .parallel.data_parallel import _default_comm

        return _default_comm(comm)
    return getattr(optimizer, "comm", None)


def _jsonable(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (np.floating, np.integer, np.bool_)):
        return value.item()
    return value


def _from_json_hyper(hyper: Dict[str, Any]) -> Dict[str, Any]:
    return {k: tuple(v) if isinstance(v, list) else v for k, v in hyper.items()}


# ---- files -----------------------------------------------------------------------------


def _fsync_dir(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _atomic_write(path: str, data: bytes) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(os.path.dirname(path) or ".")


def _npz_bytes(arrays: Dict[str, np.ndarray]) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


# ---- save ------------------------------------------------------------------------------


def save(path: str, params: Optional[Sequence[np.ndarray]] = None, optimizer: Any = None, comm: Any = None,
         extra: Optional[Dict[str, Any]] = None) -> None:
    """Saves ``params`` and ``optimizer``'s state into the directory ``path``.

    Args:
        path: a directory (created if missing). An existing checkpoint there
            is replaced atomically.
        params: the parameters (replicated on every rank).
        optimizer: a :class:`distml.optim.Optimizer`,
            :class:`distml.DistributedOptimizer` or
            :class:`distml.ShardedOptimizer`.
        comm: the communicator of the save (default: the optimizer's; with
            neither, this process saves alone).
        extra: JSON-serialisable data to keep in the manifest (epoch, ...),
            returned by :func:`load`.

    Raises:
        ValueError: parameters of mixed dtypes, or neither params nor
            optimizer given.
        OSError: writing failed (the previous checkpoint stays loadable).

    Must be called on all ranks of the communicator.
    """
    if params is None and optimizer is None:
        raise ValueError("save needs params, optimizer or both")
    kind, opt = _unwrap(optimizer) if optimizer is not None else (None, None)
    comm = _comm_of(optimizer, comm)
    rank, size = (comm.rank, comm.size) if comm is not None else (0, 1)
    if kind == "sharded" and params is None:
        params = opt.params
    flat = _Flat(params if params is not None else [])
    if kind == "sharded" and flat.numel != opt.numel:
        raise ValueError(f"params hold {flat.numel} elements, the sharded optimizer {opt.numel}")
    if kind == "replicated" and params is not None and flat.numel != _Flat(opt.params).numel:
        raise ValueError("params and the optimizer's parameters differ in size")
    numel = flat.numel if params is not None else _Flat(opt.params).numel

    # This rank's range of the flat element space.
    if kind == "sharded":
        lo, hi = min(opt.start, numel), min(opt.stop, numel)
    else:
        bounds = [int(b) for b in np.cumsum([0] + [len(c) for c in np.array_split(np.arange(numel), size)])]
        lo, hi = bounds[rank], bounds[rank + 1]

    arrays: Dict[str, np.ndarray] = {}
    if params is not None:
        arrays["params"] = flat.read(flat.params, lo, hi)
    optimizer_meta = None
    if opt is not None:
        if kind == "sharded":
            inner = opt.optimizer
            for k in inner.state_keys:
                arrays[f"state.{k}"] = inner.state[0][k][:hi - lo].copy()
            steps = [inner.steps[0]] * len(opt.params)
        else:
            of = _Flat(opt.params)
            for k in opt.state_keys:
                arrays[f"state.{k}"] = of.read([s[k] for s in opt.state], lo, hi)
            steps = list(opt.steps)
            inner = opt
        optimizer_meta = {
            "class": type(inner).__name__,
            "hyperparameters": _jsonable(inner.defaults),
            "state_keys": list(inner.state_keys),
            "steps": [int(s) for s in steps],
        }

    os.makedirs(path, exist_ok=True)
    generation = _generation(comm)
    name = f"shard-{generation}-{rank:05d}-of-{size:05d}.npz"
    data = _npz_bytes(arrays)
    _atomic_write(os.path.join(path, name), data)
    digest = hashlib.sha256(data).digest()
    record = np.frombuffer(digest + np.array([lo, hi, len(data)], dtype=np.int64).tobytes(), dtype=np.uint8)
    records = comm.allgather(record) if comm is not None else record
    records = records.reshape(size, -1)

    if rank == 0:
        shards = []
        for r in range(size):
            rec = records[r].tobytes()
            s_lo, s_hi, nbytes = (int(v) for v in np.frombuffer(rec[32:], dtype=np.int64))
            shards.append({"file": f"shard-{generation}-{r:05d}-of-{size:05d}.npz", "start": s_lo,
                           "stop": s_hi, "bytes": nbytes, "sha256": rec[:32].hex()})
        manifest = {
            "format": FORMAT, "version": VERSION, "generation": generation, "world_size": size,
            "numel": numel, "dtype": flat.dtype.str if params is not None else _Flat(opt.params).dtype.str,
            "param_shapes": [list(p.shape) for p in flat.params] if params is not None else None,
            "optimizer": optimizer_meta, "extra": extra, "shards": shards,
        }
        _write_manifest(path, manifest)
    if comm is not None:
        comm.barrier()  # nobody returns before the commit
    if rank == 0:
        _remove_stale(path, generation)


def _generation(comm: Any) -> str:
    token = np.frombuffer(os.urandom(8), dtype=np.uint8).copy()
    if comm is not None:
        comm.broadcast(token, root=0)
    return token.tobytes().hex()


def _write_manifest(path: str, manifest: Dict[str, Any]) -> None:
    _atomic_write(os.path.join(path, MANIFEST), json.dumps(manifest, indent=1).encode())


def _remove_stale(path: str, generation: str) -> None:
    for entry in os.listdir(path):
        m = _SHARD_RE.match(entry)
        stale_tmp = ".npz.tmp-" in entry or entry.startswith(MANIFEST + ".tmp-")
        if (m and m.group(1) != generation) or stale_tmp:
            try:
                os.remove(os.path.join(path, entry))
            except OSError:
                pass


# ---- load ------------------------------------------------------------------------------


def _read_manifest(path: str) -> Dict[str, Any]:
    mpath = os.path.join(path, MANIFEST)
    try:
        with open(mpath, "rb") as f:
            manifest = json.loads(f.read())
    except FileNotFoundError:
        raise CheckpointError(f"no checkpoint at {path!r}: {mpath} is missing") from None
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"cannot read checkpoint manifest {mpath}: {exc}") from exc
    if manifest.get("format") != FORMAT or manifest.get("version") != VERSION:
        raise CheckpointError(f"{mpath} is not a distml checkpoint manifest of version {VERSION}")
    return manifest


def _read_shard(path: str, shard: Dict[str, Any]) -> Dict[str, np.ndarray]:
    fpath = os.path.join(path, shard["file"])
    try:
        with open(fpath, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint shard {fpath} is missing") from None
    except OSError as exc:
        raise CheckpointError(f"cannot read checkpoint shard {fpath}: {exc}") from exc
    if len(data) != shard["bytes"] or hashlib.sha256(data).hexdigest() != shard["sha256"]:
        raise CheckpointError(f"checkpoint shard {fpath} is corrupted (size or sha256 differs from the manifest)")
    with np.load(io.BytesIO(data), allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def load(path: str, params: Optional[Sequence[np.ndarray]] = None, optimizer: Any = None) -> Dict[str, Any]:
    """Loads a checkpoint written by :func:`save`, at any number of ranks.

    Args:
        path: the checkpoint directory.
        params: arrays to fill (same shapes as saved), in place.
        optimizer: optimizer whose state to restore: same class and
            parameter sizes as saved; plain, Distributed or Sharded, at any
            number of ranks (a ShardedOptimizer takes its own shard). For a
            ShardedOptimizer whose ``params`` are not passed, its parameters
            are loaded too.

    Returns:
        The manifest (``manifest["extra"]`` holds what ``save`` got as
        ``extra``).

    Raises:
        CheckpointError: missing manifest or shard file, a checksum
            mismatch (the message names the file), or a checkpoint that does
            not fit ``params``/``optimizer``.

    Does not communicate; call it on every rank that needs the state.
    """
    manifest = _read_manifest(path)
    numel = int(manifest["numel"])
    dtype = np.dtype(manifest["dtype"])
    shards = sorted(manifest["shards"], key=lambda s: s["start"])
    contents = [_read_shard(path, s) for s in shards]  # verifies every file first
    covered = 0
    for s in shards:
        if s["start"] != covered and s["stop"] > s["start"]:
            raise CheckpointError(f"checkpoint {path!r}: shards leave a gap at element {covered}")
        covered = max(covered, s["stop"])
    if covered != numel:
        raise CheckpointError(f"checkpoint {path!r}: shards cover {covered} of {numel} elements")

    def gather(key: str, lo: int, hi: int) -> np.ndarray:
        out = np.empty(hi - lo, dtype=dtype)
        for s, c in zip(shards, contents):
            a0, a1 = max(lo, s["start"]), min(hi, s["stop"])
            if a0 < a1:
                if key not in c:
                    raise CheckpointError(f"checkpoint shard {os.path.join(path, s['file'])} has no {key!r}")
                out[a0 - lo:a1 - lo] = c[key][a0 - s["start"]:a1 - s["start"]]
        return out

    kind, opt = _unwrap(optimizer) if optimizer is not None else (None, None)
    if kind == "sharded" and params is None:
        params = opt.params
    if params is not None:
        flat = _Flat(params)
        shapes = manifest.get("param_shapes")
        if shapes is None:
            raise CheckpointError(f"checkpoint {path!r} holds no parameters")
        if [list(p.shape) for p in flat.params] != shapes:
            raise CheckpointError(f"checkpoint {path!r} has parameter shapes {shapes}, "
                                  f"got {[list(p.shape) for p in flat.params]}")
        flat.write(flat.params, gather("params", 0, numel))
        if kind == "sharded":
            opt.load_parameters()

    if opt is not None:
        meta = manifest.get("optimizer")
        if meta is None:
            raise CheckpointError(f"checkpoint {path!r} holds no optimizer state")
        inner = opt.optimizer if kind == "sharded" else opt
        if meta["class"] != type(inner).__name__ or list(meta["state_keys"]) != list(inner.state_keys):
            raise CheckpointError(f"checkpoint {path!r} holds state of {meta['class']} with keys "
                                  f"{meta['state_keys']}, not of {type(inner).__name__} with {list(inner.state_keys)}")
        steps = [int(s) for s in meta["steps"]]
        hyper = _from_json_hyper(meta["hyperparameters"])
        if kind == "sharded":
            if opt.numel != numel:
                raise CheckpointError(f"checkpoint {path!r} has {numel} elements, the optimizer {opt.numel}")
            if len(set(steps)) > 1:
                raise CheckpointError(f"checkpoint {path!r} has unequal step counts per parameter {steps}; "
                                      "a sharded optimizer keeps one")
            lo, hi = min(opt.start, numel), min(opt.stop, numel)
            state = []
            for k in inner.state_keys:
                a = np.zeros(opt.shard_size, dtype=inner.state[0][k].dtype)
                a[:hi - lo] = gather(f"state.{k}", lo, hi)
                state.append((k, a))
            inner.load_state_dict({"hyperparameters": hyper, "steps": steps[:1] or [0],
                                   "state": [dict(state)]})
        else:
            of = _Flat(opt.params)
            if of.numel != numel or len(steps) != len(opt.params):
                raise CheckpointError(f"checkpoint {path!r} does not fit the optimizer's parameters")
            per_param: List[Dict[str, np.ndarray]] = [{} for _ in opt.params]
            for k in inner.state_keys:
                full = gather(f"state.{k}", 0, numel)
                for d, p, o, n in zip(per_param, opt.params, of.offsets, of.sizes):
                    d[k] = full[o:o + n].reshape(p.shape)
            inner.load_state_dict({"hyperparameters": hyper, "steps": steps, "state": per_param})
    return manifest

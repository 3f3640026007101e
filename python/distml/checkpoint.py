"""Sharded, atomic checkpoints that load at any number of ranks.

Layout of a checkpoint directory::

    manifest.json                         the commit record (written last)
    shard-<generation>-<rank>-of-<P>.npz  one file per rank of the save

What is saved lives in one *flat element space*: the parameters concatenated
in order (``numel`` elements), and for each element-wise optimizer state key
(``exp_avg``, ...) a vector of the same length. Rank r of a save writes the
elements ``[start, stop)`` it is responsible for: the shard it owns for a
:class:`distml.ShardedOptimizer`, otherwise part r of ``numpy.array_split``
of the range (computed arithmetically: nothing of size ``numel`` is ever
allocated for bookkeeping). No data is gathered to any rank, and a shard is
streamed into its file, so a save needs memory of the order of one shard.
Step counts and hyperparameters are small and go into the manifest.

Atomicity. A save writes files of a fresh *generation* (a random token rank 0
draws), so it never touches the files the current manifest names. Each file
is written to a temporary name, fsync'ed and renamed into place. Only after
every rank has finished its file does rank 0 write ``manifest.json`` the same
way (temporary file, fsync, ``os.replace``, fsync of the directory). The
rename of the manifest is the commit point: a crash at any moment before it
leaves the previous manifest and the files it names intact, so the previous
checkpoint still loads. Files of older generations are removed after the
commit.

Failing together. A save or load on a communicator runs in phases, and each
phase ends with an *agreement round*: one small allgather in which every
rank reports whether its part of the phase succeeded, with its error message
if not. A rank that fails (disk full, no permission, a file it cannot read)
therefore never leaves the others waiting for it: every rank learns of the
failure in the same round and raises :class:`CheckpointError` naming the
first failed rank and its error. The phases of a save are: preparing the
shard (and drawing the generation), writing the shard files, and rank 0's
commit; a failed save removes the new generation's files and leaves the
previous checkpoint as it was. The phases of a load are: reading the
manifest and verifying every file (nothing is modified before all ranks
have verified), and copying the data in.

Loading reads the manifest, checks every file's size and sha256 (a missing
or corrupted file raises :class:`CheckpointError` naming it), and takes from
the files whatever ranges this rank needs: all of the parameters, and the
optimizer state of its own shard (sharded) or all of it (replicated). That
is how a checkpoint saved by P ranks loads at Q ranks, 1 included. Data is
copied from each file straight into its destination, one shard at a time.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import zipfile
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from ._agree import agree
from ._errors import DistmlError
from ._partition import split_range

__all__ = ["save", "load", "CheckpointError", "MANIFEST"]

MANIFEST = "manifest.json"
FORMAT = "distml-checkpoint"
VERSION = 1
_SHARD_RE = re.compile(r"^shard-([0-9a-f]+)-\d+-of-\d+\.npz$")
_READ_CHUNK = 1 << 20  # bytes read at a time when verifying a file


class CheckpointError(DistmlError):
    """A checkpoint could not be written or read (on this rank or another), or
    it is missing, incomplete, corrupted or does not fit the parameters and
    optimizer it is loaded into."""


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

    def _overlaps(self, lo: int, hi: int) -> Iterator[Tuple[int, int, int]]:
        """(index, a0, a1): array ``index`` holds elements [a0, a1) of [lo, hi)."""
        for i, (o, n) in enumerate(zip(self.offsets, self.sizes)):
            a0, a1 = max(lo, o), min(hi, o + n)
            if a0 < a1:
                yield i, a0, a1

    def read(self, arrays: Sequence[np.ndarray], lo: int, hi: int) -> np.ndarray:
        """Elements [lo, hi) of the concatenation of ``arrays`` (shaped like
        params): a view when they lie in one contiguous array of the common
        dtype, otherwise a copy."""
        parts = list(self._overlaps(lo, hi))
        if len(parts) == 1:
            i, a0, a1 = parts[0]
            a = arrays[i]
            if a.flags.c_contiguous and a.dtype == self.dtype:
                return a.reshape(-1)[a0 - self.offsets[i]:a1 - self.offsets[i]]
        out = np.empty(hi - lo, dtype=self.dtype)
        for i, a0, a1 in parts:
            o = self.offsets[i]
            out[a0 - lo:a1 - lo] = arrays[i].reshape(-1)[a0 - o:a1 - o]
        return out

    def scatter(self, arrays: Sequence[np.ndarray], lo: int, values: np.ndarray) -> None:
        """Writes ``values``, elements [lo, lo + len(values)) of the flat
        space, into ``arrays`` (shaped like params), in place."""
        for i, a0, a1 in self._overlaps(lo, lo + len(values)):
            a, o = arrays[i], self.offsets[i]
            part = values[a0 - lo:a1 - lo]
            if a.flags.c_contiguous:
                np.copyto(a.reshape(-1)[a0 - o:a1 - o], part, casting="same_kind")
            else:
                a.flat[a0 - o:a1 - o] = part


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


# ---- agreement -------------------------------------------------------------------------


def _end_phase(comm: Any, error: Optional[BaseException], what: str, numbers: Sequence[int] = (),
               keep_type: bool = False) -> np.ndarray:
    """Ends a phase of a save or load on every rank alike.

    One agreement round (:func:`distml._agree.agree`, an allgather of a
    fixed-size record) tells every rank whether the phase failed anywhere
    and hands it every rank's ``numbers`` (the same count on every rank).

    Returns:
        int64 array of shape (ranks, len(numbers)).

    Raises:
        CheckpointError: the phase failed on some rank (this one included),
            naming the first failed rank and its error; or, with
            ``keep_type``, the failed rank's ValueError/TypeError as such
            (argument errors).

    Must be called on all ranks of ``comm`` (none: this process alone).
    """
    if comm is None:
        if error is None:
            return np.array([list(numbers)], dtype=np.int64).reshape(1, len(numbers))
        if (keep_type and isinstance(error, (ValueError, TypeError))) or isinstance(error, CheckpointError):
            raise error
        raise CheckpointError(f"{what} failed: {type(error).__name__}: {error}") from error
    try:
        return agree(comm, error, numbers)
    except (ValueError, TypeError) as exc:
        if keep_type:
            raise
        raise CheckpointError(f"{what} failed: {exc}") from (error or exc)
    except Exception as exc:  # noqa: BLE001 - carried by agree() as its kind
        raise CheckpointError(f"{what} failed: {exc}") from (error or exc)


def _int64s(data: bytes) -> List[int]:
    return [int(v) for v in np.frombuffer(data, dtype=np.int64)]


def _bytes_of(values: np.ndarray) -> bytes:
    return np.ascontiguousarray(values, dtype=np.int64).tobytes()


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


def _remove(path: Optional[str]) -> None:
    if path is not None:
        try:
            os.remove(path)
        except OSError:
            pass


def _write_atomically(path: str, write: Any) -> Any:
    """Calls ``write(file)`` on a temporary file beside ``path``, fsyncs it and
    renames it to ``path``; returns what ``write`` returned. On any error the
    temporary file is removed and ``path`` is untouched."""
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            result = write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        _remove(tmp)
        raise
    _fsync_dir(os.path.dirname(path) or ".")
    return result


class _HashingWriter:
    """A write-only stream over a file that hashes what passes through it.

    It has no ``seek``, so zipfile writes the archive
    strictly front to back, and the digest is that of the file's bytes."""

    def __init__(self, f: Any) -> None:
        self._f = f
        self.sha256 = hashlib.sha256()
        self.nbytes = 0

    def write(self, data: Any) -> int:
        n = memoryview(data).nbytes
        self._f.write(data)
        self.sha256.update(data)
        self.nbytes += n
        return n

    def tell(self) -> int:
        return self.nbytes

    def flush(self) -> None:
        self._f.flush()


def _write_shard(path: str, arrays: Dict[str, np.ndarray]) -> Tuple[bytes, int]:
    """Streams ``arrays`` into the .npz file ``path`` (atomically); returns its
    sha256 digest and size."""

    def write(f: Any) -> Tuple[bytes, int]:
        w = _HashingWriter(f)
        # What numpy.savez writes, member by member.
        with zipfile.ZipFile(w, mode="w", compression=zipfile.ZIP_STORED, allowZip64=True) as archive:
            for key, a in arrays.items():
                with archive.open(f"{key}.npy", "w", force_zip64=True) as member:
                    np.lib.format.write_array(member, np.asanyarray(a), allow_pickle=False)
        return w.sha256.digest(), w.nbytes

    return _write_atomically(path, write)


def _write_manifest(path: str, manifest: Dict[str, Any]) -> None:
    data = json.dumps(manifest, indent=1).encode()
    _write_atomically(os.path.join(path, MANIFEST), lambda f: f.write(data))


def _shard_name(generation: str, rank: int, size: int) -> str:
    return f"shard-{generation}-{rank:05d}-of-{size:05d}.npz"


def _remove_stale(path: str, generation: str) -> None:
    for entry in os.listdir(path):
        m = _SHARD_RE.match(entry)
        stale_tmp = ".npz.tmp-" in entry or entry.startswith(MANIFEST + ".tmp-")
        if (m and m.group(1) != generation) or stale_tmp:
            _remove(os.path.join(path, entry))


# ---- save ------------------------------------------------------------------------------


def _save_contents(params: Optional[Sequence[np.ndarray]], kind: Optional[str], opt: Any, rank: int,
                   size: int) -> Tuple[Dict[str, np.ndarray], Dict[str, Any]]:
    """This rank's arrays (views where possible) and the manifest fields that
    describe what is saved. Does not communicate."""
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
        lo, hi = split_range(numel, size, rank)

    arrays: Dict[str, np.ndarray] = {}
    if params is not None:
        arrays["params"] = flat.read(flat.params, lo, hi)
    optimizer_meta = None
    if opt is not None:
        if kind == "sharded":
            inner = opt.optimizer
            for k in inner.state_keys:
                arrays[f"state.{k}"] = inner.state[0][k][:hi - lo]
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
    fields = {
        "numel": numel, "start": lo, "stop": hi,
        "dtype": flat.dtype.str if params is not None else _Flat(opt.params).dtype.str,
        "param_shapes": [list(p.shape) for p in flat.params] if params is not None else None,
        "optimizer": optimizer_meta,
    }
    return arrays, fields


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
            optimizer given (raised on every rank if it holds on any).
        TypeError: an optimizer of another kind.
        CheckpointError: writing failed on this or any other rank (disk
            full, no permission, ...), on every rank alike; the message names
            the first rank that failed and its error. The new files are removed
            and the previous checkpoint stays loadable.

    Must be called on all ranks of the communicator.
    """
    if params is None and optimizer is None:
        raise ValueError("save needs params, optimizer or both")
    kind, opt = _unwrap(optimizer) if optimizer is not None else (None, None)
    comm = _comm_of(optimizer, comm)
    rank, size = (comm.rank, comm.size) if comm is not None else (0, 1)

    # Phase 1: what to write; rank 0's random token names the generation.
    error: Optional[BaseException] = None
    arrays: Dict[str, np.ndarray] = {}
    fields: Dict[str, Any] = {}
    try:
        arrays, fields = _save_contents(params, kind, opt, rank, size)
    except Exception as exc:  # noqa: BLE001 - agreed below, then raised on every rank
        error = exc
    token = _end_phase(comm, error, "checkpoint.save", _int64s(os.urandom(8)), keep_type=True)
    generation = _bytes_of(token[0]).hex()

    # Phase 2: every rank writes its shard file.
    what = f"checkpoint.save of {path!r}"
    mine: Optional[str] = None
    record: List[int] = [0] * 7
    try:
        os.makedirs(path, exist_ok=True)
        target = os.path.join(path, _shard_name(generation, rank, size))
        digest, nbytes = _write_shard(target, arrays)
        mine = target
        record = _int64s(digest) + [fields["start"], fields["stop"], nbytes]
    except Exception as exc:  # noqa: BLE001
        error = exc
    try:
        records = _end_phase(comm, error, what, record)
    except CheckpointError:
        _remove(mine)
        raise

    # Phase 3: rank 0 commits; nobody returns before the commit.
    if rank == 0:
        try:
            shards = [{"file": _shard_name(generation, r, size), "start": int(rec[4]), "stop": int(rec[5]),
                       "bytes": int(rec[6]), "sha256": _bytes_of(rec[:4]).hex()} for r, rec in enumerate(records)]
            manifest = {
                "format": FORMAT, "version": VERSION, "generation": generation, "world_size": size,
                "numel": fields["numel"], "dtype": fields["dtype"], "param_shapes": fields["param_shapes"],
                "optimizer": fields["optimizer"], "extra": extra, "shards": shards,
            }
            _write_manifest(path, manifest)
        except Exception as exc:  # noqa: BLE001
            error = exc
    try:
        _end_phase(comm, error, f"{what} (commit)")
    except CheckpointError:
        _remove(mine)
        raise
    if rank == 0:
        _remove_stale(path, generation)


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


def _verify_shard(path: str, shard: Dict[str, Any], keys: Sequence[str]) -> None:
    """Checks a shard file's size and sha256 against the manifest (reading it
    a chunk at a time) and that it holds ``keys``."""
    fpath = os.path.join(path, shard["file"])
    digest = hashlib.sha256()
    nbytes = 0
    chunk = bytearray(_READ_CHUNK)
    try:
        with open(fpath, "rb", buffering=0) as f:
            while True:
                n = f.readinto(chunk)
                if not n:
                    break
                digest.update(memoryview(chunk)[:n])
                nbytes += n
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint shard {fpath} is missing") from None
    except OSError as exc:
        raise CheckpointError(f"cannot read checkpoint shard {fpath}: {exc}") from exc
    if nbytes != shard["bytes"] or digest.hexdigest() != shard["sha256"]:
        raise CheckpointError(f"checkpoint shard {fpath} is corrupted (size or sha256 differs from the manifest)")
    if shard["stop"] > shard["start"]:
        with np.load(fpath, allow_pickle=False) as z:
            missing = [k for k in keys if k not in z.files]
        if missing:
            raise CheckpointError(f"checkpoint shard {fpath} has no {missing[0]!r}")


def _copy_range(path: str, shards: Sequence[Dict[str, Any]], key: str, lo: int, hi: int,
                put: Callable[[int, np.ndarray], None]) -> None:
    """Calls ``put(start, values)`` for the parts of elements [lo, hi) of
    ``key``, read from the shard files that hold them, one file at a time
    (only one file's array is alive at once)."""
    for s in shards:
        a0, a1 = max(lo, s["start"]), min(hi, s["stop"])
        if a0 >= a1:
            continue
        fpath = os.path.join(path, s["file"])
        try:
            with np.load(fpath, allow_pickle=False) as z:
                values = z[key]
        except Exception as exc:  # noqa: BLE001 - the file changed since it was verified
            raise CheckpointError(f"cannot read {key!r} from checkpoint shard {fpath}: {exc}") from exc
        if values.shape != (s["stop"] - s["start"],):
            raise CheckpointError(f"checkpoint shard {fpath} holds {values.shape} elements of {key!r}, "
                                  f"the manifest says {s['stop'] - s['start']}")
        put(a0, values[a0 - s["start"]:a1 - s["start"]])
        del values


def _check_fits(path: str, manifest: Dict[str, Any], params: Optional[Sequence[np.ndarray]],
                kind: Optional[str], opt: Any) -> None:
    """Raises CheckpointError if the checkpoint does not fit the targets."""
    numel = int(manifest["numel"])
    if params is not None:
        flat = _Flat(params)
        shapes = manifest.get("param_shapes")
        if shapes is None:
            raise CheckpointError(f"checkpoint {path!r} holds no parameters")
        if [list(p.shape) for p in flat.params] != shapes:
            raise CheckpointError(f"checkpoint {path!r} has parameter shapes {shapes}, "
                                  f"got {[list(p.shape) for p in flat.params]}")
    if opt is None:
        return
    meta = manifest.get("optimizer")
    if meta is None:
        raise CheckpointError(f"checkpoint {path!r} holds no optimizer state")
    inner = opt.optimizer if kind == "sharded" else opt
    if meta["class"] != type(inner).__name__ or list(meta["state_keys"]) != list(inner.state_keys):
        raise CheckpointError(f"checkpoint {path!r} holds state of {meta['class']} with keys "
                              f"{meta['state_keys']}, not of {type(inner).__name__} with {list(inner.state_keys)}")
    steps = [int(s) for s in meta["steps"]]
    if kind == "sharded":
        if opt.numel != numel:
            raise CheckpointError(f"checkpoint {path!r} has {numel} elements, the optimizer {opt.numel}")
        if len(set(steps)) > 1:
            raise CheckpointError(f"checkpoint {path!r} has unequal step counts per parameter {steps}; "
                                  "a sharded optimizer keeps one")
    elif _Flat(opt.params).numel != numel or len(steps) != len(opt.params):
        raise CheckpointError(f"checkpoint {path!r} does not fit the optimizer's parameters")


def _verify(path: str, params: Optional[Sequence[np.ndarray]], kind: Optional[str], opt: Any
            ) -> Tuple[Dict[str, Any], List[Dict[str, Any]]]:
    """The manifest and its shards (by start), once everything this load will
    read is verified and fits the targets. Modifies nothing."""
    manifest = _read_manifest(path)
    numel = int(manifest["numel"])
    shards = sorted(manifest["shards"], key=lambda s: s["start"])
    covered = 0
    for s in shards:
        if s["start"] != covered and s["stop"] > s["start"]:
            raise CheckpointError(f"checkpoint {path!r}: shards leave a gap at element {covered}")
        covered = max(covered, s["stop"])
    if covered != numel:
        raise CheckpointError(f"checkpoint {path!r}: shards cover {covered} of {numel} elements")
    _check_fits(path, manifest, params, kind, opt)
    keys = (["params"] if params is not None else []) + \
        ([f"state.{k}" for k in manifest["optimizer"]["state_keys"]] if opt is not None else [])
    for s in shards:
        _verify_shard(path, s, keys)
    return manifest, shards


def _apply(path: str, manifest: Dict[str, Any], shards: List[Dict[str, Any]],
           params: Optional[Sequence[np.ndarray]], kind: Optional[str], opt: Any) -> None:
    """Copies the verified checkpoint into ``params`` and ``opt``."""
    numel = int(manifest["numel"])
    load_state = None
    if opt is not None:
        meta = manifest["optimizer"]
        steps = [int(s) for s in meta["steps"]]
        hyper = _from_json_hyper(meta["hyperparameters"])
        if kind == "sharded":
            inner = opt.optimizer
            lo, hi = min(opt.start, numel), min(opt.stop, numel)
            state = {}
            for k in inner.state_keys:
                a = np.zeros(opt.shard_size, dtype=inner.state[0][k].dtype)

                def put(a0: int, values: np.ndarray, a: np.ndarray = a) -> None:
                    a[a0 - lo:a0 - lo + len(values)] = values

                _copy_range(path, shards, f"state.{k}", lo, hi, put)
                state[k] = a
            load_state = (inner, {"hyperparameters": hyper, "steps": steps[:1] or [0], "state": [state]})
        else:
            of = _Flat(opt.params)
            per_param: List[Dict[str, np.ndarray]] = [{} for _ in opt.params]
            for k in opt.state_keys:
                arrays = [np.empty(p.shape, dtype=s[k].dtype) for p, s in zip(opt.params, opt.state)]
                _copy_range(path, shards, f"state.{k}", 0, numel,
                            lambda a0, values, arrays=arrays: of.scatter(arrays, a0, values))
                for d, a in zip(per_param, arrays):
                    d[k] = a
            load_state = (opt, {"hyperparameters": hyper, "steps": steps, "state": per_param})
    if params is not None:
        flat = _Flat(params)
        _copy_range(path, shards, "params", 0, numel, lambda a0, values: flat.scatter(flat.params, a0, values))
        if kind == "sharded":
            opt.load_parameters()
    if load_state is not None:
        target, state_dict = load_state
        target.load_state_dict(state_dict)


def load(path: str, params: Optional[Sequence[np.ndarray]] = None, optimizer: Any = None,
         comm: Any = None) -> Dict[str, Any]:
    """Loads a checkpoint written by :func:`save`, at any number of ranks.

    Args:
        path: the checkpoint directory.
        params: arrays to fill (same shapes as saved), in place.
        optimizer: optimizer whose state to restore: same class and
            parameter sizes as saved; plain, Distributed or Sharded, at any
            number of ranks (a ShardedOptimizer takes its own shard). For a
            ShardedOptimizer whose ``params`` are not passed, its parameters
            are loaded too.
        comm: the ranks that load together (default: the optimizer's, for a
            DistributedOptimizer or ShardedOptimizer; otherwise none, and
            this process loads alone).

    Returns:
        The manifest (``manifest["extra"]`` holds what ``save`` got as
        ``extra``).

    Raises:
        CheckpointError: on every rank of the communicator alike, if on any
            of them the manifest or a shard file is missing or unreadable, a
            checksum does not match (the message names the file), or the
            checkpoint does not fit ``params``/``optimizer``. Nothing is
            modified on any rank unless every rank has verified the files;
            only a file that changes after that can leave the targets
            partly loaded (and still raises everywhere).
        ValueError: ``params`` of mixed dtypes.

    With a communicator, must be called on all of its ranks (each reads the
    files itself; the ranks only agree on the outcome).
    """
    kind, opt = _unwrap(optimizer) if optimizer is not None else (None, None)
    comm = _comm_of(optimizer, comm)
    if kind == "sharded" and params is None:
        params = opt.params
    error: Optional[BaseException] = None
    manifest: Dict[str, Any] = {}
    shards: List[Dict[str, Any]] = []
    try:
        manifest, shards = _verify(path, params, kind, opt)
    except Exception as exc:  # noqa: BLE001 - agreed below, then raised on every rank
        error = exc
    _end_phase(comm, error, f"checkpoint.load of {path!r}", keep_type=True)
    try:
        _apply(path, manifest, shards, params, kind, opt)
    except Exception as exc:  # noqa: BLE001
        error = exc
    _end_phase(comm, error, f"checkpoint.load of {path!r}")
    return manifest

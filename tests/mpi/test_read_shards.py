"""distml.data.read_shards at any world size.

Files are written by rank 0 into a temporary directory every rank reads. They
are read through "countfs://", a local file system registered with fsspec
that counts, per process, every open and every byte read, so the tests can
check which files each rank touched and how much of them it read:
- many files: each rank opens exactly its own files, once each, the ranks'
  files are disjoint and cover the listing, and the ranks' rows concatenated
  in rank order are all rows in listing order;
- one or two large Parquet files (fewer files than ranks): the rows are
  still covered exactly once and in order, and each rank reads its own row
  groups plus at most 256 KiB of footer and page headers, far less than the
  files (each row group is about 320 KiB), so no rank reads the whole file.
"""

from __future__ import annotations

import collections
import os
import shutil
import sys
import tempfile

import numpy as np
import pytest

import distml
from distml.data import read_shards
from mpi_helpers import Checker, call

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")
fsspec = pytest.importorskip("fsspec")
from fsspec.implementations.local import LocalFileSystem  # noqa: E402


class CountingFS(LocalFileSystem):
    """The local file system, counting opens and bytes read per path."""

    protocol = "countfs"
    opens: collections.Counter = collections.Counter()
    bytes_read: collections.Counter = collections.Counter()

    def _open(self, path, mode="rb", **kwargs):
        f = super()._open(path, mode, **kwargs)
        path = self._strip_protocol(path)
        CountingFS.opens[path] += 1
        read, readinto = f.read, getattr(f, "readinto", None)

        def counted_read(*args):
            data = read(*args)
            CountingFS.bytes_read[path] += len(data)
            return data

        def counted_readinto(buffer):
            n = readinto(buffer)
            CountingFS.bytes_read[path] += n or 0
            return n

        f.read = counted_read
        if readinto is not None:
            f.readinto = counted_readinto
        return f

    @classmethod
    def reset(cls):
        cls.opens.clear()
        cls.bytes_read.clear()


fsspec.register_implementation("countfs", CountingFS, clobber=True)


@pytest.fixture(scope="module")
def shared_dir(world):
    path = tempfile.mkdtemp(prefix="distml-shards-") if world.rank == 0 else None
    path = world.bcast(path, root=0)
    yield path
    world.barrier()
    if world.rank == 0:
        shutil.rmtree(path, ignore_errors=True)


def _write(world, fn):
    """Runs ``fn`` on rank 0 and waits for it on every rank."""
    if world.rank == 0:
        fn()
    world.barrier()


def _npy_files(seed=0, count=7):
    rng = np.random.default_rng(seed)
    # Uneven row counts (one file empty) so that the byte split is uneven too.
    rows = [0] + [int(r) for r in rng.integers(5, 60, size=count - 1)]
    return [rng.normal(size=(r, 3)) for r in rows]


def _gather_rows(world, rows):
    return world.allgather(rows)


def test_npy_files_each_rank_opens_only_its_own(world, comm_default, shared_dir):
    comm = comm_default
    arrays = _npy_files()
    folder = os.path.join(shared_dir, "npy")

    def write():
        os.makedirs(folder)
        for i, a in enumerate(arrays):
            np.save(os.path.join(folder, f"part-{i:03d}.npy"), a)

    _write(world, write)
    CountingFS.reset()
    got = call(lambda: read_shards(f"countfs://{folder}/part-*.npy", comm=comm, split="files"))
    opened = dict(CountingFS.opens)
    everyone = world.allgather((got if isinstance(got, np.ndarray) else None, opened))

    check = Checker(comm.size)
    check.expect_true("read", not isinstance(got, BaseException) or got)
    names = [os.path.join(folder, f"part-{i:03d}.npy") for i in range(len(arrays))]
    check.expect_true(f"each file opened at most once here ({opened})", all(v == 1 for v in opened.values()))
    owners = collections.Counter(p for _, o in everyone for p in o)
    check.expect_true(f"files opened by exactly one rank each ({owners})",
                      sorted(owners) == sorted(names) and set(owners.values()) == {1})
    if all(isinstance(r, np.ndarray) for r, _ in everyone):
        check.expect("rows of all ranks in rank order", np.concatenate([r for r, _ in everyone]),
                     np.concatenate(arrays), mode="bits")
        # The files this rank opened are exactly the ones whose rows it returned.
        mine = [i for i, n in enumerate(names) if n in opened]
        check.expect("this rank's rows are its files' rows", got,
                     np.concatenate([arrays[i] for i in mine]) if mine else np.empty((0, 3)), mode="bits")
    check.verify()


def _parquet_table(rows, seed):
    rng = np.random.default_rng(seed)
    return pa.table({"x0": rng.normal(size=rows), "x1": rng.normal(size=rows),
                     "id": np.arange(rows, dtype=np.int64) + 1000 * seed})


@pytest.mark.parametrize("files", [1, 2])
def test_few_parquet_files_split_by_row_groups(world, comm_default, shared_dir, files):
    comm = comm_default
    group_rows = 20000  # ~320 KiB per row group of two float64 and one int64 column
    tables = [_parquet_table(8 * group_rows, seed) for seed in range(files)]
    folder = os.path.join(shared_dir, f"parquet{files}")

    def write():
        os.makedirs(folder)
        for i, t in enumerate(tables):
            pq.write_table(t, os.path.join(folder, f"big-{i}.parquet"), row_group_size=group_rows,
                           compression="none", use_dictionary=False)

    _write(world, write)
    CountingFS.reset()
    got = call(lambda: read_shards(f"countfs://{folder}", comm=comm))
    read = dict(CountingFS.bytes_read)
    opened = dict(CountingFS.opens)
    everyone = world.allgather(got.column("id").to_numpy() if not isinstance(got, BaseException) else None)

    check = Checker(comm.size)
    check.expect_true("read", not isinstance(got, BaseException) or got)
    if not isinstance(got, BaseException):
        check.expect_true(f"columns {got.column_names}", got.column_names == ["x0", "x1", "id"])
        ids = np.concatenate([t.column("id").to_numpy() for t in tables])
        if all(e is not None for e in everyone):
            check.expect("ids of all ranks in rank order", np.concatenate(everyone), ids)
        # Whole row groups only: this rank's rows are row groups of the files.
        mine = got.column("id").to_numpy()
        check.expect_true("whole row groups", mine.size % group_rows == 0)
        own_bytes = mine.size * 24
        for path, n in read.items():
            check.expect_true(f"{os.path.basename(path)} opened once here", opened[path] == 1)
        total = sum(read.values())
        check.expect_true(f"read {total} bytes for {own_bytes} bytes of own row groups",
                          total <= own_bytes + (256 << 10))
        if comm.size > 1:
            size = sum(os.path.getsize(os.path.join(folder, f)) for f in os.listdir(folder))
            check.expect_true("no rank reads every file whole", total < size)
    check.verify()


def test_parquet_columns_and_many_files(world, comm_default, shared_dir):
    comm = comm_default
    tables = [_parquet_table(50 + 13 * i, 10 + i) for i in range(9)]
    folder = os.path.join(shared_dir, "many")

    def write():
        os.makedirs(folder)
        for i, t in enumerate(tables):
            pq.write_table(t, os.path.join(folder, f"part-{i}.parquet"), row_group_size=20)

    _write(world, write)
    got = call(lambda: read_shards([f"{folder}/part-[0-4].parquet", f"{folder}/part-[5-8].parquet"],
                                   comm=comm, columns=["id"]))
    everyone = world.allgather(got.column("id").to_numpy() if not isinstance(got, BaseException) else None)
    check = Checker(comm.size)
    check.expect_true("read", not isinstance(got, BaseException) or got)
    if not isinstance(got, BaseException):
        check.expect_true(f"only the column asked for ({got.column_names})", got.column_names == ["id"])
        if all(e is not None for e in everyone):
            check.expect("ids in listing order", np.concatenate(everyone),
                         np.concatenate([t.column("id").to_numpy() for t in tables]))
    check.verify()


def test_any_size_without_communication(world, shared_dir):
    """With rank and size given, each call reads alone; over every rank of a
    size the rows come out exactly once, in order, for sizes 1 to 9 (more
    ranks than files included: those ranks get empty arrays of the right
    dtype and shape)."""
    arrays = _npy_files(seed=5, count=5)
    arrays.append(np.arange(3000.0).reshape(1000, 3))  # one large file, split by rows
    folder = os.path.join(shared_dir, f"local-{world.rank}")
    os.makedirs(folder)
    for i, a in enumerate(arrays):
        np.save(os.path.join(folder, f"f{i}.npy"), a)
    # Four files of equal size: at 2, 4 and 8 ranks file midpoints fall exactly
    # on range boundaries, where a unit must still go to one rank only.
    equal = os.path.join(shared_dir, f"equal-{world.rank}")
    os.makedirs(equal)
    for i in range(4):
        np.save(os.path.join(equal, f"e{i}.npy"), np.full((6, 3), float(i)))
    check = Checker(world.size)
    for size in (2, 4, 8):
        parts = [read_shards(os.path.join(equal, "*.npy"), rank=r, size=size, split="files") for r in range(size)]
        check.expect(f"equal files, size {size}", np.concatenate(parts),
                     np.repeat(np.arange(4.0), 6)[:, None] * np.ones(3), mode="bits")
    everything = np.concatenate(arrays)
    for split in ("files", "rows", "auto"):
        for size in range(1, 10):
            parts = [read_shards(os.path.join(folder, "*.npy"), rank=r, size=size, split=split) for r in range(size)]
            check.expect(f"{split} size {size}", np.concatenate(parts), everything, mode="bits")
            check.expect_true(f"{split} size {size}: shapes", all(p.ndim == 2 and p.shape[1] == 3 for p in parts))
    check.verify()


def test_listing_mismatch_and_missing_files_raise_everywhere(world, comm_default, shared_dir):
    comm = comm_default
    folder = os.path.join(shared_dir, "mismatch")

    def write():
        os.makedirs(folder)
        for i in range(3):
            np.save(os.path.join(folder, f"p{i}.npy"), np.full((4, 2), float(i)))

    _write(world, write)
    last = comm.size - 1
    pattern = f"{folder}/p[0-1].npy" if comm.rank == last and comm.size > 1 else f"{folder}/p*.npy"
    mismatch = call(lambda: read_shards(pattern, comm=comm))
    missing = call(lambda: read_shards(f"{folder}/nothing-{comm.rank == 0}*.npy" if comm.rank == 0
                                       else f"{folder}/p*.npy", comm=comm))
    after = call(lambda: read_shards(f"{folder}/p*.npy", comm=comm))
    check = Checker(comm.size)
    if comm.size > 1:
        check.expect_raises("ranks list different files", mismatch, distml.MismatchError)
    check.expect_raises("no file matches on rank 0", missing, FileNotFoundError)
    check.expect_true("usable afterwards", isinstance(after, np.ndarray))
    check.verify()


def test_missing_pyarrow_names_the_extra(world, shared_dir, monkeypatch):
    folder = os.path.join(shared_dir, f"nopa-{world.rank}")
    os.makedirs(folder)
    pq.write_table(_parquet_table(10, 0), os.path.join(folder, "a.parquet"))
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    got = call(lambda: read_shards(os.path.join(folder, "*.parquet"), rank=0, size=1))
    monkeypatch.undo()
    check = Checker(world.size)
    check.expect_raises("ImportError", got, ImportError)
    check.expect_true(f"message names distml[ml] ({got})", "distml[ml]" in str(got))
    check.verify()

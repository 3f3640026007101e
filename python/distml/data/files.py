"""Sharded files: every rank reads its share of a set of .npy or Parquet
files (local or through fsspec), split by bytes so that ranks read about as
much each, at any world size."""

from __future__ import annotations

import glob as _glob
import os
import zlib
from typing import Any, List, Optional, Sequence, Tuple

import numpy as np


_NPY = ".npy"
_PARQUET = (".parquet", ".pq")


def _need_fsspec() -> Any:
    try:
        import fsspec
    except ImportError:
        raise ImportError("read_shards needs fsspec: pip install 'distml[ml]'") from None
    return fsspec


def _need_pyarrow() -> Tuple[Any, Any]:
    try:
        import pyarrow
        import pyarrow.parquet
    except ImportError:
        raise ImportError("reading Parquet needs pyarrow: pip install 'distml[ml]'") from None
    return pyarrow, pyarrow.parquet


def _format_of(path: str) -> str:
    lower = path.lower()
    if lower.endswith(_NPY):
        return "npy"
    if lower.endswith(_PARQUET):
        return "parquet"
    raise ValueError(f"{path}: unknown file type (read_shards reads .npy and .parquet/.pq files)")


def _list_files(paths_or_glob: Any, storage_options: Optional[dict]) -> Tuple[Any, List[Tuple[str, int]]]:
    """(file system, [(path, size)]) in listing order: each pattern's matches
    sorted by path, patterns in the order given; directories stand for the
    .npy/.parquet files below them."""
    fsspec = _need_fsspec()
    if isinstance(paths_or_glob, (str, os.PathLike)):
        patterns = [os.fspath(paths_or_glob)]
    else:
        patterns = [os.fspath(p) for p in paths_or_glob]
    if not patterns:
        raise ValueError("read_shards needs at least one path or pattern")
    fs, files = None, []
    for pattern in patterns:
        pattern_fs, path = fsspec.core.url_to_fs(pattern, **(storage_options or {}))
        if fs is None:
            fs = pattern_fs
        elif pattern_fs.protocol != fs.protocol:
            raise ValueError(f"all paths must be on one file system; {pattern!r} is not on {fs.protocol!r}")
        if _glob.has_magic(path):
            found = pattern_fs.glob(path, detail=True)
            entries = [(p, info) for p, info in found.items() if info.get("type") != "directory"]
        else:
            info = pattern_fs.info(path)
            if info.get("type") == "directory":
                below = pattern_fs.find(path, detail=True)
                entries = [(p, i) for p, i in below.items() if p.lower().endswith((_NPY,) + _PARQUET)]
            else:
                entries = [(info["name"], info)]
        if not entries:
            raise FileNotFoundError(f"{pattern} matches no files")
        files += sorted((p, int(info.get("size") or 0)) for p, info in entries)
    seen = set()
    for p, _ in files:
        if p in seen:
            raise ValueError(f"{p} is listed more than once; every file must appear once")
        seen.add(p)
    return fs, files


def _byte_range(sizes: Sequence[int], rank: int, size: int) -> Tuple[int, int]:
    total = int(sum(sizes))
    return (rank * total) // size, ((rank + 1) * total) // size


def _owns(mid2: int, lo: int, hi: int) -> bool:
    """Whether a unit with midpoint ``mid2 / 2`` lies in [lo, hi)."""
    return 2 * lo <= mid2 < 2 * hi


def _read_npy_header(f: Any) -> Tuple[tuple, bool, np.dtype, int]:
    fmt = np.lib.format
    version = fmt.read_magic(f)
    if version == (1, 0):
        shape, fortran, dtype = fmt.read_array_header_1_0(f)
    elif version == (2, 0):
        shape, fortran, dtype = fmt.read_array_header_2_0(f)
    else:
        raise ValueError(f".npy format version {version} is not supported (1.0 and 2.0 are)")
    if dtype.hasobject:
        raise ValueError(".npy files of Python objects are not supported")
    if len(shape) == 0:
        raise ValueError(".npy files must hold arrays of at least one dimension (rows)")
    return tuple(shape), bool(fortran), dtype, f.tell()


def _read_npy(f: Any, base: int, lo: int, hi: int, whole: bool) -> Tuple[np.ndarray, tuple, np.dtype]:
    """This rank's rows of the .npy file ``f`` starting at global byte
    ``base``: all of them if ``whole``, else the rows whose midpoints lie in
    [lo, hi). Returns (rows, shape of the file's array, dtype)."""
    shape, fortran, dtype, start = _read_npy_header(f)
    n = shape[0]
    row_bytes = int(np.prod(shape[1:], dtype=np.int64)) * dtype.itemsize
    if not whole and (row_bytes == 0 or (fortran and len(shape) > 1)):
        # Rows are not contiguous (or empty): the file is one unit.
        f.seek(0, 2)
        whole = _owns(2 * base + f.tell(), lo, hi)
        if not whole:
            return np.empty((0,) + shape[1:], dtype=dtype), shape, dtype
    if whole:
        first, last = 0, n
    else:
        # Row i's midpoint (doubled): 2 (base + start) + (2 i + 1) row_bytes.
        origin = 2 * (base + start) + row_bytes
        first = max(0, -((origin - 2 * lo) // (2 * row_bytes)))
        last = min(n, -((origin - 2 * hi) // (2 * row_bytes)))
        last = max(first, last)
    count = last - first
    if fortran and len(shape) > 1:
        f.seek(start)
        data = f.read(int(np.prod(shape, dtype=np.int64)) * dtype.itemsize)
        rows = np.frombuffer(data, dtype=dtype).reshape(shape, order="F")
    else:
        f.seek(start + first * row_bytes)
        data = f.read(count * row_bytes)
        if len(data) != count * row_bytes:
            raise ValueError(f"truncated .npy file: expected {count * row_bytes} bytes of rows, got {len(data)}")
        rows = np.frombuffer(data, dtype=dtype).reshape((count,) + shape[1:])
    return rows, shape, dtype


def _row_group_mid2(meta: Any, i: int, base: int) -> int:
    group = meta.row_group(i)
    starts, length = [], 0
    for j in range(group.num_columns):
        column = group.column(j)
        start = column.data_page_offset
        if column.has_dictionary_page and column.dictionary_page_offset:
            start = min(start, column.dictionary_page_offset)
        starts.append(start)
        length += column.total_compressed_size
    return 2 * (base + min(starts)) + length


def read_shards(paths_or_glob: Any, rank: Optional[int] = None, size: Optional[int] = None, comm: Any = None, *,
                split: str = "auto", columns: Optional[Sequence[str]] = None,
                storage_options: Optional[dict] = None) -> Any:
    """Reads this rank's share of a set of .npy or Parquet files.

    The files (the expansion of ``paths_or_glob``, through fsspec, so URLs
    such as ``s3://bucket/part-*.parquet`` work where their file system is
    installed) are laid end to end in listing order and split into ``size``
    byte ranges of equal length; rank r gets the data whose midpoint lies in
    range r. With ``split="files"`` the units are whole files: a rank opens
    only its own files. With ``split="rows"`` the units are Parquet row
    groups and .npy rows, so a few large files spread over many ranks: a rank
    opens only the files that overlap its range (reading their header or
    footer) and reads only its row groups or rows. ``"auto"`` (default)
    splits by files when there are at least as many files as ranks, else by
    rows.

    The assignment is a function of the listing (names and sizes) and
    ``size`` only: every row is read by exactly one rank, and the ranks'
    results concatenated in rank order are the files' rows in listing order
    (each pattern's matches sorted by path; patterns in the order given).
    A rank that gets no rows returns an empty result of the right type,
    reading only the first file's header (.npy) or schema (Parquet).

    Args:
        paths_or_glob: a path, URL, glob pattern or directory, or a list of
            them; all on one file system, all .npy or all Parquet.
        rank, size: this rank and the number of ranks; by default those of
            ``comm`` (or of the default communicator, :func:`distml.init`).
        comm: a communicator to check the call with (below).
        split: "auto", "files" or "rows" (above).
        columns: Parquet columns to read (default: all).
        storage_options: passed to the fsspec file system.

    Returns:
        .npy files: the rows as one numpy array (axis 0 concatenated; every
        file must have the same dtype and trailing shape). Parquet files: a
        ``pyarrow.Table`` (``np.column_stack([t[c].to_numpy() for c in
        t.column_names])`` makes a 2-D array of numeric columns).

    Raises:
        ImportError: fsspec (or, for Parquet, pyarrow) is not installed; the
            extra ``distml[ml]`` brings both.
        FileNotFoundError: a pattern matches no file.
        ValueError: unknown or mixed file types, files listed twice, bad
            ``split``, rank out of range, unreadable or mismatched files.
        distml.MismatchError: ranks listed different files (with a
            communicator).

    Communication: when a communicator takes part (``comm`` given, or rank
    or size left to the default communicator) the call is collective and
    must be made on all ranks: the ranks check that they see the same
    listing, and any rank's error is raised on every rank. With ``rank`` and
    ``size`` given and no ``comm``, nothing is communicated and errors are
    raised only where they occur.
    """
    from .._agree import agree
    from .._errors import MismatchError

    if rank is None or size is None:
        if comm is None:
            import distml

            comm = distml.get_default()
        rank = comm.rank if rank is None else rank
        size = comm.size if size is None else size

    def checked(step: Any, *args: Any) -> Any:
        # Runs a step; with a communicator, any rank's error is raised on all.
        problem, value = None, None
        try:
            value = step(*args)
        except Exception as e:  # noqa: BLE001 - carried to every rank by agree()
            if comm is None:
                raise
            problem = e
        if comm is not None:
            agree(comm, problem, ())
        return value

    def listing() -> Tuple[Any, List[Tuple[str, int]]]:
        if split not in ("auto", "files", "rows"):
            raise ValueError(f"split must be 'auto', 'files' or 'rows', got {split!r}")
        r, s = int(rank), int(size)
        if s < 1 or not 0 <= r < s:
            raise ValueError(f"rank {r} is out of range for size {s}")
        fs, files = _list_files(paths_or_glob, storage_options)
        kinds = {_format_of(p) for p, _ in files}
        if len(kinds) > 1:
            raise ValueError("read_shards reads either .npy or Parquet files, not both in one call")
        if columns is not None and kinds == {"npy"}:
            raise ValueError("columns applies to Parquet files only")
        return fs, files

    fs, files = checked(listing)
    if comm is not None:
        digest = zlib.crc32(repr([(p, n) for p, n in files]).encode())
        seen = comm.allgather(np.array([digest, len(files)], dtype=np.int64)).reshape(-1, 2)
        if np.any(seen != seen[0]):
            shown = ", ".join(f"rank {r}: {int(c)} files" for r, (_, c) in enumerate(seen))
            raise MismatchError(f"ranks listed different files for {paths_or_glob!r} ({shown})")
    return checked(_read_assigned, fs, files, int(rank), int(size), split, columns)


def _read_assigned(fs: Any, files: List[Tuple[str, int]], rank: int, size: int, split: str,
                   columns: Optional[Sequence[str]]) -> Any:
    if sum(n for _, n in files) == 0:
        # No sizes known (or only empty files): one unit of weight 1 per file.
        files = [(p, 1) for p, _ in files]
        split = "files"
    lo, hi = _byte_range([n for _, n in files], rank, size)
    by_rows = split == "rows" or (split == "auto" and len(files) < size)
    parquet = _format_of(files[0][0]) == "parquet"
    if parquet:
        pa, pq = _need_pyarrow()
    pieces: List[Any] = []
    base = 0
    for path, nbytes in files:
        start, end = base, base + nbytes
        base = end
        if by_rows:
            if not (start < hi and end > lo):
                continue
        elif not _owns(2 * start + nbytes, lo, hi):
            continue
        with fs.open(path, "rb") as f:
            if parquet:
                pf = pq.ParquetFile(f)
                if by_rows:
                    groups = [i for i in range(pf.metadata.num_row_groups)
                              if _owns(_row_group_mid2(pf.metadata, i, start), lo, hi)]
                    if groups:
                        pieces.append(pf.read_row_groups(groups, columns=columns))
                else:
                    pieces.append(pf.read(columns=columns))
            else:
                rows, shape, dtype = _read_npy(f, start, lo, hi, whole=not by_rows)
                pieces.append(rows)
    if parquet:
        if pieces:
            return pa.concat_tables(pieces)
        with fs.open(files[0][0], "rb") as f:
            schema = pq.read_schema(f)
        empty = schema.empty_table()
        return empty.select(list(columns)) if columns is not None else empty
    if not pieces:
        with fs.open(files[0][0], "rb") as f:
            shape, _, dtype, _ = _read_npy_header(f)
        return np.empty((0,) + shape[1:], dtype=dtype)
    tails = {(a.dtype.str, a.shape[1:]) for a in pieces}
    if len(tails) > 1:
        raise ValueError(f"the .npy files differ in dtype or trailing shape: {sorted(tails)}")
    return np.concatenate(pieces, axis=0)


# ---- shuffle by key ------------------------------------------------------------

"""Type stub for distml's compiled core (private: use the distml package)."""

from typing import Any, Optional, Sequence

import numpy as np

def compiled_mpi() -> str: ...
def runtime_mpi() -> str: ...
def mpi_version() -> tuple[int, int]: ...
def abort(code: int) -> None: ...

import enum

class Kind(enum.IntEnum):
    allreduce: int
    reduce: int
    broadcast: int
    allgather: int
    reduce_scatter: int
    alltoall: int
    barrier: int
    alltoallv: int
    allgatherv: int

class DType(enum.IntEnum):
    float16: int
    bfloat16: int
    float32: int
    float64: int
    int8: int
    int16: int
    int32: int
    int64: int
    uint8: int
    uint16: int
    uint32: int
    uint64: int

class Op(enum.IntEnum):
    sum: int
    avg: int
    prod: int
    min: int
    max: int
    band: int
    bor: int
    bxor: int

def accepted_algorithms(kind: Kind) -> list[str]: ...

class Work:
    def wait(self) -> None: ...
    def test(self) -> bool: ...

class SharedBuffer:
    nbytes: int
    id: int

class Communicator:
    rank: int
    size: int
    timeout: float
    stall_warning: float
    check: bool
    segment_bytes: int
    shm_one_shot_bytes: int
    shm_single_copy_bytes: int
    shm_single_copy_max_bytes: int
    shm_stream_bytes: int
    one_node: bool
    hierarchical: bool
    def __init__(
        self, fortran_handle: int, timeout: float, check: bool, segment_bytes: int,
        shm: bool = ..., shm_slot_bytes: int = ...,
    ) -> None: ...
    def allocate_shared(self, nbytes: int) -> SharedBuffer: ...
    def set_trace(self, on: bool) -> None: ...
    def drain_trace(self) -> list[dict]: ...
    def set_table(self, kind: Kind, rows: Sequence[tuple[int, str]]) -> None: ...
    def run(
        self,
        kind: Kind,
        dtype: DType,
        op: Op,
        count: int,
        unit: int,
        root: int,
        algorithm: str,
        shape: Sequence[int],
        src: Optional[np.ndarray],
        dst: Optional[np.ndarray],
    ) -> None: ...
    def submit(
        self,
        kind: Kind,
        dtype: DType,
        op: Op,
        count: int,
        unit: int,
        root: int,
        algorithm: str,
        shape: Sequence[int],
        src: Optional[np.ndarray],
        dst: Optional[np.ndarray],
    ) -> Work: ...
    def run_rows(
        self,
        kind: Kind,
        dtype: DType,
        count: int,
        unit: int,
        algorithm: str,
        shape: Sequence[int],
        src: np.ndarray,
        dst: np.ndarray,
        rows: Sequence[int],
        async_op: bool,
    ) -> Optional[Work]: ...
    def refuse(self, kind: Kind, dtype: DType, op: Op, count: int, root: int, algorithm: str,
               no_memory: bool = ...) -> None: ...
    def resolve(self, kind: Kind, dtype: DType, count: int, algorithm: str) -> str: ...
    def free(self) -> None: ...
    def set_thresholds(self, allreduce: int, broadcast: int, reduce: int) -> None: ...
    def thresholds(self) -> dict[str, int]: ...

def kernel_isas() -> list[str]: ...
def kernel_current_isa() -> str: ...
def kernel_set_isa(name: str) -> None: ...
def kernel_reduce(dst: np.ndarray, src: np.ndarray, dtype: DType, op: Op) -> None: ...
def kernel_reduce_many(dst: np.ndarray, srcs: Sequence[np.ndarray], dtype: DType, op: Op,
                       stream: bool = False) -> None: ...
def kernel_copy_stream(dst: np.ndarray, src: np.ndarray) -> None: ...
def kernel_scale_avg(buf: np.ndarray, dtype: DType, divisor: int) -> None: ...

class ParameterServer:
    """The parameter server of csrc/ps (python/distml/ps wraps it)."""
    def __init__(self, fortran_handle: int, dtype: int, wire: int, segments: Sequence[int], servers: Sequence[int],
                 mode: int, staleness: int, optimizer: int, hyperparameters: dict, timeout: float,
                 poll_min_us: int, poll_max_us: int, initial: Sequence[np.ndarray]) -> None: ...
    @property
    def is_server(self) -> bool: ...
    @property
    def is_worker(self) -> bool: ...
    @property
    def bounds(self) -> list[int]: ...
    @property
    def closed(self) -> bool: ...
    def start_progress(self) -> None: ...
    def serve(self, out: Sequence[np.ndarray]) -> None: ...
    def push(self, grads: Sequence[np.ndarray]) -> None: ...
    def pull(self, out: Sequence[np.ndarray]) -> None: ...
    def close(self, out: Sequence[np.ndarray]) -> None: ...
    def progress_cpu_seconds(self) -> float: ...
    def worker_stats(self) -> dict[str, Any]: ...
    def server_stats(self) -> dict[str, Any]: ...

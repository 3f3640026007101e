"""Type stub for distml's compiled core (private: use the distml package)."""

from typing import Optional, Sequence

import numpy as np

def compiled_mpi() -> str: ...
def runtime_mpi() -> str: ...
def mpi_version() -> tuple[int, int]: ...
def abort(code: int) -> None: ...

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
    def set_table(self, kind: int, rows: Sequence[tuple[int, str]]) -> None: ...
    def run(
        self,
        kind: int,
        dtype: int,
        op: int,
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
        kind: int,
        dtype: int,
        op: int,
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
        kind: int,
        dtype: int,
        count: int,
        unit: int,
        algorithm: str,
        shape: Sequence[int],
        src: np.ndarray,
        dst: np.ndarray,
        rows: Sequence[int],
        async_op: bool,
    ) -> Optional[Work]: ...
    def refuse(self, kind: int, dtype: int, op: int, count: int, root: int, algorithm: str) -> None: ...
    def resolve(self, kind: int, dtype: int, count: int, algorithm: str) -> str: ...
    def free(self) -> None: ...
    def set_thresholds(self, allreduce: int, broadcast: int, reduce: int) -> None: ...
    def thresholds(self) -> dict[str, int]: ...

def kernel_isas() -> list[str]: ...
def kernel_current_isa() -> str: ...
def kernel_set_isa(name: str) -> None: ...
def kernel_reduce(dst: np.ndarray, src: np.ndarray, dtype: int, op: int) -> None: ...
def kernel_reduce_many(dst: np.ndarray, srcs: Sequence[np.ndarray], dtype: int, op: int,
                       stream: bool = False) -> None: ...
def kernel_copy_stream(dst: np.ndarray, src: np.ndarray) -> None: ...
def kernel_scale_avg(buf: np.ndarray, dtype: int, divisor: int) -> None: ...

"""Python objects over the collectives: broadcast_object and
allgather_object (pickled, then broadcast or allgathered as uint8 tensors).
"""

from __future__ import annotations

import pickle
from typing import Any, List, Optional

import numpy as np
import torch

from .convert import _np
from .movement import allgather, broadcast_
from .state import _set_comm, _set_root


def broadcast_object(obj: Any, root_rank: int = 0, name: Optional[str] = None,
                     process_set: Any = None) -> Any:
    """Returns ``root_rank``'s ``obj`` (pickled) on every rank. Must be called on all ranks."""
    comm = _set_comm(process_set)
    root = _set_root(process_set, root_rank)
    if comm.rank == root:
        payload = np.frombuffer(pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL), dtype=np.uint8)
        length = torch.tensor([payload.size], dtype=torch.int64)
    else:
        length = torch.zeros(1, dtype=torch.int64)
    broadcast_(length, root_rank, process_set=process_set)
    if comm.rank == root:
        data = torch.from_numpy(payload.copy())
    else:
        data = torch.empty(int(length[0]), dtype=torch.uint8)
    broadcast_(data, root_rank, process_set=process_set)
    if comm.rank == root:
        return obj
    return pickle.loads(_np(data).tobytes())


def allgather_object(obj: Any, name: Optional[str] = None, process_set: Any = None) -> List[Any]:
    """Returns the list of every rank's ``obj`` (pickled), in rank order. Must
    be called on all ranks."""
    _set_comm(process_set)  # raises on a rank outside the set, before anything is queued
    payload = torch.from_numpy(np.frombuffer(pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL),
                                             dtype=np.uint8).copy())
    lengths = allgather(torch.tensor([payload.numel()], dtype=torch.int64), process_set=process_set)
    data = _np(allgather(payload, process_set=process_set))
    out, offset = [], 0
    for n in lengths.tolist():
        out.append(pickle.loads(data[offset:offset + n].tobytes()))
        offset += n
    return out

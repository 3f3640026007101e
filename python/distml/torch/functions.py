"""Making ranks start equal: parameters and optimizer state from one rank."""

from __future__ import annotations

from typing import Any, Dict, Iterable, List, Tuple, Union

import torch

from .mpi_ops import _check_tensor, broadcast_async_, broadcast_object, synchronize

__all__ = ["broadcast_parameters", "broadcast_optimizer_state"]


def broadcast_parameters(params: Union[Dict[str, torch.Tensor], Iterable[Tuple[str, torch.Tensor]]],
                         root_rank: int) -> None:
    """Overwrites every tensor of ``params`` with ``root_rank``'s, in place.

    Args:
        params: a ``state_dict()`` or ``named_parameters()``. A dict is
            broadcast in sorted key order, so its order may differ between
            ranks; pairs are taken in the order given.
        root_rank: the rank whose values win.

    Must be called on all ranks, with the same names, shapes and dtypes.
    """
    if isinstance(params, dict):
        items = sorted(params.items())
    else:
        items = list(params)
        if items and not isinstance(items[0], (tuple, list)):
            raise ValueError("params must be a state_dict or named_parameters() (name, tensor) pairs")
    handles = []
    for name, p in items:
        if p is None:
            continue
        if not isinstance(p, torch.Tensor):
            raise TypeError(f"{name} is a {type(p).__name__}, not a tensor")
        _check_tensor(p, name, allow_bool=True)
        handles.append(broadcast_async_(p.data if isinstance(p, torch.nn.Parameter) else p, root_rank))
    for h in handles:
        synchronize(h)


class _TensorSlot:
    """Stands for the i-th tensor of a broadcast state dict."""

    __slots__ = ("index", "shape", "dtype")

    def __init__(self, index: int, shape: Tuple[int, ...], dtype: torch.dtype) -> None:
        self.index, self.shape, self.dtype = index, shape, dtype


def _strip(obj: Any, tensors: List[torch.Tensor]) -> Any:
    if isinstance(obj, torch.Tensor):
        tensors.append(obj)
        return _TensorSlot(len(tensors) - 1, tuple(obj.shape), obj.dtype)
    if isinstance(obj, dict):
        return {k: _strip(v, tensors) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_strip(v, tensors) for v in obj)
    return obj


def _fill(obj: Any, tensors: List[torch.Tensor]) -> Any:
    if isinstance(obj, _TensorSlot):
        return tensors[obj.index]
    if isinstance(obj, dict):
        return {k: _fill(v, tensors) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_fill(v, tensors) for v in obj)
    return obj


def broadcast_optimizer_state(optimizer: torch.optim.Optimizer, root_rank: int) -> None:
    """Makes every rank's optimizer state (per-parameter state such as
    momentum buffers and step counts, and the hyperparameters of each group)
    equal to ``root_rank``'s.

    The root's state dict travels as a skeleton (broadcast_object) plus one
    tensor broadcast per state tensor; ranks whose optimizer has not
    created its state yet receive it too (no dummy step is taken).

    Must be called on all ranks, with optimizers over the same parameters.
    """
    from .mpi_ops import rank

    me = rank()
    tensors: List[torch.Tensor] = []
    skeleton = _strip(optimizer.state_dict(), tensors) if me == root_rank else None
    skeleton = broadcast_object(skeleton, root_rank)
    if me != root_rank:
        tensors = []
        slots: List[_TensorSlot] = []

        def collect(obj: Any) -> None:
            if isinstance(obj, _TensorSlot):
                slots.append(obj)
            elif isinstance(obj, dict):
                for v in obj.values():
                    collect(v)
            elif isinstance(obj, (list, tuple)):
                for v in obj:
                    collect(v)

        collect(skeleton)
        tensors = [None] * len(slots)  # type: ignore[list-item]
        for s in slots:
            tensors[s.index] = torch.empty(s.shape, dtype=s.dtype)
    else:
        tensors = [t.detach().contiguous() for t in tensors]
    handles = [broadcast_async_(t, root_rank) for t in tensors]
    for h in handles:
        synchronize(h)
    if me != root_rank:
        optimizer.load_state_dict(_fill(skeleton, tensors))

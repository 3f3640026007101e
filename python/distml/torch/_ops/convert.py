"""Tensors as the core sees them: the dtype maps, the checks every
collective runs on its tensors, and numpy views.

Tensors reach the core without a copy: a contiguous CPU tensor's storage is
viewed as a numpy array (``tensor.numpy()``; bfloat16 through an int16 view
reinterpreted as ``ml_dtypes.bfloat16``). Non-contiguous tensors are copied
to a contiguous buffer first (and back, for the in-place calls).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from distml._dtypes import bfloat16, dtype_code


_NUMPY_OF = {
    torch.float16: np.dtype(np.float16),
    torch.bfloat16: bfloat16,
    torch.float32: np.dtype(np.float32),
    torch.float64: np.dtype(np.float64),
    torch.int8: np.dtype(np.int8),
    torch.int16: np.dtype(np.int16),
    torch.int32: np.dtype(np.int32),
    torch.int64: np.dtype(np.int64),
    torch.uint8: np.dtype(np.uint8),
}
for _name, _np in (("uint16", np.uint16), ("uint32", np.uint32), ("uint64", np.uint64)):
    if hasattr(torch, _name):
        _NUMPY_OF[getattr(torch, _name)] = np.dtype(_np)

_CODE_DTYPES = {int(dtype_code(d)): d for d in _NUMPY_OF.values()}


def _check_tensor(tensor: Any, what: str = "tensor", allow_bool: bool = False) -> None:
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"{what} must be a torch.Tensor, not {type(tensor).__name__}")
    if tensor.device.type != "cpu":
        raise TypeError(f"{what} is on {tensor.device}; distml.torch works on CPU tensors only")
    if tensor.is_sparse:
        raise TypeError(f"{what} is sparse; distml.torch works on dense tensors only")
    if tensor.dtype not in _NUMPY_OF and not (allow_bool and tensor.dtype == torch.bool):
        names = ", ".join(str(d).replace("torch.", "") for d in _NUMPY_OF)
        raise TypeError(f"{what} has unsupported dtype {tensor.dtype}; distml.torch supports {names}"
                        + (" (and bool for data movement)" if allow_bool else ""))


def _np(tensor: torch.Tensor) -> np.ndarray:
    """The numpy view of a contiguous CPU tensor (no copy)."""
    t = tensor.detach()
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().view(bfloat16)
    if t.dtype == torch.bool:
        return t.view(torch.uint8).numpy()
    return t.numpy()


def _contiguous(tensor: torch.Tensor) -> torch.Tensor:
    t = tensor.detach()
    return t if t.is_contiguous() else t.contiguous()

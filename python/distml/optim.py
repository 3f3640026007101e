"""Numpy optimizers with the update rules of torch.optim's SGD, Adam and AdamW.

Each optimizer owns a list of parameter arrays and updates them in place;
``step(grads)`` takes one gradient array per parameter (``None`` skips that
parameter, as a missing ``.grad`` does in torch).

State layout, shared by every optimizer here and relied on by
:class:`distml.DistributedOptimizer`, :class:`distml.ShardedOptimizer` and
:mod:`distml.checkpoint`: per parameter, a step count (int) and zero or more
*element-wise* state arrays of the parameter's shape and dtype, named by
``state_keys`` (``"momentum_buffer"``; ``"exp_avg"``, ``"exp_avg_sq"``).
Because every state entry is element-wise, an optimizer over one flat slice
of the concatenated parameters computes exactly what the same optimizer over
the separate parameters computes for those elements; that is what lets
ZeRO-style sharding reuse these classes unchanged.

None of these calls communicate.
"""

from __future__ import annotations

import abc
import copy
import math
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

__all__ = ["Optimizer", "SGD", "Adam", "AdamW"]


class Optimizer(abc.ABC):
    """Base class: parameters, per-parameter state, ``state_dict``.

    Args:
        params: a sequence of writable numpy arrays of a floating dtype,
            updated in place by :meth:`step`.
        defaults: the hyperparameters (recorded in :meth:`state_dict`).
    """

    #: names of the element-wise state arrays each parameter carries
    state_keys: tuple = ()

    def __init__(self, params: Sequence[np.ndarray], defaults: Dict[str, Any]) -> None:
        params = list(params)
        if not params:
            raise ValueError("optimizer got an empty parameter list")
        for i, p in enumerate(params):
            if not isinstance(p, np.ndarray):
                raise TypeError(f"parameter {i} is a {type(p).__name__}, expected a numpy.ndarray")
            if p.dtype.kind != "f" and p.dtype.name != "bfloat16":
                raise TypeError(f"parameter {i} has dtype {p.dtype}; optimizers need floating-point parameters")
            if not p.flags.writeable:
                raise ValueError(f"parameter {i} is read-only")
        self.params: List[np.ndarray] = params
        self.defaults: Dict[str, Any] = dict(defaults)
        self.steps: List[int] = [0] * len(params)
        self.state: List[Dict[str, np.ndarray]] = [
            {k: np.zeros_like(p) for k in self.state_keys} for p in params
        ]

    # ---- hyperparameters ---------------------------------------------------

    def __getattr__(self, name: str) -> Any:
        # lr, momentum, betas, ... read through to the hyperparameter dict, so
        # that a schedule can write ``opt.lr = 0.01``.
        defaults = self.__dict__.get("defaults")
        if defaults is not None and name in defaults:
            return defaults[name]
        raise AttributeError(f"{type(self).__name__!s} has no attribute {name!r}")

    def __setattr__(self, name: str, value: Any) -> None:
        defaults = self.__dict__.get("defaults")
        if defaults is not None and name in defaults:
            defaults[name] = value
        else:
            object.__setattr__(self, name, value)

    # ---- stepping ----------------------------------------------------------

    def _check_grads(self, grads: Sequence[Optional[np.ndarray]]) -> List[Optional[np.ndarray]]:
        grads = list(grads)
        if len(grads) != len(self.params):
            raise ValueError(f"step got {len(grads)} gradients for {len(self.params)} parameters")
        for i, (p, g) in enumerate(zip(self.params, grads)):
            if g is not None and np.shape(g) != p.shape:
                raise ValueError(f"gradient {i} has shape {np.shape(g)}, parameter {i} has shape {p.shape}")
        return grads

    def step(self, grads: Sequence[Optional[np.ndarray]]) -> None:
        """Updates every parameter whose gradient is not None, in place.

        Args:
            grads: one array per parameter, of the parameter's shape (or None).

        Raises:
            ValueError: wrong number or shapes of gradients.
        """
        for i, g in enumerate(self._check_grads(grads)):
            if g is None:
                continue
            self.steps[i] += 1
            self._update(self.params[i], np.asarray(g), self.state[i], self.steps[i])

    @abc.abstractmethod
    def _update(self, p: np.ndarray, g: np.ndarray, state: Dict[str, np.ndarray], step: int) -> None:
        """Applies one update to parameter ``p`` from gradient ``g`` (in place)."""

    # ---- state -------------------------------------------------------------

    def state_nbytes(self) -> int:
        """Bytes of element-wise optimizer state held (step counts excluded)."""
        return sum(a.nbytes for s in self.state for a in s.values())

    def state_dict(self) -> Dict[str, Any]:
        """A copy of the hyperparameters, step counts and state arrays.

        Returns:
            ``{"hyperparameters": dict, "steps": [int per parameter],
            "state": [{key: array} per parameter]}``.
        """
        return {
            "hyperparameters": copy.deepcopy(self.defaults),
            "steps": list(self.steps),
            "state": [{k: a.copy() for k, a in s.items()} for s in self.state],
        }

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        """Restores what :meth:`state_dict` returned (arrays are copied in).

        Raises:
            ValueError: the number of parameters, state keys or shapes differ.
        """
        steps = list(state_dict["steps"])
        states = state_dict["state"]
        if len(steps) != len(self.params) or len(states) != len(self.params):
            raise ValueError(
                f"state_dict is for {len(states)} parameters, this optimizer has {len(self.params)}"
            )
        for i, (p, s) in enumerate(zip(self.params, states)):
            if set(s) != set(self.state_keys):
                raise ValueError(f"state of parameter {i} has keys {sorted(s)}, expected {sorted(self.state_keys)}")
            for k, a in s.items():
                if np.shape(a) != p.shape:
                    raise ValueError(f"state {k!r} of parameter {i} has shape {np.shape(a)}, expected {p.shape}")
        for s, loaded in zip(self.state, states):
            for k in self.state_keys:
                np.copyto(s[k], np.asarray(loaded[k]), casting="same_kind")
        self.steps = [int(n) for n in steps]
        self.defaults.update(copy.deepcopy(state_dict.get("hyperparameters", {})))

    def __repr__(self) -> str:
        hp = ", ".join(f"{k}={v!r}" for k, v in self.defaults.items())
        return f"{type(self).__name__}({len(self.params)} parameters, {hp})"


class SGD(Optimizer):
    """Stochastic gradient descent with optional momentum, as torch.optim.SGD.

    With weight decay ``wd``, momentum ``mu``, dampening ``d``::

        g = g + wd * p
        b = g                              on the first step
        b = mu * b + (1 - d) * g           afterwards
        g = g + mu * b   (nesterov)  or  g = b
        p = p - lr * g

    Args:
        params: parameter arrays.
        lr: learning rate.
        momentum, dampening, weight_decay, nesterov: as in torch.
    """

    def __init__(self, params: Sequence[np.ndarray], lr: float, momentum: float = 0.0, dampening: float = 0.0,
                 weight_decay: float = 0.0, nesterov: bool = False) -> None:
        if lr < 0:
            raise ValueError(f"invalid learning rate {lr}")
        if momentum < 0:
            raise ValueError(f"invalid momentum {momentum}")
        if weight_decay < 0:
            raise ValueError(f"invalid weight_decay {weight_decay}")
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("nesterov momentum needs momentum > 0 and dampening = 0")
        self.state_keys = ("momentum_buffer",) if momentum != 0 else ()
        super().__init__(params, dict(lr=lr, momentum=momentum, dampening=dampening,
                                      weight_decay=weight_decay, nesterov=nesterov))

    def _update(self, p, g, state, step):
        d = self.defaults
        if d["weight_decay"] != 0:
            g = g + d["weight_decay"] * p
        if d["momentum"] != 0:
            buf = state["momentum_buffer"]
            if step == 1:
                np.copyto(buf, g)
            else:
                buf *= d["momentum"]
                buf += (1 - d["dampening"]) * g
            g = g + d["momentum"] * buf if d["nesterov"] else buf
        p -= (d["lr"] * g).astype(p.dtype, copy=False)


class Adam(Optimizer):
    """Adam, as torch.optim.Adam (amsgrad off). At step t::

        g = g + wd * p                                  (L2 weight decay)
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        p = p - lr / (1 - b1**t) * m / (sqrt(v) / sqrt(1 - b2**t) + eps)

    Args:
        params: parameter arrays.
        lr, betas, eps, weight_decay: as in torch.
    """

    state_keys = ("exp_avg", "exp_avg_sq")
    _decoupled = False

    def __init__(self, params: Sequence[np.ndarray], lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0) -> None:
        if lr < 0:
            raise ValueError(f"invalid learning rate {lr}")
        if eps < 0:
            raise ValueError(f"invalid eps {eps}")
        b1, b2 = betas
        if not (0 <= b1 < 1 and 0 <= b2 < 1):
            raise ValueError(f"invalid betas {betas}")
        if weight_decay < 0:
            raise ValueError(f"invalid weight_decay {weight_decay}")
        super().__init__(params, dict(lr=lr, betas=(float(b1), float(b2)), eps=eps, weight_decay=weight_decay))

    def _update(self, p, g, state, step):
        d = self.defaults
        lr, (b1, b2), eps, wd = d["lr"], d["betas"], d["eps"], d["weight_decay"]
        if wd != 0:
            if self._decoupled:
                p *= p.dtype.type(1 - lr * wd)
            else:
                g = g + wd * p
        m, v = state["exp_avg"], state["exp_avg_sq"]
        # One scratch array instead of a temporary per operation: this is
        # memory-bound, and each pass over the data costs as much as the math.
        tmp = np.subtract(g, m, dtype=m.dtype)
        tmp *= 1 - b1
        m += tmp                         # torch: m.lerp_(g, 1 - b1)
        v *= b2
        np.multiply(g, g, out=tmp)
        tmp *= 1 - b2
        v += tmp
        bias1 = 1 - b1 ** step
        bias2_sqrt = math.sqrt(1 - b2 ** step)
        np.sqrt(v, out=tmp)
        tmp /= bias2_sqrt
        tmp += eps
        np.divide(m, tmp, out=tmp)
        tmp *= lr / bias1
        p -= tmp


class AdamW(Adam):
    """AdamW, as torch.optim.AdamW: Adam with decoupled weight decay
    (``p = p * (1 - lr * wd)`` before the Adam update; default wd 0.01)."""

    _decoupled = True

    def __init__(self, params: Sequence[np.ndarray], lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 1e-2) -> None:
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)

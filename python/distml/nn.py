"""A small numpy layer set with explicit forward and backward passes.

Enough to train multilayer perceptrons without another framework:
:class:`Linear`, :class:`ReLU`, :class:`Sequential` and the loss
:class:`SoftmaxCrossEntropy`. Conventions:

- ``forward(x)`` keeps what ``backward`` needs; ``backward(dy)`` returns the
  gradient with respect to the input and *overwrites* (does not accumulate
  into) the layer's gradient arrays.
- ``parameters()`` and ``grads()`` return lists in the same order. The
  gradient arrays can be replaced by views of another buffer (for instance a
  :class:`distml.GradientBuffer`) with ``bind_grads``, so that backward
  writes straight into the buffer a collective then reduces.
- ``Sequential.backward(dy, on_grads=...)`` reports each layer's gradients as
  soon as they are written (indices into ``parameters()``), which is what
  :meth:`distml.DistributedOptimizer.mark_ready` takes to overlap the
  allreduce with the rest of the backward pass.

Nothing here communicates.
"""

from __future__ import annotations

import abc

from typing import Callable, List, Optional, Sequence

import numpy as np

__all__ = ["Module", "Linear", "ReLU", "Sequential", "SoftmaxCrossEntropy"]


class Module(abc.ABC):
    """Base class of layers: subclasses define forward and backward."""

    def parameters(self) -> List[np.ndarray]:
        return []

    def grads(self) -> List[np.ndarray]:
        return []

    def bind_grads(self, arrays: Sequence[np.ndarray]) -> None:
        """Makes backward write this module's gradients into ``arrays``
        (one per parameter, same shapes and dtypes)."""
        if len(arrays) != 0:
            raise ValueError(f"{type(self).__name__} has no parameters")

    @abc.abstractmethod
    def forward(self, x: np.ndarray) -> np.ndarray:
        """The layer's output for ``x`` (keeping what backward needs)."""

    @abc.abstractmethod
    def backward(self, dy: np.ndarray) -> np.ndarray:
        """The gradient of the input, given that of the output; fills the
        parameters' gradients."""

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.forward(x)


def _check_like(name: str, a: np.ndarray, like: np.ndarray) -> None:
    if not isinstance(a, np.ndarray) or a.shape != like.shape or a.dtype != like.dtype:
        raise ValueError(f"{name}: expected an array of shape {like.shape} and dtype {like.dtype}")
    if not a.flags.writeable:
        raise ValueError(f"{name}: array is read-only")


class WeightBias(Module):
    """A layer whose parameters are ``weight`` and an optional ``bias``, with
    gradients ``grad_weight`` and ``grad_bias`` (Linear, and the
    tensor-parallel layers, which hold a part of a Linear's)."""

    weight: np.ndarray
    bias: Optional[np.ndarray]

    def _init_grads(self) -> None:
        self.grad_weight = np.zeros_like(self.weight)
        self.grad_bias = None if self.bias is None else np.zeros_like(self.bias)
        self._x: Optional[np.ndarray] = None

    def parameters(self) -> List[np.ndarray]:
        return [self.weight] if self.bias is None else [self.weight, self.bias]

    def grads(self) -> List[np.ndarray]:
        return [self.grad_weight] if self.bias is None else [self.grad_weight, self.grad_bias]

    def bind_grads(self, arrays: Sequence[np.ndarray]) -> None:
        arrays = list(arrays)
        if len(arrays) != len(self.parameters()):
            raise ValueError(f"{type(self).__name__} has {len(self.parameters())} parameters, got {len(arrays)} arrays")
        _check_like("grad_weight", arrays[0], self.weight)
        if self.bias is not None:
            _check_like("grad_bias", arrays[1], self.bias)
            self.grad_bias = arrays[1]
        self.grad_weight = arrays[0]


class Linear(WeightBias):
    """``y = x @ weight + bias`` with ``weight`` of shape (in, out).

    Initialised like torch.nn.Linear: weight and bias uniform in
    ``[-1/sqrt(in), 1/sqrt(in)]``.

    Args:
        in_features, out_features: sizes.
        rng: a numpy Generator or seed for the initial values.
        dtype: parameter dtype (default float32).
        bias: whether to have a bias.
    """

    def __init__(self, in_features: int, out_features: int, rng=None, dtype=np.float32, bias: bool = True) -> None:
        rng = np.random.default_rng(rng)
        bound = 1.0 / np.sqrt(in_features)
        self.weight = rng.uniform(-bound, bound, size=(in_features, out_features)).astype(dtype)
        self.bias = rng.uniform(-bound, bound, size=(out_features,)).astype(dtype) if bias else None
        self._init_grads()

    def forward(self, x: np.ndarray) -> np.ndarray:
        self._x = x
        y = x @ self.weight
        if self.bias is not None:
            y += self.bias
        return y

    def backward(self, dy: np.ndarray) -> np.ndarray:
        if self._x is None:
            raise RuntimeError("Linear.backward called before forward")
        np.matmul(self._x.T, dy, out=self.grad_weight)
        if self.bias is not None:
            np.sum(dy, axis=0, out=self.grad_bias)
        return dy @ self.weight.T


class ReLU(Module):
    """``max(x, 0)``."""

    def __init__(self) -> None:
        self._mask: Optional[np.ndarray] = None

    def forward(self, x: np.ndarray) -> np.ndarray:
        self._mask = x > 0
        return x * self._mask

    def backward(self, dy: np.ndarray) -> np.ndarray:
        if self._mask is None:
            raise RuntimeError("ReLU.backward called before forward")
        return dy * self._mask


class Sequential(Module):
    """Applies ``layers`` in order; backward runs them in reverse."""

    def __init__(self, *layers: Module) -> None:
        self.layers = list(layers)

    def parameters(self) -> List[np.ndarray]:
        return [p for layer in self.layers for p in layer.parameters()]

    def grads(self) -> List[np.ndarray]:
        return [g for layer in self.layers for g in layer.grads()]

    def bind_grads(self, arrays: Sequence[np.ndarray]) -> None:
        arrays = list(arrays)
        total = len(self.parameters())
        if len(arrays) != total:
            raise ValueError(f"Sequential has {total} parameters, got {len(arrays)} arrays")
        i = 0
        for layer in self.layers:
            n = len(layer.parameters())
            layer.bind_grads(arrays[i:i + n])
            i += n

    def forward(self, x: np.ndarray) -> np.ndarray:
        for layer in self.layers:
            x = layer.forward(x)
        return x

    def backward(self, dy: np.ndarray, on_grads: Optional[Callable[[List[int]], None]] = None) -> np.ndarray:
        """Backward through every layer, last first.

        Args:
            dy: gradient of the loss with respect to the output.
            on_grads: called with the indices (into ``parameters()``) of each
                layer's parameters right after that layer's gradients are
                written, e.g. ``DistributedOptimizer.mark_ready``.

        Returns:
            The gradient with respect to the input.
        """
        starts = []
        i = 0
        for layer in self.layers:
            starts.append(i)
            i += len(layer.parameters())
        for layer, start in zip(reversed(self.layers), reversed(starts)):
            dy = layer.backward(dy)
            n = len(layer.parameters())
            if on_grads is not None and n:
                on_grads(list(range(start, start + n)))
        return dy


class SoftmaxCrossEntropy:
    """Mean cross-entropy of softmax(logits) against integer labels.

    ``forward(logits, labels)`` returns the mean loss over the batch;
    ``backward()`` returns ``(softmax(logits) - onehot(labels)) / batch``.
    With data parallelism over equal local batches, averaging these
    gradients across ranks gives the gradient of the global batch's mean.
    """

    def __init__(self) -> None:
        self._probs: Optional[np.ndarray] = None
        self._labels: Optional[np.ndarray] = None

    def forward(self, logits: np.ndarray, labels: np.ndarray) -> float:
        labels = np.asarray(labels)
        if logits.ndim != 2 or labels.shape != (logits.shape[0],):
            raise ValueError(f"expected logits (N, C) and labels (N,), got {logits.shape} and {labels.shape}")
        shifted = logits - logits.max(axis=1, keepdims=True)
        log_norm = np.log(np.exp(shifted).sum(axis=1, keepdims=True))
        log_probs = shifted - log_norm
        self._probs = np.exp(log_probs)
        self._labels = labels
        n = logits.shape[0]
        return float(-log_probs[np.arange(n), labels].mean()) if n else 0.0

    def backward(self) -> np.ndarray:
        if self._probs is None:
            raise RuntimeError("SoftmaxCrossEntropy.backward called before forward")
        d = self._probs.copy()
        n = d.shape[0]
        d[np.arange(n), self._labels] -= 1
        if n:
            d /= n
        return d

    __call__ = forward

"""``hvd.elastic``: not provided by distml.torch.

distml's elastic training (``distml.elastic``: committed state restored after
``distmlrun --max-restarts`` relaunches the job without the lost rank) holds
numpy parameters and distml optimizers; torch optimizer state has no save
path in distml.checkpoint yet, so Horovod's torch elastic classes are not
mapped onto it. Every name here raises NotImplementedError with that
explanation, so that code written for Horovod's elastic mode fails at once
and clearly instead of training without it.
"""

from __future__ import annotations

from typing import Any, NoReturn

__all__ = ["run", "State", "ObjectState", "TorchState", "ElasticSampler"]

_MESSAGE = ("distml.torch has no elastic training (hvd.elastic): torch optimizer state cannot be "
            "committed yet. distml.elastic (numpy parameters, distmlrun --max-restarts) survives a "
            "lost rank; with torch, run with a fixed number of ranks and restart from a checkpoint")


def _unsupported(*_: Any, **__: Any) -> NoReturn:
    raise NotImplementedError(_MESSAGE)


def run(func: Any) -> NoReturn:
    """Horovod's ``@hvd.elastic.run`` decorator.

    Raises:
        NotImplementedError: always.
    """
    _unsupported()


class State:
    """Horovod's elastic state classes.

    Raises:
        NotImplementedError: on construction.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        _unsupported()


class ObjectState(State):
    pass


class TorchState(ObjectState):
    pass


class ElasticSampler:
    """Raises NotImplementedError on construction (see the module docstring)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        _unsupported()

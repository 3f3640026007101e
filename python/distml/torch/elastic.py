"""``hvd.elastic``: not provided by distml.torch.

distml has no elastic training yet (ranks joining or leaving a running job):
a communicator's ranks are fixed for its lifetime. Every name here raises
NotImplementedError with that explanation, so that code written for Horovod's
elastic mode fails at once and clearly instead of training without it.
"""

from __future__ import annotations

from typing import Any, NoReturn

__all__ = ["run", "State", "ObjectState", "TorchState", "ElasticSampler"]

_MESSAGE = ("distml.torch has no elastic training (hvd.elastic): the ranks of a job are fixed. "
            "Run with a fixed number of ranks (python -m distml.run -n P) and restart from a "
            "checkpoint (distml.checkpoint) if a rank fails")


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

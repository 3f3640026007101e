"""distml's exception classes (the compiled core raises these too)."""

from __future__ import annotations

__all__ = [
    "DistmlError",
    "MPIError",
    "CommTimeoutError",
    "MismatchError",
    "CommunicatorError",
]


class DistmlError(RuntimeError):
    """Base class of the errors distml raises for failures of communication.

    Invalid arguments raise the built-in ``TypeError`` or ``ValueError``
    instead, before any communication.
    """


class MPIError(DistmlError):
    """An MPI call failed.

    Attributes:
        error_class: MPI's error class (``MPI_Error_class``), or -1 if unknown.
        error_string: MPI's description of the error.
    """

    def __init__(self, message: str, error_class: int = -1, error_string: str = "") -> None:
        super().__init__(message)
        self.error_class = error_class
        self.error_string = error_string


class CommTimeoutError(DistmlError, TimeoutError):
    """A collective did not complete within the communicator's timeout.

    The communicator is broken afterwards: later calls on it raise
    :class:`CommunicatorError`.
    """


class MismatchError(DistmlError):
    """Ranks called a collective with arguments that disagree.

    Raised on every rank, naming what differs and on which ranks. No data has
    moved, and the communicator stays usable.
    """


class CommunicatorError(DistmlError):
    """The communicator cannot be used: it was freed, or broken by a timeout."""

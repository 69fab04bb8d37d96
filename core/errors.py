"""The one exception tree of streamrec.

Callers catch at the level they can act on::

    StreamrecError                 base of everything we raise on purpose
    ├── ConfigError                bad or missing settings; fix the environment (exit 2)
    ├── DatasetError               dataset missing, unreadable or failed verification (exit 3)
    ├── InvalidEvent               one event breaks the contract; dead-letter it, move on
    ├── IndexNotFound              no built embedding index where one was expected (exit 4)
    ├── ServiceUnavailable         Redis or the broker cannot be reached (exit 5)
    │   retriable = True           the loop may wait and try again
    └── StateLost                  Redis lost or rolled back state the consumer group had
                                   committed, and the consumer was told to refuse (exit 6)

Every error carries ``retriable``: the consumer's loop decides retry versus give
up from it (``consumer.worker.retriable``), not from a list of exception types.
"""

from __future__ import annotations


class StreamrecError(Exception):
    """Base of every error streamrec raises on purpose."""

    retriable: bool = False
    exit_code: int = 1
    hint: str = ""

    def __init__(self, message: str, *, hint: str = "") -> None:
        super().__init__(message)
        if hint:
            self.hint = hint


class ConfigError(StreamrecError):
    exit_code = 2


class DatasetError(StreamrecError):
    exit_code = 3


class IndexNotFound(StreamrecError):
    exit_code = 4


class ServiceUnavailable(StreamrecError):
    retriable = True
    exit_code = 5


class StateLost(StreamrecError):
    exit_code = 6


class InvalidEvent(StreamrecError):
    """An event that breaks the contract. ``reason`` is a short machine-readable code."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail

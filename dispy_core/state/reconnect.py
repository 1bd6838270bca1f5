"""Which nodes the client contacts again, and when: capped exponential backoff, never after a failure for good.

Pure, like the rest of ``state``: the driver says what happened (a failed attempt, a success) and asks at
each ``Tick`` which nodes are due. A transient failure (refused, timed out, connection lost) is retried
after ``first`` seconds, then twice as long each time, up to ``cap``; a failure for good (authentication
refused, a name that does not resolve, a certificate refused, setup failing) is not retried: it stays in
``permanent`` with its reason until the node is named again (``forget``).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["FIRST_RETRY", "MAX_RETRY", "Reconnect", "Retry"]

FIRST_RETRY = 0.5
MAX_RETRY = 30.0


@dataclass(slots=True)
class Retry:
    """A node waiting to be contacted again."""

    reason: str
    delay: float
    due: float
    attempts: int = 1
    trying: bool = False


class Reconnect:
    """The retry schedule of one cluster's nodes (keys are ``ip:port``)."""

    def __init__(self, first: float = FIRST_RETRY, cap: float = MAX_RETRY) -> None:
        self.first = first
        self.cap = cap
        self.waiting: dict[str, Retry] = {}
        self.permanent: dict[str, str] = {}

    def failed(self, key: str, time: float, reason: str, permanent: bool = False) -> None:
        """An attempt to use ``key`` failed (or its connection was lost)."""
        if permanent:
            self.waiting.pop(key, None)
            self.permanent[key] = reason
            return
        retry = self.waiting.get(key)
        if retry is None:
            self.waiting[key] = Retry(reason, self.first, time + self.first)
            return
        retry.reason, retry.trying = reason, False
        retry.attempts += 1
        retry.delay = min(self.cap, retry.delay * 2)
        retry.due = time + retry.delay

    def connected(self, key: str) -> None:
        """``key`` is usable again: no more retries, and the next failure starts the backoff afresh."""
        self.waiting.pop(key, None)
        self.permanent.pop(key, None)

    def forget(self, key: str) -> None:
        """The program no longer wants ``key`` (closed it) or names it again (then it is tried at once)."""
        self.waiting.pop(key, None)
        self.permanent.pop(key, None)

    def due(self, time: float) -> list[str]:
        """Nodes to contact now; each is marked as being tried until ``failed`` or ``connected``."""
        keys = [key for key, retry in self.waiting.items() if not retry.trying and retry.due <= time]
        for key in keys:
            self.waiting[key].trying = True
        return keys

    def all_permanent(self, keys: set[str]) -> bool:
        """Every one of ``keys`` (the nodes the program named) failed for good."""
        return bool(keys) and keys <= set(self.permanent)

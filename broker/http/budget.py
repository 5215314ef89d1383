"""One memory budget for every answer the door holds while it counts records.

An answer is held from the moment it is read until it has been written to the client
(a client that does not read keeps it held). Without a bound across requests, a handful
of employees asking for large answers and not reading them would hold gigabytes; with
it, the next large answer is refused (503 upstream.busy, Retry-After) instead.
"""

from __future__ import annotations


class AnswerBudget:
    def __init__(self, total: int) -> None:
        self.total = total
        self.held = 0

    @property
    def available(self) -> int:
        return self.total - self.held

    def take(self, size: int) -> bool:
        """Hold `size` bytes if they fit (on one event loop, check and take are atomic)."""
        if size > self.available:
            return False
        self.held += size
        return True

    def give(self, size: int) -> None:
        self.held -= size

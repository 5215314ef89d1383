"""The console's only work on the request path: append each audit event to a ring.

The feed is an audit observer like the rented-login signals. It keeps the last
`size` events in a bounded deque and a running count, nothing more: the proxy's
per-request cost of having a console is one append and one increment. Everything the
console shows (live decisions, charts, timelines) is computed later, off the request
path, by reading what was appended since the last read (`since`).
"""

from __future__ import annotations

from collections import deque
from typing import Any


class ConsoleFeed:
    def __init__(self, size: int) -> None:
        self._ring: deque[dict[str, Any]] = deque(maxlen=size)
        self.count = 0
        """Events ever appended; a reader's position in the stream."""

    def observe(self, event: dict[str, Any]) -> None:
        self._ring.append(event)
        self.count += 1

    def since(self, position: int) -> tuple[list[dict[str, Any]], int, int]:
        """The events appended after `position`, the new position, and how many of them
        the ring no longer held (a reader that fell more than `size` events behind)."""
        count, ring = self.count, self._ring
        new = count - position
        if new <= 0:
            return [], count, 0
        held = min(new, len(ring))
        events = list(ring)[-held:] if held < len(ring) else list(ring)
        return events, count, new - held

    def recent(self) -> list[dict[str, Any]]:
        """Every event the ring holds, oldest first."""
        return list(self._ring)

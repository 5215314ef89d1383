"""Client names of prepared statements and portals, and the broker's own names for them at
the server.

Why rename. The broker decides a Bind on the statement it believes a name holds, and counts
an Execute's rows against the portal it believes a name holds. When the client's own names
reach the server, one message the server refuses or skips (an error earlier in a pipeline,
an aborted transaction, a name already taken) leaves the two beliefs apart, and the broker
then decides one statement while the server runs another (issue #13, finding 1). So every
Parse gets a server name never used before in the session, and so does every Bind: a name
the broker sends always denotes the one text (or the one portal) it decided, and if the
server does not hold it, the server refuses the message rather than running something
else. The unnamed statement and portal are renamed too (the server's unnamed statement
survives a Parse it skipped). No client name ever reaches the server, so no client can
name the broker's own refusal portal either.

Which client name means which server name changes only on the server's word: a change is
proposed when the message is forwarded (so messages pipelined behind it can be
translated), confirmed by ParseComplete, BindComplete, CloseComplete or a command tag,
and dropped by an ErrorResponse or a skip to Sync. `ahead` answers for the next client
message (every change in flight assumed to succeed); `confirmed` is the server's state.
Where the two part (a change in flight is later dropped), the worst outcome is a message
naming a server name that does not exist: the server refuses it.

broker.pg.server_objects applies this to a session's statements and portals.

SQL-level names. `DEALLOCATE name` is translated to the server name and confirmed by its
command tag, like a Close; `DEALLOCATE ALL` by its tag too. `PREPARE`, `EXECUTE`, `DECLARE`,
`FETCH`, `MOVE` and `CLOSE` are refused by the analyser (42501, with a hint towards the
extended protocol or LIMIT/OFFSET): mapping them would mean rewriting names inside SQL
text the broker then has to re-check, and a cursor read with FETCH is a second row stream
that the per-statement cap does not bound. DEALLOCATE only ever removes a statement, so
translating it cannot open anything.
"""

from __future__ import annotations

import itertools
from collections import deque
from dataclasses import dataclass


@dataclass(slots=True, eq=False)
class Change:
    """One proposed change of the client's namespace: `client` now names `server`, or
    (server None) `client` is freed if it still names `old`; client None: every name."""

    client: str | None
    server: str | None
    old: str | None = None


class NameBook:
    """Client names to server names for one kind of object (statements, or portals)."""

    __slots__ = ("_ahead", "_cleared_ahead", "_confirmed", "_counter", "_in_flight", "_prefix")

    def __init__(self, prefix: str) -> None:
        self._prefix = prefix
        self._counter = itertools.count(1)
        self._confirmed: dict[str, str] = {}
        self._in_flight: deque[Change] = deque()
        self._ahead: dict[str, Change] = {}
        self._cleared_ahead = False

    def fresh(self) -> str:
        """A server name never used in this session (also for a name that must not exist)."""
        return f"{self._prefix}{next(self._counter)}"

    def ahead(self, client: str) -> str | None:
        """The server name `client` will denote once every change in flight succeeds."""
        if not self._in_flight:  # nothing in flight (most messages): the server's state
            return self._confirmed.get(client)
        change = self._ahead.get(client)
        if change is not None:
            return change.server
        return None if self._cleared_ahead else self._confirmed.get(client)

    def confirmed(self, client: str) -> str | None:
        return self._confirmed.get(client)

    def confirmed_names(self) -> list[str]:
        """Every server name a client name denotes now."""
        return list(self._confirmed.values())

    def bind(self, client: str, server: str) -> Change:
        change = Change(client, server)  # _propose, inlined: a Bind per statement
        self._in_flight.append(change)
        self._ahead[client] = change
        return change

    def free(self, client: str, old: str) -> Change:
        return self._propose(Change(client, None, old))

    def free_all(self) -> Change:
        return self._propose(Change(None, None))

    def confirm(self, change: Change) -> list[str]:
        """The server did it; returns the server names no client name reaches any more."""
        self._retire(change)
        if change.client is None:
            gone = list(self._confirmed.values())
            self._confirmed.clear()
            return gone
        previous = self._confirmed.get(change.client)
        if change.server is not None:
            self._confirmed[change.client] = change.server
            return [previous] if previous is not None and previous != change.server else []
        if previous is not None and previous == change.old:
            del self._confirmed[change.client]
            return [previous]
        return []

    def fail(self, change: Change) -> None:
        """The server refused or skipped it: what is ahead is recomputed without it."""
        self._retire(change)
        self._ahead, self._cleared_ahead = {}, False
        for left in self._in_flight:
            self._apply_ahead(left)

    def forget_confirmed(self) -> list[str]:
        """The server dropped every object of this kind (portals at the end of a
        transaction); changes still in flight are for objects made after that."""
        if not self._confirmed:
            return []
        gone = list(self._confirmed.values())
        self._confirmed.clear()
        return gone

    def _propose(self, change: Change) -> Change:
        self._in_flight.append(change)
        self._apply_ahead(change)
        return change

    def _apply_ahead(self, change: Change) -> None:
        if change.client is None:
            self._ahead.clear()
            self._cleared_ahead = True
        else:
            self._ahead[change.client] = change

    def _retire(self, change: Change) -> None:
        in_flight = self._in_flight
        if in_flight and in_flight[0] is change:
            in_flight.popleft()  # the oldest: answers come in order
        else:
            try:
                in_flight.remove(change)
            except ValueError:
                return
        if change.client is None:
            if not any(c.client is None for c in self._in_flight):
                self._cleared_ahead = False
        elif self._ahead.get(change.client) is change:
            del self._ahead[change.client]

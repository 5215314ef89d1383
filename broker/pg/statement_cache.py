"""Analysed statements by their text, for the policy revision they were analysed under.

Applications send the same few statement texts over and over (prepared or not); parsing
costs tens of microseconds, a dictionary lookup well under one. A refusal is cached too:
the same text is refused the same way until the policy changes.
"""

from __future__ import annotations

from broker.pg.sql import SqlRefused, Statement, analyse
from broker.policy.snapshot import PolicySnapshot

DEFAULT_ENTRIES = 4096


class StatementCache:
    def __init__(self, entries: int = DEFAULT_ENTRIES) -> None:
        self._entries = entries
        self._revision = ""
        self._known: dict[str, list[Statement] | SqlRefused] = {}

    def analyse(self, sql: str, snapshot: PolicySnapshot) -> list[Statement]:
        """The statements in `sql`, or SqlRefused; the table map comes from `snapshot`."""
        if snapshot.revision != self._revision:
            self._known, self._revision = {}, snapshot.revision
        found = self._known.get(sql)
        if found is None:
            try:
                found = analyse(sql, snapshot.tables)
            except SqlRefused as exc:
                found = exc
            if len(self._known) >= self._entries:
                self._known.clear()  # texts are few in practice; a flood of unique ones just re-parses
            self._known[sql] = found
        if isinstance(found, SqlRefused):
            # a fresh exception each time: re-raising one instance would grow its traceback
            raise SqlRefused(found.message, found.hint, found.sqlstate)
        return list(found)

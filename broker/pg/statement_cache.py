"""Analysed statements by their text or their shape, for the policy revision they were analysed under.

Applications send the same few statement texts over and over (prepared or not); parsing
costs tens of microseconds, a dictionary lookup well under one. A refusal is cached too:
the same text is refused the same way until the policy changes.

Apps using the simple query protocol put values in the text, so most texts are new; a
text whose shape (its tokens but for literal values, see sql_shape) was analysed and
accepted before is made from that analysis, re-reading the values it depends on. Only
accepted data statements are reused by shape; refusals are cached by exact text only.

A text the cache has not seen is analysed by the SqlAnalyser's worker process (see
broker.pg.analyser). Texts longer than SHAPE_SCAN_LIMIT skip the shape lookup, whose
scanner runs on the event loop. The cache is bounded in bytes of text as well as in
entries: 100 large comment-only statements once kept 155 MB.
"""

from __future__ import annotations

from broker.pg.analyser import Analyser
from broker.pg.sql import SqlRefused, Statement
from broker.pg.sql_shape import Key, Scanned, Template, instantiate, scanned, template
from broker.policy.snapshot import PolicySnapshot

DEFAULT_ENTRIES = 4096
DEFAULT_TEXT_BYTES = 16 << 20
SHAPE_SCAN_LIMIT = 8192
"""Characters of text the shape scanner (on the event loop) reads at most."""


class StatementCache:
    def __init__(
        self, analyser: Analyser, entries: int = DEFAULT_ENTRIES, text_bytes: int = DEFAULT_TEXT_BYTES
    ) -> None:
        self._analyser = analyser
        self._entries = entries
        self._text_bytes = text_bytes
        self._held = 0
        self._revision = ""
        self._known: dict[str, list[Statement] | SqlRefused] = {}
        self._shapes: dict[Key, Template] = {}

    @property
    def held_bytes(self) -> int:
        """Characters of statement text the cache keeps (for tests and metrics)."""
        return self._held

    async def analyse(self, sql: str, snapshot: PolicySnapshot) -> list[Statement]:
        """The statements in `sql`, or SqlRefused; the table map comes from `snapshot`."""
        if snapshot.revision != self._revision:
            self._known, self._shapes, self._revision, self._held = {}, {}, snapshot.revision, 0
        found = self._known.get(sql)
        if found is None:
            shape = scanned(sql) if len(sql) <= SHAPE_SCAN_LIMIT else None
            made = self._by_shape(shape)
            if made is not None:
                return [made]  # not kept by text: texts with inline values rarely repeat
            found = await self._fresh(sql, shape, snapshot)
        if isinstance(found, SqlRefused):
            # a fresh exception each time: re-raising one instance would grow its traceback
            raise SqlRefused(found.message, found.said, found.sqlstate)
        return list(found)

    def _by_shape(self, shape: Scanned | None) -> Statement | None:
        """The statement made from an earlier analysis of the same shape, if there is one."""
        known = self._shapes.get(shape.key) if shape is not None else None
        return instantiate(known, shape) if shape is not None and known is not None else None

    async def _fresh(self, sql: str, shape: Scanned | None, snapshot: PolicySnapshot) -> list[Statement] | SqlRefused:
        """Analyse `sql` and remember the outcome by text, and an accepted single
        statement also by shape."""
        try:
            analysed = await self._analyser.analyse(sql, snapshot.tables)
        except SqlRefused as exc:
            found: list[Statement] | SqlRefused = exc
        else:
            found = [statement for statement, _ in analysed]
            if shape is not None and shape.key not in self._shapes and len(analysed) == 1:
                self._remember_shape(shape, template(shape, *analysed[0]))
        if snapshot.revision != self._revision:
            return found  # the policy changed while the worker was busy: not kept
        if len(self._known) >= self._entries or self._held + len(sql) > self._text_bytes:
            # texts are few in practice; a flood of unique ones just re-parses
            self._known, self._held = {}, 0
        if len(sql) <= self._text_bytes // 64:  # a huge text is analysed again rather than kept
            self._known[sql] = found
            self._held += len(sql)
        return found

    def _remember_shape(self, shape: Scanned, made: Template | None) -> None:
        if made is None:
            return
        if len(self._shapes) >= self._entries:
            self._shapes.clear()
        self._shapes[shape.key] = made

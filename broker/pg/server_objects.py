"""The prepared statements and portals one session holds at the server, under the
broker's names (see broker.pg.names), without I/O.

The session asks here what a client name denotes, and gets back the messages to forward,
each with the `Pending` entry whose answer confirms or drops what the message assumed.
What a server name holds (the text of a Parse, the decision of a Bind) is recorded when
the message is sent: the name is never reused, so the record can only ever describe that
one object. Which client name reaches it is the state, and it follows the server's replies.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass

from broker.pg.names import Change, NameBook
from broker.pg.relay import SKIPPED, Effect, Expect, Metered, Pending
from broker.pg.sql import Statement
from broker.pg.wire import cstring, message

_LENGTH = struct.Struct("!I")
"""A message's length field; Bind, Describe and Execute are framed here, one per statement."""

Forward = list[tuple[bytes, Pending]]
"""Messages for the server, in order, each with what its answer completes."""


@dataclass(frozen=True, slots=True)
class Prepared:
    """A statement as the server has it: what the client sent, and what the broker sent."""

    sql: str
    statement: Statement | None
    branches: frozenset[str] | None
    sent: str
    revision: str
    write_cap: int | None = None
    """The write cap `sent` was built with (see broker.pg.sql.scoped_sql)."""


@dataclass(slots=True)
class Portal:
    """A Bind the broker decided: the execution its rows are counted against, and what
    the decision rested on, so that a later Execute can be decided again."""

    execution: Metered
    prepared: Prepared
    records: int
    revision: str
    batch: int
    """The client read the Bind came in: an Execute in the same read is decided with it."""
    executed: bool = False


class ServerObjects:
    """Client names to the statements and portals the broker made for them at the server."""

    def __init__(self, finish: Callable[[Metered, str], None]) -> None:
        self._finish = finish
        """Ends a portal's execution outside its own answer (the relay's `finish`)."""
        self._statement_names = NameBook("bk_s")
        self._portal_names = NameBook("bk_p")
        self._statements: dict[str, Prepared] = {}
        self._portals: dict[str, Portal] = {}

    # --- what a client name denotes ------------------------------------------------

    def statement(self, client: str) -> tuple[str, Prepared] | None:
        server = self._statement_names.ahead(client)
        prepared = self._statements.get(server) if server is not None else None
        return None if server is None or prepared is None else (server, prepared)

    def statement_taken(self, client: str) -> bool:
        return self._statement_names.ahead(client) is not None

    def portal(self, client: str) -> tuple[str, Portal] | None:
        server = self._portal_names.ahead(client)
        portal = self._portals.get(server) if server is not None else None
        return None if server is None or portal is None else (server, portal)

    def portal_taken(self, client: str) -> bool:
        return self._portal_names.ahead(client) is not None

    def executions(self) -> list[Metered]:
        """Every portal's execution (the session settles the unfinished ones at its end)."""
        return [portal.execution for portal in self._portals.values()]

    # --- messages ------------------------------------------------------------------

    def parse(self, client: str, prepared: Prepared, rest: bytes) -> Forward:
        """A Parse under a fresh name; a Bind pipelined behind it is decided on `prepared`
        and names it, so the server runs that text or refuses the Bind."""
        book = self._statement_names
        out = self._close_unnamed(b"S") if client == "" else []
        server = book.fresh()
        self._statements[server] = prepared
        effect = self._effect(book.bind(client, server), b"S", created=server)
        pending = Pending(Expect.REPLY, reply=b"1", effect=effect, names=((server, client),))
        out.append((message(b"P", cstring(server) + cstring(prepared.sent) + rest), pending))
        return out

    def bind(self, client: str, statement: tuple[str, str], portal: Portal, rest: bytes) -> Forward:
        """A Bind of the statement (server name, client name) into a fresh portal name."""
        book = self._portal_names
        out = self._close_unnamed(b"P") if client == "" and book.ahead("") is not None else []
        server = book.fresh()
        self._portals[server] = portal
        effect = self._effect(book.bind(client, server), b"P", created=server, book=book)
        names = ((server, client), statement)
        body = b"%s\x00%s\x00%s" % (server.encode(), statement[0].encode(), rest)  # broker names: ASCII
        sent = b"B" + _LENGTH.pack(len(body) + 4) + body
        out.append((sent, Pending(Expect.REPLY, reply=b"2", effect=effect, names=names)))
        return out

    def execute(self, client: str, server: str, portal: Portal, max_rows: int) -> Forward:
        portal.executed = True
        pending = Pending(Expect.EXECUTE, [portal.execution], names=((server, client),))
        name = server.encode()  # broker names: ASCII
        return [(b"E" + _LENGTH.pack(len(name) + 9) + name + b"\x00" + _LENGTH.pack(max_rows), pending)]

    def describe(self, what: bytes, client: str) -> Forward:
        book = self._portal_names if what == b"P" else self._statement_names
        server = book.ahead(client) or book.fresh()  # a fresh name: the server says it does not exist
        name = server.encode()  # broker names: ASCII
        sent = b"D" + _LENGTH.pack(len(name) + 6) + what + name + b"\x00"
        return [(sent, Pending(Expect.DESCRIBE, names=((server, client),)))]

    def close(self, what: bytes, client: str) -> Forward:
        book = self._book(what)
        server = book.ahead(client)
        if server is None:  # closing what does not exist is not an error
            return [(message(b"C", what + cstring(book.fresh())), Pending(Expect.REPLY, reply=b"3"))]
        effect = self._effect(book.free(client, server), what)
        pending = Pending(Expect.REPLY, reply=b"3", effect=effect, names=((server, client),))
        return [(message(b"C", what + cstring(server)), pending)]

    def query(self) -> Forward:
        """A simple Query drops the unnamed statement and portal at the server (PostgreSQL
        does so for every Query it runs); under the broker's names they are closed, unseen,
        just before it (and skipped with it after an error, as the server skips the Query)."""
        if self._statement_names.ahead("") is None and self._portal_names.ahead("") is None:
            return []  # a client of the simple protocol only: nothing unnamed to close
        return self._close_unnamed(b"S") + self._close_unnamed(b"P")

    def deallocate(self, names: tuple[str, ...], position: int, pending: Pending) -> str:
        """SQL DEALLOCATE in the broker's names, for the statement at `position` of a
        simple Query; forgotten when its command tag confirms it (not if an earlier
        statement failed, or in an aborted transaction: the server then keeps it)."""
        book = self._statement_names
        effects = pending.effects = pending.effects or {}
        if not names:
            effects[position] = self._effect(book.free_all(), b"S")
            return "DEALLOCATE ALL"
        server = book.ahead(names[0])
        if server is None:  # the server says it does not exist, in the client's name
            server = book.fresh()
        else:
            effects[position] = self._effect(book.free(names[0], server), b"S")
        pending.names += ((server, names[0]),)
        return f"DEALLOCATE {server}"

    def on_ready(self, status: bytes) -> None:
        """ReadyForQuery outside a transaction: the server has dropped every portal."""
        if status == b"I":
            for server in self._portal_names.forget_confirmed():
                self._drop(b"P", server)

    # --- state on the server's word ------------------------------------------------

    def _close_unnamed(self, what: bytes) -> Forward:
        """A new unnamed statement or portal replaces the old one at the server; under the
        broker's names the old one is closed first, unseen by the client."""
        book = self._book(what)
        old = book.ahead("")
        if old is None:
            return []
        effect = self._effect(book.free("", old), what)
        return [(message(b"C", what + cstring(old)), Pending(Expect.REPLY, reply=b"3", silent=True, effect=effect))]

    def _effect(self, change: Change, what: bytes, created: str | None = None, book: NameBook | None = None) -> Effect:
        """Applies `change` when the server confirms it; a server name no client name
        reaches any more is forgotten. Dropped if the server refuses or skips it. (`book`:
        the caller's, when it has it at hand.)"""
        book = book or self._book(what)

        def confirmed() -> None:
            gone = book.confirm(change)
            for name in gone:  # nothing, mostly
                self._drop(what, name)

        def failed() -> None:
            book.fail(change)
            if created is not None:
                self._drop(what, created)

        return Effect(confirmed, failed)

    def _drop(self, what: bytes, server: str) -> None:
        if what == b"S":
            self._statements.pop(server, None)
            return
        portal = self._portals.pop(server, None)
        if portal is not None:  # ended, or never made: its audit says which
            self._finish(portal.execution, "00000" if portal.executed else SKIPPED)

    def _book(self, what: bytes) -> NameBook:
        return self._statement_names if what == b"S" else self._portal_names

"""The server-to-client half of a session, without I/O: which answer belongs to which
request, what to count, what to hold back, and where the broker's own errors go.

Clients pipeline: Parse, Bind, Execute, Sync may all be on the wire before the first
answer. The broker's own errors must reach the client exactly where the server's would
have, so every message forwarded to the server leaves a `Pending` entry here, in order,
and the server's answers complete them one by one. A refusal is sent to the server as
an Execute of a portal that cannot exist: the server fails it (so its transaction state
is exactly PostgreSQL's: aborted inside a transaction block, skipping until Sync in the
extended protocol) and the relay shows the client the broker's error in its place.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import IntEnum

import structlog

from broker.core.decision import Decision
from broker.messages.said import Said, said
from broker.messages.shipped import english
from broker.pg.setting import SHOWN_SETTINGS
from broker.pg.sql import Statement
from broker.pg.sql_write_cap import translated as over_cap_error
from broker.pg.wire import cstring, error_fields, error_response, execute, message

log = structlog.get_logger("broker.pg")

REFUSAL_PORTAL = "\x01broker refused"
"""A portal name no client can create (drivers never put control characters in names)."""
POISON = execute(REFUSAL_PORTAL)

SKIPPED = "skipped"
"""The audit's sqlstate for a statement the server never ran."""

_ASYNC = frozenset((b"N", b"A", b"S"))
_NOTICES_SHOWN = frozenset({"NOTICE", "WARNING", "INFO"})
"""Notice, notification, parameter status: may arrive at any time, belong to nothing."""
_ROWS = frozenset((b"D", b"d"))
"""DataRow and CopyData: what is counted and charged."""


class Expect(IntEnum):
    """What answer a forwarded message waits for. An IntEnum because the relay looks it up
    in a dict for every server message: Enum's hash is a Python-level method, an int's is not."""

    REPLY = 1
    """Parse, Bind, Close: one answer."""
    DESCRIBE = 2
    """Complete at RowDescription or NoData (after ParameterDescription for a statement)."""
    EXECUTE = 3
    """Rows, then CommandComplete, EmptyQueryResponse or PortalSuspended."""
    SYNC = 4
    """ReadyForQuery."""
    QUERY = 5
    """A simple query: one answer per statement, then ReadyForQuery."""


@dataclass(slots=True)
class Metered:
    """One statement's execution: its decisions, its row limit, what was counted."""

    statement: Statement | None
    decisions: list[Decision]
    limit: int
    started: float
    max_bytes: int = 1 << 62
    """What the answer may weigh: one row can carry a whole table (string_agg, a
    recursive CTE concatenating text), so bytes are counted as well as rows."""
    rows: int = 0
    sent_bytes: int = 0
    header: int = 0
    """Leading CopyData messages that are the column names (COPY ... WITH HEADER), passed
    on without being counted as records or weighed as their bytes."""
    done: bool = False
    sqlstate: str = "00000"
    cut: bool = False


@dataclass(slots=True)
class Effect:
    """What the session assumed when it forwarded a message (a name now denotes a
    statement, a portal was closed): `confirmed` when the server did it, `failed` when it
    refused or skipped it. State changes on the server's word, never on the client's."""

    confirmed: Callable[[], None]
    failed: Callable[[], None]


@dataclass(slots=True)
class Pending:
    expect: Expect
    executions: Sequence[Metered] = ()
    """The statements whose rows the answer carries (none for Parse, Bind, Describe, Sync:
    a shared empty tuple, not a list made for each of them)."""
    replacement: bytes | None = None
    """The broker's own error, shown instead of the server's answer to the poison."""
    fatal: bool = False
    silent: bool = False
    """Sent by the broker for itself (aborting a transaction, closing a replaced unnamed
    statement): nothing reaches the client."""
    position: int = 0
    reply: bytes = b""
    """REPLY: the one answer that completes it (ParseComplete "1", BindComplete "2",
    CloseComplete "3"); anything else is a desynchronised stream."""
    effect: Effect | None = None
    effects: dict[int, Effect] | None = None
    """QUERY: the effect of the statement at each position (DEALLOCATE), confirmed by its
    command tag. None when there is none (every other message: no dict per message)."""
    names: tuple[tuple[str, str], ...] = ()
    """(server name, client name) pairs this message used: a server error quoting the
    broker's name is shown with the client's."""


SYNC_PENDING = Pending(Expect.SYNC)
"""What a client's Sync waits for, one for all of them (a Sync per transaction): the relay
changes nothing in a SYNC entry (its position moves only at a completion, which a Sync
never has; it carries no executions, effect or names), so sharing it is safe."""

_COMPLETES = {
    Expect.REPLY: frozenset((b"1", b"2", b"3")),
    Expect.DESCRIBE: frozenset((b"T", b"n")),
    Expect.EXECUTE: frozenset((b"C", b"I", b"s")),
    Expect.SYNC: frozenset(),  # ReadyForQuery ends a SYNC or a QUERY wherever it arrives
    Expect.QUERY: frozenset((b"C", b"I")),
}
_BETWEEN = {
    Expect.REPLY: frozenset(),
    Expect.DESCRIBE: frozenset((b"t",)),  # ParameterDescription, before the row description
    Expect.EXECUTE: frozenset((b"H", b"c")),  # COPY ... TO STDOUT: CopyOutResponse, CopyDone
    Expect.SYNC: frozenset(),
    Expect.QUERY: frozenset((b"T", b"H", b"c")),
}
"""What may arrive before the answer that completes a request. Anything else means the
broker no longer knows which request an answer belongs to, and the session ends."""

_DESYNC = said("desync")
_RECONNECT = said("reconnect")


class Relay:
    def __init__(self) -> None:
        self._pending: deque[Pending] = deque()
        self.out: list[bytes] = []
        self.finished: list[Metered] = []
        self.cut: Metered | None = None
        """A statement that went over its limit: the session cancels it and sets cut_error."""
        self.cut_error = b""
        self._cutting = False
        self._skipping = False
        """The server refused an extended-protocol message: it skips everything (a simple
        Query included) until the next Sync."""
        self.close = False
        self.desynchronised = False
        self.status = b"I"
        self.needs_abort = False
        """A cut inside a transaction left the server's transaction open while the client
        saw an error: the session aborts it before the client's next statement."""
        self.words: Callable[[Said], str] = english
        """The session's `pg` texts in its locale: the broker's own words in place of
        the server's (English until the session sets it)."""
        self.on_ready: Callable[[bytes], None] | None = None
        """Called at every ReadyForQuery with the transaction status, where it sits in the
        stream (portals end with the transaction)."""

    def expect(self, pending: Pending) -> None:
        self._pending.append(pending)

    @property
    def idle(self) -> bool:
        return not self._pending

    def feed(self, kind: bytes, raw: bytes) -> None:
        """One message from the server, header included."""
        if self.desynchronised:
            return
        if kind in _ASYNC:
            if kind == b"N":
                fields = error_fields(raw[5:])
                if fields.get("V", fields.get("S", "")) not in _NOTICES_SHOWN:
                    return  # LOG and DEBUG notices carry plans and statistics (debug_print_plan)
                self._emit(without_values(raw, fields))
            elif kind != b"S" or _shown(raw):
                self._emit(raw)
            return
        if kind == b"E":
            self._on_error(raw)
        elif kind == b"Z":
            self._on_ready(raw)
        elif not self._pending or self._skipping:
            self._desync(kind)
        elif kind in _ROWS:
            self._on_row(self._pending[0], raw)
        elif kind in _COMPLETES[self._pending[0].expect]:
            self._on_complete(self._pending[0], kind, raw)
        elif kind in _BETWEEN[self._pending[0].expect]:
            self._emit(raw, self._pending[0])
        else:
            self._desync(kind)

    def take(self) -> bytes:
        data = b"".join(self.out)
        self.out.clear()
        return data

    def abandon(self) -> list[Metered]:
        """Every execution not finished when the session ends."""
        left = [m for p in self._pending for m in p.executions if not m.done]
        self._pending.clear()
        return left

    def finish(self, execution: Metered, sqlstate: str = SKIPPED) -> None:
        """Done with `execution` outside its own answer (a Bind the server refused, a
        portal whose transaction ended); once only."""
        if not execution.done:
            if execution.sqlstate == "00000":
                execution.sqlstate = sqlstate
            self._finish(execution)

    def _desync(self, kind: bytes) -> None:
        """An answer the broker cannot attribute (a row with no decided statement waiting
        for it, say): nothing more reaches the client, and the session ends."""
        log.error("pg.desynchronised", message=kind.decode("latin-1"), waiting=len(self._pending))
        self.desynchronised = self.close = True
        self._cutting = False
        self.out.append(error_response("FATAL", "08P01", self.words(_DESYNC), hint=self.words(_RECONNECT)))

    def _emit(self, raw: bytes, head: Pending | None = None) -> None:
        if not self._cutting and not (head is not None and head.silent):
            self.out.append(raw)

    def _on_row(self, head: Pending, raw: bytes) -> None:
        if self._cutting:
            return  # the rest of a statement already cut: dropped, never shown
        current = _current(head)
        if current is None or current.done or head.expect not in (Expect.EXECUTE, Expect.QUERY):
            self._desync(raw[:1])  # a row nothing decided is waiting for (or already settled)
            return
        if current.header and raw[:1] == b"d":
            current.header -= 1  # the column names a COPY WITH HEADER sends first: not a record
            self._emit(raw, head)
            return
        if current.rows >= current.limit or current.sent_bytes + len(raw) > current.max_bytes:
            current.cut, current.sqlstate = True, "53400"
            self.cut, self._cutting = current, True
            return
        current.rows += 1
        current.sent_bytes += len(raw)
        self._emit(raw, head)

    def _on_complete(self, head: Pending, kind: bytes, raw: bytes) -> None:
        expect = head.expect
        if expect is Expect.REPLY and kind != head.reply:
            self._desync(kind)
            return
        executions = head.executions
        current = executions[head.position] if head.position < len(executions) else None  # _current, inlined
        if current is not None and current.cut:
            if not current.done:
                self._show_cut_error()
        elif not self._cutting and not head.silent:  # _emit, inlined
            self.out.append(raw)
        if expect is Expect.QUERY:
            effect = head.effects.pop(head.position, None) if head.effects else None
            if effect is not None:
                effect.confirmed()
        elif head.effect is not None:
            head.effect.confirmed()
        if current is not None and kind != b"s":  # PortalSuspended: the portal goes on
            self._finish(current)
        if kind != b"s":
            head.position += 1
        if expect is not Expect.QUERY:
            self._pending.popleft()

    def _on_error(self, raw: bytes) -> None:
        fields = error_fields(raw[5:])
        capped = over_cap_error(fields, self.words)  # a write's row cap guard failed at the server
        if capped is not None:
            raw, fields = capped, {**fields, "C": "42501"}
        if not self._pending or self._skipping:
            if fields.get("S") in ("FATAL", "PANIC"):
                self.close = True
                self.out.append(raw)  # a FATAL on shutdown, say: the client should see it
            else:
                self._desync(b"E")
            return
        head = self._pending[0]
        _fail(head, head.position)
        if head.replacement is not None:
            self._emit(head.replacement, head)
            self.close = self.close or head.fatal
        elif self._cutting:
            self._show_cut_error()
        elif fields.get("S") in ("FATAL", "PANIC"):
            self.close = True
            self._emit(raw, head)
        else:  # the broker's own words for a capped write; the server's only when they hold no data
            self._emit(
                renamed(raw if capped is not None else without_values(raw, fields, self.words), head.names), head
            )
        current = _current(head)
        if current is not None and not current.done:
            current.sqlstate = current.sqlstate if current.cut else fields.get("C", "XX000")
            self._finish(current)
        if head.expect not in (Expect.QUERY, Expect.SYNC):  # a Sync's commit can fail too
            self._pending.popleft()
            self._skipping = True

    def _on_ready(self, raw: bytes) -> None:
        if self._skipping:
            self._skip_to_sync()
        if not self._pending or self._pending[0].expect not in (Expect.SYNC, Expect.QUERY):
            self._desync(b"Z")
            return
        head = self._pending.popleft()
        self._skipping = False
        if head.effect is not None or head.effects:  # _fail's test, inlined: a Sync has neither
            _fail(head, head.position)
        for left in head.executions:
            if not left.done:
                self._finish(left, skipped=True)  # after an error, the rest of a Query never ran
        self.status = raw[5:6]
        if self.on_ready is not None:
            self.on_ready(self.status)
        if self._cutting:
            self._show_cut_error()
            self._cutting = False
            self.needs_abort = self.status == b"T"
            if self.needs_abort:  # the client saw an error: to it the transaction is aborted
                raw = raw[:5] + b"E"
        self._emit(raw, head)

    def _show_cut_error(self) -> None:
        """The broker's 53400 goes where the statement's completion would have."""
        if self.cut_error:
            self.out.append(self.cut_error)
            self.cut_error = b""

    def _skip_to_sync(self) -> None:
        """What the server skipped after an error, up to the Sync whose ReadyForQuery
        has just arrived: Parse, Bind, Close, Execute and simple Queries alike."""
        while self._pending and self._pending[0].expect is not Expect.SYNC:
            skipped = self._pending.popleft()
            _fail(skipped, 0)
            for left in skipped.executions:
                if not left.done:
                    self._finish(left, skipped=True)

    def _finish(self, execution: Metered, *, skipped: bool = False) -> None:
        """Done with `execution`; `skipped` when the server never ran it (it skipped to
        Sync after an error), so the audit trail does not call it a success."""
        execution.done = True
        if skipped and execution.sqlstate == "00000":
            execution.sqlstate = SKIPPED
        self.finished.append(execution)


def _fail(pending: Pending, start: int) -> None:
    """Every effect of `pending` from position `start` on did not happen."""
    if pending.effect is not None:
        effect, pending.effect = pending.effect, None
        effect.failed()
    if pending.effects:
        for position in sorted(p for p in pending.effects if p >= start):
            pending.effects.pop(position).failed()


def renamed(raw: bytes, names: tuple[tuple[str, str], ...]) -> bytes:
    """A server error as the client may see it: the broker's names for statements and
    portals are replaced by the client's ("prepared statement "s3" does not exist")."""
    if not names:
        return raw
    fields = error_fields(raw[5:])
    changed = False
    for tag in ("M", "D", "H"):
        text = fields.get(tag)
        if text is None:
            continue
        for server, client in names:
            if client == "":  # as PostgreSQL words it for the unnamed statement and portal
                text = text.replace(f'prepared statement "{server}"', "unnamed prepared statement")
                text = text.replace(f'portal "{server}"', "unnamed portal")
            text = text.replace(f'"{server}"', f'"{client}"')
        changed = changed or text != fields[tag]
        fields[tag] = text
    if not changed:
        return raw
    body = b"".join(tag.encode("latin-1") + cstring(value) for tag, value in fields.items())
    return message(b"E", body + b"\x00")


_WORDS_KEPT = frozenset(
    {"25P01", "25P02", "25001", "40001", "40P01", "55P03", "57014", "26000", "34000", "42P03", "42P05", "08P01",
     "42P01", "42703", "42883"}
)  # fmt: skip
"""The SQLSTATEs whose server message is passed on: their words name a transaction state,
a lock, a cancel, or names from the client's own statement (its statements and portals,
an unknown table, column or function: the broker runs no SQL built from data), never a
value. Every
other error and notice gets the broker's words: an input function quotes its input
("role "13800000001 Sender 1" does not exist" from a cast to aclitem, a whole tsquery in
a 42601), so any server text is a way out for data that is not counted as a row."""
_CLASSES = {
    code: said(f"class_{code.lower()}")
    for code in ("22", "23", "42", "0A", "53", "54", "XX", "P0", "2B", "55", "57", "58")
}
"""The condition an error's SQLSTATE class names, in the session's words (`pg` texts)."""
_OTHER_CLASS = said("class_other")
_CHECK_VALUES = said("check_values")


def without_values(raw: bytes, fields: dict[str, str], words: Callable[[Said], str] = english) -> bytes:
    """A server error or notice (`raw`, its `fields` read) as the client may see it: the
    server's own words only for the SQLSTATEs in _WORDS_KEPT; otherwise the condition in
    the broker's words, with the SQLSTATE and the position in the statement (a driver
    and a person can still find the mistake) and no detail, context or query text."""
    code = fields.get("C", "")
    if code in _WORDS_KEPT:
        return raw
    condition = words(_CLASSES.get(code[:2], _OTHER_CLASS))
    position = fields.get("P", "")
    if position.isdigit():
        text = words(said("server_error_at", condition=condition, code=code, position=position))
    else:
        text = words(said("server_error", condition=condition, code=code))
    kind = raw[:1]
    extra = ((b"P", position),) if position.isdigit() else ()
    shown = error_response(fields.get("S", "ERROR"), code, text, hint=words(_CHECK_VALUES), extra=extra)
    return kind + shown[1:]


def _shown(raw: bytes) -> bool:
    """A ParameterStatus the client may see (see SHOWN_SETTINGS)."""
    name = raw[5 : raw.find(b"\0", 5)].decode("utf-8", "replace").lower()
    return name in SHOWN_SETTINGS


def _current(head: Pending) -> Metered | None:
    if head.position < len(head.executions):
        return head.executions[head.position]
    return None

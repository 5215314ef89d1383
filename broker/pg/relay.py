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
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum

from broker.core.decision import Decision
from broker.pg.setting import SHOWN_SETTINGS
from broker.pg.sql import Statement
from broker.pg.sql_write_cap import translated as over_cap_error
from broker.pg.wire import error_fields, error_response, execute

REFUSAL_PORTAL = "\x01broker refused"
"""A portal name no client can create (drivers never put control characters in names)."""
POISON = execute(REFUSAL_PORTAL)

SKIPPED = "skipped"
"""The audit's sqlstate for a statement the server never ran."""

_ASYNC = frozenset((b"N", b"A", b"S"))
"""Notice, notification, parameter status: may arrive at any time, belong to nothing."""
_ROWS = frozenset((b"D", b"d"))
"""DataRow and CopyData: what is counted and charged."""


class Expect(Enum):
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
    done: bool = False
    sqlstate: str = "00000"
    cut: bool = False


@dataclass(slots=True)
class Pending:
    expect: Expect
    executions: list[Metered] = field(default_factory=list)
    replacement: bytes | None = None
    """The broker's own error, shown instead of the server's answer to the poison."""
    fatal: bool = False
    silent: bool = False
    """Sent by the broker for itself (aborting a transaction): nothing reaches the client."""
    position: int = 0
    failed: Callable[[], None] | None = None
    """Called when the server refused or skipped this message: what the session assumed
    when it forwarded it (a statement prepared under a name) did not happen."""


_COMPLETES = {
    Expect.REPLY: frozenset((b"1", b"2", b"3")),
    Expect.DESCRIBE: frozenset((b"T", b"n")),
    Expect.EXECUTE: frozenset((b"C", b"I", b"s")),
    Expect.SYNC: frozenset(),  # ReadyForQuery ends a SYNC or a QUERY wherever it arrives
    Expect.QUERY: frozenset((b"C", b"I")),
}


class Relay:
    def __init__(self) -> None:
        self._pending: deque[Pending] = deque()
        self.out: list[bytes] = []
        self.finished: list[Metered] = []
        self.cut: Metered | None = None
        """A statement that went over its limit: the session cancels it and sets cut_error."""
        self.cut_error = b""
        self._cutting = False
        self.close = False
        self.status = b"I"
        self.needs_abort = False
        """A cut inside a transaction left the server's transaction open while the client
        saw an error: the session aborts it before the client's next statement."""

    def expect(self, pending: Pending) -> None:
        self._pending.append(pending)

    @property
    def idle(self) -> bool:
        return not self._pending

    def feed(self, kind: bytes, raw: bytes) -> None:
        """One message from the server, header included."""
        if kind in _ASYNC:
            if kind != b"S" or _shown(raw):
                self._emit(raw)
            return
        if not self._pending:
            self._emit(raw)  # a FATAL on shutdown, say: the client should see it
            return
        head = self._pending[0]
        if kind == b"E":
            self._on_error(head, raw)
        elif kind == b"Z":
            self._on_ready(raw)
        elif kind in _ROWS:
            self._on_row(head, raw)
        elif kind in _COMPLETES[head.expect]:
            self._on_complete(head, kind, raw)
        else:
            self._emit(raw, head)

    def take(self) -> bytes:
        data = b"".join(self.out)
        self.out.clear()
        return data

    def abandon(self) -> list[Metered]:
        """Every execution not finished when the session ends."""
        left = [m for p in self._pending for m in p.executions if not m.done]
        self._pending.clear()
        return left

    def _emit(self, raw: bytes, head: Pending | None = None) -> None:
        if not self._cutting and not (head is not None and head.silent):
            self.out.append(raw)

    def _on_row(self, head: Pending, raw: bytes) -> None:
        current = _current(head)
        if current is None or self._cutting:
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
        current = _current(head)
        if current is not None and current.cut and not current.done:
            self._show_cut_error()
        elif not (current is not None and current.cut):
            self._emit(raw, head)
        if current is not None and kind != b"s":  # PortalSuspended: the portal goes on
            self._finish(current)
            head.position += 1
        if head.expect is not Expect.QUERY:
            self._pending.popleft()

    def _on_error(self, head: Pending, raw: bytes) -> None:
        fields = error_fields(raw[5:])
        capped = over_cap_error(fields)  # a write's row cap guard failed at the server
        if capped is not None:
            raw, fields = capped, {**fields, "C": "42501"}
        if head.failed is not None:
            head.failed()
        if head.replacement is not None:
            self._emit(head.replacement, head)
            self.close = self.close or head.fatal
        elif self._cutting:
            self._show_cut_error()
        elif fields.get("S") in ("FATAL", "PANIC"):
            self.close = True
            self._emit(raw, head)
        else:
            self._emit(without_values(raw, fields), head)
        current = _current(head)
        if current is not None and not current.done:
            current.sqlstate = current.sqlstate if current.cut else fields.get("C", "XX000")
            self._finish(current)
        if head.expect is not Expect.QUERY:
            self._skip_to_sync()

    def _on_ready(self, raw: bytes) -> None:
        self._skip_to_sync()  # entries the server skipped after an error
        if not self._pending:
            self._emit(raw)
            return
        head = self._pending.popleft()
        for left in head.executions:
            if not left.done:
                self._finish(left, skipped=True)  # after an error, the rest of a Query never ran
        self.status = raw[5:6]
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
        while self._pending and self._pending[0].expect not in (Expect.SYNC, Expect.QUERY):
            skipped = self._pending.popleft()
            if skipped.failed is not None:
                skipped.failed()
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


_VALUE_BEARING = ("22", "23")
"""Data exceptions and integrity violations: PostgreSQL quotes the offending value
("invalid input syntax for type integer: "13800000001"", "Key (waybill_no)=(...) already
exists"), and an error is a way out for data that is not counted as a row."""


def without_values(raw: bytes, fields: dict[str, str]) -> bytes:
    """A server error (`raw`, its `fields` read) as the client may see it: for the classes
    that quote values, the message names only the condition, and the detail, context and
    query text are dropped."""
    code = fields.get("C", "")
    if not code.startswith(_VALUE_BEARING):
        return raw
    return error_response(
        fields.get("S", "ERROR"),
        code,
        f"the database refused a value (SQLSTATE {code}); the broker does not pass on the value itself",
        hint="Check the values and types in the statement.",
    )


def _shown(raw: bytes) -> bool:
    """A ParameterStatus the client may see (see SHOWN_SETTINGS)."""
    name = raw[5 : raw.find(b"\0", 5)].decode("utf-8", "replace").lower()
    return name in SHOWN_SETTINGS


def _current(head: Pending) -> Metered | None:
    if head.position < len(head.executions):
        return head.executions[head.position]
    return None

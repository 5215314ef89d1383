"""One employee's session through the PostgreSQL door, after login.

The client's messages are read here, one at a time: each statement is analysed, decided
by the core (at Parse without charging, at Bind or Query with the quota), rewritten to
the employee's branches, and forwarded. The server's answers go through the Relay,
which counts rows and puts the broker's own errors where the server's would be.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass

import structlog

from broker.admin.metrics import Metrics
from broker.audit.log import AuditSink
from broker.core.access import UNBOUNDED, Access, Refusal
from broker.core.decision import Decision
from broker.core.guard import Guard
from broker.core.reason import Reason
from broker.messages.catalogue import Catalogue
from broker.messages.said import Said, said
from broker.messages.shipped import catalogue_of
from broker.pg.backend import SERVER_MESSAGE_LIMIT, BackendAddress, BackendSession, send_cancel
from broker.pg.relay import POISON, SYNC_PENDING, Expect, Metered, Pending, Relay
from broker.pg.row_security import employee_value, principal_value
from broker.pg.server_objects import Forward, Portal, Prepared, ServerObjects
from broker.pg.sql import SqlRefused, Statement, check_insert_branches, row_bound, scoped_sql
from broker.pg.sqlstate import decision_detail, decision_error, said_error, sqlstate_of
from broker.pg.statement_cache import StatementCache
from broker.pg.statement_event import statement_event
from broker.pg.wire import (
    SYNC,
    Bind,
    Cursor,
    MessageBuffer,
    ProtocolViolation,
    cstring,
    error_response,
    message,
    read_bind,
    read_execute,
    read_query,
    read_target,
)
from broker.policy.holder import PolicyHolder
from broker.policy.snapshot import PolicySnapshot

log = structlog.get_logger("broker.pg")

READ_CHUNK = 256 * 1024
ACCESSES_KEPT = 256
"""Access objects a session keeps for reuse (see Session._accesses)."""
BRANCHES_CHANGED = SqlRefused(
    "your branches changed since this session began (the access policy was reloaded), and the database "
    "session carries the branches it began with, so the broker ended it",
    said("reconnect_branches"),
    "57P01",
)
"""Why a session ends when a reload changes the employee's branches (FATAL: see
broker.pg.row_security; only read, never raised)."""
_PASSED_ON = frozenset((b"H", b"d", b"c", b"f"))
_REFUSAL_REASONS = {
    "42601": Reason.STATEMENT_BAD_SYNTAX,
    "22023": Reason.STATEMENT_BAD_PARAMETER,  # a LIMIT parameter that is not a number
    "22021": Reason.STATEMENT_BAD_PARAMETER,  # a branch parameter that is not UTF-8
    "08P01": Reason.STATEMENT_BAD_PARAMETER,  # a parameter the Bind did not send
}
"""The audit's reason for a statement the analyser refused, by the SQLSTATE it chose."""


@dataclass(frozen=True, slots=True)
class DoorServices:
    """What every session of the door shares."""

    address: BackendAddress
    guard: Guard
    policy: PolicyHolder
    cache: StatementCache
    audit: AuditSink
    max_message_bytes: int
    max_statement_bytes: int
    max_result_bytes: int
    bytes_per_record: int
    metrics: Metrics


@dataclass(frozen=True, slots=True)
class Caller:
    """Who this session is: the login decision, the token each statement is decided
    with (it may expire mid-session), and where they connect from."""

    login: Decision
    credential: str
    peer: str
    language: str = ""
    """`lc_messages` from start-up: the language refusals are worded in."""


class Session:
    """One login's session: reads the client's messages, decides and forwards them (the
    client-to-server half), and runs the Relay over the server's answers (the other)."""

    def __init__(
        self,
        client: tuple[asyncio.StreamReader, asyncio.StreamWriter],
        backend: BackendSession,
        services: DoorServices,
        caller: Caller,
    ) -> None:
        self._reader, self._writer = client
        self._backend = backend
        self._services = services
        self._caller = caller
        self._guard = services.guard  # the one used on every statement, kept at hand
        self._relay = Relay()
        self._relay.words = self._words
        self._objects = ServerObjects(self._relay.finish)
        self._relay.on_ready = self._objects.on_ready
        self._batch = 0
        self._discarding = False
        self._tasks: set[asyncio.Task[None]] = set()
        self._cancelling: asyncio.Task[None] | None = None
        self._outbox: list[bytes] = []
        self._handlers: dict[bytes, Callable[[bytes], Awaitable[None]]] = {
            b"Q": self._query,
            b"P": self._parse,
            b"B": self._bind,
            b"E": self._execute,
            b"D": self._describe,
            b"C": self._close,
            b"S": self._sync,
            b"F": self._function_call,
        }
        self._quick: dict[bytes, Callable[[bytes], bool]] = {
            b"E": self._execute_now,
            b"D": self._describe_now,
            b"S": self._sync_now,
        }
        """Handlers that need no await in the common case, called without a coroutine
        (two a message otherwise: the dispatch's and the handler's); False sends the
        message down the awaited path after all (an Execute to be decided again)."""
        self.statements = 0
        self.rows = 0
        self._branches = principal_value(caller.login.principal)
        """The row-security setting the server session was opened with (see
        broker.pg.row_security): it cannot change while the session lives."""
        self._branches_revision = caller.login.revision
        """The policy revision `_branches` was last found right under."""
        self._accesses: dict[tuple[str, str, str, int], Access] = {}
        """The session's Access objects by (statement fingerprint, resource, action,
        records): immutable, and the same few statements come again and again (a frozen
        dataclass's __init__ sets each of its ten fields through object.__setattr__)."""

    async def run(self) -> str:
        """Serve until either side closes; returns why the session ended."""
        client = asyncio.create_task(self._pump_client(), name="pg-client-pump")
        server = asyncio.create_task(self._pump_server(), name="pg-server-pump")
        try:
            done, _ = await asyncio.wait((client, server), return_when=asyncio.FIRST_COMPLETED)
            first = done.pop()
            return first.result() if first.exception() is None else f"failed: {first.exception()!r}"
        finally:
            for task in (client, server, *self._tasks):
                task.cancel()
            await asyncio.gather(client, server, *self._tasks, return_exceptions=True)
            left = {id(m): m for m in (*self._relay.abandon(), *self._objects.executions()) if not m.done}
            for execution in left.values():  # each once: a portal may also be awaiting its answer
                await self._finished(execution)
            await self._backend.close()

    def shutdown(self) -> None:
        """The broker is stopping: end the session as if the client had left."""
        self._writer.close()

    async def cancel(self) -> None:
        """A CancelRequest carrying this session's key: pass it on to the server."""
        await send_cancel(self._services.address, self._backend.pid, self._backend.key, 5.0)

    # --- client to server ----------------------------------------------------------

    async def _pump_client(self) -> str:
        """Messages the client sent together (Bind, Execute, Sync: one packet) reach the
        server together too: one write per read, not one per message. On loopback each
        write is a syscall that wakes the server, and it was most of the door's CPU."""
        # a statement's characters take at most 4 bytes each in UTF-8; a Parse adds its
        # name and parameter types (bounded by the message limit as a whole)
        statement = 4 * self._services.max_statement_bytes + 4096
        buffer = MessageBuffer(self._services.max_message_bytes, {ord("Q"): statement, ord("P"): 2 * statement})
        while True:
            try:
                data = await self._reader.read(READ_CHUNK)
                messages = buffer.feed(data)
            except ConnectionError:
                return "client closed"
            except ProtocolViolation as exc:
                await self._fatal("08P01", f"protocol violation: {exc}")
                return "protocol violation"
            if not data:
                return "client closed"
            self._batch += 1
            try:
                quick, relay = self._quick, self._relay
                for kind, raw in messages:
                    if kind == b"X":
                        return "client terminated"
                    handler = quick.get(kind)
                    if (
                        handler is not None
                        and self._cancelling is None
                        and not relay.needs_abort
                        and (not self._discarding or kind == b"S")
                        and handler(raw[5:])
                    ):  # _on_client's checks, and its handler, without awaiting
                        if relay.close:
                            return "closed by the broker"
                        continue
                    if not await self._on_client(kind, raw[5:]):
                        return "closed by the broker"
            except ProtocolViolation as exc:  # a malformed Bind, Parse, ...
                await self._fatal("08P01", f"protocol violation: {exc}")
                return "protocol violation"
            finally:
                self._flush()
            await self._backend.writer.drain()

    async def _on_client(self, kind: bytes, payload: bytes) -> bool:
        if self._cancelling is not None:
            # the cancel of a cut statement must land before anything else is sent, or
            # it could cancel the client's next statement instead
            await asyncio.wait([self._cancelling])
            self._cancelling = None
        if self._discarding and kind != b"S":
            return True
        if self._relay.needs_abort:
            self._abort_server_transaction()
        if kind in _PASSED_ON:  # Flush, and COPY FROM STDIN data: nothing to decide
            self._outbox.append(message(kind, payload))
            return True
        handler = self._handlers.get(kind)
        if handler is None:
            await self._fatal("08P01", f"unexpected message type {kind!r} from the client")
            return False
        await handler(payload)
        return not self._relay.close

    async def _query(self, payload: bytes) -> None:
        sql = read_query(payload)
        snapshot = self._services.policy.current
        started = time.perf_counter()
        statements = await self._analysed(sql, snapshot, extended=False)
        if statements is None:
            return
        executions: list[Metered] = []
        for statement in statements:
            execution = await self._decided(statement, snapshot, _static_bound(statement), started, extended=False)
            if execution is None:
                await self._release(executions)
                return
            executions.append(execution)
        # one statement per Query, mostly: its decisions as they are, not copied into a new list
        decided = executions[0].decisions if len(executions) == 1 else [d for e in executions for d in e.decisions]
        branches = _branches(decided)
        try:
            cap = _write_cap(decided)
            texts = [scoped_sql([s], branches, cap) if s.deallocates is None else "" for s in statements]
        except SqlRefused as exc:  # an INSERT of a row into another branch
            await self._release(executions)
            await self._refuse_sql(sql, exc, extended=False)
            return
        pending = Pending(Expect.QUERY, executions)
        for position, statement in enumerate(statements):
            if statement.deallocates is not None:
                texts[position] = self._objects.deallocate(statement.deallocates, position, pending)
        self.statements += len(statements)
        text = "; ".join(texts) if statements else sql
        closing = self._objects.query()
        if closing:
            self._send(closing)
        self._forward(message(b"Q", cstring(text)), pending)

    async def _parse(self, payload: bytes) -> None:
        fields = Cursor(payload)
        name, sql, rest = fields.cstring(), fields.cstring(), fields.rest()
        if self._reserved(name):
            return
        if name and self._objects.statement_taken(name):
            # The server would refuse it too, and keep the old statement: the broker must
            # never believe a statement is prepared that the server does not run.
            self._refuse(error_response("ERROR", "42P05", f'prepared statement "{name}" already exists'))
            return
        snapshot = self._services.policy.current
        started = time.perf_counter()
        statements = await self._analysed(sql, snapshot, extended=True)
        if statements is None:
            return
        if len(statements) > 1:
            refusal = SqlRefused("cannot insert multiple commands into a prepared statement", None, "42601")
            await self._refuse_sql(sql, refusal, extended=True)
            return
        statement = statements[0] if statements else None
        bound = _static_bound(statement) if statement and statement.rows.param is None else 0
        checked = await self._decided(statement, snapshot, bound, started, extended=True, meter=False)
        if checked is None:
            return
        branches, cap = _branches(checked.decisions), _write_cap(checked.decisions)
        try:
            text = scoped_sql([statement], branches, cap) if statement else sql
        except SqlRefused as exc:
            await self._refuse_sql(sql, exc, extended=True)
            return
        revision = snapshot.revision if snapshot else ""
        self._send(self._objects.parse(name, Prepared(sql, statement, branches, text, revision, cap), rest))

    async def _as_live_policy_reads(
        self, prepared: Prepared, snapshot: PolicySnapshot | None
    ) -> list[Statement] | None:
        """The prepared statement as the live policy reads it (None after refusing it): a
        reload may have changed the table map since Parse."""
        if snapshot is None or snapshot.revision == prepared.revision:
            return [prepared.statement] if prepared.statement else []
        return await self._analysed(prepared.sql, snapshot, extended=True)

    async def _bind(self, payload: bytes) -> None:
        bound = read_bind(payload)
        if not (bound.portal + bound.statement).isprintable() and (
            self._reserved(bound.portal) or self._reserved(bound.statement)
        ):
            return
        found = self._objects.statement(bound.statement)
        if found is None:
            self._refuse(
                error_response("ERROR", "26000", f"{_named('prepared statement', bound.statement)} does not exist")
            )
            return
        server_statement, prepared = found
        if bound.portal and self._objects.portal_taken(bound.portal):
            self._refuse(error_response("ERROR", "42P03", f'portal "{bound.portal}" already exists'))
            return
        started, snapshot = time.perf_counter(), self._services.policy.current
        if snapshot is not None and snapshot.revision == prepared.revision:  # _as_live_policy_reads, inlined
            statement = prepared.statement
        else:
            live = await self._as_live_policy_reads(prepared, snapshot)
            if live is None:
                return
            statement = live[0] if live else None
        try:
            limit = row_bound(statement.rows, bound.params, bound.formats) if statement else 0
        except SqlRefused as exc:
            await self._refuse_sql(statement.sql if statement else "", exc, extended=True)
            return
        records = UNBOUNDED if limit is None else limit
        execution = await self._decided(statement, snapshot, records, started, extended=True)
        if execution is None:
            return
        refused = self._unlike_prepared(prepared, execution, bound)
        if refused is not None:
            await self._release([execution])
            await self._refuse_sql(refused[0], refused[1], extended=True)
            return
        portal = Portal(execution, prepared, records, snapshot.revision if snapshot else "", self._batch)
        self.statements += 1
        rest = payload[bound.rest_at :]
        self._send(self._objects.bind(bound.portal, (server_statement, bound.statement), portal, rest))

    def _unlike_prepared(self, prepared: Prepared, execution: Metered, bound: Bind) -> tuple[str, SqlRefused] | None:
        """Checks with the branches decided now, not at Parse (a reload may have taken one
        away): the text the server holds must be what the policy would send today, and an
        INSERT's rows must belong to the employee's branches. None when they hold, else the
        statement's text and why it is refused (the caller releases and refuses: a plain
        function, not a coroutine, for the common case)."""
        statement, branches = execution.statement, _branches(execution.decisions)
        if statement is None:
            return None
        cap = _write_cap(execution.decisions)
        try:
            if statement is prepared.statement and branches == prepared.branches and cap == prepared.write_cap:
                # scoped_sql is a pure function of these three, and they are what Parse
                # built the server's text from (it did not raise then either): the same
                # text, without building it again for every Bind.
                sent = prepared.sent
            else:
                sent = scoped_sql([statement], branches, cap)
            if statement.kind == "insert":
                check_insert_branches(statement, branches, bound.params, bound.formats)
        except SqlRefused as exc:
            return statement.sql, exc
        if sent != prepared.sent:
            refused = SqlRefused(
                "the policy changed what this prepared statement may see since it was prepared",
                said("prepare_again"),
                "0A000",
            )
            return statement.sql, refused
        return None

    async def _still_decided(self, portal: Portal) -> bool:
        """Every Execute is decided: a portal may be executed long after its Bind (a
        suspended portal read in chunks), and by then the token may have expired, the
        shift ended, or a reload moved the employee to another branch. An Execute in the
        same client read as its Bind is decided with it. False after refusing (the portal
        is then finished: the broker never executes it again)."""
        snapshot = self._services.policy.current
        revision = snapshot.revision if snapshot else ""
        if portal.batch == self._batch and revision == portal.revision:
            return True
        started, statement = time.perf_counter(), portal.execution.statement
        if snapshot is None or revision == portal.revision:
            decision = await self._guard.decide_login(self._access(statement, "", "", 0))
            if decision.allowed:
                return True
            await self._finished(portal.execution)
            await self._denied(statement, [decision], started, extended=True, metered=False)
            return False
        if not await self._decided_again(portal, snapshot, started):
            await self._finished(portal.execution)
            return False
        portal.revision = revision
        return True

    async def _decided_again(self, portal: Portal, snapshot: PolicySnapshot, started: float) -> bool:
        """The portal under a policy reloaded since its Bind: allowed, without charging
        again (its records were reserved at Bind), only if the statement it runs is still
        what the live policy would send. False after refusing."""
        live = await self._as_live_policy_reads(portal.prepared, snapshot)
        if live is None:
            return False
        statement = live[0] if live else None
        checked = await self._decided(statement, snapshot, portal.records, started, extended=True, meter=False)
        if checked is None:
            return False
        try:
            decisions = checked.decisions
            sent = (
                scoped_sql([statement], _branches(decisions), _write_cap(decisions))
                if statement
                else portal.prepared.sent
            )
            unchanged = sent == portal.prepared.sent
        except SqlRefused:
            unchanged = False
        if not unchanged:
            refused = SqlRefused(
                "The access policy changed while this result was being read (your branches are not what they "
                "were when the statement started), so the broker stopped it",
                said("run_again"),
                "0A000",
            )
            await self._refuse_sql(portal.prepared.sql, refused, extended=True)
        return unchanged

    def _execute_now(self, payload: bytes) -> bool:
        """`_execute` when the portal is decided already (its Bind came in the same client
        read, under the live policy) or the Execute is refused for its name: no await.
        False: it must be decided again (see _still_decided)."""
        name, max_rows = read_execute(payload)
        if not name.isprintable() and self._reserved(name):
            return True
        found = self._objects.portal(name)
        if found is None or found[1].execution.done:
            self._refuse(error_response("ERROR", "34000", f"{_named('portal', name)} does not exist"))
            return True
        server, portal = found
        snapshot = self._services.policy.current
        if portal.batch != self._batch or (snapshot.revision if snapshot else "") != portal.revision:
            return False
        self._send(self._objects.execute(name, server, portal, max_rows))
        return True

    def _describe_now(self, payload: bytes) -> bool:
        """`_describe`, without a coroutine (it never awaits)."""
        what, name = read_target(payload)
        if name.isprintable() or not self._reserved(name):
            self._send(self._objects.describe(what, name))
        return True

    def _sync_now(self, payload: bytes) -> bool:
        """`_sync`, without a coroutine (it never awaits)."""
        self._discarding = False
        self._forward(message(b"S", payload) if payload else SYNC, SYNC_PENDING)
        return True

    async def _execute(self, payload: bytes) -> None:
        name, max_rows = read_execute(payload)
        if not name.isprintable() and self._reserved(name):
            return
        found = self._objects.portal(name)
        if found is None or found[1].execution.done:
            self._refuse(error_response("ERROR", "34000", f"{_named('portal', name)} does not exist"))
            return
        server, portal = found
        if await self._still_decided(portal):
            self._send(self._objects.execute(name, server, portal, max_rows))

    async def _describe(self, payload: bytes) -> None:
        self._describe_now(payload)

    async def _close(self, payload: bytes) -> None:
        what, name = read_target(payload)
        if self._reserved(name):
            return
        self._send(self._objects.close(what, name))

    def _reserved(self, name: str) -> bool:
        """Names with control characters belong to the broker (its refusal portal is one).
        (The per-transaction handlers test `name.isprintable()` first and call this only
        when it fails: a method call per message is measurable.)
        Client names never reach the server anyway (broker.pg.names), so this is a second
        fence: were a client able to name the refusal portal, the broker's refusals would
        run its query."""
        if name.isprintable() or not name:
            return False
        self._refuse(self._said("42602", said("reserved_name"), said("printable_names")))
        return True

    async def _sync(self, payload: bytes) -> None:
        self._sync_now(payload)

    async def _function_call(self, payload: bytes) -> None:
        self._refuse(self._said("42501", said("function_call"), said("function_call_hint")), extended=False)

    # --- deciding ------------------------------------------------------------------

    async def _analysed(self, sql: str, snapshot: PolicySnapshot | None, *, extended: bool) -> list[Statement] | None:
        if snapshot is None:
            refused = SqlRefused("no valid policy is loaded", said("retry_shortly"))
            await self._refuse_sql(sql, refused, extended=extended)
            return None
        try:
            if len(sql) > self._services.max_statement_bytes:
                raise SqlRefused(
                    f"the statement is {len(sql)} characters long; the broker checks at most "
                    f"{self._services.max_statement_bytes}",
                    said("split_statement"),
                    "54000",
                )
            return await self._services.cache.analyse(sql, snapshot)
        except SqlRefused as exc:
            await self._refuse_sql(sql, exc, extended=extended)
            return None

    async def _decided(
        self,
        statement: Statement | None,
        snapshot: PolicySnapshot | None,
        records: int,
        started: float,
        *,
        extended: bool,
        meter: bool = True,
    ) -> Metered | None:
        """The statement's decisions (one per resource and action it touches), or None
        after refusing it; every reservation made before a refusal is released."""
        if snapshot is not None and snapshot.revision != self._branches_revision and not self._same_branches(snapshot):
            await self._refuse_sql(statement.sql if statement else "", BRANCHES_CHANGED, extended=extended, fatal=True)
            return None
        decisions: list[Decision] = []
        touched = _touched(statement)
        for resource, action in touched:
            access = self._access(statement, resource, action, records)
            decision = await self._guard.decide(access, snapshot, meter=meter)
            decisions.append(decision)
            if not decision.allowed:
                await self._denied(statement, decisions, started, extended=extended, metered=meter)
                return None
        if not touched:
            # A statement that touches no mapped table is still decided: the token may have
            # expired, the shift ended or the employee left the roster since the login.
            decisions.append(await self._guard.decide_login(self._access(statement, "", "", 0)))
            if not decisions[-1].allowed:
                await self._denied(statement, decisions, started, extended=extended, metered=meter)
                return None
        limit = UNBOUNDED
        for decision in decisions:  # a loop, not min() over a generator: once per statement
            if decision.access.resource and decision.allowed_records < limit:
                limit = decision.allowed_records
        max_bytes = self._services.max_result_bytes
        if limit < UNBOUNDED:
            max_bytes = min(max_bytes, max(limit, 1) * self._services.bytes_per_record)
        header = statement.header_rows if statement else 0
        return Metered(statement, decisions, limit, started, max_bytes=max_bytes, header=header)

    async def _denied(
        self, statement: Statement | None, decisions: list[Decision], started: float, *, extended: bool, metered: bool
    ) -> None:
        """Refuse a statement whose last decision denied it (earlier reservations released)."""
        decision = decisions[-1]
        fatal = decision.reason.is_identity
        execution = Metered(statement, decisions, 0, started, sqlstate=sqlstate_of(decision, fatal=fatal))
        await self._finished(execution, metered=metered)
        self._refuse(self._worded(decision, fatal=fatal), extended=extended, fatal=fatal)

    def _same_branches(self, snapshot: PolicySnapshot) -> bool:
        """Whether the employee's branches under `snapshot` are still those the server
        session's row-security setting holds. An employee the roster does not list (one an
        identity provider vouches for, or one removed, whom the decision refuses) keeps
        the setting their login gave."""
        employee_id = self._caller.login.employee
        employee = snapshot.index.employees.get(employee_id) if employee_id else None
        if employee is not None and employee_value(employee) != self._branches:
            return False
        self._branches_revision = snapshot.revision
        return True

    def _access(self, statement: Statement | None, resource: str, action: str, records: int) -> Access:
        key = (statement.fingerprint if statement else "", resource, action, records)
        access = self._accesses.get(key)
        if access is None:
            if len(self._accesses) >= ACCESSES_KEPT:
                self._accesses.clear()
            caller = self._caller
            access = Access(caller.credential, caller.peer, f"sql {key[0]}", resource, action, None, records)
            self._accesses[key] = access
        return access

    async def _refuse_sql(self, sql: str, refused: SqlRefused, *, extended: bool, fatal: bool = False) -> None:
        """A statement the broker will not run: decided (so identified and audited) as a
        refusal, shown with the analyser's SQLSTATE and hint (`fatal`: and the session ends)."""
        reason = _REFUSAL_REASONS.get(refused.sqlstate, Reason.STATEMENT_REFUSED)
        access = Access(self._caller.credential, self._caller.peer, "sql", refusal=Refusal(reason, refused.message))
        decision = await self._guard.decide(access)
        self._audit_statement(Metered(None, [decision], 0, time.perf_counter(), sqlstate=refused.sqlstate), sql=sql)
        if decision.reason is reason:  # the reason's message in the session's locale (English: the cause itself)
            catalogue, locale = self._speaking()
            message = catalogue.speak_bare(reason, locale, refused.message).detail
            hint = catalogue.words(refused.said, locale) if refused.said is not None else ""
            severity = "FATAL" if fatal else "ERROR"
            error = error_response(severity, refused.sqlstate, f"{message} [{reason.value}]", hint=hint)
        else:
            error = self._worded(decision, fatal=decision.reason.is_identity)
        self._refuse(error, extended=extended, fatal=fatal or decision.reason.is_identity)

    def _worded(self, decision: Decision, *, fatal: bool) -> bytes:
        """The refusal in the session's language, from the live policy's catalogue."""
        return decision_error(decision, *self._speaking(), fatal=fatal)

    def _speaking(self) -> tuple[Catalogue, str]:
        """The live policy's catalogue and this session's locale in it (refusals only:
        a reload may change both, and nothing on the allowed path asks)."""
        catalogue = catalogue_of(self._services.policy.current)
        return catalogue, catalogue.locale_for_pg(self._caller.language)

    def _words(self, text: Said) -> str:
        """A `pg` text in the session's language (the relay's words for the server's)."""
        catalogue, locale = self._speaking()
        return catalogue.words(text, locale)

    def _said(self, code: str, message: Said, hint: Said, *, tail: str = "", detail: str = "") -> bytes:
        """An ErrorResponse of the door's own, in the session's language."""
        return said_error(*self._speaking(), "ERROR", code, message, hint, tail=tail, detail=detail)

    def _refuse(self, error: bytes, *, extended: bool = True, fatal: bool = False) -> None:
        """Fail the server in the broker's place (see relay.py) and show `error` instead."""
        self._forward(POISON, Pending(Expect.EXECUTE, replacement=error, fatal=fatal))
        if extended:
            self._discarding = True
        else:
            self._forward(SYNC, Pending(Expect.SYNC))

    def _abort_server_transaction(self) -> None:
        self._relay.needs_abort = False
        self._forward(POISON, Pending(Expect.EXECUTE, replacement=b"", silent=True))
        self._forward(SYNC, Pending(Expect.SYNC, silent=True))

    def _send(self, messages: Forward) -> None:
        expect, outbox = self._relay.expect, self._outbox
        for data, pending in messages:  # _forward, inlined: a call per message is measurable
            expect(pending)
            outbox.append(data)

    def _forward(self, data: bytes, pending: Pending) -> None:
        """Queue `data` for the server; its answer is expected from now on."""
        self._relay.expect(pending)
        self._outbox.append(data)

    def _flush(self) -> None:
        if self._outbox:
            self._backend.writer.write(b"".join(self._outbox))
            self._outbox.clear()

    # --- server to client ----------------------------------------------------------

    async def _pump_server(self) -> str:
        buffer = MessageBuffer(SERVER_MESSAGE_LIMIT)
        relay = self._relay
        while True:
            data = await self._backend.reader.read(READ_CHUNK)
            if not data:
                await self._fatal("08006", "the database closed the connection")
                return "database closed"
            for kind, raw in buffer.feed(data):
                relay.feed(kind, raw)
                if relay.cut is not None:
                    await self._on_cut(relay.cut)
                    relay.cut = None
            self._writer.write(relay.take())
            for execution in relay.finished:
                if not self._finished_now(execution):
                    await self._finished(execution)
            relay.finished.clear()
            if relay.close:
                await self._writer.drain()
                return "closed by the broker"
            await self._writer.drain()

    async def _on_cut(self, execution: Metered) -> None:
        """A statement returned more rows than it was allowed: stop it at the server and
        tell the client why, with the quota as it stands after charging what was sent."""
        cancelling = asyncio.create_task(self._cancel_quietly(), name="pg-cut-cancel")
        self._tasks.add(cancelling)
        cancelling.add_done_callback(self._tasks.discard)
        self._cancelling = cancelling
        for decision in execution.decisions:
            await self._guard.settle(decision, self._charged(execution))
        primary = min(execution.decisions, key=lambda d: d.allowed_records, default=None)
        if execution.rows >= execution.limit:
            what = said("cut_rows", limit=execution.limit, rows=execution.rows)
        else:
            what = said("cut_bytes", max_bytes=execution.max_bytes, rows=execution.rows)
        self._relay.cut_error = self._said(
            "53400",
            what,
            said("fewer_rows"),
            tail=f" [{Reason.UPSTREAM_TOO_MANY_RECORDS.value}]",
            detail=decision_detail(primary, self._words) if primary else "",
        )

    async def _cancel_quietly(self) -> None:
        try:
            await self.cancel()
        except (OSError, TimeoutError) as exc:
            log.warning("pg.cancel_failed", error=str(exc))

    def _charged(self, execution: Metered) -> int:
        """Records charged: the rows, or what their weight says they carried if more."""
        by_weight = -(-execution.sent_bytes // self._services.bytes_per_record)
        return max(execution.rows, by_weight)

    async def _release(self, executions: list[Metered]) -> None:
        """Give back what was reserved for statements that will not run after all."""
        for execution in executions:
            for decision in execution.decisions:
                if decision.allowed:
                    await self._guard.settle(decision, 0)

    def _finished_now(self, execution: Metered) -> bool:
        """`_finished` without a coroutine when nothing is left to charge (no decision holds
        a quota reservation, or the statement was cut and settled then): True when done."""
        if not execution.cut:
            for decision in execution.decisions:
                if decision.allowed and decision.quota_key:
                    return False
        execution.done = True
        self.rows += execution.rows
        self._audit_statement(execution)
        return True

    async def _finished(self, execution: Metered, *, metered: bool = True) -> None:
        """Charge what was sent and write the statement's audit event."""
        execution.done = True
        if metered and not execution.cut:
            for decision in execution.decisions:
                # a decision with no quota key reserved nothing and has nothing to settle
                # (Guard.settle returns at once): no coroutine for it, once per statement
                if decision.allowed and decision.quota_key:
                    await self._guard.settle(decision, self._charged(execution))
        self.rows += execution.rows
        self._audit_statement(execution)

    def _audit_statement(self, execution: Metered, sql: str = "") -> None:
        event = statement_event(execution, self._caller.login, self._caller.peer, self._guard.clock.now(), sql)
        self._services.audit.emit(event)
        metrics = self._services.metrics
        metrics.statement_counted(event["verdict"], event["reason"])
        if event["resource"] and event["records_returned"]:  # rows of a mapped table: records
            metrics.returned(event["resource"], event["records_returned"])
        if execution.cut:
            metrics.pg_cut.inc()

    async def _fatal(self, sqlstate: str, text: str) -> None:
        with contextlib.suppress(ConnectionError, RuntimeError):
            self._writer.write(error_response("FATAL", sqlstate, text))
            await self._writer.drain()


def _named(what: str, name: str) -> str:
    """A statement or portal as PostgreSQL's messages name it."""
    return f'{what} "{name}"' if name else f"unnamed {what}"


def _touched(statement: Statement | None) -> list[tuple[str, str]]:
    if statement is None:
        return []
    uses = statement.uses
    if len(uses) == 1:  # most statements read one table: no set to build and sort
        return [(uses[0].resource, uses[0].action)]
    return sorted({(use.resource, use.action) for use in uses})


def _static_bound(statement: Statement | None) -> int:
    if statement is None:
        return 0
    constant = statement.rows.constant
    return UNBOUNDED if constant is None else constant


def _write_cap(decisions: Iterable[Decision]) -> int | None:
    """The smallest per-statement record cap among a statement's write decisions (None: no
    cap): the rows an UPDATE, DELETE or INSERT may change (see sql_write_cap)."""
    cap = None
    for decision in decisions:  # a loop, not min() over a generator: this runs for every statement
        if decision.access.action == "write" and decision.cap is not None:
            cap = decision.cap if cap is None else min(cap, decision.cap)
    return cap


def _branches(decisions: Iterable[Decision]) -> frozenset[str] | None:
    """The branches every decision allows (None: every branch): the intersection, so a
    statement touching two resources sees only what both allow."""
    allowed: frozenset[str] | None = None
    for decision in decisions:
        if decision.allowed_branches is None or not decision.access.resource:  # a table-free statement's check
            continue
        allowed = decision.allowed_branches if allowed is None else allowed & decision.allowed_branches
    return allowed

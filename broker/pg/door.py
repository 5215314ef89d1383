"""The PostgreSQL front door: connection start-up, the employee's login, cancel keys.

The employee logs in with their employee id as the user name and their JWT as the
password (like cloud databases' token logins). The broker checks the token, the roster
and the shift, then logs in to the real database with its own credentials and hands
the connection to a Session.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import ipaddress
import secrets
import ssl
import struct
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import structlog

from broker.admin.metrics import Metrics
from broker.audit.event import decision_event
from broker.audit.log import AuditSink
from broker.config import PostgresSettings
from broker.core.access import Access
from broker.core.clock import iso
from broker.core.decision import Decision, Verdict
from broker.core.guard import Guard
from broker.core.reason import Reason
from broker.messages.said import Said, said
from broker.messages.shipped import catalogue_of
from broker.pg.analyser import SqlAnalyser
from broker.pg.backend import BackendAddress, BackendError, BackendSession, close_stream, connect
from broker.pg.privilege import LoginTooPowerful, login_problems
from broker.pg.row_security import SETTING as ROW_SETTING
from broker.pg.row_security import principal_value
from broker.pg.session import Caller, DoorServices, Session
from broker.pg.setting import MAX_STATEMENT_TIMEOUT_MS, SHOWN_SETTINGS
from broker.pg.sqlstate import decision_error, said_error
from broker.pg.startup import StartupRefused, StartupRequest, asked_language, read_request
from broker.pg.statement_cache import StatementCache
from broker.pg.wire import (
    CANCEL_REQUEST,
    GSSENC_REQUEST,
    PROTOCOL_3_0,
    SSL_REQUEST,
    Cursor,
    ProtocolViolation,
    authentication,
    backend_key_data,
    error_response,
    negotiate_protocol_version,
    parameter_status,
    read_message,
    read_startup,
    ready_for_query,
    startup_parameters,
)
from broker.policy.holder import PolicyHolder
from broker.policy.table import TableMap

log = structlog.get_logger("broker.pg")

STARTUP_TIMEOUT = 15.0
_AUTH_CLEARTEXT = 3
_PINNED = {"standard_conforming_strings": "on", "client_encoding": "UTF8"}
"""Settings the SQL analysis relies on; search_path is pinned to the table map's schema."""


class LoginRefused(Exception):
    def __init__(self, error: bytes) -> None:
        super().__init__("login refused")
        self.error = error


@dataclass(slots=True)
class Client:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    peer: str
    local: bool
    tls: bool = False


class PgDoor:
    def __init__(
        self, settings: PostgresSettings, guard: Guard, policy: PolicyHolder, audit: AuditSink, metrics: Metrics
    ) -> None:
        self._settings = settings
        self._guard = guard
        self._policy = policy
        self._audit = audit
        self._metrics = metrics
        self._address = BackendAddress(
            settings.server_host,
            settings.server_port,
            settings.server_database,
            settings.server_user,
            settings.server_password,
        )
        self._tls = _tls_context(settings)
        self._login_checked = False
        self._analyser = SqlAnalyser(settings.analysis_workers, settings.analysis_timeout_seconds)
        self._services = DoorServices(
            self._address,
            guard,
            policy,
            StatementCache(self._analyser),
            audit,
            settings.max_message_bytes,
            settings.max_statement_bytes,
            settings.max_result_bytes,
            settings.bytes_per_record,
            metrics,
        )
        self._sessions: dict[tuple[int, int], Session] = {}
        self._per_employee: Counter[str] = Counter()
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()

    @property
    def port(self) -> int:
        """The port actually bound (tests ask for port 0)."""
        assert self._server is not None and self._server.sockets
        return int(self._server.sockets[0].getsockname()[1])

    def open_sessions(self, employee: str) -> int:
        """How many database sessions `employee` has open through this door now."""
        return self._per_employee.get(employee, 0)

    @property
    def analyser(self) -> SqlAnalyser:
        return self._analyser

    @property
    def services(self) -> DoorServices:
        return self._services

    async def start(self) -> None:
        await self._check_login()
        self._analyser.start()
        self._server = await asyncio.start_server(self._accept, self._settings.host, self._settings.port)
        if self._tls is None:
            log.warning(
                "pg.no_tls",
                detail="[postgres] has no TLS certificate: employees' tokens are accepted only over loopback, "
                "in clear text. Configure tls_cert_file and tls_key_file before serving other hosts.",
            )
        log.info("pg.listening", host=self._settings.host, port=self.port, database=self._address.database)

    async def _check_login(self) -> None:
        """Refuse to open with a database login more powerful than the broker (see
        broker.pg.privilege). A database that cannot be reached now is checked later, at
        the first session, before anything is run on it."""
        snapshot = self._policy.current
        tables = snapshot.tables if snapshot is not None else TableMap.empty()
        try:
            problems = await login_problems(self._address, tables, self._settings.connect_timeout_seconds)
        except (BackendError, ProtocolViolation, OSError, TimeoutError) as exc:
            log.error("pg.login_check_failed", error=str(exc))
            return
        self._login_checked = True
        if not problems:
            return
        if not self._settings.allow_superuser:
            raise LoginTooPowerful(
                "; ".join(problems) + ". Give [postgres] server_user an ordinary role with rights on the mapped "
                "tables only (or set allow_superuser = true, never in production)."
            )
        log.warning("pg.login_too_powerful", problems=problems, detail="allowed by [postgres] allow_superuser")

    async def close(self, grace: float = 3.0) -> None:
        """Stop accepting, end every session (each settles, audits and says goodbye to the
        database), and cancel what is still running after `grace` seconds."""
        if self._server is not None:
            self._server.close()
        for session in list(self._sessions.values()):
            session.shutdown()
        if self._connections:
            await asyncio.wait(list(self._connections), timeout=grace)
        for task in list(self._connections):
            task.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
        self._analyser.close()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._connections.add(task)
        peer = writer.get_extra_info("peername")
        host = peer[0] if isinstance(peer, tuple) else "local"
        client = Client(reader, writer, str(host), _is_local(str(host)))
        try:
            await self._serve(client)
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError):
            pass
        except asyncio.CancelledError:
            # the door is closing: end the connection quietly (asyncio's stream callback
            # logs a cancelled handler task as an error)
            pass
        except Exception:
            log.exception("pg.connection_failed", client=client.peer)
        finally:
            if task is not None:
                self._connections.discard(task)
            await close_stream(writer)

    async def _serve(self, client: Client) -> None:
        try:
            opened = await asyncio.wait_for(self._open(client), STARTUP_TIMEOUT)
        except LoginRefused as exc:
            await _send(client, exc.error)
            return
        except TimeoutError:
            await _send(client, error_response("FATAL", "08P01", "the login did not finish in time"))
            return
        except ProtocolViolation as exc:
            await _send(client, error_response("FATAL", "08P01", f"protocol violation: {exc}"))
            return
        if opened is None:
            return
        session, login, employee = opened
        started = time.perf_counter()
        ended = "cancelled"
        try:
            ended = await session.run()
        finally:
            self._per_employee[employee] -= 1
            self._metrics.pg_sessions.dec()
            self._sessions = {k: s for k, s in self._sessions.items() if s is not session}
            self._audit_session(session, login, employee, client, ended, time.perf_counter() - started)

    def _audit_session(
        self, session: Session, login: Decision, employee: str, client: Client, ended: str, seconds: float
    ) -> None:
        self._audit.emit(
            {
                "time": iso(self._guard.clock.now()),
                "kind": "pg.session",
                "door": "pg",
                "decision_id": login.id,
                "employee": employee,
                "client": client.peer,
                "statements": session.statements,
                "records_returned": session.rows,
                "duration_ms": round(seconds * 1000, 1),
                "ended": ended,
            }
        )

    async def _open(self, client: Client) -> tuple[Session, Decision, str] | None:
        """Start-up to the first ReadyForQuery; None when the connection only cancelled."""
        parameters = await self._negotiate(client)
        if parameters is None:
            return None
        try:
            request = read_request(parameters, self._address.database)
        except StartupRefused as exc:
            raise self._refused(asked_language(parameters), exc.sqlstate, exc.text, exc.hint) from exc
        if not client.tls and not client.local:
            raise self._refused(request.language, "28000", said("tls_only"), said("use_sslmode"))
        token = await _password(client, functools.partial(self._refused, request.language))
        login = await self._login(client, request, token)  # takes one of the employee's sessions
        try:
            return await self._start_session(client, request, login, token)
        except BaseException:
            self._per_employee[request.user] -= 1
            raise

    async def _start_session(
        self, client: Client, request: StartupRequest, login: Decision, token: str
    ) -> tuple[Session, Decision, str]:
        backend = await self._backend(request, principal_value(login.principal))
        pid, key = self._new_cancel_key()
        session = Session(
            (client.reader, client.writer), backend, self._services, Caller(login, token, client.peer, request.language)
        )
        self._sessions[(pid, key)] = session
        greeting = [authentication(0)]
        greeting += [
            parameter_status(name, value)
            for name, value in backend.parameters.items()
            if name.lower() in SHOWN_SETTINGS  # not is_superuser, session_authorization, ...
        ]
        greeting += [backend_key_data(pid, key), ready_for_query(b"I")]
        try:
            await _send(client, b"".join(greeting))
        except BaseException:
            self._sessions.pop((pid, key), None)
            await backend.close()
            raise
        self._metrics.pg_sessions.inc()
        return session, login, request.user

    async def _negotiate(self, client: Client) -> dict[str, str] | None:
        """SSLRequest, GSSENCRequest and CancelRequest come before the StartupMessage."""
        while True:
            startup = await read_startup(client.reader)
            if startup.code == SSL_REQUEST and client.tls:
                raise ProtocolViolation("SSLRequest sent twice")
            if startup.code == SSL_REQUEST:
                await self._start_tls(client)
            elif startup.code == GSSENC_REQUEST:
                await _send(client, b"N")
            elif startup.code == CANCEL_REQUEST:
                await self._cancel(startup.body)
                return None
            elif startup.code >> 16 == 3:
                return await _protocol_3(client, startup.code, startup.body)
            else:  # before any start-up packet: the default locale
                raise self._refused("", "0A000", said("frontend_protocol", version=startup.code >> 16))

    async def _start_tls(self, client: Client) -> None:
        if self._tls is None:
            await _send(client, b"N")
            return
        # Bytes sent after the SSLRequest and before the handshake would be read as if
        # they came over TLS (CVE-2021-23214): refuse the connection instead.
        if len(getattr(client.reader, "_buffer", b"")):
            raise ProtocolViolation("data after SSLRequest before the TLS handshake")
        await _send(client, b"S")
        await client.writer.start_tls(self._tls)
        client.tls = True

    async def _cancel(self, body: bytes) -> None:
        if len(body) != 8:
            return
        session = self._sessions.get(struct.unpack("!II", body))
        if session is not None:
            with contextlib.suppress(OSError, TimeoutError):
                await session.cancel()

    async def _login(self, client: Client, request: StartupRequest, token: str) -> Decision:
        access = Access(token, client.peer, f"pg login {request.database}", action="connect")
        decision = await self._guard.decide_login(access)
        if decision.allowed and decision.employee != request.user:
            decision.verdict, decision.reason = Verdict.DENY, Reason.IDENTITY_WRONG_USER
            decision.detail = (
                f"The user name {request.user!r} is not the employee the token is for ({decision.employee})."
            )
        limit = self._settings.max_sessions_per_employee
        if decision.allowed and self._per_employee[request.user] >= limit:
            decision.verdict, decision.reason = Verdict.DENY, Reason.SESSIONS_OVER_LIMIT
            decision.detail = f"You already have {limit} sessions open through the broker."
        self._audit_login(decision, client)
        if not decision.allowed:
            catalogue = catalogue_of(self._policy.current)
            locale = catalogue.locale_for_pg(request.language)
            raise LoginRefused(decision_error(decision, catalogue, locale, fatal=True))
        # counted before any await, so logins racing each other cannot all pass the check
        self._per_employee[request.user] += 1
        return decision

    def _audit_login(self, decision: Decision, client: Client) -> None:
        self._metrics.pg_logins.labels(decision.verdict.value, decision.reason.value).inc()
        self._audit.emit(decision_event(decision, door="pg", status=0, returned=0, latency=0.0, kind="pg.login"))

    async def _backend(self, request: StartupRequest, branches: str) -> BackendSession:
        """The employee's own server session. `branches` is their row-security setting
        (broker.pg.row_security): passed at start-up, it is the session's default, which
        nothing a client can send through the door changes."""
        snapshot = self._policy.current
        schema = snapshot.tables.schema if snapshot is not None else "public"
        # statement_timeout: the client's own (checked at start-up to be under the limit) or the limit
        bounded = {"statement_timeout": str(MAX_STATEMENT_TIMEOUT_MS)}
        parameters = {**bounded, **request.passed_on, **_PINNED, "search_path": schema, ROW_SETTING: branches}
        if not self._login_checked:  # the database was away when the door opened
            try:
                await self._check_login()
            except LoginTooPowerful as exc:
                log.error("pg.login_too_powerful", detail=str(exc))
                # the login's name and what it owns are the operators' business, not the caller's
                raise self._refused(request.language, "28000", said("cannot_serve")) from None
            if not self._login_checked:
                raise self._refused(request.language, "08006", said("database_unavailable"), said("retry"))
        try:
            return await connect(self._address, parameters, self._settings.connect_timeout_seconds)
        except (BackendError, ProtocolViolation, OSError, TimeoutError) as exc:
            log.error("pg.backend_failed", error=str(exc))
            unavailable = said("database_unavailable")
            raise self._refused(request.language, "08006", unavailable, said("retry_or_tell")) from exc

    def _refused(self, language: str, code: str, message: Said, hint: Said | None = None) -> LoginRefused:
        """A FATAL of the door's own at login, in the language the start-up asked for."""
        catalogue = catalogue_of(self._policy.current)
        return LoginRefused(said_error(catalogue, catalogue.locale_for_pg(language), "FATAL", code, message, hint))

    def _new_cancel_key(self) -> tuple[int, int]:
        while True:
            key = (secrets.randbits(31) | 1, secrets.randbits(32))
            if key not in self._sessions:
                return key


async def _protocol_3(client: Client, code: int, body: bytes) -> dict[str, str]:
    """Protocol 3.x: a newer minor version is answered with the version the broker speaks."""
    parameters = startup_parameters(body)
    extensions = sorted(name for name in parameters if name.startswith("_pq_."))
    if code != PROTOCOL_3_0 or extensions:
        await _send(client, negotiate_protocol_version(0, extensions))
    return {name: value for name, value in parameters.items() if not name.startswith("_pq_.")}


async def _password(client: Client, refused: Callable[[str, Said, Said | None], LoginRefused]) -> str:
    await _send(client, authentication(_AUTH_CLEARTEXT))
    kind, payload = await read_message(client.reader, 64 * 1024)
    if kind != b"p":
        raise refused("08P01", said("expected_password"), None)
    try:
        token = Cursor(payload).cstring()
    except ProtocolViolation as exc:
        raise refused("28P01", said("password_unreadable"), None) from exc
    if not token:
        raise refused("28P01", said("no_token"), said("token_as_password"))
    return token


async def _send(client: Client, data: bytes) -> None:
    client.writer.write(data)
    await client.writer.drain()


def _is_local(host: str) -> bool:
    if host == "local":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _tls_context(settings: PostgresSettings) -> ssl.SSLContext | None:
    if settings.tls_cert_file is None or settings.tls_key_file is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(settings.tls_cert_file, settings.tls_key_file)
    return context

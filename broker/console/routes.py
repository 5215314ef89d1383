"""`/-/console/`: the security console's pages, live stream and actions.

Registered on the admin listener only (`broker.app.admin_app`), never on the proxy
port. Every page but the login needs a session; every action (sign in, sign out,
freeze, unfreeze, dismiss) is a POST carrying the session's CSRF token, and is written
to the audit trail as an `"event": "console"` line naming the operator and address.
"""

from __future__ import annotations

import asyncio
import hmac
from collections.abc import Awaitable, Callable
from importlib import resources
from typing import Any

import orjson
import structlog
from aiohttp import web

from broker.audit.log import AuditSink
from broker.console.digest import Digest
from broker.console.feed import ConsoleFeed
from broker.console.login import ConsoleLogin, LoginRefused, Operator, Session
from broker.console.lookup import look_up
from broker.console.page import (
    BASE,
    denials_fragment,
    employee_page,
    flags_fragment,
    live_cells,
    login_page,
    lookup_page,
    overview_page,
    top_fragment,
)
from broker.core.clock import Clock, iso
from broker.core.guard import Guard
from broker.core.window import freeze_key
from broker.meter.meter import Meter
from broker.meter.store import StoreUnavailable
from broker.policy.holder import PolicyHolder
from broker.signals.act import set_frozen

log = structlog.get_logger("broker.console")
COOKIE = "broker_console"
STREAM_POLL_SECONDS = 0.5
STREAM_HEARTBEAT_SECONDS = 15.0
STREAM_STANDING_POLLS = 10
"""An admin's standing (roster, role, freeze) is checked again every this many polls."""
MAX_STREAMS = 32
DIGEST_SECONDS = 1.0
STATIC = {"console.js": "text/javascript", "console.css": "text/css"}
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
    "X-Frame-Options": "DENY",
}

Handler = Callable[[web.Request, Session], Awaitable[web.StreamResponse]]


class ConsoleRoutes:
    def __init__(
        self,
        feed: ConsoleFeed,
        login: ConsoleLogin,
        guard: Guard,
        policy: PolicyHolder,
        meter: Meter,
        audit: AuditSink,
        clock: Clock,
        audit_path: str,
        forget: Callable[[str], None] = lambda _: None,
    ) -> None:
        self.feed = feed
        self.digest = Digest(feed)
        self.login = login
        """Who may act (the console token, admins' own tokens): the help desk's API too."""
        self._guard = guard
        self._policy = policy
        self._meter = meter
        self._audit = audit
        self._clock = clock
        self._audit_path = audit_path
        self._forget = forget
        self._streams = 0
        self.stopping = asyncio.Event()

    def register(self, app: web.Application) -> None:
        add = app.router.add_get
        add(BASE, self._redirect_home)
        add(f"{BASE}/", self._signed_in(self.overview))
        add(f"{BASE}/login", self.login_form)
        app.router.add_post(f"{BASE}/login", self.sign_in)
        app.router.add_post(f"{BASE}/logout", self._signed_in(self.sign_out, action=True))
        add(f"{BASE}/events", self._signed_in(self.stream))
        add(f"{BASE}/fragment/{{name}}", self._signed_in(self.fragment))
        add(f"{BASE}/employee/{{employee}}", self._signed_in(self.employee))
        for action in ("freeze", "unfreeze", "dismiss"):
            app.router.add_post(f"{BASE}/employee/{{employee}}/{action}", self._signed_in(self.act, action=True))
        add(f"{BASE}/lookup", self._signed_in(self.lookup))
        add(f"{BASE}/static/{{name}}", self.static)

    async def digest_every_second(self) -> None:
        """Fold the feed into the console's figures, off the request path, until stopped."""
        while not self.stopping.is_set():
            self.digest.catch_up(self._clock.now())
            await asyncio.sleep(DIGEST_SECONDS)

    # -- authentication ----------------------------------------------------------------

    def _signed_in(self, handler: Handler, *, action: bool = False) -> Callable[[web.Request], Awaitable[Any]]:
        async def guarded(request: web.Request) -> web.StreamResponse:
            session = self.login.session(request.cookies.get(COOKIE))
            if session is not None and (problem := await self.refusal(session.operator)):
                self.login.close(request.cookies.get(COOKIE))
                self.record("session_ended", session.operator, request.remote or "", detail=problem)
                return _html(login_page(problem), 403)
            if session is None:
                if request.method != "GET" or request.path.startswith((f"{BASE}/events", f"{BASE}/fragment")):
                    return _html("<p>Sign in first.</p>", 401)
                return _see_other(f"{BASE}/login")
            if action:
                form = await request.post()
                sent = str(form.get("csrf", "")) or request.headers.get("X-Console-CSRF", "")
                if not hmac.compare_digest(sent.encode(), session.csrf.encode()):
                    return _html("<p>This form is stale or was not sent by the console; reload and try again.</p>", 403)
            return await handler(request, session)

        return guarded

    async def refusal(self, operator: Operator) -> str:
        """Why an admin signed in with their own token may not use the console now ("" if
        they may): checked at sign-in and on every request of their session, so one taken
        off the roster, stripped of the console role or frozen (a rented login the signals
        caught) cannot act, least of all unfreeze themselves. The console token has no
        employee behind it to check."""
        if operator.via != "idp" or operator.identity is None:
            return ""
        try:
            self.login.admin_of(operator.identity)
        except LoginRefused as exc:
            return str(exc)
        if await self._is_frozen(operator.name):
            return f"{operator.name} is frozen, so their login cannot use the console until a person unfreezes it."
        return ""

    async def login_form(self, _: web.Request) -> web.Response:
        return _html(login_page())

    async def sign_in(self, request: web.Request) -> web.StreamResponse:
        form = await request.post()
        client = request.remote or ""
        try:
            operator = await self.login.sign_in(str(form.get("credential", "")), client)
            if problem := await self.refusal(operator):
                raise LoginRefused(problem)
        except LoginRefused as exc:
            self.record("login_refused", Operator("", ""), client, detail=str(exc))
            return _html(login_page(str(exc)), 401)
        session_id, _ = self.login.open(operator)
        self.record("login", operator, client)
        response = _see_other(f"{BASE}/")
        response.set_cookie(COOKIE, session_id, httponly=True, samesite="Strict", path=BASE)
        return response

    async def sign_out(self, request: web.Request, session: Session) -> web.StreamResponse:
        self.login.close(request.cookies.get(COOKIE))
        self.record("logout", session.operator, request.remote or "")
        response = _see_other(f"{BASE}/login")
        response.del_cookie(COOKIE, path=BASE)
        return response

    # -- pages -------------------------------------------------------------------------

    async def _redirect_home(self, _: web.Request) -> web.Response:
        return _see_other(f"{BASE}/")

    async def overview(self, _: web.Request, session: Session) -> web.Response:
        self.digest.catch_up(self._clock.now())
        recent = [e for e in self.feed.recent()[-200:] if e.get("event") in (None, "decision")][-50:]
        return _html(
            overview_page(
                recent,
                await self._flags(session),
                denials_fragment(self.digest.denials_by_reason(self._clock.now())),
                top_fragment(self.digest.top_employees()),
                self.digest.missed,
                session,
            )
        )

    async def fragment(self, request: web.Request, session: Session) -> web.Response:
        self.digest.catch_up(self._clock.now())
        name = request.match_info["name"]
        if name == "flags":
            return _html(await self._flags(session))
        if name == "denials":
            return _html(denials_fragment(self.digest.denials_by_reason(self._clock.now())))
        if name == "top":
            return _html(top_fragment(self.digest.top_employees()))
        raise web.HTTPNotFound()

    async def _flags(self, session: Session) -> str:
        return flags_fragment(self.digest.open_flags(), await self._frozen(), session)

    async def _frozen(self) -> set[str]:
        try:
            keys = await self._meter.store.frozen()
        except StoreUnavailable:
            keys = await self._meter.fallback.frozen()
        return {key[3:-1] for key in keys}

    async def employee(self, request: web.Request, session: Session) -> web.Response:
        self.digest.catch_up(self._clock.now())
        employee_id = request.match_info["employee"]
        snapshot = self._policy.current
        roster = snapshot.index.employees.get(employee_id) if snapshot else None
        quotas = []
        if roster is not None:
            quotas = [
                {"resource": q.name, "used": q.used, "limit": q.limit, "resets_at": iso(q.reset_at, q.zone)}
                for q in await self._guard.quotas_of(roster)
            ]
        frozen = await self._is_frozen(employee_id)
        timeline = self.digest.timelines.get(employee_id)
        return _html(employee_page(employee_id, roster is not None, frozen, timeline, quotas, session))

    async def _is_frozen(self, employee: str) -> bool:
        try:
            return await self._meter.used(freeze_key(employee), self._clock.now()) >= 1
        except StoreUnavailable:
            return False

    async def lookup(self, request: web.Request, session: Session) -> web.Response:
        decision_id = request.query.get("id", "").strip()
        found = None
        if decision_id:
            found = await look_up(decision_id, self.feed, self._audit_path, self._policy.current)
        return _html(lookup_page(decision_id, found, session))

    async def static(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in STATIC:
            raise web.HTTPNotFound()
        body = resources.files("broker.console").joinpath("static", name).read_bytes()
        return web.Response(body=body, content_type=STATIC[name], headers=SECURITY_HEADERS)

    # -- actions -----------------------------------------------------------------------

    async def act(self, request: web.Request, session: Session) -> web.StreamResponse:
        employee = request.match_info["employee"]
        action = request.path.rsplit("/", 1)[1]
        if action in ("freeze", "unfreeze"):
            try:
                await set_frozen(self._meter, employee, action == "freeze", self._clock.now())
            except StoreUnavailable as exc:
                return _html(f"<p>The counter store is unavailable: {exc}. Nothing was changed.</p>", 503)
        if action in ("unfreeze", "dismiss"):
            self._forget(employee)  # the signals start afresh for someone a person has cleared
        self.record(action, session.operator, request.remote or "", employee=employee)
        back = str((await request.post()).get("back", ""))
        return _see_other(back if back.startswith(f"{BASE}/") and "//" not in back else f"{BASE}/")

    def record(self, action: str, operator: Operator, client: str, **fields: Any) -> None:
        """One audit line per console action: who, from where, on whom."""
        event = {
            "time": iso(self._clock.now()),
            "event": "console",
            "action": action,
            "operator": operator.name or None,
            "via": operator.via or None,
            "client": client,
            **fields,
        }
        self._audit.emit(event)
        log.info("console.action", action=action, operator=operator.name, employee=fields.get("employee"))

    # -- the live stream ---------------------------------------------------------------

    async def stream(self, request: web.Request, session: Session) -> web.StreamResponse:
        """Server-sent events: decisions, flags and console actions as they are audited,
        read from the feed twice a second (nothing is pushed from the request path)."""
        if self._streams >= MAX_STREAMS:
            return _html("<p>Too many live views are open.</p>", 503)
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", **SECURITY_HEADERS})
        await response.prepare(request)
        self._streams += 1
        position, idle, polls = self.feed.count, 0.0, 0
        cookie = request.cookies.get(COOKIE)
        try:
            await response.write(b": live\n\n")
            while not self.stopping.is_set():
                # the stream lasts as long as its session: not past a sign-out, its
                # expiry, or (checked every few seconds) the admin's loss of standing
                polls += 1
                if self.login.session(cookie) is not session:
                    break
                if polls % STREAM_STANDING_POLLS == 0 and await self.refusal(session.operator):
                    break
                events, position, _ = self.feed.since(position)
                chunk = b"".join(_sse(event) for event in events[-200:])
                if chunk:
                    await response.write(chunk)
                    idle = 0.0
                elif idle >= STREAM_HEARTBEAT_SECONDS:
                    await response.write(b": still here\n\n")
                    idle = 0.0
                await asyncio.sleep(STREAM_POLL_SECONDS)
                idle += STREAM_POLL_SECONDS
        except ConnectionResetError:
            pass
        finally:
            self._streams -= 1
        return response


def _sse(event: dict[str, Any]) -> bytes:
    kind = event.get("event") or "decision"
    if kind == "decision":
        data: dict[str, Any] = {"cells": live_cells(event), "verdict": event.get("verdict")}
    elif kind == "signal":
        data = {k: event.get(k) for k in ("time", "signal", "employee", "action", "detail")}
    elif kind == "console":
        data = {k: event.get(k) for k in ("time", "action", "operator", "employee")}
    else:
        return b""
    return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


def _see_other(location: str) -> web.Response:
    return web.Response(status=303, headers={"Location": location, **SECURITY_HEADERS})


def _html(body: str, status: int = 200) -> web.Response:
    return web.Response(text=body, status=status, content_type="text/html", headers=SECURITY_HEADERS)

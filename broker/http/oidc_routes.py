"""Browser sign-in on the proxy port: `/-/oidc/login`, `/-/oidc/callback`, `/-/oidc/logout`.

The authorization-code flow with PKCE (OpenID Connect Core 3.1, RFC 7636): login keeps
the state, nonce and code verifier server-side (in the session store, so the callback
may land on another replica) and binds them to the browser with a short-lived cookie;
the callback takes them back exactly once, exchanges the code, verifies the ID token,
asks the Guard whether this employee may sign in now (roster and shift, like a database
login), and opens a session that ends at the earliest of the ID token's lifetime,
`[oidc] session_max_seconds` and the end of the employee's shift.
"""

from __future__ import annotations

import hmac
import math
import time
from collections.abc import Callable
from urllib.parse import urlencode

import structlog
from aiohttp import web

from broker.audit.event import decision_event
from broker.audit.log import AuditSink
from broker.core.access import Access
from broker.core.clock import Clock, iso
from broker.core.decision import Decision
from broker.core.guard import Guard
from broker.core.reason import Reason
from broker.http.problem import bare_problem, problem_response
from broker.identity.error import Identity
from broker.identity.oidc_client import OidcClient, OidcError
from broker.identity.oidc_settings import OidcSettings
from broker.identity.session import (
    BrowserSession,
    PendingLogin,
    SessionStore,
    SessionStoreUnavailable,
    digest,
    new_secret,
)
from broker.messages.catalogue import Catalogue
from broker.messages.shipped import shipped_catalogue

log = structlog.get_logger("broker.oidc")
LOGIN_PATH = "/-/oidc/login"
CALLBACK_PATH = "/-/oidc/callback"
LOGOUT_PATH = "/-/oidc/logout"
MAX_NEXT_CHARS = 2048
SESSIONS_AWAY = Reason.IDENTITY_SESSIONS_UNAVAILABLE


def local_path(target: str) -> str:
    """Where to go after signing in: a path on this origin, never another site (an open
    redirect would hand the fresh session's user to whoever built the link)."""
    if (
        not target.startswith("/")
        or target.startswith(("//", "/\\"))
        or len(target) > MAX_NEXT_CHARS
        or not target.isprintable()
        or "\\" in target
    ):
        return "/"
    return target


def login_redirect(target: str) -> web.Response:
    """A page load without a session goes to sign in, and back to `target` after."""
    location = f"{LOGIN_PATH}?{urlencode({'next': local_path(target)})}"
    return web.Response(status=302, headers={"Location": location, "Cache-Control": "no-store"})


def wants_a_page(request: web.Request) -> bool:
    """A browser's page load (which can follow a redirect to the provider), not an API
    call (which gets its 401 problem and decides itself)."""
    return request.method in ("GET", "HEAD") and "text/html" in request.headers.get("Accept", "")


def made_elsewhere(request: web.Request, origin: str) -> bool:
    """Did another site's page have the browser send this request? The session cookie
    goes along anyway: SameSite=Lax holds back only cross-site subrequests and POSTs,
    not a sibling site's (another host under the same domain), images and forms
    included. Served: what this site's own pages ask (`Sec-Fetch-Site: same-origin`), a
    GET the user started (typed, a bookmark: `none`) or a top-level link followed from
    elsewhere (the provider's redirect back among them). A browser without Fetch
    Metadata must name this origin in `Origin` on anything but GET and HEAD."""
    headers = request.headers
    safe = request.method in ("GET", "HEAD")
    site = headers.get("Sec-Fetch-Site")
    if site is None:
        return not safe and headers.get("Origin") != origin
    if site == "same-origin":
        return False
    if not safe:
        return True
    followed = headers.get("Sec-Fetch-Mode") == "navigate" and headers.get("Sec-Fetch-Dest", "document") == "document"
    return site != "none" and not followed


class BrowserSignIn:
    def __init__(
        self,
        settings: OidcSettings,
        client: OidcClient,
        store: SessionStore,
        guard: Guard,
        audit: AuditSink,
        clock: Clock,
        messages: Callable[[], Catalogue] = shipped_catalogue,
    ) -> None:
        self._messages = messages
        """The live policy's message catalogue: refusals are worded like the proxy's."""
        self._settings = settings
        self._client = client
        self._store = store
        self._guard = guard
        self._audit = audit
        self._clock = clock

    def register(self, app: web.Application) -> None:
        app.router.add_get(LOGIN_PATH, self.login)
        app.router.add_get(CALLBACK_PATH, self.callback)
        app.router.add_route("GET", LOGOUT_PATH, self.logout)
        app.router.add_route("POST", LOGOUT_PATH, self.logout)

    def _problem(self, request: web.Request, reason: Reason, status: int, detail: str) -> web.Response:
        languages = request.headers.get("Accept-Language")
        return bare_problem(reason, status, detail, catalogue=self._messages(), accept_language=languages)

    async def close(self) -> None:
        await self._client.close()
        await self._store.close()

    async def login(self, request: web.Request) -> web.StreamResponse:
        now = self._clock.now()
        try:
            provider = await self._client.provider()
        except OidcError as exc:
            log.error("oidc.provider_unavailable", detail=str(exc))
            detail = f"The sign-in service cannot be reached: {exc}."
            return self._problem(request, Reason.LOGIN_REFUSED, 502, detail)
        state, nonce, verifier, browser = new_secret(), new_secret(), new_secret() + new_secret(), new_secret()
        expires_at = now + self._settings.login_timeout_seconds
        pending = PendingLogin(
            digest(state), digest(browser), nonce, verifier, local_path(request.query.get("next", "/")), expires_at
        )
        try:
            await self._store.hold_login(pending, now)
        except SessionStoreUnavailable:
            return self._problem(request, SESSIONS_AWAY, 503, "Sign-in cannot start right now; retry.")
        response = web.Response(status=302, headers={"Cache-Control": "no-store"})
        response.headers["Location"] = self._client.authorization_url(provider, state, nonce, verifier)
        self._set_cookie(response, self._settings.login_cookie_name, browser, self._settings.login_timeout_seconds)
        return response

    async def callback(self, request: web.Request) -> web.StreamResponse:
        started = time.perf_counter()
        now = self._clock.now()
        state = request.query.get("state", "")
        browser = request.cookies.get(self._settings.login_cookie_name, "")
        try:
            pending = await self._store.take_login(digest(state), now) if state else None
        except SessionStoreUnavailable:
            return self._problem(request, SESSIONS_AWAY, 503, "Sign-in cannot finish right now; retry.")
        if pending is None or not hmac.compare_digest(pending.browser, digest(browser)):
            self._refused(request, "the sign-in's state is unknown, used, expired or from another browser")
            return self._forget_login(
                self._problem(
                    request,
                    Reason.LOGIN_REFUSED,
                    400,
                    "This sign-in was not begun in this browser, or it expired "
                    "or was already used. Start again from the page you wanted.",
                )
            )
        if "error" in request.query:
            error = request.query["error"][:64]
            self._refused(request, f"the sign-in service answered {error}")
            refused = self._problem(request, Reason.LOGIN_REFUSED, 403, f"The sign-in service refused: {error}.")
            return self._forget_login(refused)
        try:
            signed_in = await self._client.sign_in(request.query.get("code", ""), pending.nonce, pending.verifier)
        except OidcError as exc:
            self._refused(request, str(exc))
            refused = self._problem(request, Reason.LOGIN_REFUSED, 403, f"The sign-in did not verify: {exc}.")
            return self._forget_login(refused)
        access = Access(None, request.remote or "", f"GET {CALLBACK_PATH}", action="login")
        decision = await self._guard.decide_login(access, Identity(signed_in.employee))
        if not decision.allowed or decision.ends is None:
            response = problem_response(
                decision, catalogue=self._messages(), accept_language=request.headers.get("Accept-Language")
            )
            self._audit_login(decision, response.status, started)
            return self._forget_login(response)
        expires_at = min(now + signed_in.lifetime, now + self._settings.session_max_seconds, decision.ends)
        session_id = new_secret()
        try:
            await self._store.open(BrowserSession(digest(session_id), signed_in.employee, now, expires_at), now)
        except SessionStoreUnavailable:
            return self._problem(request, SESSIONS_AWAY, 503, "Sign-in cannot finish right now; retry.")
        self._audit_login(decision, 302, started, session_ends=iso(expires_at))
        response = web.Response(status=302, headers={"Location": pending.next_path, "Cache-Control": "no-store"})
        self._set_cookie(response, self._settings.cookie_name, session_id, expires_at - now)
        return self._forget_login(response)

    async def logout(self, request: web.Request) -> web.StreamResponse:
        """Ends the session here and in the shared store (every replica), then sends the
        browser to the provider's own sign-out when it has one."""
        session_id = request.cookies.get(self._settings.cookie_name, "")
        ended = None
        if session_id:
            try:
                ended = await self._store.end(digest(session_id))
            except SessionStoreUnavailable:
                return self._problem(request, SESSIONS_AWAY, 503, "Sign-out cannot finish now; retry.")
        if ended is not None:
            self._session_event("logout", request, employee=ended.employee)
        response = web.Response(
            status=200, text="You are signed out.\n", content_type="text/plain", headers={"Cache-Control": "no-store"}
        )
        response.del_cookie(self._settings.cookie_name, path="/", secure=True, httponly=True, samesite="Lax")
        return response

    def _audit_login(self, decision: Decision, status: int, started: float, **fields: object) -> None:
        """A sign-in is a decision like a database login: one canonical event."""
        event = decision_event(
            decision, door="http", status=status, returned=0, latency=time.perf_counter() - started,
            kind="oidc.login", method="GET", path=CALLBACK_PATH, **fields,
        )  # fmt: skip
        self._audit.emit(event)

    def _session_event(self, action: str, request: web.Request, **fields: object) -> None:
        """Sign-ins refused before anyone was identified, and sign-outs."""
        event = {"time": iso(self._clock.now()), "event": "session", "action": action, "client": request.remote or ""}
        self._audit.emit({**event, **fields})

    def _refused(self, request: web.Request, detail: str) -> None:
        log.warning("oidc.login_refused", detail=detail, client=request.remote)
        self._session_event("login_refused", request, detail=detail)

    def _forget_login(self, response: web.Response) -> web.Response:
        response.del_cookie(self._settings.login_cookie_name, path="/", secure=True, httponly=True, samesite="Lax")
        return response

    def _set_cookie(self, response: web.Response, name: str, value: str, seconds: float) -> None:
        """Secure, HttpOnly, SameSite=Lax (sent on the provider's redirect back, never on
        another site's POST), host-only, Path=/; its lifetime as Max-Age, a duration:
        the browser's clock never has to agree with the broker's."""
        response.set_cookie(
            name, value, max_age=max(0, math.floor(seconds)), path="/", secure=True, httponly=True, samesite="Lax"
        )

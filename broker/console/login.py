"""Who may use the security console, and for how long.

Two credentials are accepted, never none: the shared token in `[console] token_file`
(for the first operator and for a demo), and an admin's own JWT from the identity
provider the doors already trust, whose subject holds one of the roles `[console]
admin_roles` names in `policies/signals.toml`. A login opens a server-side session
(a random id in an HttpOnly, SameSite=Strict cookie) with a CSRF token of its own for
every action; failed logins are throttled per client address.
"""

from __future__ import annotations

import hmac
import secrets
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from broker.core.guard import employee_for
from broker.identity.error import Identity, IdentityError
from broker.policy.holder import PolicyHolder

MIN_TOKEN_CHARS = 16
MAX_SESSIONS = 1_000
FAILURES_ALLOWED = 5
FAILURE_WINDOW_SECONDS = 60.0
TRACKED_CLIENTS = 10_000


class LoginRefused(Exception):
    """A console login that did not succeed; the message is safe to show."""


@dataclass(frozen=True, slots=True)
class Operator:
    name: str
    """The employee id of an admin JWT, or "console-token" for the shared credential."""
    via: str
    """"token" or "idp"."""
    identity: Identity | None = field(default=None, compare=False, repr=False)
    """What the admin's token vouched for: their standing (roster, roles) is checked
    again under the live policy on every request of their session."""


@dataclass(slots=True)
class Session:
    operator: Operator
    csrf: str
    expires: float


def read_console_token(path: str) -> str:
    """The shared credential from `token_file` (ValueError when unreadable or too short)."""
    if not path:
        return ""
    try:
        token = Path(path).read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ValueError(f"[console] token_file {path}: cannot read: {exc.strerror}") from exc
    if len(token) < MIN_TOKEN_CHARS:
        raise ValueError(f"[console] token_file {path}: the token must be at least {MIN_TOKEN_CHARS} characters")
    return token


class ConsoleLogin:
    def __init__(
        self,
        token: str,
        policy: PolicyHolder,
        identify: Callable[[str | None], Awaitable[Identity]],
        session_seconds: float,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._token = token.encode()
        self._policy = policy
        self._identify = identify
        self._session_seconds = session_seconds
        self._monotonic = monotonic
        self._sessions: OrderedDict[str, Session] = OrderedDict()
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()

    async def sign_in(self, credential: str, client: str) -> Operator:
        """The operator `credential` proves, or LoginRefused (counted against `client`)."""
        if self._throttled(client):
            raise LoginRefused("Too many failed logins from this address; wait a minute.")
        credential = credential.strip()
        if self._token and credential and hmac.compare_digest(credential.encode(), self._token):
            return Operator("console-token", "token")
        try:
            return await self._admin(credential)
        except LoginRefused:
            self._failed(client)
            raise

    async def _admin(self, credential: str) -> Operator:
        if not credential.count(".") == 2:
            raise LoginRefused("That is neither the console token nor a token from the identity provider.")
        try:
            identity = await self._identify(credential)
        except IdentityError as exc:
            raise LoginRefused(f"The token was not accepted: {exc.detail}") from exc
        return self.admin_of(identity)

    def admin_of(self, identity: Identity) -> Operator:
        """The console operator `identity` is under the live policy (on the roster,
        holding one of `[console] admin_roles`), or LoginRefused."""
        snapshot = self._policy.current
        if snapshot is None:
            raise LoginRefused("No valid policy is loaded; only the console token works now.")
        try:
            employee = employee_for(snapshot, identity)
        except IdentityError as exc:
            raise LoginRefused(f"The token was not accepted: {exc.detail}") from exc
        if not set(snapshot.signals.console_roles) & employee.roles:
            raise LoginRefused(f"{employee.id} holds no console role ([console] admin_roles in signals.toml).")
        return Operator(employee.id, "idp", identity)

    def open(self, operator: Operator) -> tuple[str, Session]:
        session_id = secrets.token_urlsafe(32)
        session = Session(operator, secrets.token_urlsafe(24), self._monotonic() + self._session_seconds)
        self._sessions[session_id] = session
        while len(self._sessions) > MAX_SESSIONS:
            self._sessions.popitem(last=False)
        return session_id, session

    def session(self, session_id: str | None) -> Session | None:
        session = self._sessions.get(session_id or "")
        if session is None:
            return None
        if session.expires <= self._monotonic():
            del self._sessions[session_id or ""]
            return None
        return session

    def close(self, session_id: str | None) -> None:
        self._sessions.pop(session_id or "", None)

    def _throttled(self, client: str) -> bool:
        failures = self._failures.get(client)
        if not failures:
            return False
        while failures and failures[0] <= self._monotonic() - FAILURE_WINDOW_SECONDS:
            failures.popleft()
        return len(failures) >= FAILURES_ALLOWED

    def _failed(self, client: str) -> None:
        failures = self._failures.setdefault(client, deque(maxlen=FAILURES_ALLOWED))
        self._failures.move_to_end(client)
        failures.append(self._monotonic())
        while len(self._failures) > TRACKED_CLIENTS:
            self._failures.popitem(last=False)

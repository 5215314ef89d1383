"""Browser sessions: what a sign-in leaves behind, where it is kept, and how a request's
cookie becomes an employee.

The cookie holds only an opaque random id (256 bits); everything else stays on the
server. The store keys a session by the SHA-256 of that id, so whoever can read the
store (a Redis dump, a key listing) still holds no cookie to replay, and a session can
be ended there (sign-out, `broker revoke`) with effect on the next request of every
replica that shares the store.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from typing import Protocol

from broker.core.clock import Clock, iso
from broker.core.reason import Reason
from broker.identity.error import Identity, IdentityError

MAX_COOKIE_CHARS = 128


class SessionStoreUnavailable(Exception):
    """The session store could not answer; the request is refused, never let through."""


@dataclass(frozen=True, slots=True)
class BrowserSession:
    key: str
    """SHA-256 (hex) of the cookie's id: what the store is keyed by."""
    employee: str
    started: float
    expires_at: float
    """On the broker's clock: the earliest of the ID token's lifetime, the configured
    cap and the end of the shift the employee signed in during."""


@dataclass(frozen=True, slots=True)
class PendingLogin:
    """A sign-in sent to the provider and not back yet, kept under its `state`."""

    key: str
    """SHA-256 (hex) of the state parameter."""
    browser: str
    """SHA-256 (hex) of the login cookie set on the browser that began it: the callback
    must come from that browser (no one can finish a sign-in they did not start)."""
    nonce: str
    verifier: str
    """The PKCE code verifier; only its S256 challenge went through the browser."""
    next_path: str
    expires_at: float


class SessionStore(Protocol):
    async def open(self, session: BrowserSession, now: float) -> None: ...

    async def find(self, key: str, now: float) -> BrowserSession | None:
        """The session, or None when unknown, ended or past `expires_at`."""
        ...

    async def end(self, key: str) -> BrowserSession | None:
        """Delete one session; returns what it was (None when there was none)."""
        ...

    async def end_all(self, employee: str) -> int:
        """Delete every session of `employee` (revocation); returns how many there were."""
        ...

    async def of_employee(self, employee: str, now: float) -> list[BrowserSession]:
        """`employee`'s sessions that are live at `now` (the help desk's view), oldest first."""
        ...

    async def hold_login(self, login: PendingLogin, now: float) -> None: ...

    async def take_login(self, key: str, now: float) -> PendingLogin | None:
        """The pending sign-in, removed in the same step: a state is good once."""
        ...

    async def close(self) -> None: ...


def new_secret() -> str:
    """A random URL-safe value of 256 bits (session ids, states, nonces, login cookies)."""
    return secrets.token_urlsafe(32)


def digest(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


class SessionAuthenticator:
    """The session cookie's identity source: the id in the cookie is looked up in the
    store and checked against the broker's clock. What it vouches for is an employee id,
    exactly like a token's subject: the roster, policy, quotas and audit that follow are
    the same whatever the source."""

    def __init__(self, store: SessionStore, clock: Clock) -> None:
        self._store = store
        self._clock = clock

    async def identify(self, credential: str | None) -> Identity:
        if not credential or len(credential) > MAX_COOKIE_CHARS:
            raise IdentityError(Reason.IDENTITY_NO_SESSION, "You are not signed in here; sign in again.")
        now = self._clock.now()
        try:
            session = await self._store.find(digest(credential), now)
        except SessionStoreUnavailable:
            raise IdentityError(
                Reason.IDENTITY_SESSIONS_UNAVAILABLE, "Sign-in sessions cannot be checked right now; retry shortly."
            ) from None
        if session is None:
            raise IdentityError(
                Reason.IDENTITY_NO_SESSION,
                "Your sign-in session is unknown or has ended (signed out, revoked, or past its end); sign in again.",
            )
        if session.expires_at <= now:
            raise IdentityError(
                Reason.IDENTITY_NO_SESSION, f"Your sign-in session ended at {iso(session.expires_at)}; sign in again."
            )
        return Identity(session.employee)

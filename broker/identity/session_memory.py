"""Sessions in this process: one replica, or tests. A restart signs everyone out."""

from __future__ import annotations

from broker.identity.session import BrowserSession, PendingLogin

MAX_PENDING = 10_000
"""Sign-ins started and not finished; the oldest are dropped past it (a flood of
/-/oidc/login cannot grow memory without end)."""


class MemorySessionStore:
    """Operations never await, so on one event loop each is atomic by construction."""

    def __init__(self) -> None:
        self._sessions: dict[str, BrowserSession] = {}
        self._pending: dict[str, PendingLogin] = {}

    async def open(self, session: BrowserSession, now: float) -> None:
        self._sweep(now)
        self._sessions[session.key] = session

    async def find(self, key: str, now: float) -> BrowserSession | None:
        session = self._sessions.get(key)
        if session is None or session.expires_at <= now:
            return None
        return session

    async def end(self, key: str) -> BrowserSession | None:
        return self._sessions.pop(key, None)

    async def end_all(self, employee: str) -> int:
        mine = [key for key, session in self._sessions.items() if session.employee == employee]
        for key in mine:
            del self._sessions[key]
        return len(mine)

    async def of_employee(self, employee: str, now: float) -> list[BrowserSession]:
        mine = [s for s in self._sessions.values() if s.employee == employee and s.expires_at > now]
        return sorted(mine, key=lambda session: session.started)

    async def hold_login(self, login: PendingLogin, now: float) -> None:
        if len(self._pending) >= MAX_PENDING:
            self._pending = {k: p for k, p in self._pending.items() if p.expires_at > now}
            while len(self._pending) >= MAX_PENDING:
                del self._pending[next(iter(self._pending))]
        self._pending[login.key] = login

    async def take_login(self, key: str, now: float) -> PendingLogin | None:
        login = self._pending.pop(key, None)
        return login if login is not None and login.expires_at > now else None

    async def close(self) -> None:
        self._sessions.clear()
        self._pending.clear()

    def _sweep(self, now: float) -> None:
        if len(self._sessions) % 1024 == 1023:
            self._sessions = {k: s for k, s in self._sessions.items() if s.expires_at > now}

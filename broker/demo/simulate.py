"""Playing traffic plans against a running broker, over real sockets.

Each visit is sent from its own loopback address (Linux routes all of 127/8 to the
loopback interface), with a token minted for the employee at the broker's time. A
look-up visit fetches the next waybill the same person saw in an earlier list answer.
`play` paces visits on the real clock (the demo); with `set_clock` it moves a fake
clock to each visit's time instead and sends at once (a whole day in seconds).
"""

from __future__ import annotations

import asyncio
import re
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import aiohttp

from broker.demo.traffic import LOOKUP, Visit
from broker.identity.jwt_authenticator import mint_token

WAYBILL_NO = re.compile(rb'"waybill_no":\s*"([^"]+)"')
HONEST_SPEED = 10.0
"""How much faster than planned `broker demo --simulate` plays the honest day: ten
hours in an hour. Faster, and an honest manager's look-ups (a few every five minutes)
would come at a scraper's rate, and rightly be flagged."""
SHARED_LOGIN_AT = 15.0
ENUMERATION_AT = 25.0
"""When the demo's two scrapes start, in seconds after the demo is up."""


@dataclass
class Played:
    statuses: dict[int, int] = field(default_factory=dict)
    first_attack_at: float | None = None
    """The broker's time when the first attack visit was sent."""

    def count(self, status: int) -> None:
        self.statuses[status] = self.statuses.get(status, 0) + 1


class Player:
    def __init__(self, base_url: str, secret: str, now: Callable[[], float]) -> None:
        self._base = base_url.rstrip("/")
        self._secret = secret
        self._now = now
        self._sessions: dict[str, aiohttp.ClientSession] = {}
        self._seen: dict[tuple[str, str], deque[str]] = {}
        self.played = Played()

    async def play(
        self, visits: list[Visit], *, speed: float = 1.0, set_clock: Callable[[float], None] | None = None
    ) -> Played:
        """Send every visit at its time: `speed` times faster than planned on the real
        clock, or, with `set_clock`, at once after moving the broker's clock there."""
        began = time.monotonic()
        for visit in visits:
            if set_clock is not None:
                set_clock(visit.at)
            else:
                await asyncio.sleep(max(0.0, visit.at / speed - (time.monotonic() - began)))
            await self.send(visit)
        return self.played

    async def send(self, visit: Visit) -> int:
        path = visit.path
        if path == LOOKUP:
            seen = self._seen.get((visit.employee, visit.address))
            if not seen:
                return 0
            path = f"/api/waybills/{seen.popleft()}"
        if visit.attack and self.played.first_attack_at is None:
            self.played.first_attack_at = self._now()
        token = mint_token(self._secret, visit.employee, now=self._now(), ttl_seconds=3600)
        session = self._session(visit.address)
        async with session.get(self._base + path, headers={"Authorization": f"Bearer {token}"}) as answer:
            body = await answer.read()
        self.played.count(answer.status)
        if answer.status == 200 and "/waybills?" in path:
            numbers = self._seen.setdefault((visit.employee, visit.address), deque(maxlen=1000))
            numbers.extend(n.decode() for n in WAYBILL_NO.findall(body))
        return answer.status

    def _session(self, address: str) -> aiohttp.ClientSession:
        session = self._sessions.get(address)
        if session is None:
            connector = aiohttp.TCPConnector(local_addr=(address, 0))
            session = self._sessions[address] = aiohttp.ClientSession(connector=connector)
        return session

    async def close(self) -> None:
        for session in self._sessions.values():
            await session.close()

"""Deciding one request offline, with the same Guard and classifier the broker serves with.

The caller says who the employee is and when; nothing is verified or forwarded. Every
decision comes from `Guard.decide`, so explain and the policy tests can never disagree
with what the live broker would do.
"""

from __future__ import annotations

from dataclasses import dataclass

from multidict import MultiDict
from yarl import URL

from broker.core.access import Access, Refusal
from broker.core.clock import FakeClock
from broker.core.decision import Decision
from broker.core.guard import Guard
from broker.core.window import current_shift, quota_key, quota_window
from broker.http.classify import Refused, branch_from_body, classify
from broker.identity.error import Identity
from broker.meter.meter import Meter
from broker.meter.store import MemoryCounterStore
from broker.policy.route import Route
from broker.policy.snapshot import PolicySnapshot

OFFLINE_CLIENT = "offline"


class AssumedIdentity:
    """An authenticator that believes the credential is the employee id: for offline use only."""

    async def identify(self, credential: str | None) -> Identity:
        return Identity(credential or "")


class _Fixed:
    def __init__(self, snapshot: PolicySnapshot) -> None:
        self.current: PolicySnapshot | None = snapshot


@dataclass(frozen=True, slots=True)
class Question:
    employee: str
    method: str
    target: str
    at: float
    body: bytes | None = None
    used: int = 0
    """Records already taken in the current quota window before this request."""


def parse_request(text: str) -> tuple[str, str]:
    """`GET /api/x?y=1` → (method, raw target)."""
    method, _, target = text.strip().partition(" ")
    if not method.isalpha() or not target.startswith("/"):
        raise ValueError(f"request {text!r} must look like 'GET /path?query'")
    return method.upper(), target.strip()


async def decide_offline(snapshot: PolicySnapshot, question: Question) -> tuple[Decision, Route | None]:
    clock = FakeClock(question.at)
    store = MemoryCounterStore()
    guard = Guard(_Fixed(snapshot), AssumedIdentity(), Meter(store, clock.now), clock)
    access, route = _classify(snapshot, question)
    if question.used and route is not None:
        await _precharge(snapshot, store, question, route, clock.now())
    return await guard.decide(access, snapshot), route


def _classify(snapshot: PolicySnapshot, question: Question) -> tuple[Access, Route | None]:
    query = MultiDict(URL(question.target, encoded=True).query)
    access, route = classify(
        snapshot.routes, question.method, question.target, query, question.employee, OFFLINE_CLIENT
    )
    if route is None or route.branch_from != "body":
        return access, route
    try:
        return access.with_branch(branch_from_body(route, question.body or b"")), route
    except Refused as exc:
        return access.with_refusal(Refusal(exc.reason, exc.detail)), None


async def _precharge(
    snapshot: PolicySnapshot, store: MemoryCounterStore, question: Question, route: Route, now: float
) -> None:
    """Book `used` records in the employee's current window, as if taken earlier."""
    employee = snapshot.index.employees.get(question.employee)
    limit = snapshot.index.record_limit(employee, route.resource) if employee else None
    if employee is None or limit is None or limit.quota is None:
        return
    window = quota_window(limit, current_shift(employee.shifts, now), employee.zone, now)
    await store.add(quota_key(employee.id, route.resource, window.start), question.used, window.end, now)

"""What the core answers: a verdict with its reason, rule and limit state."""

from __future__ import annotations

from datetime import UTC, tzinfo
from enum import StrEnum
from typing import Any, Final

from broker.core.access import Access, Principal
from broker.core.reason import Reason


class Verdict(StrEnum):
    ALLOW = "allow"
    DENY = "deny"
    ERROR = "error"
    """The broker could not decide; doors fail closed on it and count it apart."""


# QuotaState, RateState and Decision are made for every request: written out by hand
# (Final attributes where they never change) a compiled build makes each in tens of
# nanoseconds; as dataclasses they took about a microsecond each (see broker/meter/store.py).


class QuotaState:
    """A records quota after this decision: what the RateLimit headers report."""

    __slots__ = ("limit", "name", "reset_at", "used", "window", "zone")

    def __init__(self, name: str, limit: int, used: int, window: int, reset_at: float, zone: tzinfo = UTC) -> None:
        self.name: Final = name
        self.limit: Final = limit
        self.used: Final = used
        self.window: Final = window
        self.reset_at: Final = reset_at
        self.zone: Final = zone
        """Where the employee works: reset times are shown in it."""

    @property
    def remaining(self) -> int:
        return max(0, self.limit - self.used)

    def with_used(self, used: int) -> QuotaState:
        return QuotaState(self.name, self.limit, used, self.window, self.reset_at, self.zone)

    def __repr__(self) -> str:
        return (
            f"QuotaState(name={self.name!r}, limit={self.limit!r}, used={self.used!r}, window={self.window!r}, "
            f"reset_at={self.reset_at!r}, zone={self.zone!r})"
        )


class RateState:
    """A request-rate limit after this decision (GCRA)."""

    __slots__ = ("limit", "period", "remaining", "reset_after", "retry_after")

    def __init__(self, limit: int, period: int, remaining: int, reset_after: float, retry_after: float) -> None:
        self.limit: Final = limit
        self.period: Final = period
        self.remaining: Final = remaining
        self.reset_after: Final = reset_after
        self.retry_after: Final = retry_after

    def __repr__(self) -> str:
        return (
            f"RateState(limit={self.limit!r}, period={self.period!r}, remaining={self.remaining!r}, "
            f"reset_after={self.reset_after!r}, retry_after={self.retry_after!r})"
        )


class Decision:
    """One decision, filled in as the checks run; what the door acts on and the audit
    records."""

    __slots__ = (
        "access",
        "allowed_branches",
        "allowed_records",
        "cap",
        "detail",
        "device",
        "ends",
        "facts",
        "id",
        "in_flight",
        "metered",
        "principal",
        "probe_key",
        "probe_window_end",
        "probed",
        "quota",
        "quota_key",
        "rate",
        "reason",
        "reserved",
        "retry_after",
        "revision",
        "rule",
        "started",
        "verdict",
    )

    def __init__(
        self, id: str, verdict: Verdict, reason: Reason, detail: str, access: Access, revision: str, started: float
    ) -> None:
        self.id: Final = id
        self.verdict = verdict
        self.reason = reason
        self.detail = detail
        self.access = access
        self.revision = revision
        self.started: Final = started
        self.rule = ""
        self.principal: Principal | None = None
        self.allowed_records = 0
        self.allowed_branches: frozenset[str] | None = frozenset()
        """Branches the returned records may belong to; None means every branch."""
        self.cap: int | None = None
        """The per-statement record cap that applied (None: unlimited); the PostgreSQL door
        puts it into UPDATE and DELETE statements as their row cap."""
        self.quota: QuotaState | None = None
        self.quota_key = ""
        self.reserved = 0
        self.rate: RateState | None = None
        self.metered = ""
        """Which counters served: shared (Redis), local (in memory), fallback or refused."""
        self.retry_after: float | None = None
        self.device = ""
        """The registered device (devices.toml id) the request came through, when the door
        requires device certificates."""
        self.probe_key = ""
        """Where this employee's refusals-after-answer are counted; "" when they have no budget."""
        self.probe_window_end = 0.0
        self.probed = False
        """The request was refused after the service answered and counted as a probe."""
        self.in_flight = False
        """Counted among the employee's requests waiting for an answer (the probe budget)."""
        self.ends: float | None = None
        """A login decision: when the shift it was made in ends (a browser session ends then)."""
        self.facts: dict[str, Any] = {}
        """Numbers the denial should show the employee (cap, requested, next shift)."""

    def __repr__(self) -> str:
        return (
            f"Decision(id={self.id!r}, verdict={self.verdict!r}, reason={self.reason!r}, "
            f"employee={self.employee!r}, access={self.access!r})"
        )

    @property
    def allowed(self) -> bool:
        return self.verdict is Verdict.ALLOW

    @property
    def employee(self) -> str | None:
        return self.principal.employee if self.principal else self.facts.get("subject")

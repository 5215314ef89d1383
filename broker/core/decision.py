"""What the core answers: a verdict with its reason, rule and limit state."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, tzinfo
from enum import StrEnum
from typing import Any

from broker.core.access import Access, Principal
from broker.core.reason import Reason


class Verdict(StrEnum):
    ALLOW = "allow"
    DENY = "deny"
    ERROR = "error"
    """The broker could not decide; doors fail closed on it and count it apart."""


@dataclass(frozen=True, slots=True)
class QuotaState:
    """A records quota after this decision: what the RateLimit headers report."""

    name: str
    limit: int
    used: int
    window: int
    reset_at: float
    zone: tzinfo = UTC
    """Where the employee works: reset times are shown in it."""

    @property
    def remaining(self) -> int:
        return max(0, self.limit - self.used)


@dataclass(frozen=True, slots=True)
class RateState:
    """A request-rate limit after this decision (GCRA)."""

    limit: int
    period: int
    remaining: int
    reset_after: float
    retry_after: float


@dataclass(slots=True)
class Decision:
    id: str
    verdict: Verdict
    reason: Reason
    detail: str
    access: Access
    revision: str
    started: float
    rule: str = ""
    principal: Principal | None = None
    allowed_records: int = 0
    allowed_branches: frozenset[str] | None = frozenset()
    """Branches the returned records may belong to; None means every branch."""
    cap: int | None = None
    """The per-statement record cap that applied (None: unlimited); the PostgreSQL door
    puts it into UPDATE and DELETE statements as their row cap."""
    quota: QuotaState | None = None
    quota_key: str = ""
    reserved: int = 0
    rate: RateState | None = None
    metered: str = ""
    """Which counters served: shared (Redis), local (in memory), fallback or refused."""
    retry_after: float | None = None
    device: str = ""
    """The registered device (devices.toml id) the request came through, when the door
    requires device certificates."""
    probe_key: str = ""
    """Where this employee's refusals-after-answer are counted; "" when they have no budget."""
    probe_window_end: float = 0.0
    probed: bool = False
    in_flight: bool = False
    """Counted among the employee's requests waiting for an answer (the probe budget)."""
    """The request was refused after the service answered and counted as a probe."""
    ends: float | None = None
    """A login decision: when the shift it was made in ends (a browser session ends then)."""
    facts: dict[str, Any] = field(default_factory=dict)
    """Numbers the denial should show the employee (cap, requested, next shift)."""

    @property
    def allowed(self) -> bool:
        return self.verdict is Verdict.ALLOW

    @property
    def employee(self) -> str | None:
        return self.principal.employee if self.principal else self.facts.get("subject")

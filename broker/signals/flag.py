"""A raised signal: what was seen, about whom, how bad, and what to do about it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from broker.signals.rules import Action

EVIDENCE_IDS = 10
"""Decision ids a flag carries as evidence (the latest)."""
Severity = Literal["medium", "high"]


@dataclass(frozen=True, slots=True)
class Flag:
    signal: str
    employee: str
    action: Action
    detail: str
    evidence: dict[str, Any]
    at: float
    severity: Severity = "medium"
    """How sure and how bad: "high" where an honest explanation is unlikely (one login
    in three places, a walked run of numbers, a take far past the bar), else "medium"."""

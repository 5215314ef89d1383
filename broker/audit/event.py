"""The canonical audit event: one per decision, allow and deny, never the token."""

from __future__ import annotations

from typing import Any

from broker.core.access import UNBOUNDED
from broker.core.clock import iso
from broker.core.decision import Decision


def decision_event(
    decision: Decision, *, door: str, status: int, returned: int, latency: float, **fields: Any
) -> dict[str, Any]:
    access, principal = decision.access, decision.principal
    quota = decision.quota
    event: dict[str, Any] = {
        "time": iso(decision.started),
        "decision_id": decision.id,
        "door": door,
        "employee": decision.employee,
        "roles": list(principal.roles) if principal else [],
        "branches": list(principal.branches) if principal else [],
        "client": access.client,
        **fields,
        "resource": access.resource or None,
        "action": access.action or None,
        "record_branch": access.branch,
        "verdict": decision.verdict.value,
        "reason": decision.reason.value,
        "detail": decision.detail or None,
        "rule": decision.rule or None,
        "policy_revision": decision.revision or None,
        "records_requested": "unbounded" if access.records >= UNBOUNDED else access.records,
        "records_returned": returned,
        "quota_left": quota.remaining if quota else None,
        "meter": decision.metered or None,
        "status": status,
        "latency_ms": round(latency * 1000, 3),
    }
    return event

"""A past decision, as the audit recorded it, turned back into a question for `explain`.

The help desk gets a decision id from the employee (the `X-Broker-Decision` header or
the refusal body's `decision_id`) and asks "why?". The audit line holds who asked, what,
when and how much of the quota was left; `explain` re-decides that question step by step
under the policy given. When that is not the revision the decision was made under, the
answer says so, since the two may differ.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson

from broker.audit.checkpoint import CHECKPOINT_EVENT
from broker.core.clock import parse_instant
from broker.policy.snapshot import PolicySnapshot
from broker.review.offline import Question


def find_event(audit: Path, decision_id: str) -> dict[str, Any]:
    """The audit event of `decision_id` (ValueError when it is not in the file)."""
    with audit.open("rb") as lines:
        for raw in lines:
            if decision_id.encode() not in raw:
                continue
            try:
                event = orjson.loads(raw)
            except orjson.JSONDecodeError:
                continue
            if isinstance(event, dict) and event.get("decision_id") == decision_id:
                if event.get("event") == CHECKPOINT_EVENT:
                    continue
                return event
    raise ValueError(f"decision {decision_id} is not in {audit}")


def recorded_question(
    snapshot: PolicySnapshot, decision_id: str, audit: Path | None
) -> tuple[Question, dict[str, Any]]:
    """The question `decision_id` answered, and what the audit recorded about it."""
    if audit is None:
        raise ValueError("--decision needs --audit FILE, the audit log that holds it")
    return question_of(snapshot, find_event(audit, decision_id))


def question_of(snapshot: PolicySnapshot, event: dict[str, Any]) -> tuple[Question, dict[str, Any]]:
    """The question a recorded decision event answered (the console finds the event in
    memory first, `broker explain` in the audit file)."""
    decision_id = str(event.get("decision_id"))
    if event.get("door") != "http" or not event.get("employee") or not event.get("method"):
        raise ValueError(
            f"decision {decision_id} is not an HTTP request by an identified employee; explain cannot redo it"
        )
    used = 0
    limit = None
    employee = snapshot.index.employees.get(event["employee"])
    if employee is not None and event.get("resource"):
        limit = snapshot.index.record_limit(employee, event["resource"])
    if limit is not None and limit.quota is not None and isinstance(event.get("quota_left"), int):
        charged = event.get("records_charged") or 0
        used = max(0, limit.quota - event["quota_left"] - int(charged))
    question = Question(event["employee"], event["method"], event["path"], parse_instant(event["time"]), None, used)
    recorded = {
        "decision_id": decision_id,
        "time": event["time"],
        "verdict": event.get("verdict"),
        "reason": event.get("reason"),
        "status": event.get("status"),
        "policy_revision": event.get("policy_revision"),
        "quota_used_before": used,
    }
    if event.get("policy_revision") and event["policy_revision"] != snapshot.revision:
        recorded["note"] = (
            f"explained under revision {snapshot.revision}; the decision was made under {event['policy_revision']}"
        )
    return question, recorded

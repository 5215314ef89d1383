"""The audit event of one statement through the PostgreSQL door."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from broker.audit.event import decision_event
from broker.core.access import Access
from broker.core.decision import Decision, Verdict
from broker.core.guard import new_decision_id
from broker.core.reason import Reason
from broker.pg.relay import Metered
from broker.pg.sql import Statement


def statement_event(execution: Metered, login: Decision, peer: str, now: float, sql: str = "") -> dict[str, Any]:
    """One canonical event per statement: the deciding decision (the first denial, else
    the first allow), what the statement touched, and what it returned."""
    statement = execution.statement
    decision = primary_decision(execution.decisions) or _plain_decision(execution, login, peer, now)
    return decision_event(
        decision,
        door="pg",
        status=0,
        returned=execution.rows,
        latency=time.perf_counter() - execution.started,
        sqlstate=execution.sqlstate,
        statement=statement.fingerprint if statement else None,
        statement_kind=statement.kind if statement else None,
        tables=_tables(statement),
        pii_columns=list(statement.pii) if statement else [],
        cut=execution.cut or None,
        refused_sql=sql[:200] or None,
    )


def _tables(statement: Statement | None) -> list[str]:
    if statement is None:
        return []
    uses = statement.uses
    if len(uses) == 1:  # most statements read one table: no set to build and sort
        return [uses[0].table]
    return sorted({use.table for use in uses})


def primary_decision(decisions: Sequence[Decision]) -> Decision | None:
    for decision in decisions:
        if not decision.allowed:
            return decision
    return decisions[0] if decisions else None


def _plain_decision(execution: Metered, login: Decision, peer: str, now: float) -> Decision:
    """Statements that touch no mapped table (BEGIN, SET, SELECT 1) are audited too, as
    allowed under the session's login."""
    statement = execution.statement
    access = Access(None, peer, f"sql {statement.fingerprint if statement else ''}")
    decision = Decision(new_decision_id(), Verdict.ALLOW, Reason.ALLOWED, "", access, login.revision, now)
    decision.principal = login.principal
    return decision

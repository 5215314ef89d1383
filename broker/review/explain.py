"""`broker explain`: every check of one decision, in the order the broker runs them.

The verdict is the Guard's own; the trace around it shows the roster facts, rules and
limits each check read, and marks where the decision was made.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import UTC
from typing import Any

from broker.core.access import UNBOUNDED
from broker.core.clock import iso
from broker.core.decision import Decision
from broker.core.reason import Reason
from broker.core.window import current_shift, next_shift_start
from broker.policy.employee import Employee
from broker.policy.route import Route
from broker.policy.snapshot import PolicySnapshot

STEPS = ("identity", "roster", "route", "permission", "branch", "shift", "cap", "rate", "quota")
_STEP_OF: dict[str, str] = {
    "identity.not_on_roster": "roster",
    "request.": "route",
    "route.": "route",
    "policy.not_permitted": "permission",
    "policy.other_branch": "branch",
    "shift.": "shift",
    "bulk.": "cap",
    "rate.": "rate",
    "quota.": "quota",
    "meter.": "quota",
    "identity.": "identity",
}


@dataclass(frozen=True, slots=True)
class Step:
    check: str
    result: str
    """pass, deny, or not reached."""
    detail: str


@dataclass(frozen=True, slots=True)
class Explanation:
    employee: str
    request: str
    at: str
    policy_revision: str
    verdict: str
    reason: str
    detail: str
    rule: str
    steps: tuple[Step, ...]

    def as_json(self) -> dict[str, Any]:
        return asdict(self)

    def as_text(self) -> str:
        lines = [
            f"{self.request}  as {self.employee}  at {self.at}  (policy {self.policy_revision})",
            "",
        ]
        width = max(len(s.check) for s in self.steps)
        for step in self.steps:
            mark = {"pass": "ok  ", "deny": "DENY", "not reached": "--  "}[step.result]
            lines.append(f"  {mark} {step.check.ljust(width)}  {step.detail}")
        lines += ["", f"verdict: {self.verdict} ({self.reason})", f"  {self.detail}" if self.detail else ""]
        if self.rule:
            lines.append(f"  rule: {self.rule}")
        return "\n".join(line for line in lines if line is not None).rstrip() + "\n"


def deciding_step(reason: Reason) -> str | None:
    if reason is Reason.ALLOWED:
        return None
    for prefix, step in _STEP_OF.items():
        if reason.value.startswith(prefix):
            return step
    return "identity"


def explain(snapshot: PolicySnapshot, decision: Decision, route: Route | None, request: str) -> Explanation:
    denied_at = deciding_step(decision.reason)
    employee = snapshot.index.employees.get(decision.employee or "")
    facts = _facts(snapshot, decision, route, employee)
    steps, reached = [], True
    for check in STEPS:
        if not reached:
            steps.append(Step(check, "not reached", facts.get(check, "")))
            continue
        if check == denied_at:
            steps.append(Step(check, "deny", decision.detail or facts.get(check, "")))
            reached = False
        else:
            steps.append(Step(check, "pass", facts.get(check, "")))
    return Explanation(
        employee=decision.employee or "",
        request=request,
        at=iso(decision.started, employee.zone if employee else UTC),
        policy_revision=snapshot.revision,
        verdict=decision.verdict.value,
        reason=decision.reason.value,
        detail=decision.detail,
        rule=decision.rule,
        steps=tuple(steps),
    )


def _facts(
    snapshot: PolicySnapshot, decision: Decision, route: Route | None, employee: Employee | None
) -> dict[str, str]:
    access, now = decision.access, decision.started
    facts = {"identity": f"employee id {decision.employee!r} (assumed: explain does not check tokens)"}
    if employee is None:
        return facts
    roles = ", ".join(f"{r}@{b}" for b, held in sorted(employee.roles_by_branch.items()) for r in sorted(held))
    roles += "".join(f", {r}@every branch" for r in sorted(employee.global_roles))
    shifts = ", ".join(s.name for s in employee.shifts) or "none"
    facts["roster"] = f"roles {roles.lstrip(', ') or 'none'}; shifts {shifts}"
    if route is None:
        return facts
    asked = "unbounded" if access.records >= UNBOUNDED else str(access.records)
    facts["route"] = (
        f"{route.name!r} (routes.toml:{route.line}): {access.resource}/{access.action}, "
        f"records asked {asked}; {answer_check(route)}"
    )
    grant = snapshot.index.grant(employee, access.resource, access.action)
    facts["permission"] = f"granted by {grant.rule}" if grant.permitted else "no role of theirs grants it"
    if grant.denial:
        closed = "every branch" if grant.denied is None else ", ".join(sorted(grant.denied))
        facts["permission"] = f"{grant.rule or 'not granted'}; closed in {closed} by the deny line {grant.denial}"
    mine = "every branch" if grant.branches is None else ", ".join(sorted(grant.branches)) or "none"
    facts["branch"] = f"record branch {_branch_source(route, access.branch)}; theirs: {mine}"
    shift = current_shift(employee.shifts, now)
    upcoming = next_shift_start(employee.shifts, now)
    facts["shift"] = (
        f"in shift until {iso(shift.end, employee.zone)}"
        if shift
        else f"outside every shift; next starts {iso(upcoming, employee.zone) if upcoming else 'never'}"
    )
    limit = snapshot.index.record_limit(employee, access.resource)
    if limit is not None:
        facts["cap"] = f"cap {limit.cap if limit.cap is not None else 'unlimited'} per request ({limit.rule})"
    rate = snapshot.index.rate_limit(employee)
    facts["rate"] = f"{rate.requests} per {rate.period} s ({rate.rule})" if rate else "no rate limit"
    if decision.quota is not None:
        q = decision.quota
        facts["quota"] = f"{q.used} of {q.limit} used after this request, resets {iso(q.reset_at, q.zone)}"
    elif limit is not None:
        window = "shift" if limit.per_shift else f"{limit.window} s"
        facts["quota"] = "unlimited" if limit.quota is None else f"{limit.quota} per {window} ({limit.rule})"
    return facts


def answer_check(route: Route) -> str:
    """What the HTTP door does with this route's answers, as it really does it."""
    if route.records == "none":
        return (
            "answer not counted (mapped as carrying no records); a JSON answer holding an object "
            "with any branch field the route map knows, a text answer (CSV, XML, HTML, plain) naming one, "
            "or a compressed JSON or text answer is refused; other (binary) answers pass unchecked"
        )
    where = ".".join(route.response_items) or "the top level"
    shape = "a list of records" if route.records == "list" else "one record"
    return (
        f"answer held until counted: only a 2xx answer passes, it must have {shape} at {where}, and "
        f"every object carrying {route.branch_field!r} anywhere in it is counted and must be of their branches"
    )


def _branch_source(route: Route, branch: str | None) -> str:
    if branch is not None:
        return f"{branch} (from the request's {route.branch_from})"
    if route.owner:
        return f"(read first from GET /{'/'.join(route.owner)}; decided on the record's own branch)"
    if route.records != "none":
        return "(not in the request: checked on every record in the answer)"
    return "(not checked: the route names no branch and carries no records)"

"""`broker replay`: re-decide a recorded audit log under a changed policy, and report the impact.

Every recorded HTTP decision is decided again, in time order, by one Guard with one
in-memory meter and one clock set to each decision's recorded time, so quotas and request
rates accumulate over the day exactly as they would have under the new policy. The
request is rebuilt from the event (method and raw target, the employee as identity) and
classified by the HTTP door's own classifier against the new route map.

What the log cannot tell is taken as it was:

* Request bodies are not logged: for a route whose branch comes from the JSON body, the
  body is rebuilt as `{branch_field: record_branch}`; a recorded `request.bad_body`
  or `request.too_large` (door refusals that depend on the bytes) is carried over to the replayed request.
* The upstream's answer is not replayed. An allowed decision is settled with the records
  the original response returned. An original that the Guard allowed but the door then
  denied (`upstream.*`: too many or other-branch records, unreachable, too slow) is
  assumed to end the same way again when the new policy allows it, charging what the
  original was charged (`records_charged`: a probe keeps its reservation).
* Originals that were no policy decision at all (`meter.unavailable`,
  `policy.unavailable`, `broker.error`) are not replayed; they are counted apart.

A decision flips when allowed became denied or the other way round; one that keeps its
verdict with another reason (say `shift.outside` now `policy.other_branch`) is counted
as a reason change, not a flip.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC

import orjson
from multidict import MultiDict
from yarl import URL

from broker.core.access import Access, Refusal
from broker.core.clock import FakeClock, iso
from broker.core.decision import Decision, Verdict
from broker.core.guard import Guard
from broker.core.reason import Reason
from broker.http.classify import Refused, branch_from_body, classify
from broker.meter.meter import Meter
from broker.meter.store import MemoryCounterStore
from broker.policy.route import Route
from broker.policy.snapshot import PolicySnapshot
from broker.review.impact import Example, Group, Impact, headline, impact_json, impact_text
from broker.review.offline import AssumedIdentity
from broker.review.recorded import Recorded, read_audit

__all__ = ["Impact", "Recorded", "headline", "impact_json", "impact_text", "read_audit", "replay", "replayed_access"]

REPLAY_CLIENT = "replay"
KEEP_EXAMPLES = 10
"""Examples kept per group key; `impact_text` shows fewer."""
NOT_REPLAYED = frozenset({Reason.METER_UNAVAILABLE.value, Reason.POLICY_UNAVAILABLE.value, Reason.BROKER_ERROR.value})
"""Original outcomes that were no policy decision: there is nothing to compare with."""
_CARRIED = frozenset({Reason.REQUEST_TOO_LARGE.value})
"""Door refusals that depend on request bytes the log does not keep."""
_UPSTREAM = "upstream."
NO_BRANCH = "(no branch)"


class _Fixed:
    def __init__(self, snapshot: PolicySnapshot) -> None:
        self.current: PolicySnapshot | None = snapshot


async def replay(snapshot: PolicySnapshot, events: Iterable[Recorded], *, keep: int = KEEP_EXAMPLES) -> Impact:
    """Decide every event again under `snapshot`, in time order, and compare.

    One clock, one Guard and one in-memory meter serve the whole replay, so a quota or
    rate limit spent early in the day is spent for the decisions that follow.

    Settling: an allowed replayed decision is settled with what the original response
    returned, `min(records_returned, allowed_records)`. When the original was denied,
    nothing came back and what the upstream would have returned is unknown; the
    replay then keeps the Guard's reservation, i.e. charges the records the request
    asks for (`records_requested`, unless the new route map reads the limit
    differently), which is what the live broker holds against the quota until the
    answer is counted. It is an upper bound (an answer with more records than asked is
    never passed on), so any error is on the fail-closed side: a loosening that turns
    a denial into an allow also shows the later decisions that allow would push over
    the quota, instead of hiding them; charging nothing would under-count every such
    request. `keep` bounds the examples kept per group key.
    """
    impact = Impact(snapshot.revision)
    ordered = sorted(events, key=lambda e: (e.time, e.line))
    clock = FakeClock(ordered[0].time if ordered else 0.0)
    guard = Guard(_Fixed(snapshot), AssumedIdentity(), Meter(MemoryCounterStore(), clock.now), clock)
    for event in ordered:
        impact.recorded_revisions[event.policy_revision or "(unknown)"] += 1
        if event.reason in NOT_REPLAYED or event.verdict == Verdict.ERROR.value:
            impact.not_replayed[event.reason] += 1
            continue
        clock.set(event.time)
        access, route = replayed_access(snapshot, event)
        decision = await guard.decide(access, snapshot)
        if decision.allowed:
            if event.verdict == Verdict.ALLOW.value:
                await guard.settle(decision, min(event.records_returned, decision.allowed_records))
            elif event.reason.startswith(_UPSTREAM):
                # the door refuses the answer again and charges what it charged then
                # (a probe keeps its reservation; the service's own failures cost nothing)
                charged = event.records_charged or 0
                await guard.settle(decision, min(charged, decision.allowed_records))
            # else: the reservation (records_requested) stays charged; see the docstring
        _compare(impact, snapshot, event, decision, route, keep)
    return impact


def replayed_access(snapshot: PolicySnapshot, event: Recorded) -> tuple[Access, Route | None]:
    """The request of `event` as the HTTP door would hand it to the Guard today.

    The same steps as `broker.review.offline`, with the body rebuilt from the recorded
    branch and the byte-level door refusals carried over (see the module docstring).
    """
    try:
        query: MultiDict[str] = MultiDict(URL(event.path, encoded=True).query)
    except ValueError:
        query = MultiDict()
    access, route = classify(snapshot.routes, event.method, event.path, query, event.employee, REPLAY_CLIENT)
    if route is None:
        return access, None
    if event.reason in _CARRIED:
        return access.with_refusal(Refusal(Reason(event.reason), event.detail)), None
    if route.branch_from != "body":
        return access, route
    if event.record_branch is None:
        if event.reason == Reason.REQUEST_BAD_BODY.value:
            return access.with_refusal(Refusal(Reason.REQUEST_BAD_BODY, event.detail)), None
        return access, route  # the branch is unknown: the door would check the returned record
    body = orjson.dumps({route.branch_name: event.record_branch})
    try:
        return access.with_branch(branch_from_body(route, body)), route
    except Refused as exc:  # pragma: no cover - the rebuilt body always names the branch
        return access.with_refusal(Refusal(exc.reason, exc.detail)), None


def _outcome(event: Recorded, decision: Decision) -> tuple[str, str, str]:
    """The new verdict, reason and detail as the client would have seen them."""
    if decision.allowed and event.reason.startswith(_UPSTREAM):
        return Verdict.DENY.value, event.reason, event.detail
    verdict = Verdict.DENY if decision.verdict is Verdict.ERROR else decision.verdict
    return verdict.value, decision.reason.value, decision.detail


def _compare(
    impact: Impact, snapshot: PolicySnapshot, event: Recorded, decision: Decision, route: Route | None, keep: int
) -> None:
    impact.total += 1
    verdict, reason, detail = _outcome(event, decision)
    was_allowed, now_allowed = event.verdict == Verdict.ALLOW.value, verdict == Verdict.ALLOW.value
    if was_allowed == now_allowed:
        if reason == event.reason:
            impact.unchanged += 1
        else:
            impact.reason_changed += 1
            impact.reason_changes[(f"{event.verdict} {event.reason}", f"{verdict} {reason}")] += 1
        return
    if was_allowed:
        impact.allow_to_deny += 1
    else:
        impact.deny_to_allow += 1
    employee = snapshot.index.employees.get(event.employee)
    example = Example(
        time=iso(event.time, employee.zone if employee else UTC),
        employee=event.employee,
        request=event.request,
        old_verdict=event.verdict,
        old_reason=event.reason,
        new_verdict=verdict,
        new_reason=reason,
        new_detail=detail,
        line=event.line,
    )
    keys = {
        "employee": event.employee,
        "branch": _branch_of(snapshot, event),
        "route": _route_of(event, route),
        "reason": reason if not now_allowed else f"allow (was {event.reason})",
    }
    for name, key in keys.items():
        group = impact.groups[name].get(key)
        if group is None:
            group = impact.groups[name][key] = Group(key)
        if was_allowed:
            group.allow_to_deny += 1
        else:
            group.deny_to_allow += 1
        if len(group.examples) < keep:
            group.examples.append(example)


def _branch_of(snapshot: PolicySnapshot, event: Recorded) -> str:
    if event.record_branch:
        return event.record_branch
    if event.branches:
        return event.branches[0]
    employee = snapshot.index.employees.get(event.employee)
    return min(employee.roles_by_branch) if employee and employee.roles_by_branch else NO_BRANCH


def _route_of(event: Recorded, route: Route | None) -> str:
    if route is not None:
        return route.name
    if event.resource and event.action:
        return f"{event.resource}/{event.action}"
    return f"{event.method} {event.path.partition('?')[0]}"

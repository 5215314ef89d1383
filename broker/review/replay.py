"""`broker replay`: re-decide a recorded audit log under a changed policy, and report the impact.

Every recorded HTTP decision is decided again, in time order, by one Guard with one
in-memory meter and one clock set to each decision's recorded time, so quotas and request
rates accumulate over the day exactly as they would have under the new policy. The
request is rebuilt from the event (method and raw target, the employee as identity) and
classified by the HTTP door's own classifier against the new route map.

What the log cannot tell is taken as it was:

* Request bodies are not logged: for a route whose branch comes from the JSON body, the
  body is rebuilt as `{branch_field: record_branch}`; a recorded `request.bad_body`,
  `request.too_large` or `request.bad_framing` (door refusals that depend on the bytes)
  is carried over to the replayed request.
* The upstream's answer is not replayed. An allowed decision is settled with the records
  the original response returned. An original that the Guard allowed but the door then
  denied (`upstream.*`: too many or other-branch records, unreachable, too slow) is
  assumed to end the same way again when the new policy allows it.
* Originals that were no policy decision at all (`meter.unavailable`,
  `policy.unavailable`, `broker.error`) are not replayed; they are counted apart.

A decision flips when allowed became denied or the other way round; one that keeps its
verdict with another reason (say `shift.outside` now `policy.other_branch`) is counted
as a reason change, not a flip.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

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
from broker.review.offline import AssumedIdentity

REPLAY_CLIENT = "replay"
HTTP_DOOR = "http"
KEEP_EXAMPLES = 10
"""Examples kept per group key; `impact_text` shows fewer."""
TOP = 10
"""Rows per table in the text report."""

NOT_REPLAYED = frozenset({Reason.METER_UNAVAILABLE.value, Reason.POLICY_UNAVAILABLE.value, Reason.BROKER_ERROR.value})
"""Original outcomes that were no policy decision: there is nothing to compare with."""
_CARRIED = frozenset({Reason.REQUEST_TOO_LARGE.value, Reason.REQUEST_BAD_FRAMING.value})
"""Door refusals that depend on request bytes the log does not keep."""
_UPSTREAM = "upstream."
_VERDICTS = frozenset(v.value for v in Verdict)
GROUPS = ("employee", "branch", "route", "reason")
NO_BRANCH = "(no branch)"


@dataclass(frozen=True, slots=True)
class Recorded:
    """One HTTP decision from the audit log: what replaying and reporting it needs."""

    line: int
    time: float
    employee: str
    method: str
    path: str
    """The raw request target, query included, as the client sent it."""
    record_branch: str | None
    resource: str | None
    action: str | None
    verdict: str
    reason: str
    detail: str
    records_requested: int | None
    """None when the request was unbounded."""
    records_returned: int
    branches: tuple[str, ...] = ()
    """The employee's branches on the roster of the day."""
    policy_revision: str = ""

    @property
    def request(self) -> str:
        return f"{self.method} {self.path}"


@dataclass(frozen=True, slots=True)
class Example:
    time: str
    """The decision's time, in the employee's time zone when the new roster knows them."""
    employee: str
    request: str
    old_verdict: str
    old_reason: str
    new_verdict: str
    new_reason: str
    new_detail: str
    line: int

    def as_text(self) -> str:
        change = f"{self.old_verdict} ({self.old_reason}) → {self.new_verdict} ({self.new_reason})"
        return f"{self.time}  {self.employee}  {self.request}  [audit line {self.line}]\n    {change}" + (
            f": {self.new_detail}" if self.new_detail else ""
        )


@dataclass(slots=True)
class Group:
    """Flips sharing one key (an employee, a branch, a route or a new reason)."""

    key: str
    allow_to_deny: int = 0
    deny_to_allow: int = 0
    examples: list[Example] = field(default_factory=list)

    @property
    def flips(self) -> int:
        return self.allow_to_deny + self.deny_to_allow


@dataclass(slots=True)
class Impact:
    policy_revision: str
    """The revision the log was replayed under."""
    total: int = 0
    """Decisions replayed (flipped, unchanged or with another reason)."""
    unchanged: int = 0
    reason_changed: int = 0
    allow_to_deny: int = 0
    deny_to_allow: int = 0
    not_replayed: Counter[str] = field(default_factory=Counter)
    """Original reason -> decisions not replayed (no policy decision was made then)."""
    recorded_revisions: Counter[str] = field(default_factory=Counter)
    """Policy revision -> decisions recorded under it."""
    reason_changes: Counter[tuple[str, str]] = field(default_factory=Counter)
    """(old verdict and reason, new verdict and reason) -> decisions keeping their verdict."""
    groups: dict[str, dict[str, Group]] = field(default_factory=lambda: {name: {} for name in GROUPS})
    """Group name (GROUPS) -> key -> flips under that key."""

    @property
    def flips(self) -> int:
        return self.allow_to_deny + self.deny_to_allow

    def top(self, group: str, count: int = TOP) -> list[Group]:
        """The keys of `group` with the most flips first (ties by key)."""
        return sorted(self.groups[group].values(), key=lambda g: (-g.flips, g.key))[:count]


# --- reading the log ------------------------------------------------------------------------


def read_audit(path: Path) -> tuple[list[Recorded], list[str]]:
    """The HTTP decisions of an audit log, and notes about the lines left out.

    Notes come in two kinds: `line N: why` for each malformed line (not JSON, not an
    object, a field missing or of the wrong type: a truncated last line shows up here),
    then one `skipped N ...` line per kind of event left out on purpose: events with no
    employee (identity failures: there is nobody to decide for) and events of another
    door than HTTP. Blank lines are ignored.
    """
    events: list[Recorded] = []
    notes: list[str] = []
    anonymous = other_doors = 0
    with path.open("rb") as lines:
        for number, raw in enumerate(lines, start=1):
            if not raw.strip():
                continue
            try:
                document = orjson.loads(raw)
            except orjson.JSONDecodeError as exc:
                notes.append(f"line {number}: not JSON ({exc})")
                continue
            if not isinstance(document, dict):
                notes.append(f"line {number}: not a JSON object")
                continue
            door = document.get("door")
            if not isinstance(door, str):
                notes.append(f"line {number}: no door")
                continue
            if door != HTTP_DOOR:
                other_doors += 1
                continue
            if not document.get("employee"):
                anonymous += 1
                continue
            try:
                events.append(_recorded(number, document))
            except ValueError as exc:
                notes.append(f"line {number}: {exc}")
    if anonymous:
        notes.append(f"skipped {_events(anonymous)} with no employee (identity failures)")
    if other_doors:
        notes.append(f"skipped {_events(other_doors)} of doors other than http")
    return events, notes


def _events(count: int) -> str:
    return f"{count:,} event" + ("" if count == 1 else "s")


def _recorded(line: int, event: dict[str, Any]) -> Recorded:
    requested = event.get("records_requested")
    if requested == "unbounded":
        requested = None
    elif requested is not None and not _count(requested):
        raise ValueError(f"records_requested {requested!r} is neither a count nor 'unbounded'")
    returned = event.get("records_returned", 0)
    if not _count(returned):
        raise ValueError(f"records_returned {returned!r} is not a count")
    verdict = _text(event, "verdict")
    if verdict not in _VERDICTS:
        raise ValueError(f"verdict {verdict!r} is not one of {', '.join(sorted(_VERDICTS))}")
    path = _text(event, "path")
    if not path.startswith("/"):
        raise ValueError(f"path {path!r} does not start with '/'")
    branches = event.get("branches") or []
    if not isinstance(branches, list) or not all(isinstance(b, str) for b in branches):
        raise ValueError("branches is not a list of strings")
    return Recorded(
        line=line,
        time=_instant(_text(event, "time")),
        employee=_text(event, "employee"),
        method=_text(event, "method"),
        path=path,
        record_branch=_optional_text(event, "record_branch"),
        resource=_optional_text(event, "resource"),
        action=_optional_text(event, "action"),
        verdict=verdict,
        reason=_text(event, "reason"),
        detail=_optional_text(event, "detail") or "",
        records_requested=requested,
        records_returned=returned,
        branches=tuple(branches),
        policy_revision=_optional_text(event, "policy_revision") or "",
    )


def _count(value: object) -> bool:
    return type(value) is int and value >= 0


def _text(event: dict[str, Any], name: str) -> str:
    value = event.get(name)
    if not isinstance(value, str) or not value:
        raise ValueError(f"{name} is missing or not a string")
    return value


def _optional_text(event: dict[str, Any], name: str) -> str | None:
    value = event.get(name)
    if value is not None and not isinstance(value, str):
        raise ValueError(f"{name} is not a string")
    return value or None


def _instant(text: str) -> float:
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"time {text!r} is not an ISO 8601 instant") from None
    if moment.tzinfo is None:
        raise ValueError(f"time {text!r} has no UTC offset")
    return moment.timestamp()


# --- replaying ------------------------------------------------------------------------------


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
                await guard.settle(decision, 0)  # the door refused the answer again: nothing left
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
        return dataclasses.replace(access, refusal=Refusal(Reason(event.reason), event.detail)), None
    if route.branch_from != "body":
        return access, route
    if event.record_branch is None:
        if event.reason == Reason.REQUEST_BAD_BODY.value:
            return dataclasses.replace(access, refusal=Refusal(Reason.REQUEST_BAD_BODY, event.detail)), None
        return access, route  # the branch is unknown: the door would check the returned record
    body = orjson.dumps({route.branch_name: event.record_branch})
    try:
        return dataclasses.replace(access, branch=branch_from_body(route, body)), route
    except Refused as exc:  # pragma: no cover - the rebuilt body always names the branch
        return dataclasses.replace(access, refusal=Refusal(exc.reason, exc.detail)), None


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


# --- reporting ------------------------------------------------------------------------------


def headline(impact: Impact) -> str:
    verb = "flips" if impact.flips == 1 else "flip"
    return (
        f"{impact.total:,} decisions replayed: {impact.flips:,} {verb} "
        f"({impact.allow_to_deny:,} allow→deny, {impact.deny_to_allow:,} deny→allow)"
    )


def impact_text(impact: Impact, *, examples: int = 3) -> str:
    """A report for a person reading CI logs: the headline, the flips per employee,
    branch, route and new reason (top 10 each), then examples per new reason."""
    lines = [headline(impact), f"  replayed under policy {impact.policy_revision}"]
    lines.append(f"  {impact.unchanged:,} unchanged, {impact.reason_changed:,} keep their verdict with another reason")
    if impact.not_replayed:
        why = ", ".join(f"{reason} {count:,}" for reason, count in sorted(impact.not_replayed.items()))
        lines.append(f"  {sum(impact.not_replayed.values()):,} not replayed, no policy decision was made then ({why})")
    if impact.recorded_revisions:
        seen = ", ".join(f"{rev} ({count:,})" for rev, count in impact.recorded_revisions.most_common())
        lines.append(f"  recorded under policy {seen}")
    if impact.flips:
        for name in GROUPS:
            lines += ["", *_table(impact, name)]
    if impact.reason_changes:
        lines += ["", "same verdict, another reason"]
        changes = impact.reason_changes.most_common(TOP)
        width = max(len(f"{old} → {new}") for (old, new), _ in changes)
        lines += [f"  {f'{old} → {new}'.ljust(width)}  {count:>6,}" for (old, new), count in changes]
        if len(impact.reason_changes) > TOP:
            lines.append(f"  … and {len(impact.reason_changes) - TOP} more")
    if impact.flips and examples > 0:
        lines += ["", f"examples (up to {examples} per new reason)"]
        for group in impact.top("reason"):
            lines.append(f"  {group.key}")
            lines += ["    " + e.as_text().replace("\n", "\n    ") for e in group.examples[:examples]]
    return "\n".join(lines) + "\n"


def _table(impact: Impact, name: str) -> list[str]:
    rows = impact.top(name)
    title = f"by {name}"
    width = max([len(title), *(len(g.key) + 2 for g in rows)])
    lines = [f"{title.ljust(width)}  allow→deny  deny→allow"]
    lines += [f"{('  ' + g.key).ljust(width)}  {g.allow_to_deny:>10,}  {g.deny_to_allow:>10,}" for g in rows]
    rest = len(impact.groups[name]) - len(rows)
    if rest > 0:
        lines.append(f"  … and {rest} more")
    return lines


def impact_json(impact: Impact) -> dict[str, Any]:
    """The whole impact for tools: totals, every group key with its examples."""
    return {
        "policy_revision": impact.policy_revision,
        "total": impact.total,
        "unchanged": impact.unchanged,
        "reason_changed": impact.reason_changed,
        "flips": impact.flips,
        "allow_to_deny": impact.allow_to_deny,
        "deny_to_allow": impact.deny_to_allow,
        "not_replayed": dict(sorted(impact.not_replayed.items())),
        "recorded_revisions": dict(impact.recorded_revisions.most_common()),
        "reason_changes": [
            {"old": old, "new": new, "count": count} for (old, new), count in impact.reason_changes.most_common()
        ],
        "groups": {
            name: [
                {
                    "key": g.key,
                    "flips": g.flips,
                    "allow_to_deny": g.allow_to_deny,
                    "deny_to_allow": g.deny_to_allow,
                    "examples": [dataclasses.asdict(e) for e in g.examples],
                }
                for g in impact.top(name, len(impact.groups[name]))
            ]
            for name in GROUPS
        },
    }

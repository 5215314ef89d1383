"""The values a denial message may show, and which reason offers which.

Every value comes from what the employee did (the resource and action they asked for,
the records they asked for) or from the policy and the meter about the employee
themselves (their roles, shifts, branches, quota): never from an upstream's answer. In
particular there is no `{branch}`: on a write refused after the service said whose the
record is, the decision's branch is the *record's*, which the refusal must not tell.

`broker check` refuses a template that uses a placeholder its reason does not offer;
at run time a value the decision lacks renders as "-" (a refusal is never lost to a
message).
"""

from __future__ import annotations

import math
from collections.abc import Callable

from broker.core.access import UNBOUNDED
from broker.core.clock import iso
from broker.core.decision import Decision
from broker.core.reason import Reason

MISSING = "-"

EVERYWHERE = ("cause", "decision_id", "employee")
"""Offered by every reason. `cause` is the broker's own sentence for this refusal, in
English: specific (which parameter, which limit) and what the shipped English texts show."""

HELP_LINE = ("contact", "decision_id")
"""What the help line (appended to every message) may use."""

_RETRY = ("retry_after",)
BY_REASON: dict[Reason, tuple[str, ...]] = {
    Reason.QUOTA_EXCEEDED: ("resource", "limit", "used", "remaining", "resets_at", "requested"),
    Reason.RATE_EXCEEDED: ("rate_limit", "period", *_RETRY),
    Reason.SHIFT_OUTSIDE: ("shifts", "next_shift"),
    Reason.BULK_OVER_CAP: ("resource", "cap", "requested"),
    Reason.BULK_UNBOUNDED: ("resource", "cap"),
    Reason.POLICY_NOT_PERMITTED: ("resource", "action", "roles"),
    Reason.POLICY_OTHER_BRANCH: ("resource", "action", "your_branches"),
    Reason.POLICY_DENIED: ("resource", "action", "rule"),
    Reason.PROBE_EXCEEDED: _RETRY,
    Reason.DEVICE_NOT_YOURS: ("device",),
    Reason.AUDIT_UNAVAILABLE: _RETRY,
    Reason.METER_UNAVAILABLE: _RETRY,
    Reason.UPSTREAM_BUSY: _RETRY,
}


def offered(reason: Reason) -> frozenset[str]:
    """The placeholders a template for `reason` may use."""
    return frozenset((*EVERYWHERE, *BY_REASON.get(reason, ())))


def _joined(names: tuple[str, ...] | list[str] | None) -> str | None:
    return ", ".join(names) if names else None


def _quota(field: str) -> Callable[[Decision], object]:
    def value(d: Decision) -> object:
        q = d.quota
        if q is None:
            return None
        return iso(q.reset_at, q.zone) if field == "resets_at" else getattr(q, field)

    return value


def _requested(d: Decision) -> object:
    asked = d.facts.get("requested", d.access.records or None)
    return "unbounded" if isinstance(asked, int) and asked >= UNBOUNDED else asked


def _your_branches(d: Decision) -> object:
    mine = d.facts.get("your_branches")
    if mine is None and d.allowed_branches:  # the policy's grant, not the record's owner
        mine = sorted(d.allowed_branches)
    return _joined(mine)


_VALUES: dict[str, Callable[[Decision], object]] = {
    "cause": lambda d: d.detail,
    "decision_id": lambda d: d.id,
    "employee": lambda d: d.employee,
    "resource": lambda d: d.access.resource,
    "action": lambda d: d.access.action,
    "limit": _quota("limit"),
    "used": _quota("used"),
    "remaining": _quota("remaining"),
    "resets_at": _quota("resets_at"),
    "requested": _requested,
    "retry_after": lambda d: math.ceil(d.retry_after) if d.retry_after is not None else None,
    "rate_limit": lambda d: d.rate.limit if d.rate else None,
    "period": lambda d: d.rate.period if d.rate else None,
    "shifts": lambda d: _joined(d.principal.shifts) if d.principal else None,
    "next_shift": lambda d: d.facts.get("next_shift_start"),
    "cap": lambda d: d.facts.get("cap", d.cap),
    "roles": lambda d: _joined(d.principal.roles) if d.principal else None,
    "your_branches": _your_branches,
    "rule": lambda d: d.rule,
    "device": lambda d: d.device,
}
KNOWN = frozenset(_VALUES)


def values_of(decision: Decision) -> Callable[[str], str]:
    """A lookup of each placeholder's text for `decision`, computed only when asked."""

    def value(name: str) -> str:
        found = _VALUES.get(name)
        shown = found(decision) if found is not None else None
        return MISSING if shown is None or shown == "" else str(shown)

    return value


def values_without_decision(cause: str, extra: dict[str, str] | None = None) -> Callable[[str], str]:
    """The lookup for a refusal outside any decision (an admin endpoint, a sign-in step)."""
    known = {"cause": cause, **(extra or {})}
    return lambda name: known.get(name) or MISSING

"""Per-role record caps, records quotas, request rates and probe budgets, as written in
`p3`/`p4`/`p5` lines."""

from __future__ import annotations

import re
from dataclasses import dataclass

UNLIMITED = "unlimited"
SHIFT_WINDOW = "shift"
_DURATION = re.compile(r"([1-9][0-9]{0,5})([smhd])\Z")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


@dataclass(frozen=True, slots=True)
class RecordLimit:
    """What one role may take of one resource.

    `cap` bounds a single request, `quota` the records taken per window; None is
    unlimited. A window of 0 seconds means "the current shift".
    """

    cap: int | None
    quota: int | None
    window: int
    rule: str

    @property
    def per_shift(self) -> bool:
        return self.window == 0


@dataclass(frozen=True, slots=True)
class RateLimit:
    requests: int
    period: int
    rule: str


@dataclass(frozen=True, slots=True)
class ProbeLimit:
    """How many refusals an employee may cause per window on routes that return records.

    A refusal after the upstream answered (another branch's record, more records than
    the cap, the service's not-found) tells the employee something about the data even
    though no record left. Counted apart from the records quota so that a few thousand
    uncharged yes/no answers a shift cannot map which branch owns which waybill. A window
    of 0 seconds means "the current shift", as for quotas.
    """

    probes: int
    window: int
    rule: str

    @property
    def per_shift(self) -> bool:
        return self.window == 0


def parse_duration(text: str) -> int:
    match = _DURATION.match(text)
    if not match:
        raise ValueError(f"duration {text!r} is not a number with s, m, h or d (e.g. 8h)")
    return int(match[1]) * _UNIT_SECONDS[match[2]]


def parse_amount(text: str, label: str) -> int | None:
    if text == UNLIMITED:
        return None
    if not text.isdigit() or int(text) < 1 or len(text) > 12:
        raise ValueError(f"{label} {text!r} is not a positive whole number or 'unlimited'")
    return int(text)


def build_record_limit(cap: str, quota: str, window: str, rule: str) -> RecordLimit:
    seconds = _window(window)
    return RecordLimit(parse_amount(cap, "cap"), parse_amount(quota, "quota"), seconds, rule)


def build_rate_limit(requests: str, per: str, rule: str) -> RateLimit:
    amount = parse_amount(requests, "requests")
    if amount is None:
        raise ValueError("a rate line must give a number of requests; leave the line out instead")
    return RateLimit(amount, parse_duration(per), rule)


def build_probe_limit(probes: str, window: str, rule: str) -> ProbeLimit:
    amount = parse_amount(probes, "probes")
    if amount is None:
        raise ValueError("a probe line must give a number of refusals; leave the line out for no budget")
    return ProbeLimit(amount, _window(window), rule)


def _window(window: str) -> int:
    """0 for the employee's shift, else the duration in seconds; a typo says what is meant."""
    if window == SHIFT_WINDOW:
        return 0
    try:
        return parse_duration(window)
    except ValueError:
        raise ValueError(f"window {window!r} is neither {SHIFT_WINDOW!r} nor a duration such as 30m, 8h, 1d") from None


def most_generous_records(limits: list[RecordLimit]) -> RecordLimit | None:
    """Roles add up like permissions do: adding a role never tightens a limit.

    The cap is the largest of the roles' caps; the quota (with its window) is the one
    allowing the most records per second of window, a shift counted as 8 hours.
    """
    if not limits:
        return None
    caps = [limit.cap for limit in limits]
    cap = None if None in caps else max(c for c in caps if c is not None)
    quota = max(limits, key=_quota_rate)
    rules = dict.fromkeys([quota.rule, *(limit.rule for limit in limits if limit.cap == cap)])
    return RecordLimit(cap, quota.quota, quota.window, " + ".join(rules))


NOMINAL_SHIFT_SECONDS = 8 * 3600


def _quota_rate(limit: RecordLimit) -> float:
    if limit.quota is None:
        return float("inf")
    return limit.quota / (limit.window or NOMINAL_SHIFT_SECONDS)


def most_generous_rate(limits: list[RateLimit]) -> RateLimit | None:
    if not limits:
        return None
    return max(limits, key=lambda rate: rate.requests / rate.period)


def most_generous_probes(limits: list[ProbeLimit]) -> ProbeLimit | None:
    """Like quotas: the budget allowing the most refusals per second of window."""
    if not limits:
        return None
    return max(limits, key=lambda probe: probe.probes / (probe.window or NOMINAL_SHIFT_SECONDS))

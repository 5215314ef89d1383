"""Reading a recorded audit log back: one `Recorded` per HTTP decision.

Malformed lines are reported with their line numbers and skipped, never guessed at.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson

from broker.audit.checkpoint import CHECKPOINT_EVENT
from broker.core.decision import Verdict

HTTP_DOOR = "http"
_VERDICTS = frozenset(v.value for v in Verdict)


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
    records_charged: int | None = None
    """What the quota was charged (a refused answer keeps its reservation: probing is
    metered); None in logs written before the field existed."""

    @property
    def request(self) -> str:
        return f"{self.method} {self.path}"


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
            if document.get("event") == CHECKPOINT_EVENT:  # the chain's signatures, not a decision
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
    charged = event.get("records_charged")
    if charged is not None and not _count(charged):
        raise ValueError(f"records_charged {charged!r} is not a count")
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
        records_charged=charged,
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

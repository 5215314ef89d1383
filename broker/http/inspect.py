"""Counting the records in an upstream answer and checking whose they are.

Answers carrying records are held until counted: a record of another branch, or more
records than the decision allowed, must never leave the building, and a cut-off
stream would already have leaked the part before the cut.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from broker.core.reason import Reason
from broker.policy.route import Route


@dataclass(frozen=True, slots=True)
class Counted:
    count: int
    violation: Reason | None = None
    detail: str = ""


def inspect_records(route: Route, body: bytes, allowed: int, branches: frozenset[str] | None) -> Counted:
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError:
        return Counted(0, Reason.UPSTREAM_UNINSPECTABLE, "The service answered with invalid JSON.")
    records = _records(route, document)
    if records is None:
        where = ".".join(route.response_items) or "the top level"
        return Counted(0, Reason.UPSTREAM_UNINSPECTABLE, f"The answer had no list of records at {where}.")
    if len(records) > allowed:
        return Counted(
            len(records),
            Reason.UPSTREAM_TOO_MANY_RECORDS,
            f"The service returned {len(records)} records where {allowed} were allowed; nothing was passed on.",
        )
    return _check_branches(route, records, branches)


def _records(route: Route, document: Any) -> list[Any] | None:
    if route.records == "one":
        return [document] if isinstance(document, dict) else None
    for key in route.response_items:
        if not isinstance(document, dict):
            return None
        document = document.get(key)
    return document if isinstance(document, list) else None


def _check_branches(route: Route, records: list[Any], branches: frozenset[str] | None) -> Counted:
    field = route.branch_field
    for record in records:
        branch = record.get(field) if isinstance(record, dict) else None
        if not isinstance(branch, str):
            return Counted(
                len(records),
                Reason.UPSTREAM_UNINSPECTABLE,
                f"A record in the answer has no {field!r} field, so its branch cannot be checked.",
            )
        if branches is not None and branch not in branches:
            return Counted(
                len(records),
                Reason.UPSTREAM_OTHER_BRANCH,
                f"The answer held a record of branch {branch}; nothing was passed on.",
            )
    return Counted(len(records))

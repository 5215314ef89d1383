"""Counting the records in an upstream answer and checking whose they are.

Answers carrying records are held until counted: a record of another branch, or more
records than the decision allowed, must never leave the building, and a cut-off
stream would already have leaked the part before the cut.

A record is *any* JSON object in the answer that carries the route's branch field
(`branch_field`, a dotted path such as `org.branch_code`), wherever it sits: in the list
the route map names, nested inside another record (`related: [...]`), beside the list,
or at the top level. Every such object is counted against the allowance and checked
against the employee's branches. The place the route map names is checked too: a list
answer must have its list there, each element a record; a one-record answer must be a
record. So an API that grows a field, or an upstream that smuggles records somewhere
unexpected, cannot carry records past the count.

Refusal details say what the employee did, never what the answer held: no branch codes,
no counts (an employee could otherwise learn, for free, which branch a waybill belongs
to or how many records a phone number has).
"""

from __future__ import annotations

from typing import NamedTuple

import orjson

from broker.core.reason import Reason
from broker.policy.record_scan import (
    RepeatedKey,
    in_expected_place,
    misplaced,
    placed,
    scan_listed,
    scan_records,
    seen_once,
    strict_loads,
)
from broker.policy.route import Route


class Counted(NamedTuple):
    """What an answer held (a tuple: built on every answer, and cheap to build)."""

    records: int
    violation: Reason | None = None
    detail: str = ""
    misfit: bool = False
    """The answer does not have its records where the route map says: the map is wrong."""


def inspect_records(route: Route, body: bytes, allowed: int, branches: frozenset[str] | None) -> Counted:
    """The records in a held answer, or the reason it must not be passed on."""
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError:
        return Counted(0, Reason.UPSTREAM_UNINSPECTABLE, "The service answered with something other than JSON.")
    scan = scan_listed(route, document, body, branches)
    if scan is None:
        if not in_expected_place(route, document):
            return Counted(0, Reason.UPSTREAM_UNINSPECTABLE, misplaced(route), misfit=True)
        scan = scan_records(document, route.branch_path, branches)
        if not seen_once(
            body, route, placed(route, document), scan.records
        ):  # a repeat may hide what the parse dropped
            try:
                strict_loads(body)  # no key named twice: the parse above saw everything
            except RepeatedKey:
                return Counted(0, Reason.UPSTREAM_UNINSPECTABLE, _REPEATED)
    if scan.too_deep:
        return Counted(0, Reason.UPSTREAM_UNINSPECTABLE, "The answer is nested too deeply to be checked.")
    if scan.unlabelled:
        return Counted(
            0,
            Reason.UPSTREAM_UNINSPECTABLE,
            f"A record in the answer has no usable {route.branch_field!r}, so it cannot be checked.",
        )
    if scan.foreign:
        return Counted(
            scan.records,
            Reason.UPSTREAM_OTHER_BRANCH,
            "The answer held records you may not see; nothing was passed on. Ask only for your own branch's records.",
        )
    if scan.records > allowed:
        return Counted(
            scan.records,
            Reason.UPSTREAM_TOO_MANY_RECORDS,
            f"This request may return at most {allowed} records and the answer held more; nothing was passed on. "
            "Ask for fewer.",
        )
    return Counted(scan.records)


_REPEATED = "The answer names one key twice in an object, so what it holds cannot be checked."


def holds_records(body: bytes, branch_paths: tuple[tuple[str, ...], ...]) -> bool | None:
    """Whether a JSON answer on a route mapped as carrying no records holds an object
    with any branch field the route map knows (or cannot be fully checked); None when it
    is not JSON after all (the caller reads it as text)."""
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    if b"\\" in body or any(_field_named(body, path) for path in branch_paths):
        try:  # a repeated key could hide an object carrying a field: the parse must see all
            document = strict_loads(body)
        except RepeatedKey:
            return True
    for path in branch_paths:
        scan = scan_records(document, path, None)
        if scan.records or scan.too_deep:
            return True
    return False


def _field_named(body: bytes, path: tuple[str, ...]) -> bool:
    return bool(path) and orjson.dumps(path[0]) in body


def names_a_branch_field(body: bytes, branch_paths: tuple[tuple[str, ...], ...]) -> bool:
    """Whether a text answer (CSV, XML, plain text, HTML) names a branch field the route
    map knows, as a whole word: an export's header row (`waybill_no,branch_code,...`) or
    an element (`<branch_code>`). Such an answer cannot be counted record by record, so
    on a route mapped as carrying no records it is refused rather than guessed about."""
    names = {path[-1].encode().lower() for path in branch_paths if path}
    if not names:
        return False
    lowered = body.lower()
    for name in names:
        start = lowered.find(name)
        while start != -1:
            end = start + len(name)
            before = lowered[start - 1 : start] if start else b""
            after = lowered[end : end + 1]
            if not (before.isalnum() or before == b"_") and not (after.isalnum() or after == b"_"):
                return True
            start = lowered.find(name, end)
    return False


def record_branches(body: bytes, branch_path: tuple[str, ...]) -> frozenset[str] | None:
    """The branches of every record in a JSON answer (a record looked up to learn whose it
    is); None when the answer cannot say: not JSON, too deep, no record, or a record
    without a usable branch."""
    try:
        orjson.loads(body)  # strict JSON first (the standard parser also takes NaN)
        document = strict_loads(body)  # a one-record lookup: rare, and it must be unambiguous
    except (orjson.JSONDecodeError, RepeatedKey):
        return None
    found: set[str] = set()
    scan = scan_records(document, branch_path, None, found)
    if scan.too_deep or scan.unlabelled or not scan.records:
        return None
    return frozenset(found)

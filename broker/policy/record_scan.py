"""Where records are in an answer, by the route map's own definition: any JSON object
carrying the route's branch field, wherever it sits, and the place the route names.

Pure functions over parsed JSON, shared by the HTTP door (every held answer) and
`broker check` (a route's example answer), so both apply one definition.
"""

from __future__ import annotations

import json
from typing import Any, NamedTuple

import orjson

from broker.policy.route import Route

MAX_DEPTH = 64
"""Objects nested deeper than this are not inspected: the answer is refused instead."""

_MISSING = object()


class Scan(NamedTuple):
    """What a walk over an answer found (a tuple: built on every answer, and cheap to build)."""

    records: int
    foreign: bool
    unlabelled: bool
    too_deep: bool


def scan_records(
    document: Any, branch_path: tuple[str, ...], branches: frozenset[str] | None, seen: set[str] | None = None
) -> Scan:
    """Every object carrying `branch_path`, anywhere in `document`, their branches added to
    `seen` when given. Walked level by level (no recursion: a deep answer cannot exhaust
    the stack; no per-node tuples or generators: this runs on every answer)."""
    count, foreign, unlabelled = 0, False, False
    single = branch_path[0] if len(branch_path) == 1 else None
    level = [document] if type(document) is dict or type(document) is list else []
    for _depth in range(MAX_DEPTH + 1):
        if not level:
            return Scan(count, foreign, unlabelled, False)
        nested: list[Any] = []
        node: Any
        for node in level:
            if type(node) is dict:
                branch = node.get(single, _MISSING) if single is not None else resolve(node, branch_path)
                if branch is not _MISSING:
                    count += 1
                    if type(branch) is not str or not branch:
                        unlabelled = True
                    else:
                        if branches is not None and branch not in branches:
                            foreign = True
                        if seen is not None:
                            seen.add(branch)
                node = node.values()  # noqa: PLW2901 - the children, walked below
            for child in node:
                if type(child) is dict or type(child) is list:
                    nested.append(child)
        level = nested
    return Scan(count, foreign, unlabelled, bool(level))


_KEY_LITERALS: dict[str, bytes] = {}


def _literal(key: str) -> bytes:
    """`key` as JSON writes it without escapes: between quotes."""
    literal = _KEY_LITERALS.get(key)
    if literal is None:
        if len(_KEY_LITERALS) >= 1024:
            _KEY_LITERALS.clear()
        literal = _KEY_LITERALS[key] = orjson.dumps(key)
    return literal


class RepeatedKey(ValueError):
    """An object in the answer names one key twice."""


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    document = dict(pairs)
    if len(document) != len(pairs):
        raise RepeatedKey
    return document


def strict_loads(body: bytes) -> Any:
    """The answer parsed so that an object repeating a key is an error (RepeatedKey).

    orjson, like most parsers, keeps a repeated key's last value; the client may well
    read the first. Whatever sits under the value the broker did not see (a list of
    records, another branch's record, another branch code) would leave uncounted. Slower
    than orjson (a Python call per object): only for answers the byte proofs cannot
    vouch for. Call it on bytes orjson has accepted: the standard parser also takes NaN."""
    return json.loads(body, object_pairs_hook=_unique_keys)


def seen_once(body: bytes, route: Route, items: list[Any], records: int) -> bool:
    """Whether the bytes prove that no key repetition hides anything from a walk that
    found `records` records, `items` of them in the route's place: each key of the branch
    path occurs exactly once per record, and each key of the path to the records once,
    plus once for each record naming it too (an API's records may well have an `items`
    field of their own). JSON without a backslash writes a key only as itself between
    quotes, so a repeated or hidden key adds an occurrence."""
    if b"\\" in body:
        return False
    for key in route.response_items:  # loops, not any()/all(): this runs on every answer
        expected = 1
        for item in items:
            if type(item) is dict and key in item:
                expected += 1
        if body.count(_literal(key)) != expected:
            return False
    for key in route.branch_path:  # noqa: SIM110 - a loop costs less than all() over a generator
        if body.count(_literal(key)) != records:
            return False
    return True


def scan_listed(route: Route, document: Any, body: bytes, branches: frozenset[str] | None) -> Scan | None:
    """`scan_records`'s answer for an answer whose records are all in the place the route
    names, proven from the bytes instead of a walk over every value; None when the bytes
    do not prove it or the answer is not shaped as the route says (the caller then checks
    the place, `in_expected_place`, and walks).

    The proof: in JSON without a backslash, a key can only be written as itself between
    quotes, and the quoted name cannot appear anywhere but as a whole string. So when
    each key of the branch field's path occurs exactly as often as there are records in
    the expected place (each carries it at least once), no other object anywhere in the
    answer carries it, and no record names it twice: the expected records are all the
    records, each with the one branch the parse saw. The keys leading to the records
    must occur once, or a repeated one could hide a list the parse dropped. Any escape,
    a value equal to a key's name, a repeated key or a record nested in a record makes
    the counts differ, and the walk decides (`seen_once`, then `strict_loads`). The place
    is checked in the same pass over the records (this runs on every answer)."""
    if b"\\" in body:
        return None
    path = route.branch_path
    found = resolve(document, route.response_items) if route.response_items else document
    if route.records == "one":
        if type(found) is not dict:
            return None
        items: list[Any] = [found]
    elif type(found) is list:
        items = found
    else:
        return None
    # every key of the branch path once per record, every key of the path to them once:
    # no other object carries the field, and no repeated key hides a value the parse lost
    if not seen_once(body, route, items, len(items)):
        return None
    foreign, unlabelled = False, False
    single = path[0] if len(path) == 1 else None
    for item in items:
        if type(item) is not dict:
            return None
        branch = item.get(single, _MISSING) if single is not None else resolve(item, path)
        if branch is _MISSING:
            return None
        if type(branch) is not str or not branch:
            unlabelled = True
        elif branches is not None and branch not in branches:
            foreign = True
    return Scan(len(items), foreign, unlabelled, False)


def resolve(node: Any, path: tuple[str, ...]) -> Any:
    value: Any = node
    for key in path:
        if type(value) is not dict:
            return _MISSING
        value = value.get(key, _MISSING)
        if value is _MISSING:
            return _MISSING
    return value


def placed(route: Route, document: Any) -> list[Any]:
    """The records in the route's place of an answer `in_expected_place` holds for."""
    found = resolve(document, route.response_items) if route.response_items else document
    return [found] if route.records == "one" else found


def in_expected_place(route: Route, document: Any) -> bool:
    found = resolve(document, route.response_items) if route.response_items else document
    if route.records == "one":
        return type(found) is dict and resolve(found, route.branch_path) is not _MISSING
    if type(found) is not list:
        return False
    return all(type(item) is dict and resolve(item, route.branch_path) is not _MISSING for item in found)


def misplaced(route: Route) -> str:
    where = ".".join(route.response_items) or "the top level"
    if route.records == "one":
        return f"The answer is not one record with {route.branch_field!r} at {where}, as the route map says."
    return f"The answer has no list of records with {route.branch_field!r} at {where}, as the route map says."


def example_problem(route: Route, known: tuple[tuple[str, ...], ...]) -> str:
    """What is wrong with a route's example answer as the door would read it ("" if nothing)."""
    try:
        document = orjson.loads(route.example)
    except orjson.JSONDecodeError as exc:
        return f"is not JSON ({exc})"
    if route.records == "none":
        holding = any(scan_records(document, path, None).records for path in known)
        return "holds records, but the route is mapped as carrying none" if holding else ""
    if not in_expected_place(route, document):
        return f"does not fit: {misplaced(route)[len('The answer ') :]}"
    scan = scan_records(document, route.branch_path, None)
    if scan.too_deep:
        return f"is nested more than {MAX_DEPTH} levels deep"
    if scan.unlabelled:
        return f"has a record whose {route.branch_field!r} is not a branch code"
    return "" if scan.records else f"holds no record carrying {route.branch_field!r}"

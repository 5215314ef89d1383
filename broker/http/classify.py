"""Request → Access: which route, which resource and action, which branch, how many records."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, unquote_plus

from multidict import MultiMapping

from broker.core.access import UNBOUNDED, Access, Refusal
from broker.core.reason import Reason
from broker.http.path import PathError, path_segments, split_target
from broker.policy.route import Route, RouteMap

MAX_LIMIT_DIGITS = 9
METHOD_OVERRIDE_PARAMS = frozenset({"_method", "x-http-method-override", "_httpmethod", "x-method-override"})
"""Parameters frameworks (Rails, Laravel, Symfony, Express's method-override) read as the
request's real method: the upstream would act on a method other than the one decided."""


@dataclass(frozen=True, slots=True)
class Classified:
    access: Access
    route: Route | None
    body: bytes | None = None
    """The request body, when the decision needed to read it (branch from the body)."""


class Refused(Exception):
    def __init__(self, reason: Reason, detail: str) -> None:
        super().__init__(detail)
        self.reason, self.detail = reason, detail


def match_route(routes: RouteMap, method: str, segments: tuple[str, ...]) -> tuple[Route, dict[str, str]]:
    wanted = segments if routes.case_sensitive else tuple(s.lower() for s in segments)
    methods_seen: set[str] = set()
    for route in routes.routes:
        params = _match(route.segments, segments, wanted, routes.case_sensitive)
        if params is None:
            continue
        if method in route.methods:
            return route, params
        methods_seen |= route.methods
    path = "/" + "/".join(segments)
    if methods_seen:
        raise Refused(
            Reason.ROUTE_UNKNOWN,
            f"{method} is not mapped for {path} (mapped: {', '.join(sorted(methods_seen))}).",
        )
    raise Refused(Reason.ROUTE_UNKNOWN, f"No route in the policy matches {method} {path}; unmapped paths are denied.")


def _match(
    pattern: tuple[str, ...], segments: tuple[str, ...], folded: tuple[str, ...], case_sensitive: bool
) -> dict[str, str] | None:
    if len(pattern) != len(segments):
        return None
    params: dict[str, str] = {}
    for want, have, have_folded in zip(pattern, segments, folded, strict=True):
        if want.startswith("{"):
            params[want[1:-1]] = have
        elif want != have_folded and (case_sensitive or want.lower() != have_folded):
            return None
    return params


def classify(
    routes: RouteMap,
    method: str,
    raw_target: str,
    query: MultiMapping[str],
    credential: str | None,
    client: str,
) -> tuple[Access, Route | None]:
    """The Access for one request; a request that cannot be classified gets a Refusal
    inside the Access so the core still identifies and audits the caller."""
    target = f"{method} {raw_target}"
    try:
        raw_path, _ = split_target(raw_target)
        segments = path_segments(raw_path, keep_trailing_slash=routes.trailing_slash_matters)
        _refuse_method_override(query.keys())
        route, params = match_route(routes, method, segments)
        branch = _branch(route, params, query, routes) if route.branch_from in ("path", "query") else None
        records = _records(route, query, routes)
    except PathError as bad_path:  # one name per handler: compiled (mypyc), a name has one type
        return Access(credential, client, target, refusal=Refusal(Reason.REQUEST_BAD_PATH, str(bad_path))), None
    except Refused as refused:
        return Access(credential, client, target, refusal=Refusal(refused.reason, refused.detail)), None
    return Access(credential, client, target, route.resource, route.action, branch, records), route


def _refuse_method_override(names: Iterable[str]) -> None:
    for name in names:
        if name.lower() in METHOD_OVERRIDE_PARAMS:
            raise Refused(
                Reason.REQUEST_METHOD_OVERRIDE,
                f"The parameter {name[:40]!r} would change the request's method upstream; send the method itself.",
            )


_PART_NAME = re.compile(rb'(?im)^content-disposition:[^\r\n]*?;\s*name\*?=\s*(?:"([^"]*)"|([^;\s\r\n]+))')
"""The field name of each part of a multipart body. Searched over the whole body, not
split at the boundary: a name line inside a part's data is refused too (rare, and
the safe way to be wrong), and a client cannot hide a part behind a boundary the
broker and the upstream read differently."""


def _part_name(raw: bytes) -> str:
    """A part's field name as a framework would read it: percent-decoded, and without the
    charset and language of an RFC 5987 `name*=UTF-8''...` value."""
    text = unquote(raw.decode("latin-1"))
    return text.split("''", 1)[1] if "''" in text else text


def form_method_override(content_type: str, body: bytes) -> Refusal | None:
    """A form body (urlencoded or multipart) carrying a method override parameter,
    refused like one in the query."""
    kind = content_type.split(";", 1)[0].strip().lower()
    if kind == "application/x-www-form-urlencoded":
        names: Iterable[str] = (unquote_plus(pair.partition("=")[0]) for pair in body.decode("latin-1").split("&"))
    elif kind == "multipart/form-data":
        names = (_part_name(quoted or bare) for quoted, bare in _PART_NAME.findall(body))
    else:
        return None
    try:
        _refuse_method_override(names)
    except Refused as exc:
        return Refusal(exc.reason, exc.detail)
    return None


def _single(query: MultiMapping[str], name: str, routes: RouteMap) -> str | None:
    values = _values(query, name, routes.case_sensitive)
    if len(values) <= 1 or routes.repeated_params != "refuse":
        return (values[0] if routes.repeated_params != "last" else values[-1]) if values else None
    raise Refused(
        Reason.REQUEST_AMBIGUOUS_QUERY,
        f"The query parameter {name!r} is given {len(values)} times; give it once.",
    )


def _values(query: MultiMapping[str], name: str, case_sensitive: bool) -> list[str]:
    if case_sensitive:
        return query.getall(name, [])
    return [v for k, v in query.items() if k.lower() == name.lower()]


def _branch(route: Route, params: dict[str, str], query: MultiMapping[str], routes: RouteMap) -> str | None:
    if route.branch_from == "path":
        return params[route.branch_name]
    value = _single(query, route.branch_name, routes)
    if value is not None and not value:
        raise Refused(Reason.REQUEST_AMBIGUOUS_QUERY, f"The query parameter {route.branch_name!r} is empty.")
    return value


def _records(route: Route, query: MultiMapping[str], routes: RouteMap) -> int:
    if route.records == "one":
        return 1
    if route.records == "none":
        return 0
    raw = _single(query, route.limit_param, routes)
    if raw is None:
        return route.default_limit if route.default_limit is not None else UNBOUNDED
    if not raw.isascii() or not raw.isdigit() or len(raw) > MAX_LIMIT_DIGITS or int(raw) < 1:
        raise Refused(
            Reason.REQUEST_BAD_LIMIT,
            f"The query parameter {route.limit_param}={raw[:20]!r} must be a whole number from 1 to 999999999.",
        )
    return int(raw)


class _DuplicateKey(ValueError):
    pass


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """An object whose keys are unique even ignoring case: Go's and .NET's JSON readers
    match field names case-insensitively, so `branch_code` and `Branch_Code` are one
    field to them and two to the broker."""
    document: dict[str, Any] = {}
    folded: set[str] = set()
    for key, value in pairs:
        fold = key.casefold()
        if fold in folded:
            raise _DuplicateKey(key)
        folded.add(fold)
        document[key] = value
    return document


def branch_from_body(route: Route, body: bytes, query_names: Iterable[str] = ()) -> str:
    """The record's branch named in a JSON request body (for writes).

    A key given twice anywhere in the body (or twice ignoring case) is refused, and so is
    a query parameter of the branch field's name: the broker would decide on one value and
    the upstream's framework (Rails, Flask and PHP merge query and body parameters) might
    read the other."""
    if any(name.casefold() == route.branch_name.casefold() for name in query_names):
        raise Refused(
            Reason.REQUEST_BAD_BODY,
            f"{route.branch_name!r} is given in the query as well as in the body; give it once, in the body.",
        )
    try:
        document = json.loads(body, object_pairs_hook=_unique_keys)
    except _DuplicateKey as exc:
        raise Refused(
            Reason.REQUEST_BAD_BODY, f"The request body gives the key {str(exc)!r} twice (letter case aside)."
        ) from None
    except (ValueError, RecursionError):
        raise Refused(Reason.REQUEST_BAD_BODY, "The request body is not valid JSON.") from None
    value = document.get(route.branch_name) if isinstance(document, dict) else None
    if not isinstance(value, str) or not value:
        raise Refused(
            Reason.REQUEST_BAD_BODY,
            f"The request body must be a JSON object with a non-empty string field {route.branch_name!r}.",
        )
    return value


def owner_target(route: Route, raw_target: str) -> str:
    """The GET target of the record a request changes: `route.owner` with the route's
    path parameters taken from the request's raw path, as the client encoded them (the
    path was already checked unambiguous when the request was classified)."""
    raw_path, _ = split_target(raw_target)
    raw_segments = raw_path.strip("/").split("/")
    values = {want: have for want, have in zip(route.segments, raw_segments, strict=False) if want.startswith("{")}
    return "/" + "/".join(values.get(segment, segment) for segment in route.owner)

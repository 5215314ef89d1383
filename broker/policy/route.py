"""The route map (`policies/routes.toml`): which upstream requests touch which records.

It is policy, not protocol: it says what a path *means* (resource, action, where the
branch is, how many records it asks for). The HTTP door does the normalising and
matching against it.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from typing import Any, Literal

from broker.policy.problem import PolicyProblem
from broker.policy.toml_lines import array_table_lines, line_of, table_line

RecordShape = Literal["list", "one", "none"]
BranchSource = Literal["path", "query", "body", ""]
_PARAM = re.compile(r"\{([a-z_][a-z0-9_]*)\}\Z")
_METHODS = {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"}
_ROUTE_KEYS = {
    "name", "method", "path", "resource", "action", "branch", "records",
    "limit_param", "default_limit", "response_items", "branch_field", "owner", "example",
}  # fmt: skip


@dataclass(frozen=True, slots=True)
class Route:
    name: str
    methods: frozenset[str]
    segments: tuple[str, ...]
    """Literal segments, or `{name}` for a parameter matching one whole segment."""
    resource: str
    action: str
    branch_from: BranchSource
    branch_name: str
    records: RecordShape
    limit_param: str
    default_limit: int | None
    """What the upstream returns when no limit is given; None: everything (unbounded)."""
    response_items: tuple[str, ...]
    """Where the answer's list (or one record) sits: a dotted path of object keys."""
    branch_field: str
    """The field of a record naming its branch, as written (may be dotted: `org.code`)."""
    branch_path: tuple[str, ...]
    """`branch_field` split into keys."""
    line: int
    example: str = ""
    """A sample answer (JSON text) `broker check` inspects as the door would: a route map
    whose paths do not fit the API's real answers fails the check, not every request."""
    owner: tuple[str, ...] = ()
    """Segments of a GET path that returns the record this request changes (parameters
    from this route's path), for requests that do not name the record's branch: the
    broker reads the record first and decides on the branch it belongs to."""

    @property
    def label(self) -> str:
        return f"{'|'.join(sorted(self.methods))} /{'/'.join(self.segments)}"


@dataclass(frozen=True, slots=True)
class RouteMap:
    routes: tuple[Route, ...]
    trailing_slash_matters: bool
    case_sensitive: bool
    repeated_params: Literal["refuse", "first", "last"]
    file: str

    @property
    def branch_paths(self) -> tuple[tuple[str, ...], ...]:
        """Every distinct branch field the map names: what marks a record in any answer."""
        return tuple(dict.fromkeys(r.branch_path for r in self.routes if r.branch_path))


def parse_routes(name: str, raw: bytes) -> tuple[RouteMap | None, list[PolicyProblem]]:
    try:
        doc = tomllib.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        line = int(m[1]) if (m := re.search(r"line (\d+)", str(exc))) else 1
        return None, [PolicyProblem(name, line, f"not valid TOML: {exc}")]
    lines = array_table_lines(raw, "route")
    problems: list[PolicyProblem] = []
    settings = doc.get("settings", {})
    routes: list[Route] = []
    if not isinstance(settings, dict):
        problems.append(PolicyProblem(name, line_of(raw, b"settings", 1), "settings must be a [settings] table"))
        settings = {}
    entries = doc.get("route", [])
    if not isinstance(entries, list) or not entries:
        problems.append(PolicyProblem(name, 1, "no [[route]] entries: every request would be denied"))
        entries = []
    for position, entry in enumerate(entries):
        line = lines[position] if position < len(lines) else 1
        try:
            routes.append(_route(entry, line))
        except ValueError as exc:
            problems.append(PolicyProblem(name, line, f"route #{position + 1}: {exc}"))
    try:
        route_map = _route_map(settings, tuple(routes), name)
    except ValueError as exc:
        problems.append(PolicyProblem(name, table_line(raw, "settings"), str(exc)))
        return None, problems
    return (None if problems else route_map), problems


def _route_map(settings: dict[str, Any], routes: tuple[Route, ...], name: str) -> RouteMap:
    unknown = set(settings) - {"trailing_slash", "case_sensitive", "repeated_params"}
    if unknown:
        raise ValueError(f"[settings] has unknown keys: {', '.join(sorted(unknown))}")
    slash = _choice(settings, "trailing_slash", ("ignore", "exact"), "ignore")
    repeated = _choice(settings, "repeated_params", ("refuse", "first", "last"), "refuse")
    case = settings.get("case_sensitive", True)
    if not isinstance(case, bool):
        raise ValueError("[settings] case_sensitive must be true or false")
    return RouteMap(routes, slash == "exact", case, repeated, name)  # type: ignore[arg-type]


def _choice(table: dict[str, Any], key: str, options: tuple[str, ...], default: str) -> str:
    value = table.get(key, default)
    if value not in options:
        raise ValueError(f"{key} = {value!r} is not one of {', '.join(options)}")
    return str(value)


def _route(entry: Any, line: int) -> Route:
    if not isinstance(entry, dict):
        raise ValueError("must be a table")
    unknown = set(entry) - _ROUTE_KEYS
    if unknown:
        raise ValueError(f"unknown keys {', '.join(sorted(unknown))}; known: {', '.join(sorted(_ROUTE_KEYS))}")
    path = _text(entry, "path")
    segments = _segments(path)
    records = _text(entry, "records", "list")
    if records not in ("list", "one", "none"):
        raise ValueError(f"records = {records!r} must be list, one or none")
    branch_from, branch_name = _branch(entry, segments)
    owner = _owner(entry, segments, branch_from)
    default_limit = entry.get("default_limit")
    if default_limit is not None and (type(default_limit) is not int or default_limit < 1):
        raise ValueError("default_limit must be a positive integer (leave it out if unbounded)")
    return Route(
        name=_text(entry, "name", path),
        methods=_methods(entry.get("method", "GET")),
        segments=segments,
        resource=_text(entry, "resource"),
        action=_text(entry, "action"),
        branch_from=branch_from,
        branch_name=branch_name,
        records=records,  # type: ignore[arg-type]
        limit_param=_text(entry, "limit_param", "limit" if records == "list" else ""),
        default_limit=default_limit,
        response_items=_dotted(entry, "response_items"),
        branch_field=_text(entry, "branch_field", ""),
        branch_path=_dotted(entry, "branch_field"),
        line=line,
        owner=owner,
        example=_text(entry, "example", ""),
    )


def _text(entry: dict[str, Any], key: str, default: str | None = None) -> str:
    value = entry.get(key, default)
    if not isinstance(value, str):
        raise ValueError(f"{key} is required and must be a string" if value is None else f"{key} must be a string")
    return value


def _owner(entry: dict[str, Any], segments: tuple[str, ...], branch_from: str) -> tuple[str, ...]:
    path = _text(entry, "owner", "")
    if not path:
        return ()
    if branch_from:
        raise ValueError("owner and branch cannot both be set: the branch is either in the request or looked up")
    if not _text(entry, "branch_field", ""):
        raise ValueError("owner needs branch_field: the field of the looked-up record naming its branch")
    owner = _segments(path)
    missing = [s for s in owner if s.startswith("{") and s not in segments]
    if missing:
        raise ValueError(f"owner = {path!r} uses {', '.join(missing)}, which the route's path does not have")
    return owner


def _dotted(entry: dict[str, Any], key: str) -> tuple[str, ...]:
    """A dotted path of JSON object keys (`result.records`, `org.branch_code`); "" is the top."""
    text = _text(entry, key, "")
    if not text:
        return ()
    keys = tuple(text.split("."))
    if any(not k or k != k.strip() for k in keys):
        raise ValueError(f"{key} = {text!r} must be object keys joined by dots, e.g. result.records")
    return keys


def _methods(value: Any) -> frozenset[str]:
    methods = [value] if isinstance(value, str) else value
    if not isinstance(methods, list) or not methods or not all(isinstance(m, str) for m in methods):
        raise ValueError("method must be a string or a list of strings")
    bad = [m for m in methods if m not in _METHODS]
    if bad:
        raise ValueError(f"unknown HTTP method(s) {', '.join(bad)} (use upper case)")
    return frozenset(methods)


def _segments(path: str) -> tuple[str, ...]:
    if not path.startswith("/") or "//" in path or path != path.strip():
        raise ValueError(f"path {path!r} must start with / and have no empty segments")
    segments = tuple(path.strip("/").split("/")) if path != "/" else ()
    for segment in segments:
        if "{" in segment or "}" in segment:
            if not _PARAM.match(segment):
                raise ValueError(f"path segment {segment!r}: a parameter is a whole segment like {{branch}}")
        elif segment in (".", "..") or "%" in segment:
            raise ValueError(f"path segment {segment!r} is not a plain literal")
    return segments


def _branch(entry: dict[str, Any], segments: tuple[str, ...]) -> tuple[BranchSource, str]:
    spec = _text(entry, "branch", "")
    if not spec:
        return "", ""
    source, _, name = spec.partition(":")
    if source not in ("path", "query", "body") or not name:
        raise ValueError(f"branch = {spec!r} must be path:NAME, query:NAME or body:FIELD")
    if source == "path" and f"{{{name}}}" not in segments:
        raise ValueError(f"branch = {spec!r} names a path parameter the path does not have")
    return source, name  # type: ignore[return-value]

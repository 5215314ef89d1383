"""`parse_routes`: the shipped route map, defaults, and every refusal pinned to its [[route]].

A problem in a route is reported on the line of that route's `[[route]]` header, so a
platform engineer reading CI output can jump straight to it.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from broker.policy.problem import PolicyProblem
from broker.policy.route import RouteMap, parse_routes

SHIPPED = Path(__file__).resolve().parents[2] / "policies" / "routes.toml"

GOOD_ROUTE = """\
[[route]]
name = "{name}"
method = "GET"
path = "/api/{name}"
resource = "waybill"
action = "read"
records = "none"
"""


def header_lines(text: str, header: str = "[[route]]") -> list[int]:
    return [n for n, line in enumerate(text.splitlines(), start=1) if line.strip() == header]


def parse_ok(text: str) -> RouteMap:
    routes, problems = parse_routes("routes.toml", text.encode())
    assert problems == []
    assert routes is not None
    return routes


def parse_bad(text: str) -> list[PolicyProblem]:
    routes, problems = parse_routes("routes.toml", text.encode())
    assert routes is None
    assert problems
    return problems


def three_routes(middle_body: str, settings: str = "") -> str:
    """Three routes; the middle one gets `middle_body` as its keys."""
    return (
        settings
        + GOOD_ROUTE.format(name="first")
        + "\n[[route]]\n"
        + middle_body.strip()
        + "\n\n"
        + GOOD_ROUTE.format(name="third")
    )


# --- the shipped map ------------------------------------------------------------------


def test_shipped_routes_parse_with_header_line_numbers() -> None:
    text = SHIPPED.read_text(encoding="utf-8")
    routes = parse_ok(text)
    assert [r.line for r in routes.routes] == header_lines(text)
    assert routes.file == "routes.toml"
    assert routes.trailing_slash_matters is False
    assert routes.case_sensitive is True
    assert routes.repeated_params == "refuse"


def test_shipped_route_fields() -> None:
    routes = parse_ok(SHIPPED.read_text(encoding="utf-8"))
    by_name = {r.name: r for r in routes.routes}
    listing = by_name["waybills of one branch"]
    assert listing.methods == frozenset({"GET"})
    assert listing.segments == ("api", "branches", "{branch}", "waybills")
    assert (listing.resource, listing.action) == ("waybill", "read")
    assert (listing.branch_from, listing.branch_name) == ("path", "branch")
    assert listing.records == "list"
    assert listing.limit_param == "limit"
    assert listing.default_limit == 20
    assert listing.response_items == ("items",)
    assert listing.branch_field == "branch_code"
    assert listing.label == "GET /api/branches/{branch}/waybills"
    create = by_name["create a waybill"]
    assert (create.branch_from, create.branch_name) == ("body", "branch_code")
    assert create.records == "one"
    assert create.limit_param == ""
    search = by_name["waybill search"]
    assert (search.branch_from, search.branch_name) == ("query", "branch")
    one = by_name["one waybill"]
    assert (one.branch_from, one.branch_name) == ("", "")


# --- defaults -------------------------------------------------------------------------


def test_minimal_route_gets_its_defaults() -> None:
    routes = parse_ok('[[route]]\npath = "/api/things"\nresource = "thing"\naction = "read"\n')
    assert routes.trailing_slash_matters is False
    assert routes.case_sensitive is True
    assert routes.repeated_params == "refuse"
    (route,) = routes.routes
    assert route.name == "/api/things"
    assert route.methods == frozenset({"GET"})
    assert route.records == "list"
    assert route.limit_param == "limit"
    assert route.default_limit is None
    assert route.response_items == ()
    assert route.branch_field == ""
    assert route.line == 1


def test_method_list_and_nested_response_items() -> None:
    text = (
        '[[route]]\nmethod = ["HEAD", "GET"]\npath = "/"\nresource = "thing"\naction = "read"\n'
        'records = "list"\nresponse_items = "data.items"\n'
    )
    (route,) = parse_ok(text).routes
    assert route.methods == frozenset({"GET", "HEAD"})
    assert route.segments == ()
    assert route.response_items == ("data", "items")
    assert route.label == "GET|HEAD /"


def test_empty_response_items_means_the_body_is_the_array() -> None:
    (route,) = parse_ok('[[route]]\npath = "/a"\nresource = "t"\naction = "read"\nresponse_items = ""\n').routes
    assert route.response_items == ()


# --- refusals, each on the line of its [[route]] ---------------------------------------

BASE = 'path = "/api/branches/{branch}/things"\nresource = "thing"\naction = "read"\n'


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (BASE + 'limt_param = "limit"', "unknown keys limt_param; known: action, branch, branch_field"),
        (BASE.replace("{branch}", "br-{branch}"), "path segment 'br-{branch}': a parameter is a whole segment"),
        (BASE.replace("{branch}", "{branch}.json"), "path segment '{branch}.json': a parameter is a whole segment"),
        (BASE.replace("{branch}", "{Branch}"), "path segment '{Branch}': a parameter is a whole segment"),
        (BASE + 'branch = "path:x"', "branch = 'path:x' names a path parameter the path does not have"),
        (BASE + 'branch = "header:x"', "branch = 'header:x' must be path:NAME, query:NAME or body:FIELD"),
        (BASE + 'branch = "path:"', "branch = 'path:' must be path:NAME, query:NAME or body:FIELD"),
        (BASE + 'records = "many"', "records = 'many' must be list, one or none"),
        (BASE + 'method = "get"', "unknown HTTP method(s) get (use upper case)"),
        (BASE + "method = []", "method must be a string or a list of strings"),
        (BASE + "default_limit = 0", "default_limit must be a positive integer"),
        (BASE + "default_limit = true", "default_limit must be a positive integer"),
        (BASE + 'default_limit = "20"', "default_limit must be a positive integer"),
        (BASE.replace('resource = "thing"\n', ""), "resource is required and must be a string"),
        (BASE.replace('action = "read"\n', "action = 1\n"), "action must be a string"),
        ('path = "api/things"\nresource = "thing"\naction = "read"', "path 'api/things' must start with /"),
        ('path = "/api//things"\nresource = "thing"\naction = "read"', "must start with / and have no empty segments"),
        ('path = "/api/../admin"\nresource = "thing"\naction = "read"', "path segment '..' is not a plain literal"),
        ('path = "/api/%2e%2e"\nresource = "thing"\naction = "read"', "path segment '%2e%2e' is not a plain literal"),
        ('resource = "thing"\naction = "read"', "path is required and must be a string"),
    ],
)
def test_bad_route_is_reported_on_its_header_line(body: str, message: str) -> None:
    text = three_routes(body)
    (problem,) = parse_bad(text)
    assert problem.file == "routes.toml"
    assert problem.line == header_lines(text)[1]
    assert problem.message.startswith("route #2: ")
    assert message in problem.message
    assert str(problem).startswith(f"routes.toml:{problem.line}: route #2: ")


def test_every_bad_route_is_reported() -> None:
    text = (
        '[[route]]\npath = "/a/{x"\nresource = "t"\naction = "read"\n\n'
        + GOOD_ROUTE.format(name="fine")
        + '\n[[route]]\npath = "/c"\nresource = "t"\naction = "read"\nrecords = "all"\n'
    )
    problems = parse_bad(text)
    lines = header_lines(text)
    assert [(p.line, p.message.split(":")[0]) for p in problems] == [(lines[0], "route #1"), (lines[2], "route #3")]


def test_invalid_toml_names_its_line() -> None:
    text = three_routes('path = "/x"\nresource = waybill\naction = "read"')
    (problem,) = parse_bad(text)
    expected = next(n for n, line in enumerate(text.splitlines(), start=1) if line == "resource = waybill")
    assert problem.line == expected
    assert problem.message.startswith("not valid TOML: ")
    assert f"line {expected}" in problem.message


def test_not_utf8_is_refused() -> None:
    routes, problems = parse_routes("routes.toml", b'[[route]]\nname = "\xff"\n')
    assert routes is None
    assert [(p.line, p.message.startswith("not valid TOML")) for p in problems] == [(1, True)]


def test_no_routes_is_refused() -> None:
    (problem,) = parse_bad('[settings]\ntrailing_slash = "ignore"\n')
    assert (problem.file, problem.line) == ("routes.toml", 1)
    assert "no [[route]] entries: every request would be denied" in problem.message


def test_route_that_is_not_a_table_is_refused() -> None:
    (problem,) = parse_bad("route = [1]\n")
    assert problem.message == "route #1: must be a table"


# --- settings -------------------------------------------------------------------------

ONE_ROUTE = GOOD_ROUTE.format(name="only")


@pytest.mark.parametrize(
    ("settings", "slash_matters", "case", "repeated"),
    [
        ("", False, True, "refuse"),
        ('trailing_slash = "ignore"\n', False, True, "refuse"),
        ('trailing_slash = "exact"\n', True, True, "refuse"),
        ("case_sensitive = false\n", False, False, "refuse"),
        ('repeated_params = "first"\n', False, True, "first"),
        ('repeated_params = "last"\n', False, True, "last"),
        ('trailing_slash = "exact"\ncase_sensitive = false\nrepeated_params = "last"\n', True, False, "last"),
    ],
)
def test_settings_values(settings: str, slash_matters: bool, case: bool, repeated: str) -> None:
    routes = parse_ok("[settings]\n" + settings + "\n" + ONE_ROUTE)
    assert routes.trailing_slash_matters is slash_matters
    assert routes.case_sensitive is case
    assert routes.repeated_params == repeated


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ('trailing_slash = "strict"', "trailing_slash = 'strict' is not one of ignore, exact"),
        ('trailing_slash = "Ignore"', "trailing_slash = 'Ignore' is not one of ignore, exact"),
        ("trailing_slash = true", "trailing_slash = True is not one of ignore, exact"),
        ('case_sensitive = "yes"', "[settings] case_sensitive must be true or false"),
        ("case_sensitive = 1", "[settings] case_sensitive must be true or false"),
        ('repeated_params = "merge"', "repeated_params = 'merge' is not one of refuse, first, last"),
        ('repeated_params = "REFUSE"', "repeated_params = 'REFUSE' is not one of refuse, first, last"),
        ('trailingslash = "ignore"', "[settings] has unknown keys: trailingslash"),
    ],
)
def test_bad_settings_are_reported_on_the_settings_line(setting: str, message: str) -> None:
    text = "# routes\n\n[settings]\n" + setting + "\n\n" + ONE_ROUTE
    (problem,) = parse_bad(text)
    assert (problem.file, problem.line) == ("routes.toml", 3)
    assert problem.message == message


def test_bad_settings_and_bad_routes_are_both_reported() -> None:
    text = '[settings]\ncase_sensitive = "no"\n\n[[route]]\npath = "/a"\nresource = "t"\naction = "read"\nfoo = 1\n'
    problems = parse_bad(text)
    assert sorted((p.line, p.message.split(":")[0]) for p in problems) == [
        (1, "[settings] case_sensitive must be true or false"),
        (4, "route #1"),
    ]


# --- known defects (see the report) ---------------------------------------------------


@pytest.mark.parametrize("first_header", ["[[route]]  # the listing", "[[ route ]]"])
def test_line_numbers_survive_a_commented_or_spaced_header(first_header: str) -> None:
    text = (
        first_header
        + '\npath = "/a"\nresource = "t"\naction = "read"\nrecords = "none"\n\n'
        + '[[route]]\npath = "/b/{x"\nresource = "t"\naction = "read"\n'
    )
    (problem,) = parse_bad(text)
    assert problem.message.startswith("route #2: ")
    assert problem.line == 7


def test_settings_that_is_not_a_table_is_a_problem_not_a_crash() -> None:
    (problem,) = parse_bad("settings = 1\n\n" + ONE_ROUTE)
    assert problem.line == 1
    assert "settings" in problem.message

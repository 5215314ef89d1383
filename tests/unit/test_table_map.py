"""`parse_tables`: the shipped table map, name resolution, and every refusal named by key and table.

A problem in a [[table]] is reported on the line of that entry's header, so a platform
engineer reading CI output can jump straight to it.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from broker.policy.problem import PolicyProblem
from broker.policy.table import TableMap, TableRule, parse_tables

POLICIES = Path(__file__).resolve().parents[2] / "policies"
SHIPPED = POLICIES / "tables.toml"

GOOD_TABLE = """\
[[table]]
name = "{name}"
resource = "waybill"
"""


def parse_ok(text: str) -> TableMap:
    tables, problems = parse_tables("tables.toml", text.encode())
    assert problems == []
    assert tables is not None
    return tables


def parse_bad(text: str) -> list[PolicyProblem]:
    tables, problems = parse_tables("tables.toml", text.encode())
    assert tables is None
    assert problems
    return problems


def only_problem(text: str) -> PolicyProblem:
    (problem,) = parse_bad(text)
    return problem


# --- the shipped map ------------------------------------------------------------------


def test_shipped_tables() -> None:
    tables = parse_ok(SHIPPED.read_text(encoding="utf-8"))
    assert tables.schema == "public"
    assert tables.functions == frozenset()
    assert tables.file == "tables.toml"
    assert set(tables.tables) == {"waybills", "customers"}
    waybills = tables.tables["waybills"]
    assert waybills == TableRule(
        "waybills",
        "waybill",
        "branch_code",
        frozenset({
            "sender_name", "sender_phone", "sender_address", "recipient_name", "recipient_phone", "recipient_address",
        }),
    )  # fmt: skip
    assert tables.tables["customers"] == TableRule(
        "customers", "customer", "branch_code", frozenset({"name", "phone", "address"})
    )


def test_shipped_resources_exist_in_roles() -> None:
    """A table whose resource no role holds would be open to nobody: a typo, not a policy."""
    roles = (POLICIES / "roles.csv").read_text(encoding="utf-8")
    resources = {line.split(",")[2].strip() for line in roles.splitlines() if line.startswith("p,")}
    tables = parse_ok(SHIPPED.read_text(encoding="utf-8"))
    assert {rule.resource for rule in tables.tables.values()} <= resources


# --- resolution -----------------------------------------------------------------------


def test_rule_resolves_unqualified_and_own_schema_only() -> None:
    tables = parse_ok(GOOD_TABLE.format(name="waybills"))
    rule = tables.tables["waybills"]
    assert tables.rule(None, "waybills") is rule
    assert tables.rule("public", "waybills") is rule
    assert tables.rule("pg_catalog", "waybills") is None
    assert tables.rule("other", "waybills") is None
    assert tables.rule(None, "Waybills") is None  # a quoted "Waybills" is another table
    assert tables.rule(None, "customers") is None


def test_other_schema_and_functions() -> None:
    tables = parse_ok(
        '[settings]\nschema = "logistics"\nfunctions = ["string_to_array"]\n' + GOOD_TABLE.format(name="t")
    )
    assert tables.schema == "logistics"
    assert tables.functions == frozenset({"string_to_array"})
    assert tables.rule("logistics", "t") is not None
    assert tables.rule("public", "t") is None


def test_table_without_branch_column_is_not_scoped() -> None:
    (rule,) = parse_ok(GOOD_TABLE.format(name="depots")).tables.values()
    assert rule.branch_column is None
    assert rule.pii_columns == frozenset()


def test_empty_map_opens_nothing() -> None:
    tables = TableMap.empty()
    assert tables.schema == "public"
    assert tables.rule(None, "waybills") is None
    assert tables.functions == frozenset()


def test_no_tables_at_all_is_valid() -> None:
    assert parse_ok('[settings]\nschema = "public"\n').tables == {}


def test_map_is_read_only() -> None:
    tables = parse_ok(GOOD_TABLE.format(name="t"))
    with pytest.raises(TypeError):
        tables.tables["x"] = tables.tables["t"]  # type: ignore[index]


# --- refusals -------------------------------------------------------------------------


def test_not_toml() -> None:
    problem = only_problem('[[table]]\nname = "t"\nresource = \n')
    assert "not valid TOML" in problem.message
    assert problem.line == 3


def test_unknown_table_key_names_key_and_table_and_line() -> None:
    text = GOOD_TABLE.format(name="first") + '\n[[table]]\nname = "second"\nresource = "waybill"\nbranch = "b"\n'
    problem = only_problem(text)
    assert "table 'second'" in problem.message
    assert "branch" in problem.message
    assert problem.line == 5


def test_unknown_settings_key() -> None:
    problem = only_problem('[settings]\nschemas = "public"\n')
    assert "schemas" in problem.message
    assert problem.line == 1


def test_unknown_top_level_key() -> None:
    assert "tables" in only_problem('[[tables]]\nname = "t"\n').message


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ('name = "t"\nresource = 3', ["table 't'", "resource"]),
        ('name = "t"', ["table 't'", "resource"]),
        ('name = ""\nresource = "waybill"', ["table #1", "name"]),
        ('resource = "waybill"', ["table #1", "name is required"]),
        ('name = 7\nresource = "waybill"', ["name must be a string"]),
        ('name = "Waybills"\nresource = "waybill"', ["'Waybills'", "identifier"]),
        ('name = "way bills"\nresource = "waybill"', ["identifier"]),
        ('name = "t"\nresource = "waybill"\nbranch_column = "branch-code"', ["table 't'", "branch_column"]),
        ('name = "t"\nresource = "waybill"\nbranch_column = 1', ["branch_column must be a string"]),
        ('name = "t"\nresource = "waybill"\npii_columns = "name"', ["pii_columns must be a list"]),
        ('name = "t"\nresource = "waybill"\npii_columns = ["ok", 2]', ["pii_columns must be a string"]),
        (f'name = "{"x" * 64}"\nresource = "waybill"', ["identifier"]),
    ],
)
def test_bad_table_entries(body: str, words: list[str]) -> None:
    problem = only_problem(f"[[table]]\n{body}\n")
    for word in words:
        assert word in problem.message
    assert problem.line == 1


def test_duplicate_table() -> None:
    text = GOOD_TABLE.format(name="t") + "\n" + GOOD_TABLE.format(name="t")
    problem = only_problem(text)
    assert "table 't'" in problem.message
    assert "twice" in problem.message
    assert problem.line == 5


@pytest.mark.parametrize(
    "settings",
    ['schema = "Public"', "schema = 1", 'functions = "lower"', 'functions = ["ok", "not ok"]'],
)
def test_bad_settings(settings: str) -> None:
    problem = only_problem(f"[settings]\n{settings}\n")
    assert "schema" in problem.message or "functions" in problem.message


def test_every_problem_reported_not_only_the_first() -> None:
    text = '[settings]\nschema = 1\n[[table]]\nname = "a"\n[[table]]\nname = "b"\nresource = "x"\nextra = 1\n'
    problems = parse_bad(text)
    assert len(problems) == 3
    assert [p.line for p in problems] == [1, 3, 5]


def test_settings_not_a_table() -> None:
    assert "settings" in only_problem('settings = "x"\n').message


def test_table_not_an_array() -> None:
    assert "[[table]]" in only_problem('table = "x"\n').message

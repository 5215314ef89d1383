"""Reading an export into rows, rows into policy lines, and what changed: the parts of a
roster pull that need no policy directory (real files where a file is read)."""

from __future__ import annotations

from pathlib import Path

import pytest

from broker.policy.rule import parse_rules
from broker.roster.csv_source import CsvRosterSource
from broker.roster.diff import diff, roster_of_rows, roster_of_rules
from broker.roster.mapping import ColumnMap
from broker.roster.render import render
from broker.roster.row import RosterRow, SourceUnreadable
from broker.roster.settings import RosterSettings

COLUMNS = ColumnMap.from_settings(RosterSettings(headquarters_roles=("auditor",)))


def source(tmp_path: Path, text: str, *, max_rows: int = 100, delimiter: str = ",") -> CsvRosterSource:
    export = tmp_path / "hr.csv"
    export.write_text(text)
    return CsvRosterSource(export, COLUMNS, delimiter, "utf-8", max_rows)


def test_line_numbers_follow_the_file_through_quoted_line_breaks_and_blank_lines(tmp_path: Path) -> None:
    text = 'employee,note,role,branch,shift\ne1,"two\nlines",courier,BR001,day\n\ne2,,courier,BR 2,day\n'
    fetched = source(tmp_path, text).fetch()
    assert [row.where for row in fetched.rows] == [f"{tmp_path / 'hr.csv'}:2"]
    assert [str(p) for p in fetched.problems] == [
        f"{tmp_path / 'hr.csv'}:5: column 4 (branch): branch 'BR 2' is malformed "
        "(hint: values use only A-Z a-z 0-9 _ . / @ + -)"
    ]


def test_values_are_stripped_and_the_headquarters_value_means_branch_less(tmp_path: Path) -> None:
    fetched = source(tmp_path, "employee , role,branch,shift\n e1 ,auditor, HQ ,always\n").fetch()
    assert fetched.rows == [RosterRow("e1", "auditor", None, "always", "")]
    assert not fetched.problems


def test_a_tab_separated_export_read_as_comma_names_the_tab(tmp_path: Path) -> None:
    with pytest.raises(SourceUnreadable) as refused:
        source(tmp_path, "employee\trole\tbranch\tshift\ne1\tcourier\tBR001\tday\n").fetch()
    assert "the header is tab-separated, but [roster] delimiter is comma" in str(refused.value)
    assert 'delimiter = "\\t"' in str(refused.value)


def test_a_comma_export_read_as_semicolon_names_the_comma(tmp_path: Path) -> None:
    with pytest.raises(SourceUnreadable) as refused:
        source(tmp_path, "employee,role,branch,shift\n", delimiter=";").fetch()
    assert "the header is comma-separated, but [roster] delimiter is semicolon" in str(refused.value)


def test_more_rows_than_allowed_is_refused_not_cut(tmp_path: Path) -> None:
    rows = "".join(f"e{n},courier,BR001,day\n" for n in range(4))
    with pytest.raises(SourceUnreadable) as refused:
        source(tmp_path, "employee,role,branch,shift\n" + rows, max_rows=3).fetch()
    assert "more than 3 rows" in str(refused.value) and "max_rows" in str(refused.value)


def test_an_unterminated_quote_is_refused_at_its_line(tmp_path: Path) -> None:
    with pytest.raises(SourceUnreadable) as refused:
        source(tmp_path, 'employee,role,branch,shift\ne1,courier,BR001,day\ne2,"courier,BR001,day\n').fetch()
    assert f"{tmp_path / 'hr.csv'}:" in str(refused.value) and "not readable as CSV" in str(refused.value)


def test_a_header_naming_a_column_twice_is_refused(tmp_path: Path) -> None:
    with pytest.raises(SourceUnreadable, match="the header names 'branch' more than once"):
        source(tmp_path, "employee,role,branch,shift,branch\n").fetch()


ROWS = [
    RosterRow("e2", "courier", "BR002", "night", "hr.csv:2"),
    RosterRow("e1", "courier", "BR001", "day", "hr.csv:3"),
    RosterRow("e1", "courier", "BR001", "late", "hr.csv:4"),
    RosterRow("e9", "auditor", None, "always", "hr.csv:5"),
]
SHIFTS_KEPT = list(enumerate(["# templates", "p2, day, 08:00, 18:00, daily, UTC", "", "# who works: g2", "", ""], 1))


def test_rendered_lines_are_sorted_parse_cleanly_and_remember_their_first_row() -> None:
    rendered = render(ROWS, "hr.csv", SHIFTS_KEPT)
    roster, shifts = rendered.files["roster.csv"].decode(), rendered.files["shifts.csv"].decode()
    rules, problems = parse_rules("roster.csv", rendered.files["roster.csv"])
    assert not problems and [str(r) for r in rules] == [
        "g, e1, courier, BR001",
        "g, e2, courier, BR002",
        "g3, e9, auditor",
    ]
    assert rendered.origin[("roster.csv", rules[0].line)] == "hr.csv:3"  # e1's g line: the first of its rows
    assert shifts.startswith("# templates\np2, day, 08:00, 18:00, daily, UTC\n\n# who works: g2\ng2, e1, day\n")
    assert rendered.origin[("shifts.csv", shifts.splitlines().index("g2, e1, late") + 1)] == "hr.csv:4"
    assert "pulled from hr.csv" in roster
    again = render(list(reversed(ROWS)), "hr.csv", list(enumerate(shifts.splitlines()[:4], 1)))
    assert again.files == rendered.files, "the same roster in another order must write the same bytes"


def test_a_shifts_file_not_ending_in_a_comment_gets_one_before_the_pulled_lines() -> None:
    shifts = render(ROWS, "hr.csv", [(1, "p2, day, 08:00, 18:00, daily, UTC")]).files["shifts.csv"].decode()
    assert shifts.startswith("p2, day, 08:00, 18:00, daily, UTC\n\n# Who works which shift, pulled from hr.csv")


def test_the_diff_names_who_is_added_removed_and_what_changed() -> None:
    rules, _ = parse_rules(
        "roster.csv",
        b"g, e1, courier, BR001\ng2, e1, day\ng, e3, clerk, BR001\ng2, e3, day\ng3, e9, auditor\ng2, e9, always\n",
    )
    change = diff(roster_of_rules(rules), roster_of_rows(ROWS))
    assert (change.added, change.removed) == (["e2"], ["e3"])
    assert [(e, old.change_to(new)) for e, old, new in change.changed] == [("e1", "shifts day -> day late")]
    assert change.removed_fraction == pytest.approx(1 / 3)
    assert change.lines(1) == [
        "  added 1: e2",
        "  removed 1: e3",
        "  changed 1:",
        "    e1: shifts day -> day late",
    ]
    moved = diff(roster_of_rows(ROWS), roster_of_rows([*ROWS[:3], RosterRow("e9", "auditor", "BR001", "always", "")]))
    assert moved.changed[0][1].change_to(moved.changed[0][2]) == "roles auditor@* -> auditor@BR001"


@pytest.mark.parametrize(
    ("settings", "problem"),
    [
        (RosterSettings(source="csv"), 'source = "csv" needs csv_file'),
        (RosterSettings(delimiter='"'), "must be one character, not a quote"),
        (RosterSettings(role_column="employee"), "must be four names"),
        (RosterSettings(pull_interval_seconds=0.5, source="csv", csv_file="x"), "0 (never) or at least 1"),
        (RosterSettings(pull_interval_seconds=60), "pull_interval_seconds needs a source"),
        (RosterSettings(query_timeout_seconds=0), "query_timeout_seconds must be above 0"),
    ],
)
def test_roster_settings_name_what_is_wrong(settings: RosterSettings, problem: str) -> None:
    assert any(problem in found for found in settings.problems()), settings.problems()
    assert RosterSettings().problems() == []

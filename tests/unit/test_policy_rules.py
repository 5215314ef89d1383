"""Loading `policies/`: every way a policy edit can go wrong is refused with file:line and a reason.

Each test copies the shipped policy into a temporary directory, breaks one thing, and
checks the `PolicyError` names the file and line a platform engineer would have to open,
with a message they would recognise in a CI log.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from broker.policy.problem import PolicyError, PolicyProblem
from broker.policy.snapshot import load_snapshot

SHIPPED = Path(__file__).resolve().parents[2] / "policies"
CSV_FILES = ("deny.csv", "limits.csv", "roles.csv", "roster.csv", "shifts.csv")


@pytest.fixture
def policies(tmp_path: Path) -> Path:
    target = tmp_path / "policies"
    shutil.copytree(SHIPPED, target)
    return target


def line_of(directory: Path, name: str, text: str) -> int:
    """The line on which `text` (which must occur exactly once) starts."""
    content = (directory / name).read_text(encoding="utf-8")
    assert content.count(text) == 1, f"{text!r} must occur once in {name}"
    return content[: content.index(text)].count("\n") + 1


def replace(directory: Path, name: str, old: str, new: str) -> int:
    """Replace the single occurrence of `old` by `new`; the line where it starts."""
    line = line_of(directory, name, old)
    path = directory / name
    path.write_text(path.read_text(encoding="utf-8").replace(old, new), encoding="utf-8")
    return line


def append(directory: Path, name: str, text: str) -> int:
    """Append `text` to a file that ends with a newline; the line where it starts."""
    path = directory / name
    content = path.read_text(encoding="utf-8")
    assert content.endswith("\n")
    path.write_text(content + text, encoding="utf-8")
    return content.count("\n") + 1


def route_line(directory: Path, route_name: str) -> int:
    """The line of the `[[route]]` header of the route called `route_name`."""
    lines = (directory / "routes.toml").read_text(encoding="utf-8").splitlines()
    named = lines.index(f'name = "{route_name}"')
    return max(n for n in range(named) if lines[n].strip() == "[[route]]") + 1


def refused(directory: Path) -> list[PolicyProblem]:
    with pytest.raises(PolicyError) as info:
        load_snapshot(directory)
    problems = list(info.value.problems)
    assert problems, "a PolicyError must carry at least one problem"
    assert str(info.value) == "\n".join(str(p) for p in problems)
    return problems


def only_problem(directory: Path) -> PolicyProblem:
    problems = refused(directory)
    assert len(problems) == 1, "\n".join(map(str, problems))
    return problems[0]


def assert_at(problem: PolicyProblem, file: str, line: int, fragment: str) -> None:
    assert (problem.file, problem.line) == (file, line), str(problem)
    assert fragment in problem.message, str(problem)
    assert str(problem).startswith(f"{file}:{line}: " if line else f"{file}: ")


# --- a good policy --------------------------------------------------------------------


def test_shipped_policy_loads(policies: Path) -> None:
    snapshot = load_snapshot(policies)
    assert re.fullmatch(r"[0-9a-f]{12}", snapshot.revision)
    expected = (
        "branches.csv", "limits.csv", "messages.toml", "model.conf", "roles.csv", "roster.csv", "routes.toml",
        "shifts.csv", "signals.toml", "tables.toml",
    )  # fmt: skip
    assert snapshot.files == expected
    assert snapshot.directory == policies
    assert len(snapshot.routes.routes) == 7
    assert {"e1001", "e2001", "e9001"} <= set(snapshot.index.employees)
    assert snapshot.index.allows("e1001", "BR001", "waybill", "read")
    assert not snapshot.index.allows("e1001", "BR002", "waybill", "read")


def test_revision_depends_on_content_only(policies: Path, tmp_path: Path) -> None:
    first = load_snapshot(policies).revision
    assert load_snapshot(policies).revision == first
    elsewhere = tmp_path / "elsewhere"
    shutil.copytree(policies, elsewhere)
    assert load_snapshot(elsewhere).revision == first
    append(elsewhere, "roster.csv", "# reviewed\n")
    changed = load_snapshot(elsewhere).revision
    assert re.fullmatch(r"[0-9a-f]{12}", changed)
    assert changed != first
    (elsewhere / "roster.csv").write_bytes((policies / "roster.csv").read_bytes())
    assert load_snapshot(elsewhere).revision == first


@pytest.mark.parametrize("name", ["model.conf", "routes.toml", *CSV_FILES])
def test_revision_changes_when_any_policy_file_changes(policies: Path, name: str) -> None:
    before = load_snapshot(policies).revision
    append(policies, name, "# touched\n")
    assert load_snapshot(policies).revision != before


def test_windows_line_endings_are_accepted(policies: Path) -> None:
    before = load_snapshot(policies)
    for name in CSV_FILES:
        path = policies / name
        path.write_bytes(path.read_bytes().replace(b"\n", b"\r\n"))
    after = load_snapshot(policies)
    assert after.revision != before.revision
    assert after.index.employees.keys() == before.index.employees.keys()
    assert after.index.grants == {
        key: {role: rule.replace("\r", "") for role, rule in roles.items()}
        for key, roles in before.index.grants.items()
    }


# --- csv syntax -----------------------------------------------------------------------


def test_utf8_bom_at_start_of_roster(policies: Path) -> None:
    path = policies / "roster.csv"
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    problem = only_problem(policies)
    assert_at(problem, "roster.csv", 1, "file starts with a UTF-8 byte order mark")
    assert "without a byte order mark" in problem.hint


def test_not_utf8(policies: Path) -> None:
    line = replace(policies, "roster.csv", "g, e1002, courier, BR002", "g, e1002, courier, BR\xe9002")
    path = policies / "roster.csv"
    path.write_bytes(path.read_bytes().replace("\xe9".encode(), b"\xe9"))
    assert_at(only_problem(policies), "roster.csv", line, "file is not valid UTF-8")


@pytest.mark.parametrize(
    ("name", "old", "new", "ptype"),
    [
        ("roles.csv", "p, clerk, waybill, write", "pp, clerk, waybill, write", "pp"),
        ("roster.csv", "g, e1002, courier, BR002", "G, e1002, courier, BR002", "G"),
        ("shifts.csv", "g2, e2001, late-cn", "g 2, e2001, late-cn", "g 2"),
        ("limits.csv", "p4, courier, 120, 1m", "P4, courier, 120, 1m", "P4"),
    ],
)
def test_typod_line_type(policies: Path, name: str, old: str, new: str, ptype: str) -> None:
    line = replace(policies, name, old, new)
    problem = only_problem(policies)
    assert_at(problem, name, line, f"unknown line type {ptype!r}")
    assert "line types are case-sensitive: p, p2, p3, p4, p5, g, g2, g3" in problem.hint


def test_typod_p_line_also_orphans_what_depended_on_it(policies: Path) -> None:
    """`pp` drops courier's only grant: the typo and every line naming courier are reported."""
    line = replace(policies, "roles.csv", "p, courier, waybill, read", "pp, courier, waybill, read")
    problems = refused(policies)
    assert_at(problems[0], "roles.csv", line, "unknown line type 'pp'")
    orphans = {(p.file, p.line, p.message) for p in problems[1:]}
    assert ("roster.csv", line_of(policies, "roster.csv", "g, e1001, courier"), "unknown role 'courier'") in orphans
    assert (
        "limits.csv",
        line_of(policies, "limits.csv", "p3, courier,"),
        "limit for unknown role 'courier'",
    ) in orphans


def test_inline_comment_after_a_rule(policies: Path) -> None:
    line = replace(policies, "roster.csv", "g, e1002, courier, BR002", "g, e1002, courier, BR002  # new hire")
    problem = only_problem(policies)
    assert_at(problem, "roster.csv", line, "inline comment after a rule")
    assert "on a line of its own" in problem.hint


@pytest.mark.parametrize("quoted", ['"courier"', "'courier'"])
def test_quoted_field(policies: Path, quoted: str) -> None:
    line = replace(policies, "roster.csv", "g, e1002, courier, BR002", f"g, e1002, {quoted}, BR002")
    assert_at(only_problem(policies), "roster.csv", line, "quoted fields are not supported")


def test_truncated_file_mid_field_count(policies: Path) -> None:
    """Cut inside the third field: both the missing newline and the short line are reported."""
    line = append(policies, "roster.csv", "g, e1005, cour")
    problems = refused(policies)
    assert len(problems) == 2
    assert_at(problems[0], "roster.csv", line, "file does not end with a newline: it may have been truncated")
    assert_at(problems[1], "roster.csv", line, "g line has 2 fields, expected 3")


def test_truncated_file_mid_role_name(policies: Path) -> None:
    """Cut inside the last field: both the missing newline and the unknown role are reported."""
    append(policies, "shifts.csv", "g2, e9002, always\n")
    line = append(policies, "roster.csv", "g3, e9002, aud")
    problems = refused(policies)
    assert len(problems) == 2
    assert_at(problems[0], "roster.csv", line, "file does not end with a newline: it may have been truncated")
    assert_at(problems[1], "roster.csv", line, "unknown role 'aud'")
    assert "known roles: auditor, clerk, courier, manager, trainee" in problems[1].hint


def test_truncated_file_whose_last_line_still_parses(policies: Path) -> None:
    append(policies, "shifts.csv", "g2, e1005, day-cn\n")
    line = append(policies, "roster.csv", "g, e1005, courier, BR0")
    truncated, branch = refused(policies)
    assert_at(truncated, "roster.csv", line, "file does not end with a newline")
    assert_at(branch, "roster.csv", line, "unknown branch 'BR0'")  # what was cut off shows


# --- branches.csv ---------------------------------------------------------------------


def test_a_lower_case_branch_code_on_the_roster_is_an_error(policies: Path) -> None:
    append(policies, "shifts.csv", "g2, e1005, day-cn\n")
    line = append(policies, "roster.csv", "g, e1005, courier, br001\n")
    problem = only_problem(policies)
    assert_at(problem, "roster.csv", line, "unknown branch 'br001'")
    assert problem.hint == "branch codes are case-sensitive: did you mean BR001?"


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("deny.csv", "p, courier, *, *, BR099, deny\n", "unknown branch 'BR099'"),
        ("roster.csv", "g, e1005, courier, BR0O1\n", "unknown branch 'BR0O1'"),
        ("branches.csv", "BR001, Shanghai again, Asia/Shanghai, \n", "branch BR001 is already listed on line 5"),
        ("branches.csv", "BR013, Lhasa, Asia/Lhasa, \n", "branch BR013: unknown time zone 'Asia/Lhasa'"),
        ("branches.csv", "BR013, Lhasa, Asia/Shanghai, 10.13.0.0/33\n", "branch BR013: '10.13.0.0/33' does not appear"),
        ("branches.csv", "BR013, Lhasa, Asia/Shanghai\n", "branch line has 3 fields, expected 4"),
        ("branches.csv", "BR013, Lhasa, Asia/Shanghai, # new\n", "inline comment after a branch"),
        ("branches.csv", "BR 013, Lhasa, Asia/Shanghai, \n", "branch code 'BR 013' is empty or malformed"),
    ],
)
def test_branch_problems(policies: Path, name: str, text: str, message: str) -> None:
    append(policies, "shifts.csv", "g2, e1005, day-cn\n")
    line = append(policies, name, text)
    assert_at(only_problem(policies), name, line, message)


def test_a_signals_allowance_for_an_unknown_branch_is_an_error(policies: Path) -> None:
    replace(policies, "signals.toml", "# BR009 = 4", "br009 = 4")
    problem = only_problem(policies)
    assert_at(problem, "signals.toml", 0, "shared_login.branches: unknown branch 'br009'")
    assert "did you mean BR009?" in problem.hint


def test_the_branch_list_is_required(policies: Path) -> None:
    (policies / "branches.csv").unlink()
    problem = only_problem(policies)
    assert problem.message == "branches.csv is missing from the policy directory"


@pytest.mark.parametrize(
    ("name", "old", "new", "message"),
    [
        ("roster.csv", "g, e1002, courier, BR002", "g, e1002, courier", "g line has 2 fields, expected 3"),
        ("roster.csv", "g, e1002, courier, BR002", "g, e1002, courier, BR002,", "g line has 4 fields, expected 3"),
        ("roster.csv", "g3, e9001, auditor", "g3, e9001, auditor, BR001", "g3 line has 3 fields, expected 2"),
        ("roles.csv", "p, clerk, waybill, write", "p, clerk, waybill", "p line has 2 fields, expected 3"),
        ("shifts.csv", "p2, day-xj, 09:30, 19:30, Mon-Fri, Asia/Urumqi", "p2, day-xj, 09:30, 19:30, Mon-Fri",
         "p2 line has 4 fields, expected 5"),
        ("limits.csv", "p4, courier, 120, 1m", "p4, courier, 120", "p4 line has 2 fields, expected 3"),
    ],
)  # fmt: skip
def test_wrong_field_count(policies: Path, name: str, old: str, new: str, message: str) -> None:
    line = replace(policies, name, old, new)
    problem = refused(policies)[0]  # the dropped line may orphan others (day-xj's g2 lines)
    assert_at(problem, name, line, message)
    assert problem.hint.startswith("write it as: ")


def test_wrong_field_count_hint_spells_the_shape(policies: Path) -> None:
    replace(policies, "roster.csv", "g, e1002, courier, BR002", "g, e1002, courier")
    assert only_problem(policies).hint == "write it as: g, employee, role, branch"


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ("g, e1002, courier, BR002", "g, e1002, , BR002", "role '' is empty or malformed"),
        ("g, e1002, courier, BR002", "g, e 1002, courier, BR002", "employee 'e 1002' is empty or malformed"),
        ("g, e1002, courier, BR002", "g, e1002, courier, BR*", "branch 'BR*' is empty or malformed"),
    ],
)
def test_malformed_value(policies: Path, old: str, new: str, message: str) -> None:
    line = replace(policies, "roster.csv", old, new)
    assert_at(only_problem(policies), "roster.csv", line, message)


# --- cross-references -----------------------------------------------------------------


def test_unknown_role_in_g(policies: Path) -> None:
    line = replace(policies, "roster.csv", "g, e1002, courier, BR002", "g, e1002, courrier, BR002")
    problem = only_problem(policies)
    assert_at(problem, "roster.csv", line, "unknown role 'courrier'")
    assert problem.hint == "known roles: auditor, clerk, courier, manager, trainee"


def test_unknown_role_in_g3(policies: Path) -> None:
    line = replace(policies, "roster.csv", "g3, e9001, auditor", "g3, e9001, Auditor")
    assert_at(only_problem(policies), "roster.csv", line, "unknown role 'Auditor'")


def test_unknown_shift_in_g2(policies: Path) -> None:
    line = replace(policies, "shifts.csv", "g2, e1002, night-cn", "g2, e1002, nite-cn")
    problem = only_problem(policies)
    assert_at(problem, "shifts.csv", line, "unknown shift 'nite-cn'")
    assert problem.hint == "defined shifts: always, day-cn, day-xj, late-cn, night-cn"


@pytest.mark.parametrize(
    ("shift", "message"),
    [
        ("p2, swing, 08:00, 08:00, daily, Asia/Shanghai", "shift 'swing' starts and ends at 08:00: it is empty"),
        ("p2, swing, 25:00, 06:00, daily, Asia/Shanghai", "time '25:00' is out of range"),
        ("p2, swing, 24:00, 06:00, daily, Asia/Shanghai", "time '24:00' is out of range"),
        ("p2, swing, 12:60, 18:00, daily, Asia/Shanghai", "time '12:60' is out of range"),
        ("p2, swing, 1200, 18:00, daily, Asia/Shanghai", "start '1200' is empty or malformed"),
        ("p2, swing, 12:00, 18:00, Mon-Fry, Asia/Shanghai",
         "day 'Fry' is not one of Mon, Tue, Wed, Thu, Fri, Sat, Sun"),
        ("p2, swing, 12:00, 18:00, weekdays, Asia/Shanghai", "day 'weekdays' is not one of Mon, Tue"),
        ("p2, swing, 12:00, 18:00, Mon-Fri, Asia/Beijing", "time zone 'Asia/Beijing' is unknown (use an IANA name"),
        ("p2, swing, 12:00, 18:00, Mon-Fri, CST", "time zone 'CST' is unknown"),
    ],
)  # fmt: skip
def test_bad_shift_definition(policies: Path, shift: str, message: str) -> None:
    line = append(policies, "shifts.csv", shift + "\n")
    assert_at(only_problem(policies), "shifts.csv", line, message)


def test_broken_shift_also_reports_who_loses_it(policies: Path) -> None:
    line = replace(policies, "shifts.csv", "p2, night-cn, 22:00, 06:00", "p2, night-cn, 22:00, 22:00")
    problems = refused(policies)
    assert_at(problems[0], "shifts.csv", line, "shift 'night-cn' starts and ends at 22:00: it is empty")
    assert_at(problems[1], "shifts.csv", line_of(policies, "shifts.csv", "g2, e1002"), "unknown shift 'night-cn'")
    assert len(problems) == 2


def test_duplicate_line(policies: Path) -> None:
    first = replace(
        policies, "roster.csv", "g, e1002, courier, BR002\n", "g, e1002, courier, BR002\ng, e1002,  courier,BR002\n"
    )
    assert_at(only_problem(policies), "roster.csv", first + 1, f"duplicate of roster.csv:{first}")


def test_duplicate_line_across_files(policies: Path) -> None:
    first = line_of(policies, "roster.csv", "g, e1002, courier, BR002")
    line = append(policies, "shifts.csv", "g, e1002, courier, BR002\n")
    assert_at(only_problem(policies), "shifts.csv", line, f"duplicate of roster.csv:{first}")


def test_duplicate_p3_for_the_same_role_and_resource(policies: Path) -> None:
    first = line_of(policies, "limits.csv", "p3, courier, waybill, 50, 500, shift")
    line = append(policies, "limits.csv", "p3, courier, waybill, 60, 600, shift\n")
    problem = only_problem(policies)
    assert_at(problem, "limits.csv", line, "p3 for ('courier', 'waybill') is already defined")
    assert problem.message.endswith(f"at limits.csv:{first}")


def test_duplicate_p4_for_the_same_role(policies: Path) -> None:
    first = line_of(policies, "limits.csv", "p4, courier, 120, 1m")
    line = append(policies, "limits.csv", "p4, courier, 100, 1m\n")
    assert_at(only_problem(policies), "limits.csv", line, f"p4 for courier is already defined at limits.csv:{first}")


def test_role_granted_a_resource_without_a_records_limit(policies: Path) -> None:
    line = append(policies, "roles.csv", "p, courier, customer, read\n")
    problem = only_problem(policies)
    assert_at(problem, "roles.csv", line, "role 'courier' may use 'customer' but has no records limit for it")
    assert problem.hint.startswith("add: p3, courier, customer, <cap>, <quota>, <window>")


def test_records_limit_for_a_resource_nobody_is_granted(policies: Path) -> None:
    line = append(policies, "limits.csv", "p3, clerk, parcel, 10, 100, 1d\n")
    assert_at(only_problem(policies), "limits.csv", line, "limit for resource 'parcel', which no p line grants")


def test_limit_for_unknown_role(policies: Path) -> None:
    line = append(policies, "limits.csv", "p4, driver, 60, 1m\n")
    assert_at(only_problem(policies), "limits.csv", line, "limit for unknown role 'driver'")


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ("p3, courier, waybill, 50, 500, shift", "p3, courier, waybill, lots, 500, shift",
         "cap 'lots' is not a positive whole number or 'unlimited'"),
        ("p3, courier, waybill, 50, 500, shift", "p3, courier, waybill, 50, 0, shift",
         "quota '0' is not a positive whole number or 'unlimited'"),
        ("p3, courier, waybill, 50, 500, shift", "p3, courier, waybill, 50, 500, 8x",
         "window '8x' is neither 'shift' nor a duration"),
        ("p4, courier, 120, 1m", "p4, courier, unlimited, 1m", "a rate line must give a number of requests"),
    ],
)  # fmt: skip
def test_bad_limit_values(policies: Path, old: str, new: str, message: str) -> None:
    line = replace(policies, "limits.csv", old, new)
    problems = refused(policies)
    assert_at(problems[0], "limits.csv", line, message)


# --- model.conf -----------------------------------------------------------------------


def test_model_g_with_two_fields_is_refused(policies: Path) -> None:
    line = replace(policies, "model.conf", "g = _, _, _", "g = _, _")
    assert_at(only_problem(policies), "model.conf", line, "g is defined with 2 fields but g lines have 3")


def test_model_g3_with_a_domain_is_refused(policies: Path) -> None:
    line = replace(policies, "model.conf", "g3 = _, _", "g3 = _, _, _")
    assert_at(only_problem(policies), "model.conf", line, "g3 is defined with 3 fields but g3 lines have 2")


def test_model_request_without_branch_is_refused(policies: Path) -> None:
    line = replace(policies, "model.conf", "r = sub, dom, obj, act", "r = sub, obj, act")
    problems = refused(policies)
    assert_at(problems[0], "model.conf", line, "request_definition must be r = sub, dom, obj, act")


def test_model_that_casbin_cannot_parse(policies: Path) -> None:
    (policies / "model.conf").write_text("[request_definition]\nr = sub, dom, obj, act\n[matchers\n", encoding="utf-8")
    problem = only_problem(policies)
    # pycasbin's own message carries the line; the problem itself is file-level.
    assert_at(problem, "model.conf", 0, "cannot load the Casbin model: ")
    assert "line 3" in problem.message


def test_model_without_a_matcher(policies: Path) -> None:
    replace(policies, "model.conf", "\nm = (p.obj", "\n# m = (p.obj")
    assert_at(only_problem(policies), "model.conf", 0, "the model has no [matchers] m = ... line")


# --- routes.toml ----------------------------------------------------------------------


def test_routes_invalid_toml(policies: Path) -> None:
    line = replace(policies, "routes.toml", 'name = "one customer"', "name = one customer")
    problem = only_problem(policies)
    assert_at(problem, "routes.toml", line, "not valid TOML: ")
    assert f"line {line}" in problem.message


def test_routes_unknown_key(policies: Path) -> None:
    replace(policies, "routes.toml", 'name = "one waybill"\n', 'name = "one waybill"\nlimt_param = "limit"\n')
    assert_at(only_problem(policies), "routes.toml", route_line(policies, "one waybill"), "unknown keys limt_param")


def test_routes_unknown_settings_key(policies: Path) -> None:
    line = line_of(policies, "routes.toml", "[settings]")
    replace(policies, "routes.toml", "[settings]\n", "[settings]\ncase_insensitive = false\n")
    assert_at(only_problem(policies), "routes.toml", line, "[settings] has unknown keys: case_insensitive")


def test_routes_path_param_not_a_whole_segment(policies: Path) -> None:
    replace(policies, "routes.toml", "/api/branches/{branch}/customers", "/api/branches/br-{branch}/customers")
    assert_at(
        only_problem(policies),
        "routes.toml",
        route_line(policies, "customers of one branch"),
        "path segment 'br-{branch}': a parameter is a whole segment like {branch}",
    )


def test_routes_branch_names_a_param_not_in_the_path(policies: Path) -> None:
    replace(
        policies, "routes.toml", 'path = "/api/branches/{branch}/customers"', 'path = "/api/branches/{br}/customers"'
    )
    assert_at(
        only_problem(policies),
        "routes.toml",
        route_line(policies, "customers of one branch"),
        "branch = 'path:branch' names a path parameter the path does not have",
    )


def test_routes_list_without_branch_field(policies: Path) -> None:
    replace(
        policies,
        "routes.toml",
        'response_items = "items"\nbranch_field = "branch_code"\nexample',
        'response_items = "items"\nexample',
    )
    problem = only_problem(policies)
    assert_at(
        problem,
        "routes.toml",
        route_line(policies, "waybills of one branch"),
        "route GET /api/branches/{branch}/waybills returns records but names no branch_field",
    )
    assert "set branch_field" in problem.hint


def test_routes_resource_action_that_no_p_line_grants(policies: Path) -> None:
    create = 'path = "/api/waybills"\nresource = "waybill"\naction = "write"'
    replace(policies, "routes.toml", create, create.replace("write", "update"))
    problem = only_problem(policies)
    assert_at(
        problem,
        "routes.toml",
        route_line(policies, "create a waybill"),
        "route POST /api/waybills uses waybill/update, which no p line grants",
    )


def test_routes_resource_misspelt(policies: Path) -> None:
    create = 'path = "/api/waybills"\nresource = "waybill"\naction = "write"'
    replace(policies, "routes.toml", create, create.replace('waybill"', 'waybil"'))
    assert_at(
        only_problem(policies),
        "routes.toml",
        route_line(policies, "create a waybill"),
        "uses waybil/write, which no p line grants",
    )


# --- missing files --------------------------------------------------------------------


@pytest.mark.parametrize("name", ["model.conf", "routes.toml"])
def test_missing_required_file(policies: Path, name: str) -> None:
    (policies / name).unlink()
    problem = only_problem(policies)
    assert problem.file == str(policies / name)
    assert problem.line == 0
    assert problem.message == f"{name} is missing from the policy directory"


def test_no_csv_files(policies: Path) -> None:
    for name in CSV_FILES:
        (policies / name).unlink()
    problem = only_problem(policies)
    assert (problem.file, problem.line) == (str(policies), 0)
    assert problem.message == "no *.csv rule files in the policy directory"


def test_missing_directory(tmp_path: Path) -> None:
    problem = only_problem(tmp_path / "nowhere")
    assert (problem.file, problem.line) == (str(tmp_path / "nowhere"), 0)
    assert problem.message == "policy directory does not exist"


def test_policy_without_a_roster_loads_and_knows_nobody(policies: Path) -> None:
    """A policy with no roster is legal (everyone is denied); it must still load cleanly."""
    (policies / "roster.csv").unlink()
    snapshot = load_snapshot(policies)
    assert snapshot.index.employees == {}
    assert "roster.csv" not in snapshot.files


# --- everything at once ---------------------------------------------------------------


def test_every_problem_in_one_load_is_reported(policies: Path) -> None:
    expected = {
        ("model.conf", replace(policies, "model.conf", "g = _, _, _", "g = _, _")),
        ("roster.csv", replace(policies, "roster.csv", "g, e1002, courier, BR002", "g, e1002, courrier, BR002")),
        ("roster.csv", replace(policies, "roster.csv", "g, e1004, clerk, BR001", "g, e1004, clerk, BR001 # temp")),
        ("shifts.csv", append(policies, "shifts.csv", "p2, swing, 12:00, 18:00, Mon-Fri, Mars/Olympus\n")),
        ("limits.csv", append(policies, "limits.csv", "p4, courier, 60, 1m\n")),
        ("roles.csv", replace(policies, "roles.csv", "p, trainee, waybill, read", "pp, trainee, waybill, read")),
    }
    replace(policies, "routes.toml", 'name = "one waybill"\n', 'name = "one waybill"\nlimt = 1\n')
    expected.add(("routes.toml", route_line(policies, "one waybill")))
    with pytest.raises(PolicyError) as info:
        load_snapshot(policies)
    found = {(p.file, p.line) for p in info.value.problems}
    assert expected <= found, f"missing: {expected - found}"
    log = str(info.value)
    for file, line in expected:
        assert f"{file}:{line}: " in log


# --- known defects (see the report) ---------------------------------------------------


def test_employee_named_like_a_role_is_refused_on_its_roster_line(policies: Path) -> None:
    line = append(policies, "roster.csv", "g, clerk, manager, BR001\n")
    problems = refused(policies)
    assert any((p.file, p.line) == ("roster.csv", line) and "clerk" in p.message for p in problems), problems


def test_zone_naming_a_region_directory_is_reported_on_its_line(policies: Path) -> None:
    pytest.importorskip("tzdata", reason="the crash needs the tzdata package (the system zoneinfo path is safe)")
    line = append(policies, "shifts.csv", "p2, swing, 12:00, 18:00, Mon-Fri, America/Indiana\n")
    assert_at(only_problem(policies), "shifts.csv", line, "time zone 'America/Indiana' is unknown")


# --- a route's example answer -------------------------------------------------------------


@pytest.mark.parametrize(
    ("old", "new", "fragment"),
    [
        ('response_items = "items"\nbranch_field = "branch_code"\nexample', 'response_items = "records"\n'
         'branch_field = "branch_code"\nexample', "no list of records with 'branch_code' at records"),
        ('response_items = "items"\nbranch_field = "branch_code"\nexample', 'response_items = "items"\n'
         'branch_field = "org.branch_code"\nexample', "no list of records with 'org.branch_code'"),
        ('"branch_code": "BR001", "status": "created"}],', '"branch_code": 7, "status": "created"}],',
         "is not a branch code"),
        ('"total": 1, "limit": 20', '"total": 1,, "limit": 20', "is not JSON"),
    ],
)  # fmt: skip
def test_a_route_whose_paths_do_not_fit_its_example_answer_is_refused(
    policies: Path, old: str, new: str, fragment: str
) -> None:
    replace(policies, "routes.toml", old, new)
    problem = only_problem(policies)
    assert_at(problem, "routes.toml", route_line(policies, "waybills of one branch"), fragment)
    assert "its example answer" in problem.message


def test_an_example_with_records_on_a_route_mapped_without_them_is_refused(policies: Path) -> None:
    append(
        policies,
        "routes.toml",
        '\n[[route]]\nname = "status"\npath = "/api/status"\nresource = "waybill"\naction = "read"\n'
        'records = "none"\nexample = \'{"recent": [{"waybill_no": "SF1", "branch_code": "BR001"}]}\'\n',
    )
    assert "holds records, but the route is mapped as carrying none" in only_problem(policies).message


# --- mistakes that used to load silently or be reported as something else -------------


def test_an_employee_without_a_shift_is_an_error(policies: Path) -> None:
    line = append(policies, "roster.csv", "g, e1005, courier, BR001\n")
    problem = only_problem(policies)
    assert_at(problem, "roster.csv", line, "employee e1005 has no shift")
    assert "add g2, <employee>, <shift> (defined: always, day-cn" in problem.hint


def test_a_cap_above_the_quota_is_an_error(policies: Path) -> None:
    line = replace(policies, "limits.csv", "p3, trainee, waybill, 20, 60, shift", "p3, trainee, waybill, 80, 60, shift")
    assert_at(only_problem(policies), "limits.csv", line, "cap 80 is above the quota 60")


def test_an_employee_in_two_branches_is_an_error_unless_the_policy_allows_it(policies: Path) -> None:
    line = append(policies, "roster.csv", "g, e1001, clerk, BR004\n")
    problem = only_problem(policies)
    assert_at(problem, "roster.csv", line, "employee e1001 holds roles in BR001 (roster.csv:2) and BR004")
    assert "several_branches = true under [roster] in policy.toml" in problem.hint
    (policies / "policy.toml").write_text("[roster]\nseveral_branches = true\n")
    assert load_snapshot(policies).index.employees["e1001"].roles_by_branch.keys() == {"BR001", "BR004"}
    (policies / "policy.toml").write_text("[roster]\nseveral_branch = true\n")
    assert_at(refused(policies)[0], "policy.toml", 0, "unknown keys roster.several_branch")


def test_a_semicolon_separated_export_is_named(policies: Path) -> None:
    line = append(policies, "roster.csv", "g;e1005;courier;BR001\n")
    problem = only_problem(policies)
    assert_at(problem, "roster.csv", line, "fields are separated by ';': this looks like a semicolon-separated export")


@pytest.mark.parametrize(
    ("new", "message"),
    [
        ("p3, courier, waybill, 50, 500, shift # raised in May", "inline comment after a rule"),
        ("p3, courier, waybill, 50, 500, shfit", "shfit"),
        ("p3, courier, waybill, 50, 1,000, shift", "'1,000' looks like a number with a thousands separator"),
    ],
)
def test_a_broken_limit_line_is_reported_as_itself_not_as_a_missing_limit(
    policies: Path, new: str, message: str
) -> None:
    line = replace(policies, "limits.csv", "p3, courier, waybill, 50, 500, shift", new)
    problem = only_problem(policies)  # not also "role 'courier' may use 'waybill' but has no records limit"
    assert_at(problem, "limits.csv", line, message)

"""`broker roster pull` from a CSV export, as an operator or a CI job runs it: exit codes,
what it prints, and what it leaves in the policy directory (real files throughout)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from broker.policy.snapshot import load_snapshot
from broker.roster import directory
from tests.roster_workspace import HEADER, SHIPPED_ROWS, Workspace


@pytest.fixture
def work(tmp_path: Path) -> Workspace:
    return Workspace(tmp_path)


def test_a_pull_writes_the_roster_and_the_policy_checks(work: Workspace, capsys: pytest.CaptureFixture[str]) -> None:
    work.write_export(HEADER + SHIPPED_ROWS + 'e1005,"Sun, Hao",courier,BR002,night-cn\n')
    templates = [line for line in (work.policies / "shifts.csv").read_text().splitlines() if line.startswith("p2")]
    code, out, err = work.pull(capsys)
    assert code == 0, err
    assert "roster from" in out and "8 employees (7 in" in out and "added 1: e1005" in out
    assert "wrote roster.csv and shifts.csv" in out
    roster, shifts = (f.decode() for f in work.roster_files())
    assert "g, e1005, courier, BR002\n" in roster and "g3, e9001, auditor\n" in roster
    assert "g2, e1005, night-cn\n" in shifts and "g2, e2001, late-cn\n" in shifts
    assert [line for line in shifts.splitlines() if line.startswith("p2")] == templates
    snapshot = load_snapshot(work.policies)
    assert "e1005" in snapshot.index.employees and snapshot.revision in out
    assert not [p.name for p in work.policies.iterdir() if p.name.startswith(".")], "a staged file was left behind"


def test_the_shipped_roster_pulled_from_its_export_changes_nothing_after_the_first_pull(
    work: Workspace, capsys: pytest.CaptureFixture[str]
) -> None:
    assert work.pull(capsys)[0] == 0
    first = work.roster_files()
    mtimes = [(work.policies / n).stat().st_mtime_ns for n in ("roster.csv", "shifts.csv")]
    code, out, _ = work.pull(capsys)
    assert code == 0 and "already say this: nothing written" in out
    assert "added 0" in out and "removed 0" in out and "changed 0" in out
    assert work.roster_files() == first
    assert [(work.policies / n).stat().st_mtime_ns for n in ("roster.csv", "shifts.csv")] == mtimes


def test_a_dry_run_shows_the_changes_and_writes_nothing(work: Workspace, capsys: pytest.CaptureFixture[str]) -> None:
    before = work.roster_files()
    work.write_export(HEADER + SHIPPED_ROWS + "e1004,Liu Yang,clerk,BR001,late-cn\n")
    code, out, err = work.pull(capsys, "--dry-run")
    assert code == 0, err
    assert "changed 1:" in out and "e1004: shifts day-cn -> day-cn late-cn" in out
    assert "dry run: the policy would check" in out and "nothing written" in out
    assert work.roster_files() == before


def test_a_semicolon_export_is_refused_naming_the_delimiter(
    work: Workspace, capsys: pytest.CaptureFixture[str]
) -> None:
    before = work.roster_files()
    work.write_export((HEADER + SHIPPED_ROWS).replace(",", ";"))
    code, _, err = work.pull(capsys)
    assert code == 3
    assert f"{work.export}:1: the header is semicolon-separated, but [roster] delimiter is comma" in err
    assert 'set [roster] delimiter = ";"' in err and "nothing written" in err
    assert work.roster_files() == before
    work.configure('delimiter = ";"\n')
    assert work.pull(capsys)[0] == 0


def test_a_byte_order_mark_is_refused_unless_the_encoding_says_so(
    work: Workspace, capsys: pytest.CaptureFixture[str]
) -> None:
    work.write_export(HEADER + SHIPPED_ROWS, encoding="utf-8-sig")
    code, _, err = work.pull(capsys)
    assert code == 3 and f"{work.export}:1: the file starts with a UTF-8 byte order mark" in err
    assert 'encoding = "utf-8-sig"' in err
    work.configure('encoding = "utf-8-sig"\n')
    assert work.pull(capsys)[0] == 0


def test_an_export_in_another_encoding_is_refused_naming_the_line(
    work: Workspace, capsys: pytest.CaptureFixture[str]
) -> None:
    work.write_export(HEADER + SHIPPED_ROWS.replace("Zhang Min", "张敏"), encoding="gb18030")
    code, _, err = work.pull(capsys)
    assert code == 3 and f"{work.export}:4: not valid utf-8" in err and "gb18030" in err
    work.configure('encoding = "gb18030"\n')
    assert work.pull(capsys)[0] == 0


def test_a_missing_column_is_refused_listing_the_header(work: Workspace, capsys: pytest.CaptureFixture[str]) -> None:
    work.write_export(HEADER.replace("Shift", "Schicht") + SHIPPED_ROWS)
    code, _, err = work.pull(capsys)
    assert code == 3
    assert (
        f"{work.export}:1: the header has no column 'Shift' (it has 'EmployeeID', 'Name', 'Job', 'Branch', 'Schicht')"
        in err
    )


def test_bad_rows_are_refused_each_at_its_line_and_column(work: Workspace, capsys: pytest.CaptureFixture[str]) -> None:
    before = work.roster_files()
    rows = SHIPPED_ROWS.replace("e1003,Zhang Min,trainee,BR001", "e1003,Zhang Min,trainee,BR 001")
    rows += "e1005,Sun Hao,courier,,day-cn\ne1006,Hu Bo,courier,BR001\ne1007,Xu Li,courier,BR001,\n"
    rows += "e1001,Li Wei,courier,BR001,day-cn\n"
    work.write_export(HEADER + rows)
    code, out, err = work.pull(capsys)
    assert code == 1
    assert f"{work.export}:4: column 4 (Branch): branch 'BR 001' is malformed" in err
    assert f"{work.export}:10: column 4 (Branch): branch is empty" in err and "never read as headquarters" in err
    assert f"{work.export}:11: 4 fields, the header has 5" in err
    assert f"{work.export}:12: column 5 (Shift): shift is empty" in err and "'always' shift" in err
    assert f"{work.export}:13: repeats {work.export}:2" in err
    assert "refused (5 problem(s)); nothing written" in err
    assert "added" not in out, "a diff made without the bad rows would mislead"
    assert work.roster_files() == before


def test_policy_problems_are_cited_at_the_export_line(work: Workspace, capsys: pytest.CaptureFixture[str]) -> None:
    before = work.roster_files()
    rows = SHIPPED_ROWS.replace("trainee,BR001", "traine,BR001").replace("manager,BR012", "manager,br012")
    rows = rows.replace("clerk,BR001,day-cn", "clerk,BR001,dayshift") + "e1002,Wang Fang,courier,BR003,night-cn\n"
    work.write_export(HEADER + rows)
    code, _, err = work.pull(capsys)
    assert code == 1
    export = work.export
    assert f"{export}:4: unknown role 'traine' (hint: known roles: auditor, clerk, courier, manager, trainee)" in err
    assert f"{export}:5: unknown shift 'dayshift'" in err
    assert f"{export}:8: unknown branch 'br012' (hint: branch codes are case-sensitive: did you mean BR012?)" in err
    assert f"{export}:10: employee e1002 holds roles in BR002 ({export}:3) and BR003" in err
    assert "roster.csv" not in err, "the lines were never written: cite the export"
    assert work.roster_files() == before


def test_a_roster_failing_the_policys_own_tests_is_refused(work: Workspace, capsys: pytest.CaptureFixture[str]) -> None:
    work.write_export(HEADER + SHIPPED_ROWS.replace("e1001,Li Wei,courier,BR001", "e1001,Li Wei,courier,BR002"))
    code, _, err = work.pull(capsys)
    assert code == 1
    assert f"{work.policies}/tests/shipped.toml:" in err and "a courier reads their own branch in their shift" in err
    assert "broker-roster-" not in err, "the scratch copy's path leaked into the report"


def test_a_shrinking_export_is_refused_unless_allowed(work: Workspace, capsys: pytest.CaptureFixture[str]) -> None:
    shutil.rmtree(work.policies / "tests")  # the shipped cases name the employees removed here
    before = work.roster_files()
    work.write_export(HEADER + "".join(line + "\n" for line in SHIPPED_ROWS.splitlines() if "e2" not in line))
    code, out, err = work.pull(capsys)
    assert code == 4
    assert "removed 2: e2001, e2012" in out
    assert "the pull would remove 2 of 7 employees (29%, more than the 10% allowed)" in err and "--allow-shrink" in err
    assert work.roster_files() == before
    code, out, _ = work.pull(capsys, "--allow-shrink")
    assert code == 0 and "wrote roster.csv" in out
    assert "e2001" not in (work.policies / "roster.csv").read_text()


def test_an_empty_export_never_empties_the_roster(work: Workspace, capsys: pytest.CaptureFixture[str]) -> None:
    before = work.roster_files()
    work.write_export(HEADER)
    code, _, err = work.pull(capsys, "--allow-shrink")
    assert code == 4 and "the source holds no employees: a pull never empties the roster" in err
    assert work.roster_files() == before


def test_headquarters_rows_become_branch_less_roles_only_for_the_allowed_roles(
    work: Workspace, capsys: pytest.CaptureFixture[str]
) -> None:
    work.configure('headquarters_branch = "HQ"\nheadquarters_roles = ["auditor"]\n')
    work.write_export(HEADER + SHIPPED_ROWS.replace("e1002,Wang Fang,courier,BR002", "e1002,Wang Fang,courier,HQ"))
    code, _, err = work.pull(capsys)
    assert code == 1
    assert f"{work.export}:3: column 3 (Job): role 'courier' may not be held branch-less" in err
    assert "headquarters_roles allows: auditor" in err


def test_with_no_headquarters_roles_listed_no_row_becomes_branch_less(
    work: Workspace, capsys: pytest.CaptureFixture[str]
) -> None:
    # the default must not let an export's "HQ" turn a courier into someone who reads every branch
    before = work.roster_files()
    work.configure("headquarters_roles = []\n")
    work.write_export(HEADER + SHIPPED_ROWS.replace("e1002,Wang Fang,courier,BR002", "e1002,Wang Fang,courier,HQ"))
    code, _, err = work.pull(capsys)
    assert code == 1 and "role 'courier' may not be held branch-less" in err
    assert "headquarters_roles is empty" in err
    assert work.roster_files() == before


def test_roster_lines_a_pull_cannot_own_are_refused(work: Workspace, capsys: pytest.CaptureFixture[str]) -> None:
    (work.policies / "extra.csv").write_text("# a hand-written exception\ng, e1003, clerk, BR001\n")
    with (work.policies / "roster.csv").open("a") as roster:
        roster.write("p, trainee, customer, read\n")
    code, _, err = work.pull(capsys)
    assert code == 1
    assert f"{work.policies}/extra.csv:2: a roster line (g) outside roster.csv and shifts.csv" in err
    assert f"{work.policies}/roster.csv:11: a p line in roster.csv, which a pull rewrites whole" in err


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ("", 'no roster source: set [roster] source = "csv" or "postgres"'),
        ('source = "ldap"\n', "[roster] source = 'ldap' must be csv, postgres or empty"),
        ('source = "csv"\ncsv_file = "hr.csv"\ndelimiter = ";;"\n', "[roster] delimiter ';;' must be one character"),
        ('source = "csv"\ncsv_file = "hr.csv"\nencoding = "klingon"\n', "[roster] encoding 'klingon' is not"),
        ('source = "csv"\ncsv_file = "hr.csv"\nmax_removed_fraction = 1.5\n', "max_removed_fraction must be between"),
        ('source = "postgres"\n', '[roster] source = "postgres" needs dsn and query'),
        ('source = "csv"\ncsv_file = "hr.csv"\ncolour = "red"\n', "unknown key 'colour' in [roster]"),
    ],
)
def test_a_bad_roster_config_exits_2_naming_the_key(
    work: Workspace, capsys: pytest.CaptureFixture[str], config: str, message: str
) -> None:
    work.configure(source=config)
    code, _, err = work.pull(capsys)
    assert code == 2 and message in err


def test_a_missing_export_or_policy_directory_is_named(work: Workspace, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = work.pull(capsys, "--csv", str(work.root / "nope.csv"))
    assert code == 3 and f"{work.root / 'nope.csv'}: cannot read: No such file or directory" in err
    code, _, err = work.pull(capsys, "--policies", str(work.root / "nowhere"))
    assert code == 2 and f"policy directory {work.root / 'nowhere'} does not exist" in err


def test_a_pull_waits_for_another_and_gives_up_with_3(
    work: Workspace, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The CLI's pull and the running broker's take turns on one policy directory."""
    monkeypatch.setattr(directory, "LOCK_WAIT_SECONDS", 0.3)
    work.write_export(HEADER + SHIPPED_ROWS + "e1005,Sun Hao,courier,BR002,day-cn\n")
    before = work.roster_files()
    with directory.locked(work.policies):
        code, _, err = work.pull(capsys)
    assert code == 3 and f"another roster pull has held {work.policies}" in err
    assert "could not be locked, read or written; nothing written" in err
    assert work.roster_files() == before
    assert work.pull(capsys)[0] == 0


def test_the_command_line_documents_the_exit_codes_and_exits_with_them(work: Workspace) -> None:
    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "broker", "roster", "pull", *args]
        return subprocess.run(command, capture_output=True, text=True, timeout=60, check=False, cwd=work.root)

    usage = cli("--help")
    assert usage.returncode == 0
    for text in ("--dry-run", "--allow-shrink", "--csv FILE", "--policies", "exit codes:", "4  refused as a shrink"):
        assert text in usage.stdout
    work.write_export(HEADER)
    refused = cli("-c", "broker.toml")
    assert refused.returncode == 4 and "refused as a shrink; nothing written" in refused.stderr


def test_a_problem_in_a_kept_shifts_line_is_cited_at_its_line_in_the_real_file(
    work: Workspace, capsys: pytest.CaptureFixture[str]
) -> None:
    """g2 lines before a template move out of the way; the template's problem keeps its line."""
    shifts = work.policies / "shifts.csv"
    lines = shifts.read_text().splitlines()
    lines.insert(1, "g2, e1001, late-cn")
    lines.append("p2, early-cn, 05:00, 09:00, Mon-Fri, Asia/Shangai")
    shifts.write_text("\n".join(lines) + "\n")
    code, _, err = work.pull(capsys)
    assert code == 1
    assert f"{shifts}:{len(lines)}: " in err and "Asia/Shangai" in err


def test_a_roster_file_that_cannot_be_split_into_lines_is_refused(
    work: Workspace, capsys: pytest.CaptureFixture[str]
) -> None:
    roster = work.policies / "roster.csv"
    roster.write_bytes(b"\xef\xbb\xbf" + roster.read_bytes())
    code, _, err = work.pull(capsys)
    assert code == 1 and f"{roster}:1: starts with a UTF-8 byte order mark" in err


def test_a_roster_file_cut_short_is_replaced_not_refused(work: Workspace, capsys: pytest.CaptureFixture[str]) -> None:
    roster = work.policies / "roster.csv"
    roster.write_text(roster.read_text().rstrip("\n"))
    code, out, err = work.pull(capsys)
    assert code == 0, err
    assert "wrote roster.csv" in out and roster.read_text().endswith("g3, e9001, auditor\n")


def test_a_headquarters_value_that_is_also_a_branch_code_is_refused(
    work: Workspace, capsys: pytest.CaptureFixture[str]
) -> None:
    work.configure('headquarters_branch = "BR001"\n')
    code, _, err = work.pull(capsys)
    assert code == 1
    assert f"{work.policies}/branches.csv: [roster] headquarters_branch 'BR001' is also a branch code" in err

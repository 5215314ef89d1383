"""A policy directory, HR's export beside it and a broker.toml naming both, for the
`broker roster pull` tests (real files; the CLI run in-process, its output captured)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import structlog

from broker.cli import main

REPO = Path(__file__).resolve().parents[1]
HEADER = "EmployeeID,Name,Job,Branch,Shift\n"
SHIPPED_ROWS = """\
e1001,Li Wei,courier,BR001,day-cn
e1002,Wang Fang,courier,BR002,night-cn
e1003,Zhang Min,trainee,BR001,day-cn
e1004,Liu Yang,clerk,BR001,day-cn
e2001,Chen Jie,manager,BR003,day-cn
e2001,Chen Jie,manager,BR003,late-cn
e2012,Ma Li,manager,BR012,day-xj
e9001,Zhao Lei,auditor,HQ,always
"""
"""The shipped roster as HR exports it: line n of the export is SHIPPED_ROWS' line n - 1."""
COLUMNS = 'employee_column = "EmployeeID"\nrole_column = "Job"\nbranch_column = "Branch"\nshift_column = "Shift"\n'


class Workspace:
    """A copy of the shipped policy, HR's export beside it, and a broker.toml naming both."""

    columns = COLUMNS
    """The [roster] keys naming the source's columns."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.policies = root / "policies"
        shutil.copytree(REPO / "policies", self.policies)
        self.export = root / "hr.csv"
        self.write_export(HEADER + SHIPPED_ROWS)
        self.configure()

    def configure(self, extra: str = "", source: str = 'source = "csv"\ncsv_file = "hr.csv"\n') -> None:
        # the shipped roster's auditor works at headquarters: that role must be allowed there
        if "headquarters_roles" not in extra:
            extra = f'headquarters_roles = ["auditor"]\n{extra}'
        (self.root / "broker.toml").write_text(
            f'[policy]\ndirectory = "policies"\n\n[roster]\n{source}{self.columns}{extra}'
        )

    def write_export(self, text: str, encoding: str = "utf-8") -> None:
        self.export.write_bytes(text.encode(encoding))

    def pull(self, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
        capsys.readouterr()
        try:
            code = main(["roster", "pull", "-c", str(self.root / "broker.toml"), *args])
        finally:
            structlog.reset_defaults()  # main() logged to capsys's stream, gone after this test
        out, err = capsys.readouterr()
        return code, out, err

    def roster_files(self) -> tuple[bytes, bytes]:
        return (self.policies / "roster.csv").read_bytes(), (self.policies / "shifts.csv").read_bytes()

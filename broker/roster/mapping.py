"""From a source's cells to a roster row: which column holds which field, and what each
value must be before it may become a policy line."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from broker.policy.rule import well_formed
from broker.roster.row import RosterProblem, RosterRow
from broker.roster.settings import RosterSettings

FIELDS = ("employee", "role", "branch", "shift")
VALUE_SYNTAX = "A-Z a-z 0-9 _ . / @ + -"


@dataclass(frozen=True, slots=True)
class ColumnMap:
    columns: dict[str, str]
    """Field (employee, role, branch, shift) -> the source's column name."""
    headquarters_branch: str
    headquarters_roles: frozenset[str]

    @classmethod
    def from_settings(cls, settings: RosterSettings) -> ColumnMap:
        names = (settings.employee_column, settings.role_column, settings.branch_column, settings.shift_column)
        return cls(
            dict(zip(FIELDS, (n.strip() for n in names), strict=True)),
            settings.headquarters_branch,
            frozenset(settings.headquarters_roles),
        )

    def missing(self, available: list[str]) -> list[str]:
        """The configured column names `available` lacks, in field order."""
        return [name for name in self.columns.values() if name not in available]

    def row(self, cells: Mapping[str, object], where: str, label: Callable[[str], str]) -> RosterRow | RosterProblem:
        """The row, or the first problem with it. `cells` is keyed by column name; `label`
        names a column the way its source's user knows it (a CSV column's number too)."""
        values: dict[str, str] = {}
        for name, column in self.columns.items():
            value = cells.get(column)
            problem = _problem_with(value, column, label(column), name)
            if problem:
                return RosterProblem(where, *problem)
            assert isinstance(value, str)
            values[name] = value.strip()
        branch: str | None = values["branch"]
        if branch == self.headquarters_branch:
            branch = None
            if values["role"] not in self.headquarters_roles:
                allowed = ", ".join(sorted(self.headquarters_roles))
                return RosterProblem(
                    where,
                    f"{label(self.columns['role'])}: role {values['role']!r} may not be held branch-less "
                    f"({label(self.columns['branch'])} is {self.headquarters_branch!r}): it would hold in every branch",
                    f"[roster] headquarters_roles allows: {allowed}"
                    if allowed
                    else "[roster] headquarters_roles is empty: list the roles that may be held in every branch",
                )
        return RosterRow(values["employee"], values["role"], branch, values["shift"], where)


def _problem_with(value: object, column: str, label: str, field: str) -> tuple[str, str] | None:
    """(message, hint) when `value`, from `column` (`label` to people), cannot stand as `field`."""
    if value is None:
        return f"{label}: {field} is NULL", _NULL_HINT.get(field, _ALL_FOUR)
    if not isinstance(value, str):
        return f"{label}: {field} is {type(value).__name__}, not text", f"cast it in the query: {column}::text"
    if not value.strip():
        return f"{label}: {field} is empty", _NULL_HINT.get(field, _ALL_FOUR)
    if not well_formed(value.strip()):
        return f"{label}: {field} {value.strip()!r} is malformed", f"values use only {VALUE_SYNTAX}"
    return None


_ALL_FOUR = "every row needs an employee, a role, a branch and a shift"
_NULL_HINT = {
    "branch": "an empty branch is never read as headquarters: write [roster] headquarters_branch for branch-less roles",
    "shift": "every employee needs a shift; staff who may work any hour get the 'always' shift",
}

"""What a roster source hands over: one row per employee, role and shift, each knowing
where in the source it came from, so every problem can point back there."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class RosterRow:
    employee: str
    role: str
    branch: str | None
    """None: the role is held branch-less (headquarters: a g3 line, every branch)."""
    shift: str
    where: str = field(compare=False)
    """Where the row is in the source: "hr.csv:17", "query row 17"."""

    @property
    def fact(self) -> tuple[str, str, str | None, str]:
        return self.employee, self.role, self.branch, self.shift


@dataclass(frozen=True, slots=True)
class RosterProblem:
    where: str
    message: str
    hint: str = ""

    def __str__(self) -> str:
        text = f"{self.where}: {self.message}"
        return f"{text} (hint: {self.hint})" if self.hint else text


class SourceUnreadable(Exception):
    """The source could not be read as a roster at all: missing, unreachable, the wrong
    shape (encoding, delimiter, columns). Nothing it held is used."""

    def __init__(self, problem: RosterProblem) -> None:
        self.problem = problem
        super().__init__(str(problem))


@dataclass(slots=True)
class Fetched:
    """Every row that reads as one, and a problem for each that does not: a pull with any
    problem is refused whole (a roster missing one bad row would lock that employee out,
    or keep a stale line of theirs)."""

    rows: list[RosterRow] = field(default_factory=list)
    problems: list[RosterProblem] = field(default_factory=list)

    def add(self, row: RosterRow | RosterProblem) -> None:
        if isinstance(row, RosterRow):
            self.rows.append(row)
        else:
            self.problems.append(row)

    def check_repeats(self) -> None:
        """The same row twice is a broken export or a join that multiplies rows: refused."""
        first: dict[tuple[str, str, str | None, str], RosterRow] = {}
        for row in self.rows:
            seen = first.setdefault(row.fact, row)
            if seen is not row:
                self.problems.append(RosterProblem(row.where, f"repeats {seen.where}", "each row must appear once"))

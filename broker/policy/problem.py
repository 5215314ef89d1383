"""Problems found in policy files, each pinned to a file and line."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class PolicyProblem:
    file: str
    line: int
    message: str
    hint: str = ""
    about: tuple[str, ...] = field(default=(), compare=False)
    """For a line the reader refused: its type and first fields as far as they could be
    read, so checks that miss the line do not report its absence as another problem."""

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        text = f"{where}: {self.message}"
        return f"{text} (hint: {self.hint})" if self.hint else text


class PolicyError(Exception):
    """The policy set is refused; carries every problem found, not only the first."""

    def __init__(self, problems: Sequence[PolicyProblem]) -> None:
        self.problems = tuple(problems)
        super().__init__("\n".join(str(p) for p in self.problems))

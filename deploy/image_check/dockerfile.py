"""Reading the Dockerfile into the steps the image check replays.

The check replays the Dockerfile itself rather than a copy of its steps, so the two
cannot drift: a RUN line changed in the Dockerfile is the RUN line the check runs. Only
the instructions this repository's Dockerfile uses are understood; any other is an
error naming its line, so a new instruction is taught to the check instead of being
skipped unnoticed.
"""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

KNOWN = frozenset({"ARG", "FROM", "ENV", "WORKDIR", "COPY", "RUN", "USER", "EXPOSE", "HEALTHCHECK", "ENTRYPOINT"})
_VARIABLE = re.compile(r"\$(?:\{(\w+)\}|(\w+))")


class DockerfileError(ValueError):
    """The Dockerfile holds something the check cannot replay; the message names the line."""


@dataclass(frozen=True, slots=True)
class Instruction:
    keyword: str
    text: str
    """Everything after the keyword, continuation lines joined, flags included."""
    line: int

    def flags(self) -> dict[str, str]:
        """The leading `--name=value` flags (COPY --from=build, HEALTHCHECK --interval=10s)."""
        found: dict[str, str] = {}
        for word in self.text.split():
            if not word.startswith("--"):
                break
            name, _, value = word[2:].partition("=")
            found[name] = value
        return found

    def words(self) -> list[str]:
        """The arguments after the flags, split as the shell form would be."""
        words = self.text.split()
        while words and words[0].startswith("--"):
            words.pop(0)
        return words

    def exec_form(self) -> list[str]:
        """A JSON array argument (ENTRYPOINT, HEALTHCHECK ... CMD)."""
        text = self.text
        if self.keyword == "HEALTHCHECK":
            text = text.split(" CMD ", 1)[1] if " CMD " in text else ""
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            value = None
        if not (isinstance(value, list) and value and all(isinstance(v, str) for v in value)):
            raise DockerfileError(f"line {self.line}: {self.keyword} is not in exec form (a JSON array of strings)")
        return value


@dataclass(slots=True)
class Stage:
    image: str
    name: str
    line: int
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]

    def last(self, keyword: str) -> Instruction | None:
        found = self.all(keyword)
        return found[-1] if found else None


@dataclass(frozen=True, slots=True)
class Dockerfile:
    args: dict[str, str]
    """Global ARG defaults (those before the first FROM)."""
    stages: list[Stage]

    @property
    def final(self) -> Stage:
        return self.stages[-1]

    def stage(self, name: str) -> Stage:
        for stage in self.stages:
            if stage.name == name:
                return stage
        raise DockerfileError(f"no stage named {name!r}")


def logical_lines(text: str) -> list[tuple[int, str]]:
    """(first line number, text) of each instruction: continuations joined, comments and
    blank lines dropped (also inside a continuation, as Docker does)."""
    found: list[tuple[int, str]] = []
    pending: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), 1):
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if not pending:
            start = number
        if stripped.endswith("\\"):
            pending.append(stripped[:-1].strip())
            continue
        pending.append(stripped)
        found.append((start, " ".join(pending)))
        pending = []
    if pending:
        raise DockerfileError(f"line {start}: the instruction ends with a line continuation")
    return found


def parse(text: str) -> Dockerfile:
    args: dict[str, str] = {}
    stages: list[Stage] = []
    for number, line in logical_lines(text):
        keyword, _, rest = line.partition(" ")
        keyword = keyword.upper()
        if keyword not in KNOWN:
            raise DockerfileError(f"line {number}: {keyword} is not an instruction the image check can replay")
        instruction = Instruction(keyword, rest.strip(), number)
        if keyword == "ARG" and not stages:
            name, _, default = instruction.text.partition("=")
            args[name] = default
        elif keyword == "FROM":
            stages.append(_stage(instruction, args))
        elif not stages:
            raise DockerfileError(f"line {number}: {keyword} before the first FROM")
        else:
            stages[-1].instructions.append(instruction)
    if not stages:
        raise DockerfileError("no FROM line: not a Dockerfile")
    return Dockerfile(args, stages)


def load(path: Path) -> Dockerfile:
    try:
        return parse(path.read_text(encoding="utf-8"))
    except DockerfileError as exc:
        raise DockerfileError(f"{path}: {exc}") from None


def _stage(instruction: Instruction, args: Mapping[str, str]) -> Stage:
    words = instruction.words()
    if len(words) == 3 and words[1].upper() == "AS":
        image, name = words[0], words[2]
    elif len(words) == 1:
        image, name = words[0], ""
    else:
        raise DockerfileError(f"line {instruction.line}: FROM {instruction.text!r} is not `FROM image [AS name]`")
    return Stage(expand(image, args), name, instruction.line)


def expand(text: str, variables: Mapping[str, str]) -> str:
    """$NAME and ${NAME} replaced from `variables` (unknown ones by nothing, as Docker does)."""
    return _VARIABLE.sub(lambda m: variables.get(m.group(1) or m.group(2), ""), text)


def env_assignments(instruction: Instruction, current: Mapping[str, str]) -> dict[str, str]:
    """The variables an `ENV a=1 b=$a` line sets, each value expanded against the
    environment before the line (Docker's rule: a line does not see its own settings)."""
    found: dict[str, str] = {}
    for word in shlex.split(instruction.text):
        name, equals, value = word.partition("=")
        if not equals:
            raise DockerfileError(f"line {instruction.line}: ENV {word!r} is not NAME=value")
        found[name] = expand(value, current)
    return found

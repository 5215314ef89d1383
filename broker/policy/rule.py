"""Reading Casbin rule files strictly.

pycasbin's own CSV reader accepts things that silently change what a policy means: a
UTF-8 BOM swallows the first line, a typo'd line type (`pp`, `G`) is skipped, quotes and
inline `# comments` become part of a value, a truncated file loads. The broker parses
the files itself, refuses each of these with file, line and reason, and hands pycasbin
only lines it has checked.
"""

from __future__ import annotations

import dataclasses
import re
import zlib
from dataclasses import dataclass

from broker.policy.problem import PolicyProblem

LINE_TYPES: dict[str, tuple[str, ...]] = {
    "p": ("subject", "resource", "action", "branch", "effect"),
    "p2": ("shift", "start", "end", "days", "time_zone"),
    "p3": ("role", "resource", "cap", "quota", "window"),
    "p4": ("role", "requests", "per"),
    "p5": ("role", "probes", "per"),
    "g": ("employee", "role", "branch"),
    "g2": ("employee", "shift"),
    "g3": ("employee", "role"),
}
"""Every line type the broker understands, with the meaning of each field."""

ROSTER_LINES = frozenset({"g", "g2", "g3"})
"""Who holds which role where, and which shift: at 100,000 employees, nearly every line."""

SHORT_P = 3
"""`p, role, resource, action` is short for `p, role, resource, action, *, allow`: the
allow templates every policy has, written as before deny lines existed."""
EFFECTS = ("allow", "deny")
WILDCARD = "*"
"""In a full-form p line, any subject, resource, action or branch (see `shape`)."""

_THOUSANDS = re.compile(r"(?<![\w.])\d{1,3}(?:,\d{3})+(?![\w.])")
"""1,000 or 20,000,000, but not the separate fields "50, 500" (fields have a space)."""
_TOKEN = re.compile(r"[A-Za-z0-9_./@+\-]+\Z")
_CLOCK_TOKEN = re.compile(r"[0-9]{1,2}:[0-9]{2}\Z")
_CLOCK_FIELDS = {"start", "end"}
_FORBIDDEN = {'"': "quoted fields are not supported", "'": "quoted fields are not supported"}


@dataclass(frozen=True, slots=True)
class Rule:
    ptype: str
    fields: tuple[str, ...]
    file: str
    line: int

    @property
    def where(self) -> str:
        return f"{self.file}:{self.line}"

    def __str__(self) -> str:
        return ", ".join((self.ptype, *self.fields))

    @property
    def effect(self) -> str:
        """allow or deny for a p line (short p lines allow); "" for other lines."""
        if self.ptype != "p":
            return ""
        return self.fields[4] if len(self.fields) > SHORT_P else "allow"

    @property
    def casbin_fields(self) -> tuple[str, ...]:
        """The fields as Casbin's full-form p sees them (short lines padded)."""
        if self.ptype == "p" and len(self.fields) == SHORT_P:
            return (*self.fields, WILDCARD, "allow")
        return self.fields


def well_formed(value: str) -> bool:
    """Whether `value` may stand as a name in a rule line (an employee, role, branch or
    shift): what a roster taken from elsewhere is held to before it becomes lines."""
    return bool(_TOKEN.match(value))


@dataclass(frozen=True, slots=True)
class RuleFile:
    """One rule file as it was loaded, compressed (~10x): the roster's lines are not
    kept parsed once the index is built (at 100,000 employees they were ~60 MB as Rule
    objects), but the tools that read lines (lint, `casbin_enforcer`) get them back
    exactly as they were, whatever the file says now."""

    name: str
    packed: bytes

    @classmethod
    def of(cls, name: str, raw: bytes) -> RuleFile:
        return cls(name, zlib.compress(raw, 1))

    def rules(self) -> list[Rule]:
        """Its lines, parsed again (they parsed without a problem when loaded)."""
        return parse_rules(self.name, zlib.decompress(self.packed))[0]


def parse_rules(name: str, raw: bytes) -> tuple[list[Rule], list[PolicyProblem]]:
    """Every rule in one file, or the problems that make the file unusable."""
    problems: list[PolicyProblem] = []
    if raw.startswith(b"\xef\xbb\xbf"):
        hint = "save the file as UTF-8 without a byte order mark"
        return [], [PolicyProblem(name, 1, "file starts with a UTF-8 byte order mark", hint)]
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        bad_line = raw[: exc.start].count(b"\n") + 1
        return [], [PolicyProblem(name, bad_line, "file is not valid UTF-8")]
    if text and not text.endswith("\n"):
        problems.append(
            PolicyProblem(
                name,
                text.count("\n") + 1,
                "file does not end with a newline: it may have been truncated",
                "check the last line is complete, then end the file with a newline",
            )
        )
    rules: list[Rule] = []
    for number, line in enumerate(text.split("\n"), start=1):
        rule, problem = _parse_line(name, number, line)
        if rule:
            rules.append(rule)
        if problem:
            problems.append(problem)
    return rules, problems


def _parse_line(name: str, number: int, line: str) -> tuple[Rule | None, PolicyProblem | None]:
    stripped = line.strip()
    if not stripped or stripped.startswith("#"):
        return None, None
    about = tuple(part.strip() for part in stripped.split("#")[0].split(","))[:3]
    if "#" in stripped:
        return None, PolicyProblem(
            name, number, "inline comment after a rule", "put the comment on a line of its own", about
        )
    if ";" in stripped and stripped.count(";") >= stripped.count(","):
        return None, PolicyProblem(
            name,
            number,
            "fields are separated by ';': this looks like a semicolon-separated export",
            "export as CSV with commas (e.g. g, e1001, courier, BR001)",
        )
    for char, message in _FORBIDDEN.items():
        if char in stripped:
            return None, PolicyProblem(name, number, message, "write values bare: p, role, x, y")
    ptype, *fields = (part.strip() for part in stripped.split(","))
    rule, problem = _check_fields(name, number, ptype, tuple(fields))
    if problem is not None:
        problem = _thousands(stripped, dataclasses.replace(problem, about=about))
    return rule, problem


def _thousands(line: str, problem: PolicyProblem) -> PolicyProblem:
    """A number written `1,000` splits into two fields: say so, not "too many fields"."""
    found = _THOUSANDS.search(line)
    if found is None:
        return problem
    return dataclasses.replace(
        problem,
        message=f"{found.group(0)!r} looks like a number with a thousands separator, which splits it into two fields",
        hint=f"write it without separators: {found.group(0).replace(',', '')}",
    )


def _check_fields(
    name: str, number: int, ptype: str, fields: tuple[str, ...]
) -> tuple[Rule | None, PolicyProblem | None]:
    expected = LINE_TYPES.get(ptype)
    if expected is None:
        known = ", ".join(LINE_TYPES)
        return None, PolicyProblem(
            name, number, f"unknown line type {ptype!r}", f"line types are case-sensitive: {known}"
        )
    if ptype == "p":
        return _check_p(name, number, fields)
    if len(fields) != len(expected):
        shape = ", ".join((ptype, *expected))
        return None, PolicyProblem(
            name,
            number,
            f"{ptype} line has {len(fields)} fields, expected {len(expected)}",
            f"write it as: {shape}",
        )
    return _rule_or_problem(name, number, ptype, fields, expected)


def _rule_or_problem(
    name: str, number: int, ptype: str, fields: tuple[str, ...], labels: tuple[str, ...], wildcards: bool = False
) -> tuple[Rule | None, PolicyProblem | None]:
    """The rule, unless one of the values `labels` names is malformed."""
    for label, value in zip(labels, fields, strict=False):
        pattern = _CLOCK_TOKEN if label in _CLOCK_FIELDS else _TOKEN
        if not pattern.match(value) and not (wildcards and value == WILDCARD):
            return None, PolicyProblem(
                name,
                number,
                f"{label} {value!r} is empty or malformed",
                "times are HH:MM; other values use only A-Z a-z 0-9 _ . / @ + -"
                + (", or * for any" if wildcards else ""),
            )
    return Rule(ptype, fields, name, number), None


def _check_p(name: str, number: int, fields: tuple[str, ...]) -> tuple[Rule | None, PolicyProblem | None]:
    """A short allow template, or a full line whose last field is allow or deny."""
    labels = LINE_TYPES["p"]
    if len(fields) == SHORT_P:
        return _rule_or_problem(name, number, "p", fields, labels)
    if len(fields) != len(labels):
        return None, PolicyProblem(
            name,
            number,
            f"p line has {len(fields)} fields, expected {SHORT_P} or {len(labels)}",
            "write it as: p, role, resource, action (an allow template) or "
            "p, subject, resource, action, branch, allow|deny (* for any)",
        )
    if fields[-1] not in EFFECTS:
        return None, PolicyProblem(
            name, number, f"effect {fields[-1]!r} is neither allow nor deny", "the last field is allow or deny"
        )
    return _rule_or_problem(name, number, "p", fields, labels[:-1], wildcards=True)

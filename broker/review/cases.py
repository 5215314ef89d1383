"""Policy unit tests: cases kept next to the policies (`policies/tests/*.toml`).

    [[case]]
    name = "a courier reads their own branch"
    employee = "e1001"
    request = "GET /api/branches/BR001/waybills?limit=5"
    at = "2026-12-01T10:00:00+08:00"
    expect = "allow"            # or a reason code, e.g. "policy.other_branch"
    used = 0                    # optional: records already taken in the quota window
    body = '{"branch_code": "BR001"}'   # optional: a JSON request body

Each case is decided offline by the broker's own Guard; a report lists failures with
the matched rule, and which permission and limit lines no case exercised.
"""

from __future__ import annotations

import asyncio
import re
import threading
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from broker.core.clock import parse_instant
from broker.core.reason import Reason
from broker.policy.problem import PolicyProblem
from broker.policy.snapshot import PolicySnapshot
from broker.review.offline import Question, decide_offline, parse_request

TESTS_DIR = "tests"
_CASE_KEYS = {"name", "employee", "request", "at", "expect", "used", "body"}
_CITED = re.compile(r"\(([^()]+:\d+)\)")


@dataclass(frozen=True, slots=True)
class Case:
    name: str
    question: Question
    expect: str
    file: str
    line: int


@dataclass(frozen=True, slots=True)
class Outcome:
    case: Case
    got: str
    rule: str
    detail: str

    @property
    def passed(self) -> bool:
        return self.got == self.case.expect


@dataclass
class Report:
    outcomes: list[Outcome] = field(default_factory=list)
    uncovered: list[str] = field(default_factory=list)
    coverable: int = 0

    @property
    def failures(self) -> list[Outcome]:
        return [o for o in self.outcomes if not o.passed]


def case_files(policies: Path, paths: list[Path] | None = None) -> list[Path]:
    if paths:
        found: list[Path] = []
        for path in paths:
            found += sorted(path.glob("*.toml")) if path.is_dir() else [path]
        return found
    return sorted((policies / TESTS_DIR).glob("*.toml"))


def load_cases(files: list[Path]) -> tuple[list[Case], list[PolicyProblem]]:
    cases: list[Case] = []
    problems: list[PolicyProblem] = []
    for path in files:
        try:
            raw = path.read_bytes()
            doc = tomllib.loads(raw.decode("utf-8"))
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            problems.append(PolicyProblem(str(path), 0, f"cannot read test cases: {exc}"))
            continue
        lines = [n for n, text in enumerate(raw.split(b"\n"), start=1) if text.strip().startswith(b"[[case]]")]
        for position, entry in enumerate(doc.get("case", [])):
            line = lines[position] if position < len(lines) else 0
            try:
                cases.append(_case(entry, str(path), line))
            except ValueError as exc:
                problems.append(PolicyProblem(str(path), line, f"case #{position + 1}: {exc}"))
    return cases, problems


def _case(entry: dict[str, Any], file: str, line: int) -> Case:
    unknown = set(entry) - _CASE_KEYS
    if unknown:
        raise ValueError(f"unknown keys {', '.join(sorted(unknown))}")
    for key in ("name", "employee", "request", "at", "expect"):
        if not isinstance(entry.get(key), str):
            raise ValueError(f"{key} is required and must be a string")
    expect = entry["expect"]
    if expect != "allow" and expect not in {r.value for r in Reason}:
        raise ValueError(f"expect = {expect!r} is neither 'allow' nor a reason code")
    used = entry.get("used", 0)
    body = entry.get("body")
    if type(used) is not int or used < 0:
        raise ValueError("used must be a whole number")
    if body is not None and not isinstance(body, str):
        raise ValueError("body must be a string")
    method, target = parse_request(entry["request"])
    question = Question(
        entry["employee"], method, target, parse_instant(entry["at"]), body.encode() if body else None, used
    )
    return Case(entry["name"], question, expect, file, line)


async def run_cases(snapshot: PolicySnapshot, cases: list[Case]) -> Report:
    report = Report()
    exercised: set[str] = set()
    for case in cases:
        decision, route = await decide_offline(snapshot, case.question)
        report.outcomes.append(Outcome(case, decision.reason.value, decision.rule, decision.detail))
        employee = snapshot.index.employees.get(case.question.employee)
        if employee is None or route is None:
            continue
        grant = snapshot.index.grant(employee, route.resource, route.action)
        limit = snapshot.index.record_limit(employee, route.resource)
        rate = snapshot.index.rate_limit(employee)
        for text in (grant.rule, limit.rule if limit else "", rate.rule if rate else "", decision.rule):
            exercised.update(_CITED.findall(text))
    coverable = [r for r in snapshot.policy_lines if r.ptype in ("p", "p3", "p4")]
    report.coverable = len(coverable)
    report.uncovered = [f"{r.where} ({r})" for r in coverable if r.where not in exercised]
    return report


def verify_with_own_tests(snapshot: PolicySnapshot) -> list[PolicyProblem]:
    """Run the policy's own cases against a freshly built snapshot, before it goes live.

    Runs on a private event loop in a thread of its own, so it works anywhere: in the
    process that builds a snapshot (`broker.policy.build`) and from code that already
    runs inside a loop.
    """
    files = case_files(snapshot.directory)
    if not files:
        return []
    cases, problems = load_cases(files)
    found: list[Report] = []
    worker = threading.Thread(target=lambda: found.append(asyncio.run(run_cases(snapshot, cases))))
    worker.start()
    worker.join()
    return problems + failures_as_problems(found[0])


def report_text(report: Report) -> str:
    lines = []
    for outcome in report.outcomes:
        case = outcome.case
        if outcome.passed:
            lines.append(f"PASS  {case.name}")
            continue
        lines.append(f"FAIL  {case.name}  ({case.file}:{case.line})")
        lines.append(f"        expected: {case.expect}")
        lines.append(f"        actual:   {outcome.got}" + (f"  [{outcome.rule}]" if outcome.rule else ""))
        if outcome.detail:
            lines.append(f"        detail:   {outcome.detail}")
    passed = len(report.outcomes) - len(report.failures)
    lines.append("")
    lines.append(f"{passed} passed, {len(report.failures)} failed")
    covered = report.coverable - len(report.uncovered)
    lines.append(f"coverage: {covered} of {report.coverable} permission and limit lines exercised")
    lines += [f"  not exercised: {entry}" for entry in report.uncovered]
    return "\n".join(lines) + "\n"


def failures_as_problems(report: Report) -> list[PolicyProblem]:
    """Failing cases as policy problems: a reload whose own tests fail is refused."""
    return [
        PolicyProblem(o.case.file, o.case.line, f"policy test {o.case.name!r} expected {o.case.expect}, got {o.got}")
        for o in report.failures
    ]

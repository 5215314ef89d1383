"""Loading `policies/` into one immutable, checked snapshot.

A reload builds a whole new snapshot off to the side and the live one is replaced in a
single assignment, so requests never see half a policy. pycasbin's `load_policy()` on a
live enforcer is not atomic (false denies and "dictionary changed size" under load).
"""

from __future__ import annotations

import dataclasses
import hashlib
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import casbin
from casbin.persist.adapter import Adapter

from broker.policy.check import CheckedRules, check_examples, check_routes, check_rules, check_tables
from broker.policy.device import DEVICES_FILE, DeviceMap, parse_devices
from broker.policy.index import PolicyIndex, build_index
from broker.policy.model import load_model, matcher_line
from broker.policy.problem import PolicyError, PolicyProblem
from broker.policy.route import RouteMap, parse_routes
from broker.policy.rule import Rule, parse_rules
from broker.policy.table import TableMap, parse_tables
from broker.signals.rules import SignalRules, parse_signals

MODEL_FILE = "model.conf"
ROUTES_FILE = "routes.toml"
TABLES_FILE = "tables.toml"
"""Optional: which database tables the PostgreSQL door opens, and their branch columns."""
SIGNALS_FILE = "signals.toml"
"""Optional: when a login looks rented and what to do (defaults apply without it)."""
RULE_GLOB = "*.csv"
PARITY_SAMPLE = 64
"""Employees whose every decision is re-checked against `enforce()` on each load."""


@dataclass(frozen=True, slots=True)
class PolicySnapshot:
    revision: str
    """First 12 hex digits of a SHA-256 over every policy file's name and bytes."""
    directory: Path
    index: PolicyIndex
    routes: RouteMap
    enforcer: Any
    rules: tuple[Rule, ...]
    files: tuple[str, ...]
    tables: TableMap = field(default_factory=TableMap.empty)
    signals: SignalRules = field(default_factory=SignalRules)
    devices: DeviceMap = field(default_factory=DeviceMap)


class _RuleAdapter(Adapter):  # type: ignore[misc]
    """Hands pycasbin only the rules the broker has already parsed and checked."""

    def __init__(self, rules: list[Rule]) -> None:
        self._rules = rules

    def load_policy(self, model: Any) -> None:
        for rule in self._rules:
            model.model[rule.ptype[0]][rule.ptype].policy.append(list(rule.fields))


def load_snapshot(directory: Path, parity_sample: int = PARITY_SAMPLE) -> PolicySnapshot:
    """Read, check and compile `directory`; raise PolicyError listing every problem."""
    files = _read_files(directory)
    revision = _revision(files)
    problems: list[PolicyProblem] = []
    model_raw = files.pop(MODEL_FILE)
    model, found = load_model(MODEL_FILE, model_raw)
    problems += found
    routes, found = parse_routes(ROUTES_FILE, files.pop(ROUTES_FILE))
    problems += found
    tables: TableMap | None = TableMap.empty()
    if TABLES_FILE in files:
        tables, found = parse_tables(TABLES_FILE, files.pop(TABLES_FILE))
        problems += found
    signals: SignalRules | None = SignalRules()
    if SIGNALS_FILE in files:
        signals, found = parse_signals(SIGNALS_FILE, files.pop(SIGNALS_FILE))
        problems += found
    devices_raw = files.pop(DEVICES_FILE, None)
    rules: list[Rule] = []
    for name in sorted(files):
        parsed, found = parse_rules(name, files[name])
        rules += parsed
        problems += found
    checked = check_rules(rules)
    if routes is not None:
        check_routes(checked, routes)
        check_examples(checked, routes)
    if tables is not None:
        check_tables(checked, tables)
    problems += checked.problems
    if problems or model is None or routes is None or tables is None or signals is None:
        raise PolicyError(problems)
    snapshot = _compile(directory, revision, model, routes, rules, checked, parity_sample, matcher_line(model_raw))
    if tables.file:
        snapshot = dataclasses.replace(snapshot, tables=tables, files=tuple(sorted({*snapshot.files, TABLES_FILE})))
    unknown = sorted(set(signals.console_roles) - snapshot.index.roles())
    if unknown:
        hint = f"known roles: {', '.join(sorted(snapshot.index.roles()))}"
        problem = PolicyProblem(SIGNALS_FILE, 0, f"[console] admin_roles names unknown roles {unknown}", hint)
        raise PolicyError([problem])
    if signals.file:
        snapshot = dataclasses.replace(snapshot, signals=signals, files=tuple(sorted({*snapshot.files, SIGNALS_FILE})))
    if devices_raw is not None:  # after the roster is compiled: devices name its employees
        devices, found = parse_devices(DEVICES_FILE, devices_raw, snapshot.index.employees)
        if devices is None:
            raise PolicyError(found)
        snapshot = dataclasses.replace(snapshot, devices=devices, files=tuple(sorted({*snapshot.files, DEVICES_FILE})))
    return snapshot


def _read_files(directory: Path) -> dict[str, bytes]:
    if not directory.is_dir():
        raise PolicyError([PolicyProblem(str(directory), 0, "policy directory does not exist")])
    files: dict[str, bytes] = {}
    for required in (MODEL_FILE, ROUTES_FILE):
        path = directory / required
        if not path.is_file():
            raise PolicyError([PolicyProblem(str(path), 0, f"{required} is missing from the policy directory")])
    optional = [directory / name for name in (TABLES_FILE, SIGNALS_FILE, DEVICES_FILE) if (directory / name).is_file()]
    for path in [directory / MODEL_FILE, directory / ROUTES_FILE, *optional, *sorted(directory.glob(RULE_GLOB))]:
        try:
            files[path.name] = path.read_bytes()
        except OSError as exc:
            raise PolicyError([PolicyProblem(str(path), 0, f"cannot read: {exc.strerror}")]) from exc
    if len(files) == 2 + len(optional):
        raise PolicyError([PolicyProblem(str(directory), 0, "no *.csv rule files in the policy directory")])
    return files


def _compile(
    directory: Path,
    revision: str,
    model: Any,
    routes: RouteMap,
    rules: list[Rule],
    checked: CheckedRules,
    sample: int,
    matcher_at: int,
) -> PolicySnapshot:
    enforcer = _enforcer(model, rules)
    index = build_index(
        checked.of("p"),
        checked.of("g"),
        checked.of("g3"),
        checked.of("g2"),
        checked.shifts,
        checked.record_limits,
        checked.rate_limits,
        checked.probe_limits,
    )
    disagreement = first_disagreement(enforcer, index, _sample(index, sample))
    if disagreement:
        raise PolicyError(
            [PolicyProblem(MODEL_FILE, matcher_at, disagreement, "the matcher must mean what the broker compiles")]
        )
    files = tuple(sorted({MODEL_FILE, ROUTES_FILE, *(r.file for r in rules)}))
    return PolicySnapshot(revision, directory, index, routes, enforcer, tuple(rules), files)


def _enforcer(model: Any, rules: list[Rule]) -> Any:
    """A pycasbin enforcer over `rules`, without its quadratic first-use cost.

    pycasbin's domain role manager matches role names with a default function that
    makes each branch's first lookup scan every employee of that branch (~50 ms per
    branch at 200 employees a branch). The broker uses no role patterns, so the
    matcher is switched off before the rules are loaded: the same decisions, cheaply.
    """
    enforcer = casbin.Enforcer(model)
    for ptype in ("g", "g3"):
        enforcer.get_named_role_manager(ptype).matching_func = None
    enforcer.set_adapter(_RuleAdapter(rules))
    enforcer.load_policy()
    return enforcer


def _sample(index: PolicyIndex, size: int) -> list[str]:
    employees = sorted(index.employees)
    if len(employees) <= size:
        return employees
    return random.Random(len(employees)).sample(employees, size)  # noqa: S311 - sampling, not secrets


def first_disagreement(enforcer: Any, index: PolicyIndex, employees: list[str]) -> str | None:
    """The first decision where the compiled index and `enforce()` differ, if any.

    Matcher errors (an undefined function, a typo'd token) only surface at the first
    `enforce()`, so this also proves the matcher runs before the policy goes live.
    """
    every_branch = sorted({b for e in index.employees.values() for b in e.roles_by_branch})
    pairs = [*sorted(index.grants), ("no-such-resource", "read")]
    try:
        for employee in employees:
            for branch in _branches_to_try(index.employees[employee].roles_by_branch, every_branch):
                for resource, action in pairs:
                    expected = bool(enforcer.enforce(employee, branch, resource, action))
                    if expected != index.allows(employee, branch, resource, action):
                        return (
                            f"model.conf's matcher decides {employee}/{branch}/{resource}/{action} as "
                            f"{'allow' if expected else 'deny'}, the broker's index the opposite"
                        )
    except Exception as exc:  # a broken matcher raises whatever pycasbin's evaluator raises
        return f"the matcher fails to evaluate: {exc}"
    return None


def _branches_to_try(own: dict[str, frozenset[str]], every_branch: list[str]) -> list[str]:
    """The employee's own branches, one branch that is not theirs, and an unknown one."""
    other = next((b for b in every_branch if b not in own), None)
    return [*own, *([other] if other else []), "BR-NONE"]


def _revision(files: dict[str, bytes]) -> str:
    digest = hashlib.sha256()
    for name in sorted(files):
        digest.update(name.encode() + b"\0" + files[name] + b"\0")
    return digest.hexdigest()[:12]

"""Loading `policies/` into one immutable, checked snapshot.

A reload builds a whole new snapshot off to the side and the live one is replaced in a
single assignment, so requests never see half a policy. pycasbin's `load_policy()` on a
live enforcer is not atomic (false denies and "dictionary changed size" under load).

No pycasbin enforcer is built on load: the model is proven to be a shape the index
implements (`shape`), so decisions never need one, and at 100,000 employees it cost
seconds and 140 MB. `casbin_enforcer()` builds one on demand over the same lines, for
the differential tests and the benchmarks. Nor are the roster's lines kept parsed once
the index holds them (~60 MB at 100,000 employees): `rules()` parses them again from
the files' bytes as loaded, kept compressed.

A snapshot pickles (a reload builds it in a child process and hands it over that way:
`build`), and unpickles in milliseconds whatever the roster's size (`employee`).
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from casbin import Enforcer
from casbin.model import Model
from casbin.persist.adapter import Adapter

from broker.messages.catalogue import Catalogue
from broker.messages.parse import MESSAGES_FILE, parse_messages
from broker.messages.shipped import shipped_catalogue
from broker.policy.branch import BRANCHES_FILE, Branch, parse_branches, unknown_branch
from broker.policy.check import (
    CheckedRules,
    check_branch_codes,
    check_examples,
    check_routes,
    check_rules,
    check_tables,
)
from broker.policy.device import DEVICES_FILE, DeviceMap, parse_devices
from broker.policy.index import PolicyIndex, build_index
from broker.policy.model import LoadedModel, load_model
from broker.policy.problem import PolicyError, PolicyProblem
from broker.policy.route import RouteMap, parse_routes
from broker.policy.rule import ROSTER_LINES, Rule, RuleFile, parse_rules
from broker.policy.settings import POLICY_FILE, parse_policy_settings
from broker.policy.table import TableMap, parse_tables
from broker.signals.rules import SignalRules, parse_signals

MODEL_FILE = "model.conf"
ROUTES_FILE = "routes.toml"
TABLES_FILE = "tables.toml"
"""Optional: which database tables the PostgreSQL door opens, and their branch columns."""
SIGNALS_FILE = "signals.toml"
"""Optional: when a login looks rented and what to do (defaults apply without it)."""
RULE_GLOB = "*.csv"


@dataclass(frozen=True, slots=True)
class PolicySnapshot:
    revision: str
    """First 12 hex digits of a SHA-256 over every policy file's name and bytes."""
    directory: Path
    index: PolicyIndex
    routes: RouteMap
    model: LoadedModel
    policy_lines: tuple[Rule, ...]
    """Every line but the roster's (g, g2, g3): permissions, deny lines, shifts, limits."""
    rule_files: tuple[RuleFile, ...]
    """The rule files as loaded: `rules()` reads every line back from them."""
    files: tuple[str, ...]
    tables: TableMap = field(default_factory=TableMap.empty)
    signals: SignalRules = field(default_factory=SignalRules)
    devices: DeviceMap = field(default_factory=DeviceMap)
    branches: dict[str, Branch] = field(default_factory=dict)
    """branches.csv, by code."""
    messages: Catalogue = field(default_factory=shipped_catalogue)
    """Denial texts per reason and locale, and the help desk's contact (messages.toml)."""

    def rules(self) -> list[Rule]:
        """Every line of the rule files, roster included, as they were when loaded; parsed
        on each call (about a second at 100,000 employees): for tools, not requests."""
        return [rule for file in self.rule_files for rule in file.rules()]

    def casbin_enforcer(self) -> Any:
        """A pycasbin enforcer over this snapshot's model and lines, built on demand."""
        return casbin_enforcer(self.model, self.rules())


class _RuleAdapter(Adapter):  # type: ignore[misc]
    """Hands pycasbin only the rules the broker has already parsed and checked; short p
    lines in the full form when the model's p has it."""

    def __init__(self, rules: list[Rule], full_p: bool) -> None:
        self._rules = rules
        self._full_p = full_p

    def load_policy(self, model: Any) -> None:
        for rule in self._rules:
            fields = rule.casbin_fields if self._full_p else rule.fields
            model.model[rule.ptype[0]][rule.ptype].policy.append(list(fields))


def load_snapshot(directory: Path) -> PolicySnapshot:
    """Read, check and compile `directory`; raise PolicyError listing every problem."""
    files = _read_files(directory)
    revision = _revision(files)
    problems: list[PolicyProblem] = []
    model_raw = files.pop(MODEL_FILE)
    model, found = load_model(MODEL_FILE, model_raw)
    problems += found
    routes, found = parse_routes(ROUTES_FILE, files.pop(ROUTES_FILE))
    problems += found
    branches, found = parse_branches(BRANCHES_FILE, files.pop(BRANCHES_FILE))
    problems += found
    present = set(files)
    settings, found = parse_policy_settings(POLICY_FILE, files.pop(POLICY_FILE, None))
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
    messages, found = _messages(files.pop(MESSAGES_FILE, None))
    problems += found
    rules: list[Rule] = []
    for name in sorted(files):
        parsed, found = parse_rules(name, files[name])
        rules += parsed
        problems += found
    broken = frozenset(p.about for p in problems if p.about)
    checked = check_rules(rules, broken, settings.several_branches)
    check_branch_codes(checked, branches)
    if signals is not None:
        problems += _signal_branches(signals, branches)
    if model is not None:
        problems += _deny_lines_need_the_deny_shape(model, checked)
    if routes is not None:
        check_routes(checked, routes)
        check_examples(checked, routes)
    if tables is not None:
        check_tables(checked, tables)
    problems += checked.problems
    if problems or model is None or routes is None or tables is None or signals is None or messages is None:
        raise PolicyError(problems)
    rule_files = tuple(RuleFile.of(name, files[name]) for name in sorted(files))
    snapshot = _compile(directory, revision, model, routes, rules, rule_files, checked, branches)
    for optional in (POLICY_FILE, MESSAGES_FILE):
        if optional in present:
            snapshot = dataclasses.replace(snapshot, files=tuple(sorted({*snapshot.files, optional})))
    if messages.file:
        snapshot = dataclasses.replace(snapshot, messages=messages)
    return _with_optional_files(snapshot, tables, signals, devices_raw)


def _with_optional_files(
    snapshot: PolicySnapshot, tables: TableMap, signals: SignalRules, devices_raw: bytes | None
) -> PolicySnapshot:
    """The compiled snapshot with the optional files that are checked against its roster
    and roles (signals' console roles, the devices' employees and branches)."""
    if tables.file:
        snapshot = dataclasses.replace(snapshot, tables=tables, files=tuple(sorted({*snapshot.files, TABLES_FILE})))
    unknown = sorted(set(signals.console_roles) - snapshot.index.roles())
    if unknown:
        hint = f"known roles: {', '.join(sorted(snapshot.index.roles()))}"
        problem = PolicyProblem(SIGNALS_FILE, 0, f"[console] admin_roles names unknown roles {unknown}", hint)
        raise PolicyError([problem])
    if signals.file:
        snapshot = dataclasses.replace(snapshot, signals=signals, files=tuple(sorted({*snapshot.files, SIGNALS_FILE})))
    if devices_raw is not None:
        devices, found = parse_devices(DEVICES_FILE, devices_raw, snapshot.index.employees)
        if devices is None:
            raise PolicyError(found)
        snapshot = dataclasses.replace(snapshot, devices=devices, files=tuple(sorted({*snapshot.files, DEVICES_FILE})))
    return snapshot


def _messages(raw: bytes | None) -> tuple[Catalogue | None, list[PolicyProblem]]:
    """messages.toml over the shipped texts; the shipped texts alone without one."""
    return (shipped_catalogue(), []) if raw is None else parse_messages(MESSAGES_FILE, raw)


def _read_files(directory: Path) -> dict[str, bytes]:
    if not directory.is_dir():
        raise PolicyError([PolicyProblem(str(directory), 0, "policy directory does not exist")])
    files: dict[str, bytes] = {}
    for required in (MODEL_FILE, ROUTES_FILE, BRANCHES_FILE):
        path = directory / required
        if not path.is_file():
            raise PolicyError([PolicyProblem(str(path), 0, f"{required} is missing from the policy directory")])
    optional = [
        directory / name
        for name in (TABLES_FILE, SIGNALS_FILE, POLICY_FILE, DEVICES_FILE, MESSAGES_FILE)
        if (directory / name).is_file()
    ]
    for path in [directory / MODEL_FILE, directory / ROUTES_FILE, *optional, *sorted(directory.glob(RULE_GLOB))]:
        # branches.csv is read here too (it matches *.csv) and popped before the rules
        try:
            files[path.name] = path.read_bytes()
        except OSError as exc:
            raise PolicyError([PolicyProblem(str(path), 0, f"cannot read: {exc.strerror}")]) from exc
    if len(files) == 3 + len(optional):
        raise PolicyError([PolicyProblem(str(directory), 0, "no *.csv rule files in the policy directory")])
    return files


def _signal_branches(signals: SignalRules, branches: dict[str, Branch]) -> list[PolicyProblem]:
    allowances = signals.shared_login.branches if signals.shared_login else {}
    return [
        PolicyProblem(SIGNALS_FILE, 0, f"shared_login.branches: {unknown[0]}", unknown[1])
        for code in sorted(allowances)
        if (unknown := unknown_branch(code, branches))
    ]


def _deny_lines_need_the_deny_shape(model: LoadedModel, checked: CheckedRules) -> list[PolicyProblem]:
    if model.shape.denies:
        return []
    return [
        PolicyProblem(
            rule.file,
            rule.line,
            f"model.conf is the {model.shape.name} model, which has no deny lines",
            "use the allow-and-deny model (the shipped model.conf), or remove the line",
        )
        for rule in [*checked.denies, *(r for r in checked.of("p") if len(r.fields) > len(model.shape.policy))]
    ]


def _compile(
    directory: Path,
    revision: str,
    model: LoadedModel,
    routes: RouteMap,
    rules: list[Rule],
    rule_files: tuple[RuleFile, ...],
    checked: CheckedRules,
    branches: dict[str, Branch],
) -> PolicySnapshot:
    index = build_index(
        checked.of("p"),
        checked.of("g"),
        checked.of("g3"),
        checked.of("g2"),
        checked.shifts,
        checked.record_limits,
        checked.rate_limits,
        checked.probe_limits,
        checked.denies,
        branches,
    )
    files = tuple(sorted({MODEL_FILE, ROUTES_FILE, BRANCHES_FILE, *(r.file for r in rules)}))
    lines = tuple(rule for rule in rules if rule.ptype not in ROSTER_LINES)
    return PolicySnapshot(revision, directory, index, routes, model, lines, rule_files, files, branches=branches)


def casbin_enforcer(model: LoadedModel, rules: list[Rule]) -> Any:
    """A pycasbin enforcer over `rules`, without its quadratic first-use cost.

    pycasbin's domain role manager matches role names with a default function that
    makes each branch's first lookup scan every employee of that branch (~50 ms per
    branch at 200 employees a branch). The broker uses no role patterns, so the
    matcher is switched off before the rules are loaded: the same decisions, cheaply.
    """
    fresh = Model()
    fresh.load_model_from_text(model.text)
    enforcer = Enforcer(fresh)
    for ptype in ("g", "g3"):
        enforcer.get_named_role_manager(ptype).matching_func = None
    enforcer.set_adapter(_RuleAdapter(rules, full_p=model.shape.denies))
    enforcer.load_policy()
    return enforcer


def _revision(files: dict[str, bytes]) -> str:
    digest = hashlib.sha256()
    for name in sorted(files):
        digest.update(name.encode() + b"\0" + files[name] + b"\0")
    return digest.hexdigest()[:12]

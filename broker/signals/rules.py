"""`signals.toml`: when a login looks rented, and what the broker does about it.

Thresholds live with the rest of the policy, reviewed in git, because what is normal
depends on the company: a branch office behind one NAT address, a role that reads many
waybills a shift. The broker needs no learning period: it knows each employee's branch,
role and shift already.

Each signal has an `action`: "flag" (record it in the audit, count it in
`broker_signals_total`, send it to the alert webhook) or "freeze" (all that, and the
employee is refused everywhere, `identity.suspended`, until a person unfreezes them).

Every problem names the line of the key (or the section) it is about, as the other
policy files do: a reviewer fixes the file, not a guess.
"""

from __future__ import annotations

import math
import re
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from broker.policy.limit import SHIFT_WINDOW, parse_duration
from broker.policy.problem import PolicyProblem
from broker.policy.toml_lines import key_line

Action = Literal["flag", "freeze"]


@dataclass(frozen=True, slots=True)
class SharedLogin:
    """One login seen from more client addresses than `addresses` within `window`."""

    addresses: int = 2
    window: int = 300
    action: Action = "freeze"
    branches: dict[str, int] = field(default_factory=dict)
    """Per-branch allowances: a branch office whose staff show several addresses."""


@dataclass(frozen=True, slots=True)
class Probing:
    """More than `refusals` refusals that test the data or the policy within `window`."""

    refusals: int = 20
    window: int = 600
    action: Action = "flag"


@dataclass(frozen=True, slots=True)
class Enumeration:
    """More than `records` distinct record numbers asked for one by one within `window`
    (a scrape walking waybill numbers), with the run they form as evidence."""

    records: int = 200
    window: int = 600
    action: Action = "freeze"


@dataclass(frozen=True, slots=True)
class Volume:
    """More records taken in one window (the employee's shift by default) than `factor`
    times the median of what their peers take, and at least `min_records`.

    Peers are the employees holding the same roles in the same branches in the roster
    (HQ staff: the same branch-less roles) who took records in their current or last
    window. Their takes are the norm only when there are at least `min_peers` of them.
    Otherwise the only norm is the policy's own statement of what the role may take: the
    flag is raised at `quota_share` of the employee's record quotas (by default when the
    whole quota is taken: an honest clerk of the demo's simulated day takes ~80 % of
    theirs, so a lower share flags honest work); with an unlimited quota and no peers
    there is no norm to be far above."""

    factor: float = 5.0
    min_records: int = 500
    min_peers: int = 3
    quota_share: float = 1.0
    window: int = 0
    """Seconds; 0 is the employee's current shift (a local day for someone with none)."""
    action: Action = "flag"

    @property
    def per_shift(self) -> bool:
        return self.window == 0


@dataclass(frozen=True, slots=True)
class SignalRules:
    shared_login: SharedLogin | None = field(default_factory=SharedLogin)
    probing: Probing | None = field(default_factory=Probing)
    enumeration: Enumeration | None = field(default_factory=Enumeration)
    volume: Volume | None = field(default_factory=Volume)
    webhook: str = ""
    console_roles: tuple[str, ...] = ()
    """Roster roles whose holders may sign in to the security console with their own
    token from the identity provider (`[console] admin_roles`); none by default."""
    file: str = ""


_SECTIONS = {"shared_login", "probing", "enumeration", "volume", "alert", "console"}


class SignalProblem(ValueError):
    """A bad value, with the section and key it sits under (for its line number)."""

    def __init__(self, section: str, key: str, message: str) -> None:
        super().__init__(message)
        self.section = section
        self.key = key


def parse_signals(name: str, raw: bytes) -> tuple[SignalRules | None, list[PolicyProblem]]:
    """The rules in `signals.toml`, or every problem with it (one per section at most,
    each with its line). A section left out keeps its default; `enabled = false` turns a
    signal off."""
    try:
        doc = tomllib.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        line = int(m[1]) if (m := re.search(r"line (\d+)", str(exc))) else 1
        return None, [PolicyProblem(name, line, f"not valid TOML: {exc}")]
    problems: list[PolicyProblem] = []
    for key in sorted(set(doc) - _SECTIONS):
        hint = f"known: {', '.join(sorted(_SECTIONS))}"
        problems.append(PolicyProblem(name, key_line(raw, key, ""), f"unknown section [{key}]", hint))
    parsers: dict[str, Callable[[Any], Any]] = {
        "shared_login": _shared_login,
        "probing": lambda v: _simple(v, Probing, "refusals", "probing"),
        "enumeration": lambda v: _simple(v, Enumeration, "records", "enumeration"),
        "volume": _volume,
        "alert": _webhook,
        "console": _console_roles,
    }
    parsed: dict[str, Any] = {}
    for section, parse in parsers.items():
        try:
            parsed[section] = parse(doc.get(section, {}))
        except SignalProblem as exc:
            problems.append(PolicyProblem(name, key_line(raw, exc.section, exc.key), str(exc)))
    if problems:
        return None, problems
    rules = SignalRules(
        shared_login=parsed["shared_login"],
        probing=parsed["probing"],
        enumeration=parsed["enumeration"],
        volume=parsed["volume"],
        webhook=parsed["alert"],
        console_roles=parsed["console"],
        file=name,
    )
    return rules, problems


def _table(value: Any, section: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise SignalProblem(section, "", f"[{section}] must be a table")
    return value


def _known(table: dict[str, Any], section: str, allowed: set[str]) -> None:
    unknown = sorted(set(table) - allowed)
    if unknown:
        message = f"[{section}] has unknown keys {', '.join(unknown)}; known: {', '.join(sorted(allowed))}"
        raise SignalProblem(section, unknown[0], message)


def _count(table: dict[str, Any], key: str, default: int, section: str) -> int:
    value = table.get(key, default)
    if type(value) is not int or value < 1:
        raise SignalProblem(section, key, f"[{section}] {key} = {value!r} must be a whole number from 1 up")
    return value


def _window(table: dict[str, Any], default: int, section: str, shift: bool = False) -> int:
    """A duration such as "5m"; "shift" (0) where `shift` admits it."""
    value = table.get("window")
    if value is None:
        return default
    if shift and value == SHIFT_WINDOW:
        return 0
    if not isinstance(value, str):
        either = ' or "shift"' if shift else ""
        raise SignalProblem(section, "window", f'[{section}] window must be a duration such as "5m"{either}')
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise SignalProblem(section, "window", f"[{section}] window: {exc}") from exc


def _action(table: dict[str, Any], default: Action, section: str) -> Action:
    value = table.get("action", default)
    if value not in ("flag", "freeze"):
        raise SignalProblem(section, "action", f'[{section}] action = {value!r} must be "flag" or "freeze"')
    return value  # type: ignore[no-any-return]


def _enabled(table: dict[str, Any], section: str) -> bool:
    value = table.get("enabled", True)
    if type(value) is not bool:
        raise SignalProblem(section, "enabled", f"[{section}] enabled must be true or false")
    return value


def _shared_login(value: Any) -> SharedLogin | None:
    table = _table(value, "shared_login")
    _known(table, "shared_login", {"enabled", "addresses", "window", "action", "branches"})
    if not _enabled(table, "shared_login"):
        return None
    default = SharedLogin()
    branches = _table(table.get("branches", {}), "shared_login.branches")
    allowances = {code: _count(branches, code, 1, "shared_login.branches") for code in branches}
    return SharedLogin(
        _count(table, "addresses", default.addresses, "shared_login"),
        _window(table, default.window, "shared_login"),
        _action(table, default.action, "shared_login"),
        allowances,
    )


def _simple(value: Any, kind: type[Probing] | type[Enumeration], amount: str, section: str) -> Any:
    table = _table(value, section)
    _known(table, section, {"enabled", amount, "window", "action"})
    if not _enabled(table, section):
        return None
    default = kind()
    return kind(
        _count(table, amount, getattr(default, amount), section),
        _window(table, default.window, section),
        _action(table, default.action, section),
    )


def _volume(value: Any) -> Volume | None:
    table = _table(value, "volume")
    known = {"enabled", "factor", "min_records", "min_peers", "quota_share", "window", "action"}
    _known(table, "volume", known)
    if not _enabled(table, "volume"):
        return None
    default = Volume()
    return Volume(
        factor=_number(table, "factor", default.factor, "volume", above=1.0),
        min_records=_count(table, "min_records", default.min_records, "volume"),
        min_peers=_count(table, "min_peers", default.min_peers, "volume"),
        quota_share=_share(table, "quota_share", default.quota_share, "volume"),
        window=_window(table, default.window, "volume", shift=True),
        action=_action(table, default.action, "volume"),
    )


def _number(table: dict[str, Any], key: str, default: float, section: str, *, above: float) -> float:
    """A finite number greater than `above` (an int is taken as written: `factor = 5`)."""
    value = table.get(key, default)
    if type(value) not in (int, float) or not math.isfinite(value) or value <= above:
        raise SignalProblem(section, key, f"[{section}] {key} = {value!r} must be a number greater than {above:g}")
    return float(value)


def _share(table: dict[str, Any], key: str, default: float, section: str) -> float:
    value = table.get(key, default)
    if type(value) not in (int, float) or not 0 < value <= 1:
        raise SignalProblem(section, key, f"[{section}] {key} = {value!r} must be a share above 0 and at most 1")
    return float(value)


def _webhook(value: Any) -> str:
    table = _table(value, "alert")
    _known(table, "alert", {"webhook"})
    url = table.get("webhook", "")
    if not isinstance(url, str) or (url and not url.startswith(("http://", "https://"))):
        message = f"[alert] webhook = {url!r} must be an http:// or https:// URL (or left out)"
        raise SignalProblem("alert", "webhook", message)
    return url


def _console_roles(value: Any) -> tuple[str, ...]:
    table = _table(value, "console")
    _known(table, "console", {"admin_roles"})
    roles = table.get("admin_roles", [])
    if not isinstance(roles, list) or not all(isinstance(r, str) and r for r in roles):
        raise SignalProblem("console", "admin_roles", "[console] admin_roles must be a list of role names")
    return tuple(roles)

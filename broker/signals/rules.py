"""`signals.toml`: when a login looks rented, and what the broker does about it.

Thresholds live with the rest of the policy, reviewed in git, because what is normal
depends on the company: a branch office behind one NAT address, a role that reads many
waybills a shift. The broker needs no learning period: it knows each employee's branch,
role and shift already.

Each signal has an `action`: "flag" (record it in the audit, count it in
`broker_signals_total`, send it to the alert webhook) or "freeze" (all that, and the
employee is refused everywhere, `identity.suspended`, until a person unfreezes them).
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from typing import Any, Literal

from broker.policy.limit import parse_duration
from broker.policy.problem import PolicyProblem

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
class SignalRules:
    shared_login: SharedLogin | None = field(default_factory=SharedLogin)
    probing: Probing | None = field(default_factory=Probing)
    enumeration: Enumeration | None = field(default_factory=Enumeration)
    webhook: str = ""
    console_roles: tuple[str, ...] = ()
    """Roster roles whose holders may sign in to the security console with their own
    token from the identity provider (`[console] admin_roles`); none by default."""
    file: str = ""


_SECTIONS = {"shared_login", "probing", "enumeration", "alert", "console"}


def parse_signals(name: str, raw: bytes) -> tuple[SignalRules | None, list[PolicyProblem]]:
    """The rules in `signals.toml`, or every problem with it. A section left out keeps its
    default; `enabled = false` turns a signal off."""
    try:
        doc = tomllib.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        return None, [PolicyProblem(name, 0, f"not valid TOML: {exc}")]
    problems: list[PolicyProblem] = []
    for key in sorted(set(doc) - _SECTIONS):
        problems.append(PolicyProblem(name, 0, f"unknown section [{key}]", f"known: {', '.join(sorted(_SECTIONS))}"))
    try:
        rules = SignalRules(
            shared_login=_shared_login(doc.get("shared_login", {})),
            probing=_simple(doc.get("probing", {}), Probing, "refusals", "probing"),
            enumeration=_simple(doc.get("enumeration", {}), Enumeration, "records", "enumeration"),
            webhook=_webhook(doc.get("alert", {})),
            console_roles=_console_roles(doc.get("console", {})),
            file=name,
        )
    except ValueError as exc:
        problems.append(PolicyProblem(name, 0, str(exc)))
        return None, problems
    return (None if problems else rules), problems


def _table(value: Any, section: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ValueError(f"[{section}] must be a table")
    return value


def _known(table: dict[str, Any], section: str, allowed: set[str]) -> None:
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise ValueError(f"[{section}] has unknown keys {', '.join(unknown)}; known: {', '.join(sorted(allowed))}")


def _count(table: dict[str, Any], key: str, default: int, section: str) -> int:
    value = table.get(key, default)
    if type(value) is not int or value < 1:
        raise ValueError(f"[{section}] {key} = {value!r} must be a whole number from 1 up")
    return value


def _window(table: dict[str, Any], default: int, section: str) -> int:
    value = table.get("window")
    if value is None:
        return default
    if not isinstance(value, str):
        raise ValueError(f'[{section}] window must be a duration such as "5m"')
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise ValueError(f"[{section}] window: {exc}") from exc


def _action(table: dict[str, Any], default: Action, section: str) -> Action:
    value = table.get("action", default)
    if value not in ("flag", "freeze"):
        raise ValueError(f'[{section}] action = {value!r} must be "flag" or "freeze"')
    return value  # type: ignore[no-any-return]


def _enabled(table: dict[str, Any], section: str) -> bool:
    value = table.get("enabled", True)
    if type(value) is not bool:
        raise ValueError(f"[{section}] enabled must be true or false")
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


def _webhook(value: Any) -> str:
    table = _table(value, "alert")
    _known(table, "alert", {"webhook"})
    url = table.get("webhook", "")
    if not isinstance(url, str) or (url and not url.startswith(("http://", "https://"))):
        raise ValueError(f"[alert] webhook = {url!r} must be an http:// or https:// URL (or left out)")
    return url


def _console_roles(value: Any) -> tuple[str, ...]:
    table = _table(value, "console")
    _known(table, "console", {"admin_roles"})
    roles = table.get("admin_roles", [])
    if not isinstance(roles, list) or not all(isinstance(r, str) and r for r in roles):
        raise ValueError("[console] admin_roles must be a list of role names")
    return tuple(roles)

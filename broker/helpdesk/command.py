"""`broker helpdesk`: reset or temporarily raise an employee's quota, list their live
sessions, on the running broker(s), each action audited there under the operator's name.

The command talks to the brokers' admin listeners (`/-/helpdesk/`), never to Redis
directly: the broker checks the operator's credential (the console token or an admin's
own token), writes the audit event with the values before and after, and applies the
change to the counters its replicas share. See broker/helpdesk/client.py for which
brokers are asked.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

from broker.config import ConfigError, load_settings
from broker.helpdesk.client import (
    EXIT_UNREACHABLE,
    EXIT_USAGE,
    BrokerUnreachable,
    HelpdeskFailure,
    Reached,
    call,
)
from broker.helpdesk.quota import MAX_RAISE, MAX_RAISE_SECONDS
from broker.policy.limit import parse_duration

TOKEN_ENV = "BROKER_HELPDESK_TOKEN"  # noqa: S105 - the variable's name, not a secret
TOKEN_FILE_ENV = "BROKER_HELPDESK_TOKEN_FILE"  # noqa: S105 - the variable's name, not a secret
EXIT_CODES = f"""exit codes:
  0  done
  {EXIT_USAGE}  bad arguments or configuration (a bad duration, no credential, no broker to ask)
  {EXIT_UNREACHABLE}  no broker answered at the address given (or it serves no help-desk API), or with
     in-memory counters some replicas could not be reached (the others are listed as done)
  4  the broker refused the credential (wrong token, no console role, the admin is frozen)
  5  the employee is not on the broker's live roster
  6  the broker refused the action (no such quota, a bad value, an operator's own quota) or
     could not do it now (its counter store did not answer): nothing changed there, except
     what it lists as changed when the store stopped answering part-way through a reset"""


class UsageProblem(ValueError):
    """An argument or setting the command cannot use; the message says which."""


def add_helpdesk_command(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """`broker helpdesk ...`, registered by broker.cli."""
    helpdesk = commands.add_parser(
        "helpdesk",
        help="the help desk's actions on the running broker(s), audited: reset or raise a quota, list live sessions",
        description="Act on the running broker(s) through their admin listener ([server] admin_port, with "
        "[console] enabled = true). You are identified by the console token or your own admin token "
        f"(--token-file, ${TOKEN_FILE_ENV} or ${TOKEN_ENV}); every action is audited there with your name "
        "and the reason you give.",
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = helpdesk.add_subparsers(title="help-desk commands", required=True, metavar="HELPDESK_COMMAND")
    quota = actions.add_parser("quota", help="reset or temporarily raise an employee's records quota")
    quota_actions = quota.add_subparsers(title="quota commands", required=True, metavar="QUOTA_COMMAND")
    reset = quota_actions.add_parser(
        "reset",
        help="empty the employee's current quota window (every quota, or --resource's)",
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _common(reset, reason=True)
    reset.add_argument("--resource", help="only this resource's quota (default: all of the employee's quotas)")
    reset.set_defaults(func=_reset)
    raised = quota_actions.add_parser(
        "raise",
        help="add records to the employee's quota for a while; it ends by itself (a second raise replaces the first)",
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _common(raised, reason=True)
    raised.add_argument("--by", required=True, type=int, help=f"records to add, 1 to {MAX_RAISE}")
    raised.add_argument(
        "--for",
        dest="duration",
        required=True,
        help=f"how long the raise lasts: a number with s, m, h or d (e.g. 90m, 2h), at most "
        f"{MAX_RAISE_SECONDS // 86400}d",
    )
    raised.add_argument("--resource", help="the quota to raise (needed when the employee has several)")
    raised.set_defaults(func=_raise)
    sessions = actions.add_parser(
        "sessions",
        help="what each broker knows of the employee's live use: sign-in sessions, database sessions, addresses, "
        "devices, last decisions, quotas, freeze",
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _common(sessions, reason=False)
    sessions.add_argument("--json", action="store_true", help="machine-readable output (one object per broker)")
    sessions.set_defaults(func=_sessions)


def _common(parser: argparse.ArgumentParser, *, reason: bool) -> None:
    parser.add_argument("employee", help="the employee id")
    parser.add_argument("-c", "--config", type=Path, help="broker.toml: the broker is at its [server] admin_port")
    parser.add_argument(
        "--broker",
        action="append",
        metavar="URL",
        help="a broker's admin listener, e.g. http://10.0.0.5:8082 (repeat for each replica; default: "
        "http://[server] admin_host:admin_port of -c)",
    )
    parser.add_argument(
        "--token-file",
        type=Path,
        help=f"a file holding the console token or your admin token (default: ${TOKEN_FILE_ENV}, else ${TOKEN_ENV})",
    )
    if reason:
        parser.add_argument("--reason", required=True, help="why (written to the audit trail with the action)")


def _reset(args: argparse.Namespace) -> int:
    body = {"reason": args.reason, **({"resource": args.resource} if args.resource else {})}
    return _act(args, "reset", body)


def _raise(args: argparse.Namespace) -> int:
    try:
        seconds = parse_duration(args.duration)
    except ValueError as exc:
        return _usage(f"--for: {exc}")
    if not 1 <= seconds <= MAX_RAISE_SECONDS:
        return _usage(f"--for {args.duration}: a raise lasts at most {MAX_RAISE_SECONDS // 86400}d")
    if not 1 <= args.by <= MAX_RAISE:
        return _usage(f"--by {args.by}: give 1 to {MAX_RAISE} records")
    body = {"reason": args.reason, "by": args.by, "seconds": seconds}
    return _act(args, "raise", {**body, **({"resource": args.resource} if args.resource else {})})


def _act(args: argparse.Namespace, action: str, body: dict[str, Any]) -> int:
    try:
        brokers, credential = _brokers(args), _credential(args)
    except UsageProblem as exc:
        return _usage(str(exc))
    path = f"/-/helpdesk/employees/{quote(args.employee, safe='')}/quota/{action}"
    round_ = asyncio.run(_each(brokers, "POST", path, credential, body, until_shared=True))
    for done in round_.reached:
        print(_said(args.employee, action, done))
    code = _failures(round_)
    if code == EXIT_UNREACHABLE and round_.reached:
        print("broker helpdesk: the action is done only where listed above", file=sys.stderr)
    return code


def _sessions(args: argparse.Namespace) -> int:
    try:
        brokers, credential = _brokers(args), _credential(args)
    except UsageProblem as exc:
        return _usage(str(exc))
    path = f"/-/helpdesk/employees/{quote(args.employee, safe='')}/sessions"
    round_ = asyncio.run(_each(brokers, "GET", path, credential, None, until_shared=False))
    if round_.reached and round_.refusal is None:
        if args.json:
            views = [{"broker": r.broker, **r.answer} for r in round_.reached]
            print(json.dumps(views, indent=2, ensure_ascii=False))
        else:
            print("\n\n".join(_view(r) for r in round_.reached))
    return _failures(round_)


@dataclass(slots=True)
class Round:
    """What asking the brokers gave: who answered, who could not be reached, and the
    refusal that stopped the round (the same on every replica: asking on is useless)."""

    reached: list[Reached] = field(default_factory=list)
    missed: list[BrokerUnreachable] = field(default_factory=list)
    refusal: HelpdeskFailure | None = None


def _failures(round_: Round) -> int:
    """Say what went wrong, if anything; the exit code."""
    if round_.refusal is not None:
        print(f"broker helpdesk: {round_.refusal}", file=sys.stderr)
        return round_.refusal.exit_code
    for unreachable in round_.missed:
        print(f"broker helpdesk: {unreachable}", file=sys.stderr)
    return EXIT_UNREACHABLE if round_.missed else 0


async def _each(
    brokers: list[str], method: str, path: str, credential: str, body: dict[str, Any] | None, *, until_shared: bool
) -> Round:
    """Ask each broker in turn. With `until_shared`, a broker whose counters are shared
    ends the round: its change holds on every replica (the others are asked only when
    the ones before could not be reached)."""
    found = Round()
    for broker in brokers:
        try:
            reached = await call(broker, method, path, credential, body)
        except BrokerUnreachable as exc:
            found.missed.append(exc)
            continue
        except HelpdeskFailure as exc:
            found.refusal = exc
            return found
        found.reached.append(reached)
        if until_shared and reached.answer.get("shared"):
            found.missed = []  # the shared counters were reached: nobody was left out
            return found
    return found


def _brokers(args: argparse.Namespace) -> list[str]:
    urls: list[str] = list(args.broker or [])
    if not urls and args.config is not None:
        try:
            server = load_settings(args.config).server
        except ConfigError as exc:
            raise UsageProblem(f"configuration error: {exc}") from None
        if server.admin_port:
            urls = [f"http://{server.admin_host}:{server.admin_port}"]
    if not urls:
        raise UsageProblem("no broker to ask: give --broker http://HOST:ADMIN_PORT, or -c broker.toml with admin_port")
    for url in urls:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname or parts.path not in ("", "/"):
            raise UsageProblem(f"--broker {url!r} is not an admin listener's address such as http://10.0.0.5:8082")
    return urls


def _credential(args: argparse.Namespace) -> str:
    source = args.token_file or (Path(os.environ[TOKEN_FILE_ENV]) if os.environ.get(TOKEN_FILE_ENV) else None)
    if source is not None:
        try:
            token = source.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise UsageProblem(f"cannot read the token file {source}: {getattr(exc, 'strerror', exc)}") from None
        if not token:
            raise UsageProblem(f"the token file {source} is empty")
        return token
    token = os.environ.get(TOKEN_ENV, "").strip()
    if not token:
        raise UsageProblem(
            f"who are you? give --token-file (the console token or your admin token), or set {TOKEN_ENV}"
        )
    return token


def _usage(problem: str) -> int:
    print(f"broker helpdesk: {problem}", file=sys.stderr)
    return EXIT_USAGE


def _where(reached: Reached) -> str:
    shared = "counters shared by every replica" if reached.answer.get("shared") else "this replica's own counters"
    return f"at {reached.broker} ({shared})"


def _said(employee: str, action: str, reached: Reached) -> str:
    """One line per quota changed, saying what it was and what it is now."""
    lines = []
    for change in reached.answer.get("changes", []):
        used, limit, raised = change["used"], change["limit"], change["raise"]
        resource, ends = change["resource"], change["window_ends"]
        if action == "reset":
            lines.append(
                f"{employee}: {resource} quota reset {_where(reached)}: used {used['old']} -> {used['new']} of "
                f"{limit['new']} (window ends {ends})"
            )
        else:
            replaced = f"; replaces a raise of {raised['old']}" if raised["old"] else ""
            lines.append(
                f"{employee}: {resource} quota raised by {raised['new']} for {_duration(change['raise_seconds'])} "
                f"{_where(reached)}: limit {limit['old']} -> {limit['new']}, used {used['new']} "
                f"(window ends {ends}){replaced}; it ends by itself"
            )
    return "\n".join(lines)


def _duration(seconds: int) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def _view(reached: Reached) -> str:
    """The sessions view as text, each part labelled with where it comes from."""
    a = reached.answer
    counters = "Redis, shared by every replica" if a.get("shared") else "this replica's memory"
    lines = [
        f"{a['employee']} ({', '.join(a['roles'])}; branches {', '.join(a['branches']) or '-'}; "
        f"shifts {', '.join(a['shifts']) or '-'}) as seen by {reached.broker}",
        f"  frozen: {_yes(a['frozen'])}   (counters: {counters})",
    ]
    for q in a["quotas"]:
        extra = q.get("raised")
        raised = f", raised by {extra} for {q['raise_seconds_left']} s more" if isinstance(extra, int) and extra else ""
        lines.append(
            f"  quota {q['resource']}: {q['used']} of {q['limit']} used, {q['remaining']} left{raised}; "
            f"resets {q['resets_at']}"
        )
    lines += _browser(a.get("browser_sessions"))
    database = a.get("database_sessions")
    lines.append(
        "  database sessions open on this replica: " + ("- (no PostgreSQL door)" if database is None else str(database))
    )
    lines.append(f"  addresses seen by this replica ({len(a['addresses'])}):")
    lines += [
        f"    {x['address']:<39} first {x['first']}  last {x['last']}  requests {x['requests']}" for x in a["addresses"]
    ] or ["    none"]
    lines.append("  devices seen by this replica: " + (", ".join(d["device"] for d in a["devices"]) or "none"))
    lines.append("  last decisions on this replica:")
    lines += [
        f"    {d['time']}  {d['verdict']:<5} {d['reason']:<24} {d['request']}  from {d['client']}  [{d['decision_id']}]"
        for d in a["recent_decisions"]
    ] or ["    none"]
    lines.append("  console and help-desk actions on this replica:")
    lines += [
        f"    {x['time']}  {x['action']} by {x['operator'] or '?'}" + (f": {x['reason']}" if x.get("reason") else "")
        for x in a["actions"]
    ] or ["    none"]
    return "\n".join(lines)


def _browser(found: dict[str, Any] | None) -> list[str]:
    if found is None:
        return ["  browser sign-in sessions: - (browser sign-in is not configured)"]
    where = "shared store" if found.get("store") == "redis" else "this replica's memory"
    if found.get("error"):
        return [f"  browser sign-in sessions ({where}): unavailable: {found['error']}"]
    head = f"  browser sign-in sessions ({where}): {len(found['sessions'])}"
    return [head] + [f"    {s['id']}...  signed in {s['started']}, ends {s['ends_at']}" for s in found["sessions"]]


def _yes(value: object) -> str:
    """A yes/no figure, or what the broker said instead ("unavailable")."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)

"""`broker demo`: the sample API, the broker in front of it, and what to try."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import secrets
from dataclasses import replace
from pathlib import Path
from typing import Any

from aiohttp import web

from broker.app import Broker, BrokerRunner, admin_app, build_app, build_broker, server_options
from broker.config import SECRET_ENV, Settings
from broker.core.clock import OffsetClock, SystemClock, iso, parse_instant
from broker.demo.simulate import ENUMERATION_AT, HONEST_SPEED, SHARED_LOGIN_AT, Player
from broker.demo.traffic import enumeration_scrape, honest_day, shared_login_scrape
from broker.demo.upstream import build_upstream_app
from broker.identity.jwt_authenticator import mint_token
from broker.policy.problem import PolicyError

DEMO_START = "2026-12-01T10:00:00+08:00"
"""A Tuesday morning in Shanghai: day shifts are on, night shifts are off."""

DEMO_PEOPLE = (
    ("e1001", "courier, BR001 Shanghai, day shift 08:00-18:00 Mon-Fri: cap 50, 500 per shift"),
    ("e1002", "courier, BR002 Beijing, night shift 22:00-06:00 (off shift now)"),
    ("e1003", "trainee, BR001, day shift: cap 20, quota 60 per shift"),
    ("e2001", "manager, BR003 Shenzhen, day + late shifts: waybills and customers"),
    ("e9001", "auditor at HQ, every branch, any hour: cap 1000"),
)


def run_demo(args: argparse.Namespace) -> int:
    # BROKER_DEV_SECRET, when set, lets a newcomer mint tokens for employees they add
    # (`broker token --sub ...`); otherwise a fresh one, printed in the banner
    secret = os.environ.get(SECRET_ENV) or secrets.token_urlsafe(32)
    settings = Settings(source="broker demo")
    settings = replace(
        settings,
        server=replace(settings.server, port=args.port),
        upstream=replace(settings.upstream, url=f"http://127.0.0.1:{args.upstream_port}"),
        identity=replace(settings.identity, hs256_secret=secret),
        policy=replace(settings.policy, directory=args.policies),
        audit=replace(settings.audit, path=args.audit),
    )
    console_token = ""
    if args.simulate:
        console_token = secrets.token_urlsafe(18)
        token_file = Path(args.audit).with_name("broker-demo-console.token")
        token_file.write_text(console_token + "\n", encoding="utf-8")
        token_file.chmod(0o600)
        settings = replace(
            settings,
            server=replace(settings.server, admin_port=args.admin_port),
            console=replace(settings.console, enabled=True, token_file=str(token_file)),
        )
    clock = SystemClock() if args.real_time else OffsetClock(parse_instant(DEMO_START))
    try:
        broker = build_broker(settings, clock=clock)
    except PolicyError as exc:
        for problem in exc.problems:
            print(f"broker demo: policy problem: {args.policies}/{problem}")
        return 1
    try:
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(_serve(broker, settings, args, secret, clock.now(), console_token))
    except OSError as exc:  # a port already in use, most often
        print(
            f"broker demo: cannot listen: {exc.strerror or exc} (ports {args.port} and {args.upstream_port}; "
            "choose others with --port / --upstream-port, e.g. make demo ARGS='--port 9080 --upstream-port 9081')"
        )
        return 1
    return 0


async def _serve(
    broker: Broker, settings: Settings, args: argparse.Namespace, secret: str, now: float, console_token: str
) -> None:
    print("Generating 36,000 sample waybills across 12 branches ...", flush=True)
    upstream = web.AppRunner(build_upstream_app())
    await upstream.setup()
    await web.TCPSite(upstream, "127.0.0.1", args.upstream_port).start()
    runner = BrokerRunner(build_app(broker), access_log=None, **server_options(settings))
    await runner.setup()
    await web.TCPSite(runner, settings.server.host, settings.server.port).start()
    admin = None
    if args.simulate:
        admin = web.AppRunner(admin_app(broker), access_log=None)
        await admin.setup()
        await web.TCPSite(admin, settings.server.admin_host, settings.server.admin_port).start()
    print(_banner(settings, args, secret, now), flush=True)
    simulation = None
    if args.simulate:
        print(_console_banner(settings, console_token), flush=True)
        simulation = asyncio.create_task(_simulate(broker, settings, secret))
    try:
        await asyncio.Event().wait()
    finally:
        if simulation is not None:
            simulation.cancel()
        if admin is not None:
            await admin.cleanup()
        await runner.cleanup()
        await upstream.cleanup()


async def _simulate(broker: Broker, settings: Settings, secret: str) -> None:
    """The honest day at ten times its pace, and the two scrapes from 15 s and 25 s on;
    each flag is printed with the time since its scrape's first request."""
    base = f"http://{settings.server.host}:{settings.server.port}"
    players = {name: Player(base, secret, broker.clock.now) for name in ("honest", "shared", "enumeration")}
    attack_of = {"shared_login": players["shared"], "enumeration": players["enumeration"]}

    def report(event: dict[str, Any]) -> None:
        if event.get("event") != "signal":
            return
        player = attack_of.get(str(event.get("signal")))
        started = player.played.first_attack_at if player else None
        after = f", {broker.clock.now() - started:.1f} s after the scrape's first request" if started else ""
        print(f"simulate: flag {event.get('signal')} on {event.get('employee')} ({event.get('action')}){after}")

    getattr(broker.audit, "observers", []).append(report)
    plays = [
        players["honest"].play(honest_day(), speed=HONEST_SPEED),
        players["shared"].play(shared_login_scrape(SHARED_LOGIN_AT)),
        players["enumeration"].play(enumeration_scrape(ENUMERATION_AT)),
    ]
    try:
        await asyncio.gather(*plays)
    finally:
        for player in players.values():
            await player.close()


def _console_banner(settings: Settings, token: str) -> str:
    console = f"http://{settings.server.admin_host}:{settings.server.admin_port}/-/console/"
    return "\n".join(
        [
            "",
            f"Security console: {console}   sign in with the console token {token}",
            "Simulating: an honest shift (e1001, e1003, e1004, e2001, ten times its pace), from 15 s on e1001's",
            "token used from three other addresses at once (shared login: frozen), from 25 s on e1004's token walking",
            "every waybill of BR001 one by one (enumeration: frozen). Unfreeze them in the console.",
            "",
        ]
    )


def _banner(settings: Settings, args: argparse.Namespace, secret: str, now: float) -> str:
    base = f"http://{settings.server.host}:{settings.server.port}"
    admin_port = settings.server.admin_port
    operations = f"http://{settings.server.admin_host}:{admin_port}" if admin_port else base
    tokens = {emp: mint_token(secret, emp, now=now, ttl_seconds=12 * 3600) for emp, _ in DEMO_PEOPLE}
    lines = [
        "",
        f"broker demo: sample API on http://127.0.0.1:{args.upstream_port}, broker on {base}",
        f"policies: {Path(args.policies).resolve()}   audit log: {Path(args.audit).resolve()}",
        "clock: real time"
        if args.real_time
        else f"clock: starts at {DEMO_START} ({iso(now)}) so shifts are predictable",
        "",
        f"dev secret (mint more tokens: BROKER_DEV_SECRET=... broker token --sub EMPLOYEE): {secret}",
        "",
        "Employees (tokens valid 12 h):",
    ]
    for emp, who in DEMO_PEOPLE:
        lines.append(f"  {emp}  {who}")
    lines.append("")
    lines += [f"export T{emp[1:]}={token}" for emp, token in tokens.items()]
    auth = 'curl -s -H "Authorization: Bearer $T{0}"'
    lines += [
        "",
        "# allowed: a courier reads five waybills of their own branch",
        f"{auth.format('1001')} '{base}/api/branches/BR001/waybills?limit=5'",
        "# denied 403 policy.other_branch: the same courier asks for another branch",
        f"{auth.format('1001')} '{base}/api/branches/BR002/waybills?limit=5'",
        "# denied 403 shift.outside: a night-shift courier at 10:00",
        f"{auth.format('1002')} '{base}/api/branches/BR002/waybills?limit=5'",
        "# denied 403 bulk.over_cap: 5,000 waybills in one request",
        f"{auth.format('1001')} '{base}/api/branches/BR001/waybills?limit=5000'",
        "# denied 429 quota.exceeded on the fourth call: a trainee's 60 per shift",
        f"for i in 1 2 3 4; do {auth.format('1003')} -o /dev/null -w '%{{http_code}}\\n' "
        f"'{base}/api/branches/BR001/waybills?limit=20'; done",
        "# your own quota: used, left, reset",
        f"{auth.format('1003')} '{base}/-/me'",
        "# metrics and the live policy",
        f"curl -s {operations}/-/metrics | grep broker_decisions_total; curl -s {operations}/-/policy",
        "",
        "Ctrl-C stops the demo.",
    ]
    return "\n".join(lines)

"""`broker demo`: the sample API, the broker in front of it, and what to try."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import secrets
from dataclasses import replace
from pathlib import Path

from aiohttp import web

from broker.app import build_app, build_broker, server_options
from broker.config import SECRET_ENV, Settings
from broker.core.clock import OffsetClock, SystemClock, iso, parse_instant
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
    clock = SystemClock() if args.real_time else OffsetClock(parse_instant(DEMO_START))
    try:
        broker = build_broker(settings, clock=clock)
    except PolicyError as exc:
        for problem in exc.problems:
            print(f"broker demo: policy problem: {args.policies}/{problem}")
        return 1
    try:
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(_serve(broker, settings, args, secret, clock.now()))
    except OSError as exc:  # a port already in use, most often
        print(
            f"broker demo: cannot listen: {exc.strerror or exc} (ports {args.port} and {args.upstream_port}; "
            "choose others with --port / --upstream-port, e.g. make demo ARGS='--port 9080 --upstream-port 9081')"
        )
        return 1
    return 0


async def _serve(broker: object, settings: Settings, args: argparse.Namespace, secret: str, now: float) -> None:
    print("Generating 36,000 sample waybills across 12 branches ...", flush=True)
    upstream = web.AppRunner(build_upstream_app())
    await upstream.setup()
    await web.TCPSite(upstream, "127.0.0.1", args.upstream_port).start()
    runner = web.AppRunner(build_app(broker), access_log=None, **server_options(settings))  # type: ignore[arg-type]
    await runner.setup()
    await web.TCPSite(runner, settings.server.host, settings.server.port).start()
    print(_banner(settings, args, secret, now), flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()
        await upstream.cleanup()


def _banner(settings: Settings, args: argparse.Namespace, secret: str, now: float) -> str:
    base = f"http://{settings.server.host}:{settings.server.port}"
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
        f"curl -s {base}/-/metrics | grep broker_decisions_total; curl -s {base}/-/policy",
        "",
        "Ctrl-C stops the demo.",
    ]
    return "\n".join(lines)

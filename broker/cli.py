"""`broker run | check | token | demo`: the command line."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

import structlog
from aiohttp import web

from broker import __version__
from broker.app import BROKER_KEY, build_app, build_broker
from broker.config import ConfigError, Settings, load_settings
from broker.core.clock import clock_from
from broker.identity.jwt_authenticator import mint_token
from broker.policy.problem import PolicyError
from broker.policy.snapshot import load_snapshot

EXIT_BAD_CONFIG = 2
EXIT_BAD_POLICY = 1


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    configure_logging(args.log_format)
    try:
        return int(args.func(args))
    except ConfigError as exc:
        print(f"broker: configuration error: {exc}", file=sys.stderr)
        return EXIT_BAD_CONFIG


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="broker",
        description="Policy-as-code access broker: branch, shift, bulk and quota checks in front of logistics APIs.",
    )
    parser.add_argument("--version", action="version", version=f"broker {__version__}")
    parser.add_argument(
        "--log-format",
        choices=("json", "console"),
        default="json",
        help="operational log format (default: json)",
    )
    commands = parser.add_subparsers(title="commands", required=True, metavar="COMMAND")

    run = commands.add_parser("run", help="serve: the reverse proxy plus /-/ admin endpoints")
    _config_option(run)
    run.set_defaults(func=_run)

    check = commands.add_parser("check", help="validate the config and every policy file; exit 1 on any problem")
    _config_option(check)
    check.add_argument("--policies", type=Path, help="check this policy directory instead of the configured one")
    check.set_defaults(func=_check)

    token = commands.add_parser("token", help="mint a development HS256 token with the configured secret")
    _config_option(token)
    token.add_argument("--sub", required=True, help="the employee id (the token's subject)")
    token.add_argument("--ttl", type=float, default=3600, help="lifetime in seconds (default: 3600)")
    token.set_defaults(func=_token)

    demo = commands.add_parser(
        "demo", help="run a sample logistics API with the broker in front, and print what to try"
    )
    demo.add_argument("--port", type=int, default=8080, help="broker port (default: 8080)")
    demo.add_argument("--upstream-port", type=int, default=8081, help="sample API port (default: 8081)")
    demo.add_argument("--policies", type=Path, default=Path("policies"), help="policy directory (default: ./policies)")
    demo.add_argument(
        "--real-time",
        action="store_true",
        help="use the real clock instead of the demo's fixed Tuesday 10:00",
    )
    demo.add_argument(
        "--audit", default="broker-demo-audit.log", help="audit log file (default: broker-demo-audit.log)"
    )
    demo.set_defaults(func=_demo)
    return parser


def _config_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-c", "--config", type=Path, help="broker.toml (default: embedded defaults)")


def configure_logging(style: str) -> None:
    renderer: structlog.typing.Processor = (
        structlog.dev.ConsoleRenderer(colors=False) if style == "console" else structlog.processors.JSONRenderer()
    )
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.dict_tracebacks,
            renderer,
        ],
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        wrapper_class=structlog.make_filtering_bound_logger(logging.INFO),
    )


def _settings(args: argparse.Namespace) -> Settings:
    return load_settings(args.config)


def _report_settings(settings: Settings) -> bool:
    problems = settings.problems()
    for problem in problems:
        print(f"broker: {settings.source}: {problem}", file=sys.stderr)
    return not problems


def _check(args: argparse.Namespace) -> int:
    settings = _settings(args)
    config_ok = _report_settings(settings)
    directory = args.policies or settings.policy.directory
    try:
        snapshot = load_snapshot(directory)
    except PolicyError as exc:
        for problem in exc.problems:
            print(f"{directory}/{problem}", file=sys.stderr)
        print(f"broker check: {len(exc.problems)} problem(s); the policy would be refused", file=sys.stderr)
        return EXIT_BAD_POLICY
    index = snapshot.index
    print(
        f"policy {directory} OK: revision {snapshot.revision}, {len(index.employees)} employees, "
        f"{sum(len(r) for r in index.grants.values())} grants, {len(snapshot.routes.routes)} routes"
    )
    return 0 if config_ok else EXIT_BAD_CONFIG


def _token(args: argparse.Namespace) -> int:
    settings = _settings(args)
    secret = settings.identity.hs256_secret
    if not secret:
        print("broker token: no hs256_secret configured ([identity] or BROKER_DEV_SECRET)", file=sys.stderr)
        return EXIT_BAD_CONFIG
    now = clock_from(settings.clock.start).now()
    identity = settings.identity
    try:
        print(
            mint_token(
                secret,
                args.sub,
                now=now,
                ttl_seconds=args.ttl,
                issuer=identity.issuer,
                audience=identity.audience,
            )
        )
    except ValueError as exc:
        print(f"broker token: {exc}", file=sys.stderr)
        return EXIT_BAD_CONFIG
    return 0


def _run(args: argparse.Namespace) -> int:
    settings = _settings(args)
    if not _report_settings(settings):
        return EXIT_BAD_CONFIG
    try:
        broker = build_broker(settings)
    except PolicyError as exc:
        for problem in exc.problems:
            print(f"broker: policy problem: {settings.policy.directory}/{problem}", file=sys.stderr)
        return EXIT_BAD_POLICY
    app = build_app(broker)
    app.on_startup.append(_install_sighup)
    _use_uvloop()
    web.run_app(
        app,
        host=settings.server.host,
        port=settings.server.port,
        shutdown_timeout=settings.server.shutdown_timeout_seconds,
        reuse_port=settings.server.reuse_port or None,
        access_log=None,
        print=lambda text: structlog.get_logger("broker").info("broker.listening", detail=text.strip()),
    )
    return 0


async def _install_sighup(app: web.Application) -> None:
    broker = app[BROKER_KEY]
    loop = asyncio.get_running_loop()
    pending: set[asyncio.Task[bool]] = set()

    def reload() -> None:
        task = loop.create_task(broker.reload("SIGHUP"))
        pending.add(task)
        task.add_done_callback(pending.discard)

    loop.add_signal_handler(signal.SIGHUP, reload)


def _use_uvloop() -> None:
    try:
        import uvloop  # noqa: PLC0415 - optional at run time
    except ImportError:  # optional: plain asyncio is within noise for this proxy
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def _demo(args: argparse.Namespace) -> int:
    from broker.demo.run import run_demo  # noqa: PLC0415 - the demo loads its data set only when asked

    return run_demo(args)


if __name__ == "__main__":
    sys.exit(main())

"""`broker run | check | token | demo | helpdesk ...`: the command line."""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import logging
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import structlog
from aiohttp import web

from broker import __version__
from broker.app import BROKER_KEY, build_app, build_broker, build_meter, build_session_store, serve
from broker.audit.checkpoint import AuditKeyError, load_public_key, write_key_pair
from broker.audit.verify import checkpoint_age
from broker.audit.verify import verify as verify_audit
from broker.config import ConfigError, Settings, load_settings
from broker.core.clock import clock_from, parse_instant
from broker.helpdesk.command import add_helpdesk_command
from broker.identity.jwt_authenticator import mint_token
from broker.identity.session import SessionStoreUnavailable
from broker.identity.settings import NO_KEY_SOURCE
from broker.meter.store import StoreUnavailable
from broker.pg.privilege import LoginTooPowerful
from broker.pg.rls_command import add_pg_commands
from broker.policy.build import NoTempDirectory
from broker.policy.lint import lint
from broker.policy.problem import PolicyError
from broker.policy.snapshot import PolicySnapshot, load_snapshot
from broker.review.cases import TESTS_DIR, case_files, load_cases, report_text, run_cases, verify_with_own_tests
from broker.review.explain import explain
from broker.review.offline import Question, decide_offline, parse_request
from broker.review.recorded_decision import recorded_question
from broker.review.replay import impact_json, impact_text, read_audit, replay
from broker.roster.command import add_roster_commands
from broker.signals.act import set_frozen

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
        description="Policy-as-code access broker: branch, shift, bulk and quota checks in front of logistics "
        "HTTP APIs and PostgreSQL databases.",
    )
    parser.add_argument("--version", action="version", version=f"broker {__version__}")
    parser.add_argument(
        "--log-format",
        choices=("json", "console"),
        default="json",
        help="operational log format (default: json)",
    )
    commands = parser.add_subparsers(title="commands", required=True, metavar="COMMAND")

    run = commands.add_parser(
        "run",
        help="serve: the HTTP reverse proxy, /-/ admin endpoints, and the PostgreSQL door if [postgres] enabled",
        description="Serve until SIGTERM/SIGINT; SIGHUP reloads the policy. The HTTP door listens on [server] "
        "host:port; with [postgres] enabled = true the PostgreSQL door listens on [postgres] host:port "
        "(employees log in with their employee id and their token as the password).",
    )
    _config_option(run)
    run.set_defaults(func=_run)

    check = commands.add_parser("check", help="validate the config and every policy file; exit 1 on any problem")
    _config_option(check)
    check.add_argument("--policies", type=Path, help="check this policy directory instead of the configured one")
    check.add_argument("--strict", action="store_true", help="treat warnings as failures (for CI)")
    check.set_defaults(func=_check)

    test = commands.add_parser(
        "test", help="run the policy's own test cases (policies/tests/*.toml); exit 1 on any failure"
    )
    _config_option(test)
    test.add_argument("paths", nargs="*", type=Path, help="case files or folders (default: <policies>/tests)")
    test.add_argument("--policies", type=Path, help="test this policy directory instead of the configured one")
    test.set_defaults(func=_test)

    _add_explain_command(commands)

    replay = commands.add_parser(
        "replay", help="re-decide a recorded audit log under a changed policy and show what would flip"
    )
    replay.add_argument("--policies", type=Path, required=True, help="the changed policy directory")
    replay.add_argument("--audit", type=Path, required=True, help="an audit log (JSON lines) from `broker run`")
    replay.add_argument("--examples", type=int, default=3, help="examples shown per group (default: 3)")
    replay.add_argument("--json", action="store_true", help="machine-readable output")
    replay.set_defaults(func=_replay)

    _add_audit_commands(commands)
    add_roster_commands(commands, _config_option)
    _add_employee_commands(commands)
    add_helpdesk_command(commands)
    add_pg_commands(commands, _config_option)

    token = commands.add_parser("token", help="mint a development HS256 token with the configured secret")
    _config_option(token)
    token.add_argument("--sub", required=True, help="the employee id (the token's subject)")
    token.add_argument("--ttl", type=float, default=3600, help="lifetime in seconds (default: 3600)")
    token.set_defaults(func=_token)
    _add_dev_cert_command(commands)

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
    demo.add_argument(
        "--simulate",
        action="store_true",
        help="play an honest shift and two rented-login scrapes, with the security console on --admin-port",
    )
    demo.add_argument("--admin-port", type=int, default=8082, help="console port with --simulate (default: 8082)")
    demo.set_defaults(func=_demo)
    return parser


def _add_employee_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """The security team's actions on one employee: freeze, unfreeze, revoke."""
    for name, text in (
        ("freeze", "refuse an employee everywhere (every replica, through the shared Redis store) until unfrozen"),
        ("unfreeze", "lift a freeze set by a signal or by `broker freeze`"),
    ):
        command = commands.add_parser(name, help=text)
        _config_option(command)
        command.add_argument("employee", help="the employee id")
        command.set_defaults(func=_freeze, frozen=name == "freeze")
    revoke = commands.add_parser(
        "revoke",
        help="end every browser sign-in session of an employee (every replica, through the shared Redis store)",
    )
    _config_option(revoke)
    revoke.add_argument("employee", help="the employee id")
    revoke.set_defaults(func=_revoke)


def _add_explain_command(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    explain = commands.add_parser("explain", help="show every check of one decision, and the verdict")
    _config_option(explain)
    explain.add_argument("--policies", type=Path, help="explain under this policy directory")
    explain.add_argument("--employee", help="the employee id (as in the token's sub)")
    explain.add_argument("--request", help="e.g. 'GET /api/branches/BR001/waybills?limit=5'")
    explain.add_argument(
        "--decision",
        help="a decision id from the audit (X-Broker-Decision, the refusal's decision_id): employee, request, time "
        "and quota used are read from --audit",
    )
    explain.add_argument("--audit", type=Path, help="the audit log holding --decision")
    explain.add_argument("--at", help="ISO instant with offset (default: now, or the configured clock)")
    explain.add_argument("--used", type=int, default=0, help="records already taken in the quota window")
    explain.add_argument("--body", help="JSON request body, for writes that name their branch in it")
    explain.add_argument("--json", action="store_true", help="machine-readable output")
    explain.set_defaults(func=_explain)


def _add_audit_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    audit = commands.add_parser("audit", help="the audit trail: prove files unaltered, make a signing key")
    audit_commands = audit.add_subparsers(title="audit commands", required=True, metavar="AUDIT_COMMAND")
    verify = audit_commands.add_parser(
        "verify",
        help="prove audit files complete and unaltered up to their last signed checkpoint; exit 1 naming "
        "the first bad line otherwise",
    )
    verify.add_argument("files", type=Path, nargs="+", help="the files of one chain, oldest first (rotated, then live)")
    verify.add_argument("--key", type=Path, help="the Ed25519 public key (PEM) that signs the checkpoints")
    verify.add_argument(
        "--max-age",
        type=float,
        help="fail unless the last signed checkpoint is at most this many seconds old (a cut-off tail shows)",
    )
    verify.set_defaults(func=_audit_verify)
    keygen = audit_commands.add_parser("keygen", help="write a new Ed25519 key pair for [audit] signing_key")
    keygen.add_argument("--private", type=Path, required=True, help="where to write the private key (must not exist)")
    keygen.add_argument("--public", type=Path, required=True, help="where to write the public key, for verify --key")
    keygen.set_defaults(func=_audit_keygen)


def _add_dev_cert_command(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    dev_cert = commands.add_parser(
        "dev-cert",
        help="write a self-signed TLS certificate and key for a development door (never overwrites)",
        description="Write OUT/door.crt and OUT/door.key (both mode 0600; OUT is made 0700 if missing): an "
        "EC P-256 key and a self-signed certificate for localhost, 127.0.0.1, ::1 and every --host. Point "
        "[postgres] tls_cert_file and tls_key_file (BROKER_POSTGRES_TLS_CERT_FILE, _KEY_FILE) at them, so "
        "clients that are not on loopback (a host reaching a container through Docker's port forwarding) "
        'can log in: psql "host=localhost port=6432 sslmode=require user=e1001 password=$TOKEN". The '
        "certificate is signed by nobody: it keeps the token off the wire in clear but proves nothing about "
        "the server; production mounts a certificate from a real CA. Exits 2 without writing anything when "
        "either file exists (unless --if-missing and both exist: exit 0).",
    )
    dev_cert.add_argument("--out", type=Path, required=True, help="the directory to write door.crt and door.key in")
    dev_cert.add_argument(
        "--host",
        action="append",
        default=[],
        metavar="NAME",
        help="a DNS name or IP address the certificate is also for (repeatable; the first is its common name)",
    )
    dev_cert.add_argument("--days", type=int, default=365, help="how long it is valid (default: 365)")
    dev_cert.add_argument(
        "--if-missing",
        action="store_true",
        help="when both files exist already, leave them and exit 0 (a one-shot job run at every start)",
    )
    dev_cert.set_defaults(func=_dev_cert)


def _dev_cert(args: argparse.Namespace) -> int:
    from broker.devcert import DevCertExists, paths, write_dev_cert  # noqa: PLC0415 - only this command

    cert_file, key_file = paths(args.out)
    if args.if_missing and cert_file.is_file() and key_file.is_file():
        print(f"broker dev-cert: {cert_file} and {key_file} exist; left as they are")
        return 0
    try:
        made = write_dev_cert(args.out, list(args.host), args.days)
    except DevCertExists as exc:
        print(f"broker dev-cert: {exc}", file=sys.stderr)
        return EXIT_BAD_CONFIG
    except (OSError, ValueError) as exc:
        print(f"broker dev-cert: {exc}", file=sys.stderr)
        return EXIT_BAD_CONFIG
    print(
        f"wrote {made.cert_file} and {made.key_file} (0600), self-signed for {', '.join(made.names)}, valid until "
        f"{made.not_after:%Y-%m-%d}: set [postgres] tls_cert_file and tls_key_file to them"
    )
    return 0


def _config_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-c", "--config", type=Path, help="broker.toml (default: embedded defaults)")


TRACEBACKS_WITHOUT_LOCALS = structlog.processors.ExceptionRenderer(
    structlog.tracebacks.ExceptionDictTransformer(show_locals=False)
)
"""Tracebacks as structured data, without each frame's local variables: structlog's
`dict_tracebacks` shows locals, and a frame of the token check holds the signing secret."""


def configure_logging(style: str) -> None:
    renderer: structlog.typing.Processor = (
        structlog.dev.ConsoleRenderer(colors=False, exception_formatter=structlog.dev.plain_traceback)
        if style == "console"
        else structlog.processors.JSONRenderer()
    )
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            TRACEBACKS_WITHOUT_LOCALS,
            renderer,
        ],
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        wrapper_class=structlog.make_filtering_bound_logger(logging.INFO),
    )


def _settings(args: argparse.Namespace) -> Settings:
    return load_settings(args.config)


def _report_settings(settings: Settings, serving: bool = True) -> bool:
    """Print the config's problems; whether there are none. Not `serving` (broker check),
    a missing key source is a note: a policy-only CI job needs no key to check a policy."""
    problems = settings.problems()
    notes = [] if serving else [p for p in problems if NO_KEY_SOURCE in p]
    for note in notes:
        print(f"broker: {settings.source}: note: {note} (needed to serve, not to check)", file=sys.stderr)
    failing = [p for p in problems if p not in notes]
    for problem in failing:
        print(f"broker: {settings.source}: {problem}", file=sys.stderr)
    return not failing


def _check(args: argparse.Namespace) -> int:
    settings = _settings(args)
    config_ok = _report_settings(settings, serving=False)
    directory = args.policies or settings.policy.directory
    try:
        snapshot = load_snapshot(directory)
    except PolicyError as exc:
        for problem in exc.problems:
            print(f"{directory}/{problem}", file=sys.stderr)
        print(f"broker check: {len(exc.problems)} problem(s); the policy would be refused", file=sys.stderr)
        return EXIT_BAD_POLICY
    failing = verify_with_own_tests(snapshot)
    for problem in failing:
        print(f"{problem}", file=sys.stderr)
    if failing:
        print(f"broker check: {len(failing)} policy test problem(s); the policy would be refused", file=sys.stderr)
        return EXIT_BAD_POLICY
    warnings = lint(snapshot)
    for warning in warnings:
        print(f"{directory}/{warning.file}:{warning.line}: warning: {warning.message}"
              + (f" (hint: {warning.hint})" if warning.hint else ""), file=sys.stderr)  # fmt: skip
    if warnings and args.strict:
        print(f"broker check: {len(warnings)} warning(s), refused under --strict", file=sys.stderr)
        return EXIT_BAD_POLICY
    index = snapshot.index
    print(
        f"policy {directory} OK: revision {snapshot.revision}, {len(index.employees)} employees, "
        f"{sum(len(r) for r in index.grants.values())} grants, {len(snapshot.routes.routes)} routes, "
        f"{len(snapshot.tables.tables)} database tables"
    )
    return 0 if config_ok else EXIT_BAD_CONFIG


def _policy_or_report(directory: Path) -> PolicySnapshot | None:
    try:
        return load_snapshot(directory)
    except PolicyError as exc:
        for problem in exc.problems:
            print(f"{directory}/{problem}", file=sys.stderr)
        print(f"broker: the policy in {directory} is refused ({len(exc.problems)} problem(s))", file=sys.stderr)
        return None


def _test(args: argparse.Namespace) -> int:
    directory = args.policies or _settings(args).policy.directory
    snapshot = _policy_or_report(directory)
    if snapshot is None:
        return EXIT_BAD_POLICY
    files = case_files(directory, args.paths)
    if not files:
        print(f"broker test: no test cases in {directory / TESTS_DIR} (write *.toml files there)", file=sys.stderr)
        return EXIT_BAD_POLICY
    cases, problems = load_cases(files)
    for problem in problems:
        print(f"broker test: {problem}", file=sys.stderr)
    report = asyncio.run(run_cases(snapshot, cases))
    print(report_text(report), end="")
    return EXIT_BAD_POLICY if report.failures or problems else 0


def _explain(args: argparse.Namespace) -> int:
    settings = _settings(args)
    directory = args.policies or settings.policy.directory
    snapshot = _policy_or_report(directory)
    if snapshot is None:
        return EXIT_BAD_POLICY
    try:
        if args.decision:
            question, recorded = recorded_question(snapshot, args.decision, args.audit)
        elif args.employee and args.request:
            method, target = parse_request(args.request)
            at = parse_instant(args.at) if args.at else clock_from(settings.clock.start).now()
            body = args.body.encode() if args.body else None
            question, recorded = Question(args.employee, method, target, at, body, args.used), None
        else:
            raise ValueError("give --employee and --request, or --decision and --audit")
    except (ValueError, OSError) as exc:
        print(f"broker explain: {exc}", file=sys.stderr)
        return EXIT_BAD_CONFIG
    decision, route = asyncio.run(decide_offline(snapshot, question))
    explanation = explain(snapshot, decision, route, f"{question.method} {question.target}")
    if args.json:
        print(json.dumps({**explanation.as_json(), **({"recorded": recorded} if recorded else {})}, indent=2))
    else:
        if recorded is not None:
            print("\n".join(f"recorded {key}: {value}" for key, value in recorded.items()))
        print(explanation.as_text(), end="")
    return 0


def _replay(args: argparse.Namespace) -> int:
    snapshot = _policy_or_report(args.policies)
    if snapshot is None:
        return EXIT_BAD_POLICY
    try:
        events, notes = read_audit(args.audit)
    except OSError as exc:
        print(f"broker replay: cannot read {args.audit}: {exc.strerror}", file=sys.stderr)
        return EXIT_BAD_CONFIG
    for note in notes:
        print(f"broker replay: {args.audit}: {note}", file=sys.stderr)
    if not events:  # an empty or wrong file must not read as "this change flips nothing"
        print(
            f"broker replay: {args.audit} holds no HTTP decision to replay (empty, not an audit log, or only "
            "other events); nothing was checked",
            file=sys.stderr,
        )
        return EXIT_BAD_CONFIG
    print(
        f"replaying {len(events)} decisions under {args.policies} (revision {snapshot.revision}) ...", file=sys.stderr
    )
    impact = asyncio.run(replay(snapshot, events))
    if args.json:
        print(json.dumps(impact_json(impact), indent=2))
    else:
        print(impact_text(impact, examples=args.examples), end="")
    return 0


def _freeze(args: argparse.Namespace) -> int:
    settings = _settings(args)
    verb = "freeze" if args.frozen else "unfreeze"
    for problem in settings.meter.problems():  # only the store matters here, not the key source
        print(f"broker {verb}: {settings.source}: {problem}", file=sys.stderr)
        return EXIT_BAD_CONFIG
    if settings.meter.store != "redis":
        print(
            f'broker {verb}: needs [meter] store = "redis": with the in-memory store each broker keeps its own '
            "freezes, and a restart lifts them",
            file=sys.stderr,
        )
        return EXIT_BAD_CONFIG
    clock = clock_from(settings.clock.start)
    meter = build_meter(settings.meter, clock)

    async def apply() -> None:
        try:
            await set_frozen(meter, args.employee, args.frozen, clock.now())
        finally:
            await meter.close()

    try:
        asyncio.run(apply())
    except StoreUnavailable as exc:
        print(f"broker {verb}: {exc}", file=sys.stderr)
        return EXIT_BAD_CONFIG
    state = "frozen: refused everywhere until unfrozen" if args.frozen else "unfrozen"
    print(f"{args.employee} is {state} (store {settings.meter.redis_url}, prefix {settings.meter.key_prefix!r})")
    return 0


def _revoke(args: argparse.Namespace) -> int:
    """Sign an employee out everywhere: their sessions are deleted from the shared store,
    so every replica refuses the cookie from its next request (a rented browser session
    ends now, not at the end of the shift)."""
    settings = _settings(args)
    for problem in settings.meter.problems():
        print(f"broker revoke: {settings.source}: {problem}", file=sys.stderr)
        return EXIT_BAD_CONFIG
    if settings.meter.store != "redis":
        print(
            'broker revoke: needs [meter] store = "redis": with the in-memory store the sessions live inside each '
            "broker process (restarting it ends them)",
            file=sys.stderr,
        )
        return EXIT_BAD_CONFIG
    store = build_session_store(settings)

    async def apply() -> int:
        try:
            return await store.end_all(args.employee)
        finally:
            await store.close()

    try:
        ended = asyncio.run(apply())
    except SessionStoreUnavailable as exc:
        print(f"broker revoke: {exc}", file=sys.stderr)
        return EXIT_BAD_CONFIG
    print(f"{args.employee}: {ended} browser session(s) ended (store {settings.meter.redis_url})")
    return 0


def _audit_verify(args: argparse.Namespace) -> int:
    key = None
    if args.key is not None:
        try:
            key = load_public_key(args.key)
        except AuditKeyError as exc:
            print(f"broker audit verify: {exc}", file=sys.stderr)
            return EXIT_BAD_CONFIG
    verdict = verify_audit(args.files, key)
    for problem in verdict.problems:
        print(f"bad: {problem}")
    print(
        f"{verdict.lines} line(s): {verdict.events} event(s), {verdict.checkpoints} valid checkpoint(s)"
        + (f"; proven through {verdict.proven_through} ({verdict.last_checkpoint_time})" if verdict.checkpoints else "")
        + (f"; {verdict.unproven} line(s) after the last checkpoint are not proven yet" if verdict.unproven else "")
    )
    if key is None:
        print("unsigned check: without --key this proves only that the lines link up, not who wrote them")
    failed = not verdict.ok or (key is not None and not verdict.checkpoints)
    if args.max_age is not None:
        age = checkpoint_age(verdict, time.time())
        if age is None or age > args.max_age:
            shown = "no checkpoint" if age is None else f"the last checkpoint is {age:.0f} s old"
            print(f"bad: {shown}, more than --max-age {args.max_age:g} s: the end of the trail may have been cut off")
            failed = True
    return 1 if failed else 0


def _audit_keygen(args: argparse.Namespace) -> int:
    try:
        key_id = write_key_pair(args.private, args.public)
    except FileExistsError:
        print(f"broker audit keygen: {args.private} exists; refusing to overwrite a key", file=sys.stderr)
        return EXIT_BAD_CONFIG
    except OSError as exc:
        print(f"broker audit keygen: {exc}", file=sys.stderr)
        return EXIT_BAD_CONFIG
    print(f"wrote {args.private} (private: set [audit] signing_key to it) and {args.public} (key id {key_id})")
    return 0


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
    except NoTempDirectory as exc:
        print(f"broker: {exc}", file=sys.stderr)
        return EXIT_BAD_CONFIG
    except PolicyError as exc:
        for problem in exc.problems:
            where = "" if Path(problem.file).is_absolute() else f"{settings.policy.directory}/"  # shadow's: absolute
            print(f"broker: policy problem: {where}{problem}", file=sys.stderr)
        return EXIT_BAD_POLICY
    # The loaded policy lives for the process: keep the cyclic GC from walking it on every
    # full collection (~80 ms at 10,000 employees, a stall for every request in flight).
    gc.collect()
    gc.freeze()
    app = build_app(broker)
    app.on_startup.append(_install_sighup)
    _use_uvloop()
    try:
        asyncio.run(serve(app, settings))
    except LoginTooPowerful as exc:
        print(f"broker: [postgres] {exc}", file=sys.stderr)
        return EXIT_BAD_CONFIG
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

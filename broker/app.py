"""Composition root: builds one broker (policy, identity, meter, audit, doors) from Settings."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import signal
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog
from aiohttp import web

from broker.admin.metrics import Metrics
from broker.admin.routes import AdminRoutes
from broker.audit.checkpoint import AuditKeyError, Signer, load_signer
from broker.audit.log import AuditSink, FileAuditSink
from broker.config import AuditSettings, ConfigError, MeterSettings, Settings
from broker.console.feed import ConsoleFeed
from broker.console.login import ConsoleLogin, read_console_token
from broker.console.routes import ConsoleRoutes
from broker.core.clock import Clock, clock_from
from broker.core.guard import Guard
from broker.core.shadow import Shadow
from broker.helpdesk.activity import EmployeeActivity
from broker.helpdesk.quota import QuotaDesk
from broker.helpdesk.routes import HelpdeskRoutes
from broker.http.oidc_routes import BrowserSignIn
from broker.http.proxy import ProxyHandler
from broker.http.upstream import Upstream
from broker.identity.jwt_authenticator import JwtAuthenticator
from broker.identity.oidc_client import OidcClient
from broker.identity.session import SessionAuthenticator, SessionStore
from broker.identity.session_memory import MemorySessionStore
from broker.identity.session_redis import RedisSessionStore
from broker.messages.shipped import catalogue_of
from broker.meter.breaker import CircuitBreaker
from broker.meter.meter import FailureMode, FailurePolicy, Meter
from broker.meter.redis_store import RedisCounterStore
from broker.meter.store import CounterStore, MemoryCounterStore
from broker.pg.door import PgDoor
from broker.policy.holder import PolicyHolder
from broker.policy.index import PolicyIndex
from broker.policy.problem import PolicyError
from broker.review.cases import verify_with_own_tests
from broker.roster.schedule import RosterSchedule
from broker.signals.act import SignalActions
from broker.signals.rules import SignalRules
from broker.signals.watch import SignalWatcher

log = structlog.get_logger("broker")


@dataclass
class Broker:
    settings: Settings
    clock: Clock
    policy: PolicyHolder
    authenticator: JwtAuthenticator
    meter: Meter
    audit: AuditSink
    metrics: Metrics
    upstream: Upstream
    guard: Guard
    admin: AdminRoutes
    shadow: Shadow | None = None
    pg: PgDoor | None = None
    signals: SignalActions | None = None
    console: ConsoleRoutes | None = None
    helpdesk: HelpdeskRoutes | None = None
    sign_in: BrowserSignIn | None = None
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    async def reload(self, trigger: str) -> bool:
        return await self.policy.reload(trigger)  # counted in the metrics by on_outcome


BROKER_KEY = web.AppKey("broker", Broker)


def build_broker(
    settings: Settings,
    *,
    clock: Clock | None = None,
    store: CounterStore | None = None,
    audit: AuditSink | None = None,
    sessions: SessionStore | None = None,
) -> Broker:
    """Everything wired; raises PolicyError / ValueError if policy or identity are unusable.
    `sessions` overrides the browser session store [oidc] would build."""
    clock = clock or clock_from(settings.clock.start)
    policy = PolicyHolder(
        settings.policy.directory, clock.now, verify_with_own_tests, settings.policy.build_timeout_seconds
    )
    policy.load_initial()
    authenticator = JwtAuthenticator(settings.identity, clock)
    meter = build_meter(settings.meter, clock, store)
    metrics = Metrics()
    policy.on_outcome = lambda ok: metrics.policy_reloads.labels("applied" if ok else "rejected").inc()
    policy.on_build_failure = lambda cause: metrics.policy_build_failures.labels(cause).inc()
    audit = audit or FileAuditSink(settings.audit, audit_signer(settings.audit))
    oidc = settings.oidc
    if oidc.enabled:
        sessions = sessions or build_session_store(settings)
    session_auth = SessionAuthenticator(sessions, clock) if oidc.enabled and sessions is not None else None
    guard = Guard(policy, authenticator, meter, clock, audit=audit, sessions=session_auth)
    sign_in = None
    if oidc.enabled and sessions is not None:
        client = OidcClient(oidc, clock)
        sign_in = BrowserSignIn(oidc, client, sessions, guard, audit, clock, lambda: catalogue_of(policy.current))
    metrics.watch_audit(audit)
    signals, watcher = watch_for_rented_logins(policy, meter, audit, metrics, clock)
    console = None
    if settings.console.enabled:
        console = build_console(settings, policy, authenticator, guard, meter, audit, clock, watcher)
    shadow = build_shadow(settings, authenticator, clock)
    pg = PgDoor(settings.postgres, guard, policy, audit, metrics) if settings.postgres.enabled else None
    helpdesk = build_helpdesk(console, policy, guard, meter, clock, sessions, pg) if console is not None else None
    return Broker(
        settings=settings,
        clock=clock,
        policy=policy,
        authenticator=authenticator,
        meter=meter,
        audit=audit,
        metrics=metrics,
        upstream=Upstream(settings.upstream, (oidc.cookie_name, oidc.login_cookie_name) if oidc.enabled else ()),
        guard=guard,
        admin=AdminRoutes(
            guard,
            policy,
            metrics,
            authenticator.identify,
            meter,
            audit,
            shadow.policy if shadow and isinstance(shadow.policy, PolicyHolder) else None,
            devices_required=bool(settings.server.client_ca_file),
        ),
        shadow=shadow,
        pg=pg,
        signals=signals,
        console=console,
        helpdesk=helpdesk,
        sign_in=sign_in,
    )


def build_session_store(settings: Settings) -> SessionStore:
    """Browser sessions beside the counters: in Redis when the counters are (every replica
    shares them and `broker revoke` reaches them), else in this process."""
    meter = settings.meter
    if meter.store == "redis":
        return RedisSessionStore(meter.redis_url, prefix=meter.key_prefix + "session:", timeout=meter.timeout_seconds)
    return MemorySessionStore()


def build_console(
    settings: Settings,
    policy: PolicyHolder,
    authenticator: JwtAuthenticator,
    guard: Guard,
    meter: Meter,
    audit: AuditSink,
    clock: Clock,
    watcher: SignalWatcher | None,
) -> ConsoleRoutes:
    """The security console, fed by the audit stream like the signals: one deque append
    per event on the request path, everything else off it."""
    try:
        token = read_console_token(settings.console.token_file)
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
    observers = getattr(audit, "observers", None)
    if observers is None:
        raise ConfigError("[console] needs an audit sink that takes observers (the file sink does)")
    feed = ConsoleFeed(settings.console.recent_events)
    observers.append(feed.observe)
    login = ConsoleLogin(token, policy, authenticator.identify, settings.console.session_seconds)
    if not token:
        log.info("console.idp_only", detail="no [console] token_file: only admin tokens of [console] admin_roles")
    forget = watcher.forget if watcher is not None else (lambda _: None)
    return ConsoleRoutes(feed, login, guard, policy, meter, audit, clock, settings.audit.path, forget)


def build_helpdesk(
    console: ConsoleRoutes,
    policy: PolicyHolder,
    guard: Guard,
    meter: Meter,
    clock: Clock,
    sessions: SessionStore | None,
    pg: PgDoor | None,
) -> HelpdeskRoutes:
    """The help desk's API (`broker helpdesk`): the console's credentials and audit
    recorder, the Guard's counters, and what this replica knows of live sessions."""
    desk = QuotaDesk(policy, meter, clock)
    database_sessions = pg.open_sessions if pg is not None else None
    activity = EmployeeActivity(desk, guard, meter, console.digest, sessions, database_sessions)
    return HelpdeskRoutes(console, desk, activity, meter.shared)


def watch_for_rented_logins(
    policy: PolicyHolder, meter: Meter, audit: AuditSink, metrics: Metrics, clock: Clock
) -> tuple[SignalActions | None, SignalWatcher | None]:
    """Every audit event goes past the signals of `signals.toml` (of the live policy) as
    it is written; a flag is audited, counted, alerted and, when so configured, freezes
    the employee. Needs a sink that takes observers (the file sink does)."""
    observers = getattr(audit, "observers", None)
    if observers is None:
        return None, None
    actions = SignalActions(
        meter,
        audit.emit,
        metrics.signal_counted,
        lambda: policy.current.signals.webhook if policy.current else "",
    )

    def rules() -> SignalRules | None:
        snapshot = policy.current
        return snapshot.signals if snapshot is not None else None

    def roster() -> PolicyIndex | None:
        snapshot = policy.current
        return snapshot.index if snapshot is not None else None

    watcher = SignalWatcher(rules, clock.now, actions.flagged, roster)
    observers.append(watcher.observe)
    return actions, watcher


def audit_signer(settings: AuditSettings) -> Signer | None:
    """The checkpoint signer from `[audit] signing_key`; unsigned (with a warning) when
    none is set: a chain without signatures proves nothing against someone who can
    rewrite the whole file."""
    if not settings.signing_key:
        log.warning("audit.unsigned", detail="set [audit] signing_key (broker audit keygen) to sign checkpoints")
        return None
    try:
        return load_signer(Path(settings.signing_key))
    except AuditKeyError as exc:
        raise ConfigError(f"[audit] signing_key: {exc}") from exc


def build_shadow(settings: Settings, authenticator: JwtAuthenticator, clock: Clock) -> Shadow | None:
    """The report-only policy, with counters of its own so it never charges real quotas.
    It must pass its own test cases like the live policy: a shadow that contradicts them
    would report flips that are its own mistakes. Its problems name its own directory."""
    directory = settings.policy.shadow_directory
    if directory is None:
        return None
    policy = PolicyHolder(directory, clock.now, verify_with_own_tests, settings.policy.build_timeout_seconds)
    try:
        policy.load_initial()
    except PolicyError as exc:
        root = Path(directory).resolve()
        raise PolicyError([dataclasses.replace(p, file=str(root / p.file)) for p in exc.problems]) from exc
    return Shadow(Guard(policy, authenticator, Meter(MemoryCounterStore(), clock.now), clock), policy)


def build_meter(settings: MeterSettings, clock: Clock, store: CounterStore | None = None) -> Meter:
    """The configured counter store; `store` overrides it (tests inject failing ones)."""
    failure = FailurePolicy(
        FailureMode(settings.on_failure),
        frozenset(settings.fail_open),
        frozenset(settings.fail_closed),
        settings.fallback_scale,
    )
    breaker = CircuitBreaker(clock.now, failures=settings.breaker_failures, reset_after=settings.breaker_reset_seconds)
    if store is None and settings.store == "redis":
        store = RedisCounterStore(settings.redis_url, prefix=settings.key_prefix, timeout=settings.timeout_seconds)
    shared = settings.store == "redis"
    return Meter(store or MemoryCounterStore(), clock.now, shared=shared, failure=failure, breaker=breaker)


def server_options(settings: Settings) -> dict[str, Any]:
    """How aiohttp's server must read client requests, for every way the broker is served
    (`broker run`, `broker demo`, the tests). `auto_decompress` off: a compressed request
    body reaches the handler as the client framed it and is refused there (415), rather
    than being decoded behind the broker's back and forwarded under the client's length."""
    server = settings.server
    return {
        "auto_decompress": False,
        "keepalive_timeout": server.idle_timeout_seconds,
        "max_line_size": server.max_header_bytes,
        "max_field_size": server.max_header_bytes,
        "max_headers": server.max_headers,
        "lingering_time": 1.0,
    }


Handler = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]
PROXY_KEY = web.AppKey("proxy", ProxyHandler)


def _dispatch(routed: Handler, proxy: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> Handler:
    """The proxy port's request handler: a request for the upstream goes straight to the
    proxy; the broker's own paths (`/-/...`), anything that needs aiohttp's path decoding
    to be told apart from them (percent-encoding, absolute-form targets) and requests
    with an `Expect` header go through the application's router. Skipping the router
    for the common case saves the resolve, the match-info freeze and the
    response-prepare signal on every forwarded request (about 5 % of the broker's own
    instructions per request); the router's catch-all route reaches the same `proxy`
    for whatever else it is given, so both ways decide alike."""

    async def dispatch(request: web.BaseRequest) -> web.StreamResponse:
        raw = request.raw_path
        if raw[:1] == "/" and raw[1:2].isalnum() and "Expect" not in request.headers:
            return await proxy(request)  # type: ignore[arg-type]  # the app's request factory made a web.Request
        return await routed(request)

    return dispatch


class BrokerRunner(web.AppRunner):
    """The proxy port's runner: aiohttp's, with `_dispatch` in front of the router."""

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        server.request_handler = _dispatch(server.request_handler, self.app[PROXY_KEY].handle)
        return server


def build_app(broker: Broker) -> web.Application:
    app = web.Application(client_max_size=broker.settings.upstream.max_request_body_bytes)
    app[BROKER_KEY] = broker
    broker.admin.register(app, operations=not broker.settings.server.admin_port)
    proxy = ProxyHandler(
        broker.guard,
        broker.policy,
        broker.upstream,
        broker.metrics,
        broker.audit,
        broker.shadow,
        devices_required=bool(broker.settings.server.client_ca_file),
        session_cookie=broker.settings.oidc.cookie_name if broker.sign_in is not None else "",
        session_origin=broker.settings.oidc.public_origin if broker.sign_in is not None else "",
        lifecycle=broker.admin,
    )
    if broker.sign_in is not None:
        broker.sign_in.register(app)
    app.router.add_route("*", "/{tail:.*}", proxy.handle)
    app[PROXY_KEY] = proxy
    app.cleanup_ctx.append(_lifecycle)
    admin = broker.admin

    async def close_while_draining(_: web.Request, response: web.StreamResponse) -> None:
        # while draining, every answer ends its connection: a kept-alive client opens a
        # new one (to another replica once readiness is off) instead of sending its next
        # request down a connection about to be closed under it
        if admin.draining:
            response.force_close()
            response.headers["Connection"] = "close"  # the hook runs after aiohttp chose the header

    app.on_response_prepare.append(close_while_draining)
    return app


def admin_app(broker: Broker) -> web.Application:
    """The admin listener's application: probes, metrics, the policy state and, when
    enabled, the security console (never on the proxy port employees reach)."""
    operations = web.Application()
    broker.admin.register_operations(operations)
    if broker.console is not None:
        broker.console.register(operations)
    if broker.helpdesk is not None:
        broker.helpdesk.register(operations)
    return operations


async def serve(app: web.Application, settings: Settings) -> None:
    """Serve until SIGTERM or SIGINT, then drain: readiness off and every answer closing
    its connection for `drain_seconds` while the listener stays open, then the listener
    closes and in-flight requests get `shutdown_timeout_seconds` to finish."""
    server = settings.server
    runner = BrokerRunner(
        app, access_log=None, shutdown_timeout=server.shutdown_timeout_seconds, **server_options(settings)
    )
    await runner.setup()
    admin: web.AppRunner | None = None
    try:
        tls = _tls_context(server.tls_cert_file, server.tls_key_file, server.client_ca_file)
        site = web.TCPSite(runner, server.host, server.port, reuse_port=server.reuse_port or None, ssl_context=tls)
        await site.start()
        log.info("broker.listening", detail=f"{'https' if tls else 'http'}://{server.host}:{server.port}")
        if server.admin_port:
            admin = web.AppRunner(admin_app(app[BROKER_KEY]), access_log=None)
            await admin.setup()
            await web.TCPSite(admin, server.admin_host, server.admin_port).start()
            log.info("broker.admin_listening", detail=f"http://{server.admin_host}:{server.admin_port}")
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        await stop.wait()
        app[BROKER_KEY].admin.draining = True
        log.info("broker.draining", seconds=server.drain_seconds)
        await asyncio.sleep(server.drain_seconds)
    finally:
        await runner.cleanup()
        if admin is not None:
            await admin.cleanup()


def _tls_context(cert_file: str, key_file: str, client_ca_file: str = "") -> ssl.SSLContext | None:
    """HTTPS for the proxy port; a certificate that cannot be loaded stops the broker.

    With `client_ca_file`, clients are asked for a certificate that authority signed.
    Asked, not required, at the TLS layer: a client with none still gets an answer it can
    read (403 device.missing, audited) rather than a failed handshake; a certificate the
    authority did not sign fails the handshake, so it never reaches a decision."""
    if not cert_file:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(cert_file, key_file)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"[server] tls_cert_file/tls_key_file: cannot load {cert_file}: {exc}") from exc
    if client_ca_file:
        try:
            context.load_verify_locations(cafile=client_ca_file)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"[server] client_ca_file: cannot load {client_ca_file}: {exc}") from exc
        context.verify_mode = ssl.CERT_OPTIONAL
    return context


async def _lifecycle(app: web.Application) -> AsyncIterator[None]:
    broker = app[BROKER_KEY]
    await broker.upstream.start()
    await broker.meter.start()
    if broker.meter.shared:
        mirror = broker.meter.mirror_freezes(broker.clock.now)
        broker.tasks.append(asyncio.create_task(mirror, name="freeze-mirror"))
    if broker.pg is not None:
        await broker.pg.start()
    if broker.console is not None:
        broker.tasks.append(asyncio.create_task(broker.console.digest_every_second(), name="console-digest"))
    if broker.settings.policy.watch:
        broker.tasks.append(asyncio.create_task(broker.policy.watch(broker.stop), name="policy-watch"))
        if broker.shadow is not None and isinstance(broker.shadow.policy, PolicyHolder):
            watcher = broker.shadow.policy.watch(broker.stop)
            broker.tasks.append(asyncio.create_task(watcher, name="shadow-policy-watch"))
    if broker.settings.roster.pull_interval_seconds:
        broker.tasks.append(asyncio.create_task(_roster_schedule(broker).run(), name="roster-pull"))
    snapshot = broker.policy.current
    log.info(
        "broker.started",
        policy_revision=snapshot.revision if snapshot else None,
        upstream=broker.settings.upstream.url,
    )
    yield
    broker.admin.draining = True
    broker.stop.set()
    if broker.console is not None:
        broker.console.stopping.set()
    if broker.pg is not None:
        await broker.pg.close()
    for task in broker.tasks:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    await broker.upstream.close()
    await broker.authenticator.close()
    if broker.sign_in is not None:
        await broker.sign_in.close()
    if broker.signals is not None:
        await broker.signals.close()
    await broker.meter.close()
    broker.audit.close()


def _roster_schedule(broker: Broker) -> RosterSchedule:
    """Pulls the roster from HR; a written roster is reloaded by the policy watcher, or
    at once when there is none."""
    return RosterSchedule.from_settings(
        broker.settings.roster,
        broker.settings.policy.directory,
        clock=broker.clock,
        audit=broker.audit,
        metrics=broker.metrics,
        reload=None if broker.settings.policy.watch else broker.reload,
    )

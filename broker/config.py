"""Typed settings from `broker.toml` and a few environment variables.

Every key has an embedded default so `broker demo` runs with no file at all; an
unknown key or a value of the wrong type is an error naming the key, never ignored.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, TypeVar

from broker.config_env import EnvError, apply_env
from broker.identity.oidc_settings import OidcSettings
from broker.identity.settings import IdentitySettings
from broker.roster.settings import RosterSettings

SECRET_ENV = "BROKER_DEV_SECRET"  # noqa: S105 - the variable name, not a secret
PG_PASSWORD_ENV = "BROKER_PG_PASSWORD"  # noqa: S105 - the variable name, not a secret
T = TypeVar("T")


class ConfigError(Exception):
    """The configuration cannot be used; the message names the file and key."""


@dataclass(frozen=True, slots=True)
class ServerSettings:
    host: str = "127.0.0.1"
    port: int = 8080
    shutdown_timeout_seconds: float = 10.0
    reuse_port: bool = False
    """Let several `broker run` processes share the port (SO_REUSEPORT); quotas are then
    per process unless [meter] store = "redis"."""
    idle_timeout_seconds: float = 30.0
    """A kept-alive client connection with no request for this long is closed."""
    max_header_bytes: int = 8190
    """The longest request line or header line (name and value) a client may send."""
    max_headers: int = 100
    """The most header lines in one request."""
    admin_host: str = "127.0.0.1"
    admin_port: int = 0
    """A listener of its own for /-/healthz, /-/readyz, /-/metrics and /-/policy, so the
    proxy port serves only proxied traffic (and the employee's /-/me and /-/problems);
    0 keeps them on the proxy port."""
    tls_cert_file: str = ""
    """PEM certificate chain for HTTPS on the proxy port (with tls_key_file); empty: HTTP."""
    tls_key_file: str = ""
    client_ca_file: str = ""
    """PEM certificate(s) of the authority that issues device certificates: with it, the
    proxy port asks every client for a certificate (mutual TLS) and serves only devices
    registered in the policy's devices.toml, for the employees registered to them."""
    drain_seconds: float = 5.0
    """On SIGTERM/SIGINT: how long the broker keeps serving with `/-/readyz` at 503 and
    every answer closing its connection, so load balancers and kept-alive clients move
    away before the listener closes; then in-flight requests get shutdown_timeout_seconds."""


@dataclass(frozen=True, slots=True)
class UpstreamSettings:
    url: str = "http://127.0.0.1:8081"
    connect_timeout_seconds: float = 3.0
    read_timeout_seconds: float = 30.0
    max_connections: int = 200
    keepalive_seconds: float = 4.0
    """An idle upstream connection older than this is not reused. Kept below the 5 s
    that common servers (nginx's default is 75 s, but gunicorn, Node and many load
    balancers close sooner) allow, so a request rarely races the server's close."""
    max_request_body_bytes: int = 1 << 20
    request_body_timeout_seconds: float = 10.0
    """A request body is read whole, within this time, before a connection to the
    upstream is taken: a client trickling its body holds no upstream connection."""
    max_response_inspect_bytes: int = 32 << 20
    """Responses carrying records are held and counted before they leave; larger ones
    than this are refused rather than passed on unchecked."""
    held_answers_budget_bytes: int = 256 << 20
    """All answers held at once (read, not yet written to their clients) stay under this;
    an answer that does not fit is refused with 503 upstream.busy and Retry-After."""
    forward_authorization: bool = True
    assertion_key_file: str = ""
    """An Ed25519 or RSA private key (PEM): each forwarded request then carries a JWT of
    the decision in X-Broker-Assertion that the upstream can verify (empty: none)."""
    assertion_ttl_seconds: float = 30.0
    strip_headers: tuple[str, ...] = ()
    """More request headers never passed on, beyond the built-in lists of method/URL
    override and client identity headers (see the README)."""


@dataclass(frozen=True, slots=True)
class PolicySettings:
    directory: Path = Path("policies")
    watch: bool = True
    shadow_directory: Path | None = None
    """A second policy run report-only: audited as shadow_verdict, never enforced."""
    build_timeout_seconds: float = 120.0
    """How long building a policy (in a child process) may take before the child is
    killed and the build counted as failed; the last good policy keeps serving."""

    def problems(self) -> list[str]:
        if not self.build_timeout_seconds > 0:
            return [f"[policy] build_timeout_seconds must be above 0, not {self.build_timeout_seconds}"]
        return []


@dataclass(frozen=True, slots=True)
class MeterSettings:
    store: str = "memory"
    """"memory" (one replica) or "redis" (quotas shared by every replica)."""
    redis_url: str = "redis://127.0.0.1:6379/0"
    key_prefix: str = "broker:"
    timeout_seconds: float = 0.5
    on_failure: str = "closed"
    """When the shared store is down: "closed" refuses, "open" meters locally."""
    fail_open: tuple[str, ...] = ()
    fail_closed: tuple[str, ...] = ()
    fallback_scale: float = 0.25
    """Local limits while failing open, as a fraction of the configured ones."""
    breaker_failures: int = 3
    breaker_reset_seconds: float = 5.0

    def problems(self) -> list[str]:
        found = []
        if self.store not in ("memory", "redis"):
            found.append(f"[meter] store = {self.store!r} must be memory or redis")
        if self.on_failure not in ("closed", "open"):
            found.append(f"[meter] on_failure = {self.on_failure!r} must be closed or open")
        if not self.redis_url.startswith(("redis://", "rediss://", "unix://")):
            found.append(f"[meter] redis_url {self.redis_url!r} must start with redis://, rediss:// or unix://")
        if not 0 < self.fallback_scale <= 1:
            found.append("[meter] fallback_scale must be above 0 and at most 1")
        if not 0 < self.timeout_seconds <= 5:
            found.append("[meter] timeout_seconds must be above 0 and at most 5")
        if set(self.fail_open) & set(self.fail_closed):
            found.append("[meter] a resource is listed in both fail_open and fail_closed")
        return found


@dataclass(frozen=True, slots=True)
class PostgresSettings:
    """The PostgreSQL front door: employees connect here; the broker logs in to the
    real database with its own credentials."""

    enabled: bool = False
    host: str = "127.0.0.1"
    port: int = 6432
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    """Without both, passwords (the employees' tokens) are accepted only over loopback."""
    server_host: str = "127.0.0.1"
    """The real database: a host name, an address, or a unix-socket directory."""
    server_port: int = 5432
    server_database: str = "logistics"
    server_user: str = "broker"
    server_password: str = ""
    """Better set through the BROKER_PG_PASSWORD environment variable."""
    connect_timeout_seconds: float = 5.0
    max_message_bytes: int = 64 << 20
    """The largest message a client may send (a query, a COPY chunk)."""
    max_sessions_per_employee: int = 20
    allow_superuser: bool = False
    """Open the door even when server_user is a superuser, has BYPASSRLS or owns a mapped
    table (tests, a laptop); logged loudly. Never in production."""
    max_statement_bytes: int = 256 << 10
    """The longest SQL text the door analyses, in characters (longer: 54000); analysis runs in a worker
    process within analysis_timeout_seconds (past it, or on a parser crash: 54001)."""
    analysis_timeout_seconds: float = 2.0
    analysis_workers: int = 2
    """Worker processes analysing new statements: one slow statement leaves the others free."""
    max_result_bytes: int = 16 << 20
    """What one statement's answer may weigh on the wire at most; over it the statement is cut."""
    bytes_per_record: int = 2048
    """What one record may weigh on the wire. A statement allowed n records may send at
    most n times this, and is charged max(rows, bytes / this): rows are not the only way
    records travel (a row can hold many records' fields)."""

    def problems(self) -> list[str]:
        found = []
        if not 0 < self.port < 65536 or not 0 < self.server_port < 65536:
            found.append("[postgres] port and server_port must be TCP ports")
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            found.append("[postgres] tls_cert_file and tls_key_file go together: set both or neither")
        if self.max_message_bytes < 1024:
            found.append("[postgres] max_message_bytes must be at least 1024")
        if self.max_result_bytes < 1024:
            found.append("[postgres] max_result_bytes must be at least 1024")
        if not 64 <= self.bytes_per_record <= self.max_result_bytes:
            found.append("[postgres] bytes_per_record must be at least 64 and at most max_result_bytes")
        if self.max_statement_bytes < 64:
            found.append("[postgres] max_statement_bytes must be at least 64")
        if not 0 < self.analysis_timeout_seconds <= 60 or not 1 <= self.analysis_workers <= 16:
            found.append("[postgres] analysis_timeout_seconds must be above 0 and at most 60, analysis_workers 1 to 16")
        if self.max_sessions_per_employee < 1:
            found.append("[postgres] max_sessions_per_employee must be at least 1")
        return found


@dataclass(frozen=True, slots=True)
class AuditSettings:
    path: str = "-"
    """A file to append JSON lines to, "-" for standard output, or an http(s):// URL of a
    collector that takes each batch as a POST (application/x-ndjson). One file per
    replica: each broker process keeps a chain of its own."""
    chain_state: str = ""
    """Where a broker writing to standard output or a collector keeps its chain's last
    seq and hash, so a restart continues the chain (a file continues from its own end)."""
    signing_key: str = ""
    """An Ed25519 private key (PEM, `broker audit keygen`) that signs the checkpoints;
    empty: checkpoints are unsigned and prove nothing against someone who can rewrite
    the file (a warning is logged at start)."""
    checkpoint_seconds: float = 60.0
    """How often a checkpoint is written, requests or not: the most a cut-off tail can hide."""
    fsync: str = "interval"
    """When written lines are forced to disk: "interval" (at most every
    fsync_interval_seconds: a power loss loses at most that much, as Redis's
    appendfsync everysec), "batch" (every write, at most every 50 ms; ~5 µs a request
    more on the HTTP bench) or "off" (the OS decides)."""
    fsync_interval_seconds: float = 1.0
    max_backlog_bytes: int = 64 << 20
    """Unwritten events past this size (the file cannot be written): requests that would
    return records are refused (audit.unavailable) until the backlog drains."""
    max_backlog_seconds: float = 10.0
    """...or when the oldest unwritten event is this old."""
    rotate_bytes: int = 0
    """Start a new file when the current one passes this size (0: never). The old file
    is renamed `<path>.<UTC time>`; the chain continues in the new file."""
    rotate_seconds: float = 0.0
    """Start a new file after this long (0: never)."""
    shutdown_timeout_seconds: float = 5.0
    """How long stopping waits for unwritten events before it gives up and says how many."""

    def problems(self) -> list[str]:
        found = _positive("audit", self, "checkpoint_seconds", "fsync_interval_seconds", "max_backlog_bytes")
        found += _positive("audit", self, "max_backlog_seconds", "shutdown_timeout_seconds")
        if self.fsync not in ("batch", "interval", "off"):
            found.append(f"[audit] fsync {self.fsync!r} must be batch, interval or off")
        if self.rotate_bytes < 0 or self.rotate_seconds < 0:
            found.append("[audit] rotate_bytes and rotate_seconds must be 0 (never) or above")
        if (self.path == "-" or self.path.startswith(("http://", "https://"))) and (
            self.rotate_bytes or self.rotate_seconds
        ):
            found.append("[audit] rotation needs a file path, not standard output or a collector")
        return found


@dataclass(frozen=True, slots=True)
class ConsoleSettings:
    """The security console (`/-/console/`), served on the admin listener only, never on
    the proxy port employees reach. Off by default; when on, nobody gets in without a
    credential: the token in `token_file`, or an admin JWT from the identity provider
    whose subject holds one of `[console] admin_roles` in `policies/signals.toml`."""

    enabled: bool = False
    token_file: str = ""
    """A file holding the console's shared credential (at least 16 characters); empty:
    only admin JWTs get in."""
    session_seconds: float = 8 * 3600.0
    """How long a console login lasts."""
    recent_events: int = 20_000
    """Audit events the console keeps in memory (a ring buffer): the live view, timelines
    and decision look-ups before the audit file is read."""

    def problems(self, admin_port: int) -> list[str]:
        found = _positive("console", self, "session_seconds", "recent_events")
        if self.enabled and not admin_port:
            found.append("[console] enabled needs [server] admin_port: the console is never served on the proxy port")
        return found


@dataclass(frozen=True, slots=True)
class ClockSettings:
    start: str = ""
    """An ISO 8601 instant to start the clock at (tests and demos); empty: real time."""


@dataclass(frozen=True, slots=True)
class Settings:
    server: ServerSettings = field(default_factory=ServerSettings)
    upstream: UpstreamSettings = field(default_factory=UpstreamSettings)
    identity: IdentitySettings = field(default_factory=IdentitySettings)
    policy: PolicySettings = field(default_factory=PolicySettings)
    meter: MeterSettings = field(default_factory=MeterSettings)
    audit: AuditSettings = field(default_factory=AuditSettings)
    postgres: PostgresSettings = field(default_factory=PostgresSettings)
    console: ConsoleSettings = field(default_factory=ConsoleSettings)
    oidc: OidcSettings = field(default_factory=OidcSettings)
    clock: ClockSettings = field(default_factory=ClockSettings)
    roster: RosterSettings = field(default_factory=RosterSettings)
    source: str = "embedded defaults"

    def problems(self) -> list[str]:
        found = [f"[identity] {p}" for p in self.identity.validate()] + self.meter.problems()
        found += self.postgres.problems() + self.audit.problems() + self.console.problems(self.server.admin_port)
        found += self.oidc.problems() + self.roster.problems() + self.policy.problems()
        if not self.upstream.url.startswith(("http://", "https://")):
            found.append(f"[upstream] url {self.upstream.url!r} must start with http:// or https://")
        if not 0 < self.server.port < 65536:
            found.append(f"[server] port {self.server.port} is not a TCP port")
        found += _positive("server", self.server, "idle_timeout_seconds", "max_header_bytes", "max_headers")
        found += _positive("upstream", self.upstream, "keepalive_seconds")
        if bool(self.server.tls_cert_file) != bool(self.server.tls_key_file):
            found.append("[server] tls_cert_file and tls_key_file go together")
        if self.server.client_ca_file and not self.server.tls_cert_file:
            found.append("[server] client_ca_file needs tls_cert_file and tls_key_file: client certificates are TLS")
        if not 0 <= self.server.admin_port < 65536 or self.server.admin_port == self.server.port:
            found.append(f"[server] admin_port {self.server.admin_port} must be 0 or a TCP port other than port")
        if self.server.drain_seconds < 0:
            found.append("[server] drain_seconds must be 0 or above")
        found += _positive(
            "upstream", self.upstream, "request_body_timeout_seconds", "max_request_body_bytes",
            "max_response_inspect_bytes", "held_answers_budget_bytes",
        )  # fmt: skip
        if self.upstream.held_answers_budget_bytes < self.upstream.max_response_inspect_bytes:
            found.append("[upstream] held_answers_budget_bytes must be at least max_response_inspect_bytes")
        return found


def _positive(section: str, settings: object, *names: str) -> list[str]:
    """Problems for each of `names` that is not above 0 (a 0 timeout or budget refuses all)."""
    return [f"[{section}] {name} must be above 0" for name in names if not getattr(settings, name) > 0]


def load_settings(path: Path | None) -> Settings:
    """Settings from `path` (or the embedded defaults), then the environment
    (`BROKER_<SECTION>_<KEY>`, `..._FILE` for secrets; see broker/config_env.py)."""
    settings = Settings() if path is None else _from_file(path)
    try:
        settings = apply_env(settings)
    except EnvError as exc:
        raise ConfigError(f"environment: {exc}") from exc
    secret = os.environ.get(SECRET_ENV)
    if secret:
        settings = replace(settings, identity=replace(settings.identity, hs256_secret=secret))
    pg_password = os.environ.get(PG_PASSWORD_ENV)
    if pg_password:
        settings = replace(settings, postgres=replace(settings.postgres, server_password=pg_password))
    return settings


def _from_file(path: Path) -> Settings:
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from exc
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
    sections: dict[str, Any] = {}
    known = {f.name: f for f in fields(Settings) if f.name != "source"}
    for name, table in doc.items():
        if name not in known:
            raise ConfigError(f"{path}: unknown section [{name}]; known: {', '.join(known)}")
        if not isinstance(table, dict):
            raise ConfigError(f"{path}: [{name}] must be a table")
        default = getattr(Settings(), name)
        sections[name] = _section(path, name, default, table)
    return Settings(**sections, source=str(path))


def _section(path: Path, name: str, default: T, table: dict[str, Any]) -> T:
    types = {f.name: type(getattr(default, f.name)) for f in fields(default)}  # type: ignore[arg-type]
    values: dict[str, Any] = {}
    for key, value in table.items():
        if key not in types:
            raise ConfigError(f"{path}: unknown key {key!r} in [{name}]; known: {', '.join(types)}")
        values[key] = _coerce(path, f"[{name}] {key}", types[key], getattr(default, key), value)
    return replace(default, **values)  # type: ignore[type-var]


def _coerce(path: Path, label: str, kind: type, default: Any, value: Any) -> Any:
    if default is None or isinstance(default, Path):
        if not isinstance(value, str):
            raise ConfigError(f"{path}: {label} must be a string")
        return _beside(path, value) if isinstance(default, Path) or label.endswith(_PATH_KEYS) else value
    if isinstance(default, tuple):
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{path}: {label} must be a list of strings")
        return tuple(value)
    if kind is float and type(value) is int:
        return float(value)
    if type(value) is not kind:
        raise ConfigError(f"{path}: {label} must be {kind.__name__}, not {type(value).__name__}")
    if isinstance(value, str) and label.endswith(_PATH_KEYS) and value not in ("", "-") and "://" not in value:
        return str(_beside(path, value))
    return value


_PATH_KEYS = ("_file", "_directory", "] directory", "] path", "] chain_state")
"""Keys naming a file or directory: a relative one is relative to the config file."""


def _beside(config: Path, value: str) -> Path:
    """`value` resolved against the config file's folder (as `include` in nginx, and as a
    reader of the file expects), not against wherever the broker was started from."""
    given = Path(value)
    return given if given.is_absolute() else config.parent / given

"""PostgreSQL benchmark: pgbench select-only through the broker's PostgreSQL door, against
PostgreSQL direct and PgBouncer, side by side in one run.

Everything runs on loopback against the local PostgreSQL (127.0.0.1:5432, user postgres,
trust auth), in a database of its own (`broker_bench_<hex>`, `pgbench -i -s 10`, dropped
at the end, also on failure or Ctrl-C):

    A  direct          pgbench -> PostgreSQL
    B  pgbouncer       pgbench -> PgBouncer (pool_mode = session, its own instance) -> PostgreSQL
    C  broker          pgbench -> `broker run` PostgreSQL door -> PostgreSQL; pgbench_accounts
                       mapped with no branch_column, read by an HQ (branch-less) employee
    D  broker scoped   the same, but pgbench_accounts mapped with branch_column = "branch_code"
                       and read by a branch employee: every statement is rewritten to the
                       employee's branch (the column is added with a constant default, so
                       every row is that branch and the answers stay the same)

Every target runs the same pgbench script, `-S` made bounded (the broker refuses reads
without LIMIT):

    \\set aid random(1, 100000 * :scale)
    SELECT abalance FROM pgbench_accounts WHERE aid = :aid LIMIT 1;

with `-n -c 8 -j 2 -T 10`, once with `-M simple` and once with `-M prepared` (the extended
protocol; the broker decides at Parse and again at every Bind). Rounds are interleaved
(round 1: simple A B C D, prepared A B C D; round 2: ...), after a 2 s warm-up of each;
the tables show medians over rounds. Per run: tps without the initial connection time
(pgbench's own figure), average latency (pgbench's), p50/p99 from pgbench's per-transaction
log (`-l`), CPU per transaction of the proxy process (utime + stime from /proc/<pid>/stat),
of PostgreSQL (the postmaster with every backend, finished ones included) and of pgbench.

    .venv/bin/python -m bench.pg [--rounds 3] [--seconds 10] [--clients 8] [--threads 2]
                                 [--modes simple,prepared] [--no-scoped] [--quick] [--keep]
                                 [--baseline DIR]

Needs pgbench, pgbouncer and psql (Debian: `apt-get install -y postgresql-15 pgbouncer
postgresql-client`; pgbench ships with the server package) and a PostgreSQL on
127.0.0.1:5432 that lets user postgres in without a password. Writes
bench/results/pg-<date>.md (and pg-<date>.png when matplotlib is importable; it is not a
project dependency) and prints the tables. Progress goes to stderr.
"""

from __future__ import annotations

import sys

if __package__ in (None, ""):
    sys.exit("run it as a module: .venv/bin/python -m bench.pg")

import argparse
import contextlib
import json
import os
import platform
import secrets
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

from bench.audit import count_audit
from bench.broker_config import common_sections
from bench.cpu import (
    CLK_TCK,
    all_ticks,
    children_cpu_seconds,
    cpu_model,
    cpu_ticks,
    host_ticks,
    others,
    stat_fields,
    tree_ticks,
)
from bench.pg_report import (
    Row,
    Run,
    markdown_table,
    parse_pgbench,
    ratio_table,
    read_latency_logs,
    round_table,
    summarise,
)
from bench.process import BenchError, Fleet, free_port, log, port_open, run_benchmark
from broker import __version__ as broker_version
from broker.identity.jwt_authenticator import mint_token

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
POLICIES = ROOT / "policies"
PG_HOST, PG_PORT, PG_USER = "127.0.0.1", 5432, "postgres"
SCALE = 10
WARMUP_SECONDS = 2
START_TIMEOUT = 60.0
ROLE, RESOURCE = "bencher", "account"
HQ_EMPLOYEE, BRANCH_EMPLOYEE, BRANCH = "bench-hq", "bench-br", "BR001"
CHECK_AID = 123_457
"""A row to read through every target before the runs: aid, its bid, its balance."""
SCRIPT = """\
\\set aid random(1, 100000 * :scale)
SELECT abalance FROM pgbench_accounts WHERE aid = :aid LIMIT 1;
"""
INSTALL = {
    "pgbench": "postgresql-15 (Debian 12 ships pgbench with the server package; postgresql-contrib pulls it in too)",
    "pgbouncer": "pgbouncer",
    "psql": "postgresql-client",
}
CLIENT_ENV = {"PGSSLMODE": "disable", "PGGSSENCMODE": "disable", "PGCONNECT_TIMEOUT": "10"}
"""The same plain-TCP client settings for every target: no TLS or GSS negotiation anywhere."""


# --------------------------------------------------------------------------- HTTP


def http_status(url: str) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=2.0) as answer:  # noqa: S310 - http://127.0.0.1 only
            return int(answer.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except (urllib.error.URLError, OSError):
        return None


# --------------------------------------------------------------------------- PostgreSQL


def psql(
    sql: str,
    *,
    port: int = PG_PORT,
    user: str = PG_USER,
    database: str = "postgres",
    password: str | None = None,
    check: bool = True,
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **CLIENT_ENV}
    env.pop("PGPASSWORD", None)
    if password is not None:
        env["PGPASSWORD"] = password
    command = ["psql", "-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h", PG_HOST, "-p", str(port), "-U", user]
    done = subprocess.run(
        [*command, "-d", database, "-c", sql], capture_output=True, text=True, env=env, timeout=60, check=False
    )
    if check and done.returncode != 0:
        raise BenchError(f"psql on :{port} as {user} failed ({done.returncode}) on {sql!r}:\n{done.stderr.strip()}")
    return done


def postmaster_pid() -> int | None:
    """The local postmaster, to count PostgreSQL's CPU; None if it is not visible from here."""
    done = psql("SHOW data_directory", check=False)
    if done.returncode != 0:
        return None
    with contextlib.suppress(OSError, ValueError, IndexError):
        pid = int((Path(done.stdout.strip()) / "postmaster.pid").read_text().split()[0])
        stat_fields(pid)
        return pid
    return None


# --------------------------------------------------------------------------- targets


@dataclass
class Target:
    key: str
    name: str
    label: str
    port: int
    user: str
    password: str | None = None
    proc: subprocess.Popen[bytes] | None = None
    audit: Path | None = None

    @property
    def pids(self) -> list[int]:
        return [self.proc.pid] if self.proc is not None else []


def pgbouncer_ini(workdir: Path, port: int, database: str, clients: int, pool_mode: str) -> Path:
    directory = workdir / "pgbouncer"
    directory.mkdir()
    (directory / "userlist.txt").write_text(f'"{PG_USER}" ""\n', encoding="utf-8")
    ini = directory / "pgbouncer.ini"
    ini.write_text(
        f"""\
; generated by bench/pg.py
[databases]
{database} = host={PG_HOST} port={PG_PORT} dbname={database} user={PG_USER}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {port}
unix_socket_dir =
auth_type = trust
auth_file = {directory / "userlist.txt"}
pool_mode = {pool_mode}
max_client_conn = {max(100, clients * 4)}
default_pool_size = {clients + 2}
min_pool_size = 0
server_tls_sslmode = disable
client_tls_sslmode = disable
ignore_startup_parameters = extra_float_digits
log_connections = 0
log_disconnections = 0
stats_period = 600
""",
        encoding="utf-8",
    )
    return ini


def write_policy(workdir: Path, name: str, scoped: bool, source: Path = POLICIES) -> Path:
    """policies/ copied and extended: a role that may read `account` (pgbench_accounts) with
    a cap of 1,000, an unlimited quota and no rate limit (no p4 line), two employees on the
    'always' shift (one HQ, one of BR001), and pgbench_accounts in the table map (scoped:
    by its branch_code column). `source`: the policies/ of the checkout under test."""
    target = workdir / name
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("tests"))

    def append(file: str, text: str) -> None:
        with (target / file).open("a", encoding="utf-8") as handle:
            handle.write("\n# added by bench/pg.py\n" + text)

    append("roles.csv", f"p, {ROLE}, {RESOURCE}, read\n")
    append("limits.csv", f"p3, {ROLE}, {RESOURCE}, 1000, unlimited, 1d\n")
    append("roster.csv", f"g3, {HQ_EMPLOYEE}, {ROLE}\ng, {BRANCH_EMPLOYEE}, {ROLE}, {BRANCH}\n")
    append("shifts.csv", f"g2, {HQ_EMPLOYEE}, always\ng2, {BRANCH_EMPLOYEE}, always\n")
    column = 'branch_column = "branch_code"\n' if scoped else ""
    append("tables.toml", f'[[table]]\nname = "pgbench_accounts"\nresource = "{RESOURCE}"\n{column}')
    return target


def broker_toml(
    workdir: Path,
    key: str,
    http_port: int,
    pg_port: int,
    database: str,
    policy: Path,
    clients: int,
    root: Path = ROOT,
) -> Path:
    path = workdir / f"broker-{key}.toml"
    # an older checkout (a --baseline) may not know the setting, and its config refuses unknown keys
    superuser = (
        "allow_superuser = true   # the bench logs in as the machine's superuser, like pgbench and PgBouncer\n"
        if "allow_superuser" in (root / "broker" / "config.py").read_text(encoding="utf-8")
        else ""
    )
    path.write_text(
        f"""\
# generated by bench/pg.py
[server]
host = "127.0.0.1"
port = {http_port}
shutdown_timeout_seconds = 2.0

{common_sections(policy, workdir / f"audit-{key}.log")}
[postgres]
enabled = true
host = "127.0.0.1"
port = {pg_port}
server_host = "{PG_HOST}"
server_port = {PG_PORT}
server_database = "{database}"
server_user = "{PG_USER}"
{superuser}max_sessions_per_employee = {max(20, clients * 2)}
""",
        encoding="utf-8",
    )
    return path


def wait_ready(fleet: Fleet, target: Target, http_port: int | None = None) -> None:
    """The PG port accepts connections (and, for a broker, its /-/readyz says 200)."""

    def ready() -> bool:
        return port_open(target.port) and (
            http_port is None or http_status(f"http://127.0.0.1:{http_port}/-/readyz") == 200
        )

    if not fleet.wait_for(ready, START_TIMEOUT):
        raise BenchError(f"{target.label} was not ready within {START_TIMEOUT:.0f} s")


@dataclass
class Setup:
    workdir: Path
    database: str
    targets: list[Target]
    postmaster: int | None
    notes: list[str] = field(default_factory=list)
    checks: list[str] = field(default_factory=list)
    init_seconds: float = 0.0


def start_targets(args: argparse.Namespace, fleet: Fleet, database: str, secret: str, ttl: float) -> list[Target]:
    workdir = fleet.workdir
    targets = [Target("A", "direct", "A direct", PG_PORT, PG_USER)]

    port = free_port()
    ini = pgbouncer_ini(workdir, port, database, args.clients, args.pool_mode)
    pgbouncer = ["/usr/sbin/pgbouncer" if Path("/usr/sbin/pgbouncer").exists() else "pgbouncer"]
    if os.geteuid() == 0:  # PgBouncer refuses to run as root; -u switches it to the postgres user
        shutil.chown(ini.parent, PG_USER)
        pgbouncer += ["-u", PG_USER]
    log(f"pgbouncer on :{port} (pool_mode = {args.pool_mode}) ...")
    proc = fleet.start("pgbouncer", [*pgbouncer, str(ini)])
    targets.append(Target("B", "pgbouncer", f"B PgBouncer ({args.pool_mode})", port, PG_USER, proc=proc))

    env = {**os.environ, "BROKER_DEV_SECRET": secret}
    env.pop("BROKER_PG_PASSWORD", None)
    env.pop("BROKER_CLOCK", None)
    http_ports = {}
    brokers = [("C", "broker", "C broker (flat table, HQ employee)", HQ_EMPLOYEE, False, ROOT)]
    if not args.no_scoped:
        brokers.append(("D", "broker-scoped", "D broker (branch-scoped table)", BRANCH_EMPLOYEE, True, ROOT))
    if args.baseline is not None:
        base = args.baseline
        brokers.append(("E", "baseline", f"E baseline {base.name} (flat)", HQ_EMPLOYEE, False, base))
        if not args.no_scoped:
            brokers.append(("F", "baseline-scoped", f"F baseline {base.name} (scoped)", BRANCH_EMPLOYEE, True, base))
    for key, name, label, employee, scoped, root in brokers:
        broker = broker_command(root)
        policy = write_policy(workdir, f"policies-{key}", scoped, root / "policies")
        http_ports[key], pg_port = free_port(), free_port()
        config = broker_toml(workdir, key, http_ports[key], pg_port, database, policy, args.clients, root)
        log(f"{name}: PostgreSQL door on :{pg_port}, admin on :{http_ports[key]} ({broker}) ...")
        command = [broker, "--log-format", "json", "run", "--config", str(config)]
        proc = fleet.start(name, command, env=env, cwd=root)
        token = mint_token(secret, employee, now=time.time(), ttl_seconds=ttl)
        targets.append(Target(key, name, label, pg_port, employee, token, proc, workdir / f"audit-{key}.log"))

    for target in targets:
        wait_ready(fleet, target, http_ports.get(target.key))
    return targets


def broker_command(root: Path) -> str:
    """The `broker` of the checkout at `root` (its own .venv), else the one on PATH."""
    broker = root / ".venv" / "bin" / "broker"
    return str(broker) if broker.exists() else shutil.which("broker") or str(broker)


def check_targets(setup: Setup) -> None:
    """Before any load: the same row through every target, and the broker still refusing an
    unbounded read (the policy is in force, not a pass-through)."""
    sql = f"SELECT aid, bid, abalance FROM pgbench_accounts WHERE aid = {CHECK_AID} LIMIT 1"  # noqa: S608 - a constant
    expected = psql(sql, database=setup.database).stdout.strip()
    if expected != f"{CHECK_AID}|{(CHECK_AID - 1) // 100_000 + 1}|0":
        raise BenchError(f"direct read of aid {CHECK_AID} gave {expected!r}")
    for target in setup.targets:
        got = psql(sql, port=target.port, user=target.user, database=setup.database, password=target.password)
        if got.stdout.strip() != expected:
            raise BenchError(f"{target.label} answered {got.stdout.strip()!r}, direct {expected!r}, to {sql}")
    setup.checks.append(f"`{sql}` gave `{expected}` through every target.")
    for target in setup.targets:
        if target.password is None:
            continue
        refused = psql(
            "SELECT abalance FROM pgbench_accounts",
            port=target.port,
            user=target.user,
            database=setup.database,
            password=target.password,
            check=False,
        )
        if refused.returncode == 0:
            raise BenchError(f"{target.label} let an unbounded read through: the bench policy is not in force")
        setup.checks.append(
            f"{target.label} refused `SELECT abalance FROM pgbench_accounts` (no LIMIT): "  # noqa: S608 - text
            f"`{refused.stderr.strip().splitlines()[0]}`"
        )


# --------------------------------------------------------------------------- pgbench


def pgbench_command(
    target: Target, database: str, mode: str, args: argparse.Namespace, seconds: int, script: Path, prefix: Path | None
) -> list[str]:
    command = [
        "pgbench", "-n", "-M", mode, "-c", str(args.clients), "-j", str(args.threads), "-T", str(seconds),
        "-s", str(SCALE), "-f", str(script), "-h", PG_HOST, "-p", str(target.port), "-U", target.user,
    ]  # fmt: skip
    if prefix is not None:
        command += ["-l", f"--log-prefix={prefix}"]
    return [*command, database]


def pgbench_env(target: Target) -> dict[str, str]:
    env = {**os.environ, **CLIENT_ENV}
    env.pop("PGPASSWORD", None)
    if target.password is not None:
        env["PGPASSWORD"] = target.password
    return env


def error_lines(stderr: str, limit: int = 5) -> str:
    found: list[str] = []
    for raw in stderr.splitlines():
        line = raw.strip()
        if line and line not in found and not line.startswith("pgbench (") and "transaction type" not in line:
            found.append(line)
    return " / ".join(found[:limit]) + (f" (+{len(found) - limit} more distinct lines)" if len(found) > limit else "")


def measure(
    setup: Setup, fleet: Fleet, target: Target, mode: str, round_no: int, args: argparse.Namespace, script: Path
) -> Run:
    logdir = setup.workdir / "tx-logs" / f"{round_no}-{mode}-{target.key}"
    logdir.mkdir(parents=True)
    command = pgbench_command(target, setup.database, mode, args, args.seconds, script, logdir / "tx")
    pids = target.pids
    proxy_before, host_before = cpu_ticks(pids), host_ticks()
    pg_before = tree_ticks(setup.postmaster) if setup.postmaster else 0
    everyone_before = all_ticks()
    bench_before, began = children_cpu_seconds(), time.monotonic()
    done = subprocess.run(
        command, env=pgbench_env(target), capture_output=True, text=True, timeout=args.seconds + 120, check=False
    )
    elapsed = time.monotonic() - began
    bench_used = children_cpu_seconds() - bench_before
    pg_after = tree_ticks(setup.postmaster) if setup.postmaster else 0
    proxy_after, host_after = cpu_ticks(pids), host_ticks()
    mine = {*pids, os.getpid(), *([setup.postmaster] if setup.postmaster else [])}
    outside = others(everyone_before, all_ticks(), mine, their_children=True)
    fleet.check_alive()
    summary = parse_pgbench(done.stdout, done.stderr)
    latencies = read_latency_logs(sorted(logdir.glob("tx*")))
    shutil.rmtree(logdir, ignore_errors=True)
    transactions = max(1, summary.transactions)
    busy, steal, total, irq = host_after - host_before
    errors = error_lines(done.stderr) if done.returncode != 0 or summary.failed or summary.aborted else ""
    if done.returncode != 0:
        errors = f"pgbench exit {done.returncode}: {errors}"
    return Run(
        target=target.key,
        mode=mode,
        round=round_no,
        seconds=args.seconds,
        tps=summary.tps,
        latency_avg_ms=summary.latency_avg_ms,
        p50_ms=latencies.p50_ms,
        p99_ms=latencies.p99_ms,
        max_ms=latencies.max_ms,
        transactions=summary.transactions,
        failed=summary.failed + latencies.not_done,
        aborted=len(summary.aborted),
        proxy_cpu_us_per_tx=(proxy_after - proxy_before) * 1e6 / CLK_TCK / transactions if pids else None,
        proxy_cpu_percent=(proxy_after - proxy_before) * 100 / CLK_TCK / elapsed if pids else None,
        pg_cpu_us_per_tx=(pg_after - pg_before) * 1e6 / CLK_TCK / transactions if setup.postmaster else None,
        pgbench_cpu_us_per_tx=bench_used * 1e6 / transactions,
        host_busy_percent=100 * busy / max(1, total),
        host_steal_percent=100 * steal / max(1, total),
        host_others_percent=100 * outside.ticks / max(1, total),
        host_irq_percent=100 * irq / max(1, total),
        other_cpu=outside.top(decimals=1),
        errors=errors,
    )


def warm_up(setup: Setup, target: Target, mode: str, args: argparse.Namespace, script: Path) -> None:
    command = pgbench_command(target, setup.database, mode, args, WARMUP_SECONDS, script, None)
    done = subprocess.run(
        command, env=pgbench_env(target), capture_output=True, text=True, timeout=WARMUP_SECONDS + 120, check=False
    )
    if done.returncode != 0:
        log(f"  warm-up {target.label} {mode}: pgbench exit {done.returncode}: {error_lines(done.stderr)}")


# --------------------------------------------------------------------------- report


def machine() -> dict[str, str]:
    cpu = cpu_model()

    def first_line(command: list[str]) -> str:
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        return (done.stdout or done.stderr).strip().splitlines()[0] if (done.stdout or done.stderr).strip() else "?"

    pgbouncer = "/usr/sbin/pgbouncer" if Path("/usr/sbin/pgbouncer").exists() else "pgbouncer"
    return {
        "nproc": str(os.cpu_count()),
        "cpu": cpu,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "postgresql": psql("SHOW server_version", check=False).stdout.strip() or "?",
        "pgbench": first_line(["pgbench", "--version"]),
        "pgbouncer": first_line([pgbouncer, "--version"]),
        "broker": broker_version,
        "git": subprocess.run(
            ["git", "-C", str(ROOT), "describe", "--always", "--dirty"], capture_output=True, text=True, check=False
        ).stdout.strip()
        or "?",
    }


def rss_mib(pid: int) -> float:
    with contextlib.suppress(OSError, ValueError, StopIteration):
        status = Path(f"/proc/{pid}/status").read_text().splitlines()
        return int(next(ln for ln in status if ln.startswith("VmRSS:")).split()[1]) / 1024
    return float("nan")


def audit_kind(event: dict[str, Any]) -> str:
    """A PostgreSQL door audit event: a statement's verdict, or a session summary."""
    if "verdict" in event:
        return f"{event.get('kind') or 'statement'} verdict={event['verdict']} reason={event.get('reason')}"
    return f"{event.get('kind', '?')} (summary)"


def broker_log_summary(path: Path) -> Counter[str]:
    """The broker's own log (JSON lines): how many of each (level, event)."""
    found: Counter[str] = Counter()
    if not path.exists():
        return found
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            event = json.loads(line)
            found[f"{event.get('level', '?')} {event.get('event', '?')}"] += 1
        except ValueError:
            found[f"(not JSON) {line[:120]}"] += 1
    return found


def plot(path: Path, rows: Sequence[Row], labels: dict[str, str]) -> str:
    try:
        import matplotlib  # noqa: PLC0415 - optional, not a project dependency

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # noqa: PLC0415
    except ImportError:
        return "not drawn: matplotlib is not importable here (it is not a project dependency); table only."
    modes = sorted({r.mode for r in rows}, key=[r.mode for r in rows].index)
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    width = 0.8 / max(1, len(modes))
    keys = list(dict.fromkeys(r.target for r in rows))
    for n, mode in enumerate(modes):
        mine = {r.target: r for r in rows if r.mode == mode}
        xs = [k + (n - (len(modes) - 1) / 2) * width for k in range(len(keys))]
        tps = [mine[t].tps if t in mine else 0 for t in keys]
        p99 = [mine[t].p99_ms if t in mine else 0 for t in keys]
        bars = axes[0].bar(xs, tps, width, label=mode)
        axes[0].bar_label(bars, [f"{v:,.0f}" for v in tps], fontsize=7)
        bars = axes[1].bar(xs, p99, width, label=mode)
        axes[1].bar_label(bars, [f"{v:.2f}" for v in p99], fontsize=7)
    for axis, title, unit in (
        (axes[0], "throughput (median)", "transactions / s"),
        (axes[1], "p99 latency (median)", "ms"),
    ):
        axis.set_xticks(
            range(len(keys)), [labels[k].replace(" (", "\n(").replace(", ", ",\n") for k in keys], fontsize=8
        )
        axis.set_title(title)
        axis.set_ylabel(unit)
        axis.grid(axis="y", alpha=0.3)
        axis.legend()
    fig.suptitle(f"broker PostgreSQL benchmark {date.today().isoformat()} (pgbench select-only, loopback)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return f"`{path.relative_to(ROOT)}`"


def report(
    args: argparse.Namespace,
    setup: Setup,
    runs: list[Run],
    facts: dict[str, str],
    audits: dict[str, Counter[str]],
    broker_logs: dict[str, Counter[str]],
    elapsed: float,
    plot_note: str,
) -> str:
    labels = {t.key: t.label for t in setup.targets}
    keys = [t.key for t in setup.targets]
    rows = summarise(runs, keys, args.modes)
    script = "\n".join(f"    {line}" for line in SCRIPT.splitlines())
    example = {t.key: t for t in setup.targets}
    shown = {
        t.key: pgbench_command(t, setup.database, args.modes[0], args, args.seconds, Path("select.sql"), Path("tx"))
        for t in example.values()
    }
    commands = [
        "    " + " ".join(shown[t.key]) + ("   # PGPASSWORD=<HS256 JWT of " + t.user + ">" if t.password else "")
        for t in example.values()
    ]
    lines = [
        f"# PostgreSQL benchmark, {date.today().isoformat()}",
        "",
        "`" + " ".join([".venv/bin/python -m bench.pg", *args.argv]) + "`",
        f"({args.rounds} interleaved round(s) x {len(args.modes)} mode(s) x {len(setup.targets)} targets x "
        f"{args.seconds} s, {args.clients} clients, {args.threads} pgbench threads; wall time {elapsed:.0f} s, "
        f"of which `pgbench -i -s {SCALE}` {setup.init_seconds:.0f} s).",
        "",
        "**Machine**: "
        + ", ".join(f"{k} {v}" for k, v in facts.items())
        + ". Everything (PostgreSQL, the proxies, pgbench) shares these CPUs on loopback, so each "
        "proxy's CPU is taken from what PostgreSQL and pgbench could have used: compare the rows of one "
        "run, not figures across machines or runs.",
        "",
        "## Results",
        "",
        "Medians over rounds. tps excludes the initial connection time (pgbench's own figure); latency "
        "average is pgbench's; p50/p99 come from pgbench's per-transaction log (`-l`, all transactions of the "
        "run). CPU µs/tx: utime + stime over the run from /proc/<pid>/stat divided by the transactions: the "
        "proxy process (PgBouncer; `broker run`, all its threads, the audit writer included), PostgreSQL "
        "(the postmaster plus every backend, finished ones included via cutime/cstime: so with a proxy in "
        "front it also counts the proxy's server-side sessions), pgbench (getrusage of the finished process). "
        "`proxy CPU % of 1 core`: 100 means the proxy kept one CPU busy the whole run (the broker is one "
        "process with one event loop: that is its ceiling).",
        "",
        *markdown_table(rows, labels),
        "",
        "### Ratios",
        "",
        "Throughput: above 1 is faster; latency and CPU: above 1 is slower / costlier.",
        "",
        *ratio_table(rows, labels, "A", "B"),
        "",
        "### Every run, in the order they ran",
        "",
        *round_table(runs, labels),
        "",
    ]
    errors = [f"round {r.round} {r.mode} {labels[r.target]}: {r.errors}" for r in runs if r.errors]
    lines += ["### Errors", ""]
    lines += [f"- {e}" for e in errors] or [
        "- none: no failed transactions, no aborted clients, pgbench exit 0 every run."
    ]
    lines += [
        "",
        "## Setup",
        "",
        f"- Database `{setup.database}` (dropped afterwards): `pgbench -i -s {SCALE}` ({SCALE * 100_000:,} rows "
        "in pgbench_accounts), then `ALTER TABLE pgbench_accounts ADD COLUMN branch_code text NOT NULL DEFAULT "
        f"'{BRANCH}'` (a constant default: no table rewrite, every row in {BRANCH}). PostgreSQL's settings as "
        "installed.",
        "- The same script (`-f`) for every target, `-S` with a LIMIT (the broker refuses unbounded reads):\n",
        script,
        "",
        "- The commands (simple mode shown; prepared is the same with `-M prepared`), every one with "
        "`PGSSLMODE=disable PGGSSENCMODE=disable`, so no target negotiates TLS or GSS (the warm-ups: the same "
        f"with `-T {WARMUP_SECONDS}` and no `-l`; the log prefix is a per-run temp path):\n",
        *commands,
        "",
        f"- **B PgBouncer** {facts['pgbouncer']}, its own instance from a generated ini: `pool_mode = "
        f"{args.pool_mode}`, `auth_type = trust` with an auth_file naming postgres, `default_pool_size = "
        f"{args.clients + 2}`, TLS off both sides, run as user postgres (it will not run as root). Session "
        "pooling because it is the like-for-like baseline: the broker also holds one server connection per "
        "client session for the session's life, and pgbench keeps its connections for the whole run, so "
        "transaction pooling would pool nothing here; and this PgBouncer (1.18) has no protocol-level "
        "prepared statements in transaction mode (that came in 1.21), so `-M prepared` would break there. "
        "(`--pool-mode transaction` runs it anyway.)",
        "- **C/D broker**: `.venv/bin/broker --log-format json run --config broker-<key>.toml`, one process, "
        "`[postgres] enabled` on a free port, logging in to PostgreSQL as postgres (trust), HS256 tokens "
        '(`BROKER_DEV_SECRET`, minted with `mint_token`, passed as PGPASSWORD), `[meter] store = "memory"`, '
        "the audit log on (a file, as in production), policy watch off. Policy: `policies/` copied "
        f"(minus tests/) plus role `{ROLE}` reading resource `{RESOURCE}` (p3 cap 1000, quota unlimited, "
        f"no p4 rate line), employees `{HQ_EMPLOYEE}` (g3, HQ) and `{BRANCH_EMPLOYEE}` (g, {BRANCH}) on the "
        "'always' shift. C maps pgbench_accounts with no branch_column and is read by the HQ employee; D maps "
        'it with `branch_column = "branch_code"` and is read by the branch employee, so every statement '
        "is rewritten to the branch.",
        "- Order: a warm-up of "
        f"{WARMUP_SECONDS} s per target and mode, then rounds; in each round, for each mode, the targets in turn.",
        "",
        "## Checks",
        "",
        *[f"- {c}" for c in setup.checks],
    ]
    for key, found in audits.items():
        summary = ", ".join(f"{n:,} {what}" for what, n in found.most_common(6)) or "no audit file"
        lines.append(f"- Audit log of {labels[key]} (checks and warm-ups included): {summary}.")
    for key, found in broker_logs.items():
        summary = ", ".join(f"{n:,} {what}" for what, n in found.most_common(10)) or "empty"
        lines.append(f"- Operational log of {labels[key]}: {summary}.")
    noisy = [r for r in runs if r.host_others_percent > 10]
    if noisy:
        lines.append(
            f"- **Warning**: in {len(noisy)} of {len(runs)} runs, processes outside the benchmark used over 10% of "
            "the machine (see `others %` and `busiest other processes` above): a concurrent job on this "
            "shared machine; those runs' figures are lower than a quiet machine would give."
        )
    lines += [f"- **Note**: {note}" for note in setup.notes]
    lines += [f"- Plot: {plot_note}", ""]
    return "\n".join(lines)


# --------------------------------------------------------------------------- main


def check_tools() -> None:
    missing = [
        tool
        for tool in INSTALL
        if shutil.which(tool) is None and not (tool == "pgbouncer" and Path("/usr/sbin/pgbouncer").exists())
    ]
    if missing:
        packages = "; ".join(f"{tool}: apt-get install -y {INSTALL[tool]}" for tool in missing)
        log(f"bench.pg needs {', '.join(missing)}. Install: {packages}")
        sys.exit(2)
    done = subprocess.run(
        ["psql", "-X", "-At", "-h", PG_HOST, "-p", str(PG_PORT), "-U", PG_USER, "-d", "postgres", "-c", "SELECT 1"],
        capture_output=True,
        text=True,
        env={**os.environ, **CLIENT_ENV, "PGCONNECT_TIMEOUT": "5"},
        timeout=30,
        check=False,
    )
    if done.returncode != 0:
        log(
            f"bench.pg needs PostgreSQL on {PG_HOST}:{PG_PORT} letting user {PG_USER} in without a password "
            f"(trust); psql said: {done.stderr.strip()}\n"
            "Install and start one with: apt-get install -y postgresql && service postgresql start "
            "(and trust for 127.0.0.1 in pg_hba.conf)"
        )
        sys.exit(2)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    parser.add_argument("--seconds", type=int, default=10, help="pgbench -T per run (default 10)")
    parser.add_argument("--clients", type=int, default=8, help="pgbench -c (default 8)")
    parser.add_argument("--threads", type=int, default=2, help="pgbench -j (default 2)")
    parser.add_argument("--modes", default="simple,prepared", help="pgbench -M modes, comma-separated")
    parser.add_argument("--pool-mode", choices=("session", "transaction"), default="session", help="PgBouncer's")
    parser.add_argument("--no-scoped", action="store_true", help="skip D, the branch-scoped broker")
    parser.add_argument(
        "--baseline",
        type=Path,
        metavar="DIR",
        help="also run the broker of another checkout (`git archive <commit>` unpacked, with its own .venv) "
        "as E (flat) and F (scoped), interleaved with C and D, so both are measured in the same time window",
    )
    parser.add_argument("--quick", action="store_true", help="1 round of 3 s")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (configs, logs, audit files)")
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    if args.quick:
        args.rounds, args.seconds = 1, 3
    args.modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if args.baseline is not None:
        args.baseline = args.baseline.resolve()
        if not (args.baseline / "broker" / "config.py").exists():
            parser.error(f"--baseline {args.baseline}: not a checkout of the broker")
    if not args.modes or any(m not in ("simple", "extended", "prepared") for m in args.modes):
        parser.error("--modes takes simple, extended and/or prepared")
    if min(args.rounds, args.seconds, args.clients, args.threads) < 1 or args.threads > args.clients:
        parser.error("--rounds, --seconds, --clients, --threads must be at least 1, threads at most clients")
    return args


def benchmark(args: argparse.Namespace, fleet: Fleet, cleanup: contextlib.ExitStack, started: float) -> int:
    workdir = fleet.workdir
    database = f"broker_bench_{secrets.token_hex(4)}"
    log(f"workdir {workdir}; database {database}; pgbench -i -s {SCALE} ...")
    psql(f"CREATE DATABASE {database}")
    cleanup.callback(drop_database, database)
    began = time.monotonic()
    init = subprocess.run(
        ["pgbench", "-i", "-q", "-s", str(SCALE), "-h", PG_HOST, "-p", str(PG_PORT), "-U", PG_USER, database],
        capture_output=True,
        text=True,
        env={**os.environ, **CLIENT_ENV},
        timeout=600,
        check=False,
    )
    if init.returncode != 0:
        raise BenchError(f"pgbench -i failed ({init.returncode}):\n{init.stderr}")
    psql(f"ALTER TABLE pgbench_accounts ADD COLUMN branch_code text NOT NULL DEFAULT '{BRANCH}'", database=database)
    init_seconds = time.monotonic() - began
    log(f"initialised in {init_seconds:.1f} s")

    brokers = (1 if args.no_scoped else 2) * (1 if args.baseline is None else 2)
    runs_total = args.rounds * len(args.modes) * (2 + brokers)
    ttl = 3600 + runs_total * (args.seconds + WARMUP_SECONDS + 30)
    secret = secrets.token_urlsafe(48)
    targets = start_targets(args, fleet, database, secret, ttl)
    setup = Setup(workdir, database, targets, postmaster_pid(), init_seconds=init_seconds)
    if setup.postmaster is None:
        setup.notes.append("the postmaster's pid was not visible from here: no PostgreSQL CPU column.")
    check_targets(setup)
    log(f"all up and checked after {time.monotonic() - started:.1f} s")

    script = workdir / "select.sql"
    script.write_text(SCRIPT, encoding="utf-8")
    for mode in args.modes:
        for target in targets:
            log(f"warm-up: {target.label} {mode} {WARMUP_SECONDS} s ...")
            warm_up(setup, target, mode, args, script)
    runs: list[Run] = []
    for round_no in range(1, args.rounds + 1):
        for mode in args.modes:
            for target in targets:
                log(f"round {round_no}/{args.rounds}: {target.label} {mode} ...")
                run = measure(setup, fleet, target, mode, round_no, args, script)
                runs.append(run)
                cpu = f", proxy {run.proxy_cpu_us_per_tx:.0f} µs/tx" if run.proxy_cpu_us_per_tx is not None else ""
                log(
                    f"    {run.tps:,.0f} tps, avg {run.latency_avg_ms:.3f} ms, p99 {run.p99_ms:.3f} ms{cpu}"
                    + (f"  ERRORS: {run.errors}" if run.errors else "")
                )

    facts = machine()
    for target in targets:
        if target.proc is not None:
            setup.notes.append(f"{target.label}: resident memory after the runs {rss_mib(target.proc.pid):.0f} MiB.")
    fleet.stop_all()  # the brokers flush their audit logs on the way out
    audits = {t.key: count_audit(t.audit, audit_kind) for t in targets if t.audit is not None}
    broker_logs = {t.key: broker_log_summary(workdir / f"{t.name}.log") for t in targets if t.audit is not None}
    stamp = date.today().isoformat()
    RESULTS.mkdir(exist_ok=True)
    labels = {t.key: t.label for t in targets}
    plot_note = plot(RESULTS / f"pg-{stamp}.png", summarise(runs, list(labels), args.modes), labels)
    text = report(args, setup, runs, facts, audits, broker_logs, time.monotonic() - started, plot_note)
    (RESULTS / f"pg-{stamp}.md").write_text(text, encoding="utf-8")
    (workdir / "runs.json").write_text(json.dumps([asdict(r) for r in runs], indent=1), encoding="utf-8")
    print(text)
    log(f"total {time.monotonic() - started:.0f} s; results in {(RESULTS / f'pg-{stamp}.md').relative_to(ROOT)}")
    return 0


def drop_database(database: str) -> None:
    done = psql(f"DROP DATABASE IF EXISTS {database} WITH (FORCE)", check=False)
    if done.returncode != 0:
        log(
            f"could not drop {database}: {done.stderr.strip()}; "
            f"drop it by hand: psql -h {PG_HOST} -U {PG_USER} -c 'DROP DATABASE {database}'"
        )
    else:
        log(f"dropped {database}")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    check_tools()
    started = time.monotonic()
    return run_benchmark(
        "bench.pg",
        lambda fleet, cleanup: benchmark(args, fleet, cleanup, started),
        keep=args.keep,
        shared_workdir=True,  # PgBouncer runs as postgres and reads its ini from there
    )


if __name__ == "__main__":
    sys.exit(main())

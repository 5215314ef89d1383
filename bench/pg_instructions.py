"""Instructions per transaction of the broker's PostgreSQL door, counted by callgrind: a
figure that does not move with the other jobs on a shared machine, unlike CPU time.

Each broker (this checkout's, and with --baseline another checkout's) runs under
`valgrind --tool=callgrind --instr-atstart=no`, so nothing is counted until the harness
turns instrumentation on. Per broker and query mode, pgbench (one client) runs the
bench.pg script twice, with `--short` and with `--long` transactions, each time with
instrumentation on only while it runs (`callgrind_control -i on/off`, then a dump):

    instructions per transaction = (I(long) - I(short)) / (long - short)

so what a connection costs once (the login, the JWT, the server connection, the first
Parse of each statement) cancels out and only the per-transaction path remains. Counted:
the broker process, all its threads (the audit writer's included); not the analysis
workers (spawned processes, not traced), nor PostgreSQL, nor pgbench. Each figure is
also given without libcrypto's instructions (see CRYPTO below). Exit 1 with the reason
when a broker does not start or a pgbench fails, 2 on bad arguments or a missing tool.

    .venv/bin/python -m bench.pg_instructions [--baseline DIR] [--modes simple,prepared]
                                              [--scoped] [--short 200] [--long 1200]

Needs valgrind (with callgrind_control), pgbench and psql, and a PostgreSQL on
127.0.0.1:5432 that lets user postgres in without a password. A database of its own
(`broker_cg_<hex>`, `pgbench -i -s 1`) is dropped at the end. Prints a table (stdout);
progress goes to stderr.
"""

from __future__ import annotations

import sys

if __package__ in (None, ""):
    sys.exit("run it as a module: .venv/bin/python -m bench.pg_instructions")

import argparse
import contextlib
import os
import re
import secrets
import shutil
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from bench.pg import (
    BRANCH,
    BRANCH_EMPLOYEE,
    CLIENT_ENV,
    HQ_EMPLOYEE,
    PG_HOST,
    PG_PORT,
    PG_USER,
    ROOT,
    SCRIPT,
    broker_toml,
    drop_database,
    http_status,
    psql,
    write_policy,
)
from bench.process import BenchError, Fleet, free_port, log, port_open, run_benchmark
from broker.identity.jwt_authenticator import mint_token

START_TIMEOUT = 600.0
"""A broker under valgrind starts some fifty times slower than without."""
SCALE = 1
TOTALS = re.compile(r"^totals:\s+(\d+)", re.MULTILINE)
ANNOTATED = re.compile(r"^\s*([\d,]+) \(")
CRYPTO = """libcrypto is shown apart: the audit chain's SHA-256 of every line runs there, and
valgrind's simulated CPU has no SHA extensions (SHA-NI), so OpenSSL takes its vector code,
several times the instructions it needs on a CPU that has them (check /proc/cpuinfo)."""


@dataclass
class Broker:
    label: str
    root: Path
    port: int
    employee: str
    token: str
    pid: int


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--baseline",
        type=Path,
        metavar="DIR",
        help="also count the broker of another checkout (`git archive <commit>` unpacked, with its own .venv)",
    )
    parser.add_argument("--modes", default="simple,prepared", help="pgbench -M modes, comma-separated")
    parser.add_argument(
        "--scoped",
        action="store_true",
        help="map pgbench_accounts by branch and read as a branch employee (every statement rewritten) "
        "instead of the flat table read by an HQ employee",
    )
    parser.add_argument("--short", type=int, default=200, help="transactions of the short run (default 200)")
    parser.add_argument("--long", type=int, default=1200, help="transactions of the long run (default 1200)")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (configs, logs, callgrind dumps)")
    args = parser.parse_args(argv)
    args.modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if not args.modes or any(m not in ("simple", "extended", "prepared") for m in args.modes):
        parser.error("--modes takes simple, extended and/or prepared")
    if args.short < 1 or args.long <= args.short:
        parser.error("--short must be at least 1 and --long more than --short")
    if args.baseline is not None:
        args.baseline = args.baseline.resolve()
        if not (args.baseline / "broker" / "config.py").exists():
            parser.error(f"--baseline {args.baseline}: not a checkout of the broker")
    for tool in ("valgrind", "callgrind_control", "pgbench", "psql"):
        if shutil.which(tool) is None:
            parser.error(f"{tool} is not on PATH (Debian: apt-get install -y valgrind postgresql-client)")
    return args


def start_broker(fleet: Fleet, label: str, root: Path, database: str, secret: str, scoped: bool) -> Broker:
    workdir = fleet.workdir
    key = f"{label}-{'scoped' if scoped else 'flat'}"
    policy = write_policy(workdir, f"policies-{key}", scoped, root / "policies")
    http_port, pg_port = free_port(), free_port()
    config = broker_toml(workdir, key, http_port, pg_port, database, policy, 1, root)
    python = root / ".venv" / "bin" / "python"
    command = [
        "valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={workdir}/cg-{key}.%p",
        str(python), "-m", "broker", "--log-format", "json", "run", "--config", str(config),
    ]  # fmt: skip
    env = {**os.environ, "BROKER_DEV_SECRET": secret, "PYTHONHASHSEED": "0"}  # the same dict layouts each run
    env.pop("BROKER_PG_PASSWORD", None)
    env.pop("BROKER_CLOCK", None)
    log(f"{key}: starting under callgrind (PostgreSQL door :{pg_port}) ...")
    proc = fleet.start(key, command, env=env, cwd=root)

    def ready() -> bool:
        return port_open(pg_port) and http_status(f"http://127.0.0.1:{http_port}/-/readyz") == 200

    if not fleet.wait_for(ready, START_TIMEOUT):
        raise BenchError(f"{key} was not ready within {START_TIMEOUT:.0f} s")
    employee = BRANCH_EMPLOYEE if scoped else HQ_EMPLOYEE
    token = mint_token(secret, employee, now=time.time(), ttl_seconds=24 * 3600)
    return Broker(key, root, pg_port, employee, token, proc.pid)


def pgbench(broker: Broker, database: str, mode: str, transactions: int, script: Path) -> None:
    command = [
        "pgbench", "-n", "-M", mode, "-c", "1", "-j", "1", "-t", str(transactions), "-s", str(SCALE),
        "-f", str(script), "-h", PG_HOST, "-p", str(broker.port), "-U", broker.employee, database,
    ]  # fmt: skip
    env = {**os.environ, **CLIENT_ENV, "PGPASSWORD": broker.token}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=3600, check=False)
    if done.returncode != 0 or "number of failed transactions: 0" not in done.stdout:
        raise BenchError(f"pgbench {mode} through {broker.label} failed ({done.returncode}):\n{done.stderr[-2000:]}")


def control(*args: str) -> None:
    done = subprocess.run(["callgrind_control", *args], capture_output=True, text=True, timeout=600, check=False)
    if done.returncode != 0:
        raise BenchError(f"callgrind_control {' '.join(args)} failed: {done.stdout}{done.stderr}")


def counted(broker: Broker, workdir: Path, run: Callable[[], None]) -> tuple[int, int]:
    """The instructions the broker executed while `run()` ran, and of those the ones in
    libcrypto (see CRYPTO)."""
    before = set(workdir.glob(f"cg-{broker.label}.{broker.pid}*"))
    control("-z", str(broker.pid))
    control("-i", "on", str(broker.pid))
    try:
        run()
    finally:
        control("-i", "off", str(broker.pid))
    control("-d", str(broker.pid))
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        dumps = set(workdir.glob(f"cg-{broker.label}.{broker.pid}*")) - before
        for dump in dumps:
            found = TOTALS.search(dump.read_text(encoding="utf-8", errors="replace"))
            if found:
                return int(found.group(1)), in_libcrypto(dump)
        time.sleep(0.5)
    raise BenchError(f"no callgrind dump with totals from {broker.label}")


def in_libcrypto(dump: Path) -> int:
    """The instructions of a dump spent in libcrypto's own functions."""
    done = subprocess.run(
        ["callgrind_annotate", "--inclusive=no", "--threshold=100", str(dump)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    total = 0
    for line in done.stdout.splitlines():
        found = ANNOTATED.match(line)
        if found and "libcrypto" in line:
            total += int(found.group(1).replace(",", ""))
    return total


def per_transaction(
    broker: Broker, workdir: Path, database: str, mode: str, args: argparse.Namespace
) -> tuple[float, float]:
    """Instructions per transaction: all of them, and those in libcrypto."""
    script = workdir / "select.sql"
    pgbench(broker, database, mode, 50, script)  # warm: every import and cache the path needs
    short, short_crypto = counted(broker, workdir, lambda: pgbench(broker, database, mode, args.short, script))
    long, long_crypto = counted(broker, workdir, lambda: pgbench(broker, database, mode, args.long, script))
    log(f"  {broker.label} {mode}: {short:,} instructions for {args.short} tx, {long:,} for {args.long}")
    spread = args.long - args.short
    return (long - short) / spread, (long_crypto - short_crypto) / spread


def benchmark(args: argparse.Namespace, fleet: Fleet, cleanup: contextlib.ExitStack) -> int:
    database = f"broker_cg_{secrets.token_hex(4)}"
    psql(f"CREATE DATABASE {database}")
    cleanup.callback(drop_database, database)
    init = ["pgbench", "-i", "-q", "-s", str(SCALE), "-h", PG_HOST, "-p", str(PG_PORT), "-U", PG_USER, database]
    subprocess.run(init, capture_output=True, env={**os.environ, **CLIENT_ENV}, timeout=600, check=True)
    psql(f"ALTER TABLE pgbench_accounts ADD COLUMN branch_code text NOT NULL DEFAULT '{BRANCH}'", database=database)
    (fleet.workdir / "select.sql").write_text(SCRIPT, encoding="utf-8")
    secret = secrets.token_urlsafe(48)
    trees = [("this", ROOT)] + ([("baseline", args.baseline)] if args.baseline is not None else [])
    brokers = [start_broker(fleet, label, root, database, secret, args.scoped) for label, root in trees]
    results: dict[tuple[str, str], tuple[float, float]] = {}
    for mode in args.modes:
        for broker in brokers:
            results[(broker.label, mode)] = per_transaction(broker, fleet.workdir, database, mode, args)
    print_table(brokers, args, results)
    return 0


def print_table(
    brokers: list[Broker], args: argparse.Namespace, results: dict[tuple[str, str], tuple[float, float]]
) -> None:
    print(f"Instructions per transaction, broker process (callgrind; ({args.long} - {args.short}) transactions).")
    print("Each cell: all instructions / without libcrypto's. " + " ".join(CRYPTO.split()))
    print("")
    ratio = " | ratio |" if len(brokers) > 1 else " |"
    print("| mode | " + " | ".join(f"{b.label} ({b.root})" for b in brokers) + ratio)
    print("| --- |" + " ---: |" * (len(brokers) + (len(brokers) > 1)))
    for mode in args.modes:
        figures = [results[(b.label, mode)] for b in brokers]
        cells = [f"{total / 1000:,.1f}k / {(total - crypto) / 1000:,.1f}k" for total, crypto in figures]
        if len(figures) > 1:
            (first, first_crypto), (second, second_crypto) = figures[0], figures[1]
            cells.append(f"{first / second:.3f}x / {(first - first_crypto) / (second - second_crypto):.3f}x")
        print(f"| {mode} | " + " | ".join(cells) + " |")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    return run_benchmark(
        "bench.pg_instructions", lambda fleet, cleanup: benchmark(args, fleet, cleanup), keep=args.keep
    )


if __name__ == "__main__":
    sys.exit(main())

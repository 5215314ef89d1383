"""Instructions per request of the HTTP door, counted by callgrind, beside the bare proxy's:
a ratio that does not move with the other jobs on a shared machine, unlike req/s.

The same setup as bench.http (a 10,000-employee policy, RS256 tokens from a JWKS, the
generous limits, memory counters, the audit log to a file, the sample API in its own
process), but each proxy runs under `valgrind --tool=callgrind --instr-atstart=no`: the
bare aiohttp proxy (C), this checkout's broker (D), the same run as Python instead of
compiled (DP, `BROKER_PURE_PYTHON=1`) and, with --baseline, another
checkout's broker (D0). Per proxy, an asyncio client sends `--short` and then `--long`
requests over `--connections` keep-alive connections, cycling through the 200 callers,
with instrumentation on only while it runs (`callgrind_control -i on/off`, then a dump),
and once more with no request for `--idle` seconds, which gives the proxy's idle rate R
(the broker's audit writer polls, checkpoints are written by the clock):

    instructions per request = ((I(long) - R t(long)) - (I(short) - R t(short))) / (long - short)

so whatever a run costs once (connections, caches filling) cancels out, and so does the
work done by the clock, which under valgrind (fifty times slower) would otherwise be
charged to each request fifty times over. Counted: the
proxy process and all its threads (the broker's audit writer included); not the upstream
nor the client. Each figure is also given without libcrypto's instructions (the audit
chain's SHA-256: see bench.pg_instructions.CRYPTO). Under valgrind the proxies run about
fifty times slower, so the client's concurrency batches work much as wrk's load does.

    .venv/bin/python -m bench.http_instructions [--baseline DIR] [--short 300] [--long 1500]

Needs valgrind (with callgrind_control). Prints a table (stdout); progress goes to stderr.
"""

from __future__ import annotations

import sys

if __package__ in (None, ""):
    sys.exit("run it as a module: .venv/bin/python -m bench.http_instructions")

import argparse
import asyncio
import contextlib
import itertools
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from bench.http import (
    NOW_TEXT,
    ROSTER_SIZE,
    WAYBILLS,
    Caller,
    JwksServer,
    baseline_policy,
    broker_toml,
    make_identity,
    shifts_on_duty,
)
from bench.meter import GENEROUS_LIMITS
from bench.pg_instructions import CRYPTO, TOTALS, control, in_libcrypto
from bench.process import ROOT, BenchError, Fleet, free_port, log, port_open, run_benchmark
from bench.roster import people, write_policy_dir
from broker.native import PURE_ENV

START_TIMEOUT = 600.0
"""A broker under valgrind starts some fifty times slower than without."""


@dataclass
class Proxy:
    key: str
    label: str
    port: int
    pid: int


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--baseline",
        type=Path,
        metavar="DIR",
        help="also count the broker of another checkout (`git archive <commit>` unpacked; run with this venv)",
    )
    parser.add_argument("--short", type=int, default=300, help="requests of the short run (default 300)")
    parser.add_argument("--long", type=int, default=1500, help="requests of the long run (default 1500)")
    parser.add_argument("--connections", type=int, default=16, help="client keep-alive connections (default 16)")
    parser.add_argument("--idle", type=float, default=10.0, help="seconds to count the idle rate over (default 10)")
    parser.add_argument("--only", default="", help="comma-separated proxies to count: C, DP, D, D0 (default all)")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (configs, logs, callgrind dumps)")
    args = parser.parse_args(argv)
    if args.short < 1 or args.long <= args.short:
        parser.error("--short must be at least 1 and --long more than --short")
    if args.connections < 1:
        parser.error("--connections must be at least 1")
    if args.baseline is not None:
        args.baseline = args.baseline.resolve()
        if not (args.baseline / "broker" / "config.py").exists():
            parser.error(f"--baseline {args.baseline}: not a checkout of the broker")
    for tool in ("valgrind", "callgrind_control", "callgrind_annotate"):
        if shutil.which(tool) is None:
            parser.error(f"{tool} is not on PATH (Debian: apt-get install -y valgrind)")
    return args


async def _drive(port: int, callers: Sequence[Caller], requests: int, connections: int) -> None:
    """`requests` GETs, `connections` at a time, each caller in turn; every answer must be 200."""
    order = itertools.cycle(callers)
    queue = [next(order) for _ in range(requests)]
    failures: list[str] = []
    connector = aiohttp.TCPConnector(limit=connections, force_close=False)
    timeout = aiohttp.ClientTimeout(total=600)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout, auto_decompress=False) as session:

        async def worker(share: list[Caller]) -> None:
            for caller in share:
                headers = {"Authorization": f"Bearer {caller.token}"}
                async with session.get(f"http://127.0.0.1:{port}{caller.path}", headers=headers) as answer:
                    await answer.read()
                    if answer.status != 200:
                        failures.append(f"{caller.employee} {caller.path}: {answer.status}")

        await asyncio.gather(*(worker(queue[n::connections]) for n in range(connections)))
    if failures:
        raise BenchError(f"{len(failures)} of {requests} requests were not 200, e.g. {failures[:3]}")


def drive(port: int, callers: Sequence[Caller], requests: int, connections: int) -> None:
    asyncio.run(_drive(port, callers, requests, connections))


@dataclass
class Count:
    instructions: int
    crypto: int
    seconds: float


def counted(
    proxy: Proxy, workdir: Path, requests: int, callers: Sequence[Caller], connections: int, idle: float = 0.0
) -> Count:
    """The instructions the proxy executed while `requests` were served (or, with none,
    over `idle` seconds), of those the ones in libcrypto, and how long it took."""
    pattern = f"cg-{proxy.key}.{proxy.pid}*"
    before = set(workdir.glob(pattern))
    control("-z", str(proxy.pid))
    control("-i", "on", str(proxy.pid))
    started = time.monotonic()
    try:
        if requests:
            drive(proxy.port, callers, requests, connections)
        else:
            time.sleep(idle)
    finally:
        control("-i", "off", str(proxy.pid))
        seconds = time.monotonic() - started
    control("-d", str(proxy.pid))
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        for dump in set(workdir.glob(pattern)) - before:
            found = TOTALS.search(dump.read_text(encoding="utf-8", errors="replace"))
            if found:
                return Count(int(found.group(1)), in_libcrypto(dump), seconds)
        time.sleep(0.5)
    raise BenchError(f"no callgrind dump with totals from {proxy.label}")


def start_proxies(
    fleet: Fleet, args: argparse.Namespace, upstream_port: int, jwks: JwksServer, callers: Sequence[Caller]
) -> list[Proxy]:
    workdir = fleet.workdir
    python = sys.executable
    wanted = set(args.only.split(",")) if args.only else {"C", "DP", "D", "D0"}

    def valgrind(key: str) -> list[str]:
        return ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={workdir}/cg-{key}.%p"]

    env = {**os.environ, "BROKER_CLOCK": NOW_TEXT, "PYTHONHASHSEED": "0"}  # the same dict layouts each run
    env.pop("BROKER_DEV_SECRET", None)
    plans: list[tuple[str, str, int, list[str], Path, dict[str, str]]] = []
    if "C" in wanted:
        port = free_port()
        command = [
            python, "-m", "bench.upstream", "--bare-proxy", "--loop", "uvloop",
            "--port", str(port), "--upstream", f"http://127.0.0.1:{upstream_port}",
        ]  # fmt: skip
        plans.append(("C", "bare aiohttp proxy", port, command, ROOT, {}))
    if "D" in wanted:
        port = free_port()
        config = broker_toml(workdir, "D", port, upstream_port, jwks.url, reuse_port=False)
        command = [python, "-m", "broker", "run", "-c", str(config)]
        plans.append(("D", "broker (this checkout)", port, command, ROOT, {}))
    if "DP" in wanted:  # the same code, its per-request modules run as Python rather than compiled
        port = free_port()
        config = broker_toml(workdir, "DP", port, upstream_port, jwks.url, reuse_port=False)
        command = [python, "-m", "broker", "run", "-c", str(config)]
        plans.append(("DP", "broker (this checkout, not compiled)", port, command, ROOT, {PURE_ENV: "1"}))
    if "D0" in wanted and args.baseline is not None:
        port = free_port()
        policy = baseline_policy(workdir, args.baseline)
        config = broker_toml(workdir, "D0", port, upstream_port, jwks.url, reuse_port=False, policy=policy)
        command = [python, "-m", "broker", "run", "-c", str(config)]
        plans.append(("D0", f"broker ({args.baseline.name})", port, command, args.baseline, {}))
    proxies = []
    for key, label, port, command, cwd, extra in plans:
        log(f"{key}: {label} on :{port}, starting under callgrind ...")
        proc = fleet.start(key, [*valgrind(key), *command], env={**env, **extra}, cwd=cwd)
        proxies.append(Proxy(key, label, port, proc.pid))
    for proxy in proxies:
        if not fleet.wait_for(lambda p=proxy: port_open(p.port), START_TIMEOUT):  # type: ignore[misc]
            raise BenchError(f"{proxy.label} did not listen within {START_TIMEOUT:.0f} s")
    return proxies


def benchmark(args: argparse.Namespace, fleet: Fleet, cleanup: contextlib.ExitStack) -> int:
    workdir = fleet.workdir
    staff = people(ROSTER_SIZE)
    policy = write_policy_dir(workdir / "policies", staff)
    (policy / "limits.csv").write_text(GENEROUS_LIMITS, encoding="utf-8")
    identity = make_identity(staff, shifts_on_duty(policy))
    jwks = JwksServer(identity.jwks)
    cleanup.callback(jwks.close)
    upstream_port = free_port()
    log(f"upstream: sample API with {WAYBILLS:,} waybills on :{upstream_port} ...")
    fleet.start("upstream", [sys.executable, "-m", "bench.upstream", "--port", str(upstream_port)])
    if not fleet.wait_for(lambda: port_open(upstream_port), 60):
        raise BenchError("the sample API did not start")
    proxies = start_proxies(fleet, args, upstream_port, jwks, identity.callers)
    results: dict[str, tuple[float, float]] = {}
    idle_rates: dict[str, float] = {}
    for proxy in proxies:
        log(f"{proxy.key}: warming up (every caller twice) ...")
        drive(proxy.port, identity.callers, 2 * len(identity.callers), args.connections)
        short = counted(proxy, workdir, args.short, identity.callers, args.connections)
        long = counted(proxy, workdir, args.long, identity.callers, args.connections)
        idle = counted(proxy, workdir, 0, identity.callers, args.connections, idle=args.idle)
        idle_rates[proxy.key] = rate = idle.instructions / idle.seconds
        # Work a proxy does by the clock (the audit writer's polling, checkpoints) is
        # some fifty times more per request under valgrind than at full speed: taken out
        # at the idle rate, for the time each run took.
        spread = args.long - args.short
        net = (long.instructions - rate * long.seconds) - (short.instructions - rate * short.seconds)
        results[proxy.key] = (net / spread, (long.crypto - short.crypto) / spread)
        log(
            f"  {proxy.key}: {short.instructions:,} instructions for {args.short} requests in {short.seconds:.1f} s, "
            f"{long.instructions:,} for {args.long} in {long.seconds:.1f} s; idle {rate:,.0f} a second"
        )
    print_table(proxies, args, results, idle_rates)
    return 0


def print_table(
    proxies: Sequence[Proxy],
    args: argparse.Namespace,
    results: dict[str, tuple[float, float]],
    idle_rates: dict[str, float],
) -> None:
    print(f"Instructions per request, proxy process (callgrind; ({args.long} - {args.short}) requests).")
    idle = ", ".join(f"{key} {rate:,.0f}" for key, rate in idle_rates.items())
    print(f"Net of the work each proxy does while idle, at its idle rate (instructions a second: {idle}).")
    print("Each cell: all instructions / without libcrypto's. " + " ".join(CRYPTO.split()))
    print("")
    bare = results.get("C")
    print("| proxy | instructions per request | vs bare |")
    print("| --- | ---: | ---: |")
    for proxy in proxies:
        total, crypto = results[proxy.key]
        ratio = f"{total / bare[0]:.3f}x / {(total - crypto) / (bare[0] - bare[1]):.3f}x" if bare else "-"
        print(f"| {proxy.key} {proxy.label} | {total / 1000:,.1f}k / {(total - crypto) / 1000:,.1f}k | {ratio} |")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    return run_benchmark(
        "bench.http_instructions", lambda fleet, cleanup: benchmark(args, fleet, cleanup), keep=args.keep
    )


if __name__ == "__main__":
    sys.exit(main())

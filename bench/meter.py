"""Decision throughput with the in-memory counter store vs Redis, side by side.

Every allowed decision makes two store calls (the GCRA rate check and the quota
reservation) and a settle; with Redis each is one round trip. This measures what that
costs a whole `Guard.decide` + `settle`, in one run, interleaved (memory, redis,
memory, redis, ...), sequentially (latency) and with many decisions in flight
(throughput), and writes the table to bench/results/meter-<date>.md.

Usage: python -m bench.meter [--employees 1000] [--decisions 20000] [--rounds 3]
Needs Redis at --redis-url (default redis://127.0.0.1:6379/0); keys use a private prefix
and are deleted afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from datetime import date
from pathlib import Path

import redis.asyncio as aioredis

from bench.roster import people, write_policy_dir
from broker.core.access import Access
from broker.core.clock import FakeClock, parse_instant
from broker.core.guard import Guard
from broker.identity.jwt_authenticator import JwtAuthenticator, mint_token
from broker.identity.settings import IdentitySettings
from broker.meter.meter import Meter
from broker.meter.redis_store import RedisCounterStore
from broker.meter.store import CounterStore, MemoryCounterStore
from broker.policy.snapshot import PolicySnapshot, load_snapshot

NOW = parse_instant("2026-12-02T15:00:00+08:00")
SECRET = "bench-secret-0123456789abcdef0123456789"  # noqa: S105 - a throwaway benchmark key
GENEROUS_LIMITS = """\
# bench: limits high enough that every permitted request is allowed
p3, courier, waybill, 50, 1000000000, shift
p3, trainee, waybill, 50, 1000000000, shift
p3, clerk, waybill, 50, 1000000000, shift
p3, manager, waybill, 50, 1000000000, shift
p3, manager, customer, 50, 1000000000, shift
p3, auditor, waybill, 50, 1000000000, 1d
p3, auditor, customer, 50, 1000000000, 1d
p4, courier, 1000000, 1s
p4, trainee, 1000000, 1s
p4, clerk, 1000000, 1s
p4, manager, 1000000, 1s
p4, auditor, 1000000, 1s
"""
RESULTS = Path(__file__).resolve().parent / "results"


class Holder:
    def __init__(self, snapshot: PolicySnapshot) -> None:
        self.current: PolicySnapshot | None = snapshot


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def build_policy(employees: int) -> PolicySnapshot:
    directory = write_policy_dir(Path(tempfile.mkdtemp(prefix="bench-meter-")) / "policies", people(employees))
    (directory / "limits.csv").write_text(GENEROUS_LIMITS, encoding="utf-8")
    return load_snapshot(directory)


def own_branch_reads(snapshot: PolicySnapshot, tokens: dict[str, str]) -> list[Access]:
    accesses = []
    for emp, employee in sorted(snapshot.index.employees.items()):
        branch = next(iter(sorted(employee.roles_by_branch)), "BR001")
        target = f"GET /api/branches/{branch}/waybills?limit=5"
        accesses.append(Access(tokens[emp], "127.0.0.1", target, "waybill", "read", branch, 5))
    return accesses


async def run(guard: Guard, accesses: list[Access], decisions: int, in_flight: int) -> tuple[float, list[float]]:
    """(decisions per second, per-decision latencies in µs) for decide + settle."""
    latencies: list[float] = []
    queue = iter(range(decisions))

    async def worker() -> None:
        for n in queue:
            access = accesses[n % len(accesses)]
            started = time.perf_counter_ns()
            decision = await guard.decide(access)
            await guard.settle(decision, 5 if decision.allowed else 0)
            latencies.append((time.perf_counter_ns() - started) / 1000)
            assert decision.allowed, decision.reason

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(in_flight)))
    return decisions / (time.perf_counter() - started), latencies


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


async def measure(args: argparse.Namespace) -> list[dict[str, float | str]]:
    log(f"loading a policy of {args.employees} employees ...")
    snapshot = build_policy(args.employees)
    clock = FakeClock(NOW)
    tokens = {emp: mint_token(SECRET, emp, now=NOW) for emp in snapshot.index.employees}
    auth = JwtAuthenticator(IdentitySettings(hs256_secret=SECRET, token_cache_size=len(tokens) + 10), clock)
    accesses = own_branch_reads(snapshot, tokens)
    for access in accesses:  # warm the token cache: this bench is about the meter
        await auth.authenticate(access.credential)
    prefix = f"bench-{uuid.uuid4().hex[:8]}:"
    stores: dict[str, Callable[[], CounterStore]] = {
        "memory": MemoryCounterStore,
        "redis": lambda: RedisCounterStore(args.redis_url, prefix=prefix, timeout=2.0),
    }
    samples: dict[tuple[str, int], list[tuple[float, list[float]]]] = {}
    for round_no in range(1, args.rounds + 1):
        for name, make in stores.items():
            for in_flight in (1, args.in_flight):
                store = make()
                guard = Guard(Holder(snapshot), auth, Meter(store, clock.now, shared=name == "redis"), clock)
                log(f"round {round_no}: {name}, {in_flight} in flight ...")
                samples.setdefault((name, in_flight), []).append(await run(guard, accesses, args.decisions, in_flight))
                await store.close()
    client = aioredis.from_url(args.redis_url)
    keys = [key async for key in client.scan_iter(match=f"{prefix}*")]
    for start in range(0, len(keys), 1000):
        await client.delete(*keys[start : start + 1000])
    await client.aclose()
    rows: list[dict[str, float | str]] = []
    for (name, in_flight), runs in samples.items():
        rates = [rate for rate, _ in runs]
        latencies = [value for _, values in runs for value in values]
        rows.append(
            {
                "store": name,
                "in_flight": in_flight,
                "rate": statistics.median(rates),
                "p50": percentile(latencies, 0.5),
                "p99": percentile(latencies, 0.99),
            }
        )
    return rows


def table(rows: list[dict[str, float | str]], args: argparse.Namespace) -> str:
    memory = {row["in_flight"]: float(row["rate"]) for row in rows if row["store"] == "memory"}
    lines = [
        f"# Meter benchmark, {date.today().isoformat()}",
        "",
        f"Guard.decide + settle on own-branch reads, {args.employees} employees, {args.decisions} decisions "
        f"per run, median of {args.rounds} interleaved rounds; Redis at {args.redis_url} on loopback.",
        "",
        "| store | in flight | decisions/s | ratio to memory | p50 µs | p99 µs |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        ratio = float(row["rate"]) / memory[row["in_flight"]]
        lines.append(
            f"| {row['store']} | {row['in_flight']} | {float(row['rate']):,.0f} | {ratio:.2f} | "
            f"{float(row['p50']):.0f} | {float(row['p99']):.0f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--employees", type=int, default=1000)
    parser.add_argument("--decisions", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--in-flight", type=int, default=32)
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    args = parser.parse_args()
    rows = asyncio.run(measure(args))
    text = table(rows, args)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"meter-{date.today().isoformat()}.md").write_text(text, encoding="utf-8")
    print(text)


if __name__ == "__main__":
    main()

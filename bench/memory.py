"""Resident memory of a broker: its policy, then every employee with an active quota.

For each roster size, a fresh child process builds a whole broker (policy, identity,
meter, guard) from a generated policy directory (bench/roster.py), then has every
employee make one metered decision, so each holds a live quota counter, a rate counter
and the per-revision caches, as after a busy shift. RSS is read from /proc after a full
collection at each step; the baseline is the same process with everything imported.

    python -m bench.memory                 # 100, 10,000 and 100,000 employees
    python -m bench.memory --sizes 1000    # one size
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from datetime import date
from pathlib import Path
from typing import Any

from bench.roster import people, write_policy_dir
from broker.app import build_broker
from broker.config import Settings
from broker.core.access import Access
from broker.core.clock import FakeClock, parse_instant
from broker.identity.jwt_authenticator import mint_token
from broker.meter.store import MemoryCounterStore

RESULTS = Path(__file__).resolve().parent / "results"
SECRET = "bench-memory-secret-0123456789abcdef0123456789"  # noqa: S105 - a bench-only dev secret
NOW = "2026-12-02T15:00:00+08:00"  # a Wednesday afternoon: every generated shift is on


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status (this benchmark needs Linux)")


def settled_rss() -> float:
    gc.collect()
    return rss_mb()


async def child(size: int) -> dict[str, Any]:
    """One size, in this process: the numbers as JSON for the parent."""
    baseline = settled_rss()
    staff = people(size)
    policy = write_policy_dir(Path(tempfile.mkdtemp(prefix=f"bench-memory-{size}-")) / "policies", staff)
    settings = Settings()
    settings = replace(
        settings,
        identity=replace(settings.identity, hs256_secret=SECRET),
        policy=replace(settings.policy, directory=policy, watch=False),
        audit=replace(settings.audit, path="/dev/null"),
    )
    clock = FakeClock(parse_instant(NOW))
    before_policy = settled_rss()
    store = MemoryCounterStore()
    broker = build_broker(settings, clock=clock, store=store)
    with_policy = settled_rss()
    started, allowed = time.perf_counter(), 0
    for person in staff:
        token = mint_token(SECRET, person.id, now=clock.now(), ttl_seconds=8 * 3600)
        access = Access(token, "127.0.0.1", "GET /api/waybills", "waybill", "read", None, 20)
        decision = await broker.guard.decide(access)
        allowed += decision.allowed
    active = settled_rss()
    broker.audit.close()
    return {
        "size": size,
        "baseline_mb": baseline,
        "roster_mb": before_policy - baseline,
        "policy_mb": with_policy - before_policy,
        "counters_mb": active - with_policy,
        "total_mb": active,
        "allowed": allowed,
        "decide_s": time.perf_counter() - started,
    }


def run_child(size: int) -> dict[str, Any]:
    print(f"size {size:,}: building the broker and making every employee's quota active ...", flush=True)
    done = subprocess.run(
        [sys.executable, "-m", "bench.memory", "--child", str(size)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode:
        raise SystemExit(f"the size {size} child failed:\n{done.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    print(
        f"size {size:,}: policy +{result['policy_mb']:.0f} MB, active counters +{result['counters_mb']:.0f} MB, "
        f"RSS {result['total_mb']:.0f} MB ({result['allowed']:,} of {size:,} decisions allowed)",
        flush=True,
    )
    return result


def table(results: list[dict[str, Any]]) -> str:
    lines = [
        "| employees | after imports MB | + policy MB | + active quotas MB | RSS MB | KB per employee |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        per_employee = (r["policy_mb"] + r["counters_mb"]) * 1024 / r["size"]
        lines.append(
            f"| {r['size']:,} | {r['baseline_mb']:.0f} | {r['policy_mb']:.0f} | {r['counters_mb']:.0f} | "
            f"{r['total_mb']:.0f} | {per_employee:.1f} |"
        )
    return "\n".join(lines)


def write_report(results: list[dict[str, Any]]) -> Path:
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"memory-{date.today().isoformat()}.md"
    body = [
        "# Broker memory: policy and active quota counters",
        "",
        f"Machine: {platform.node()}, {platform.machine()}, Python {platform.python_version()}. "
        "Command: `python -m bench.memory`. Each size in a fresh process; RSS after `gc.collect()`.",
        "",
        "Every employee made one metered decision (waybill read, 20 records), so each has a live quota",
        'counter and a rate counter in the in-memory store (with `[meter] store = "redis"` the counters',
        "live in Redis instead), plus its principal in the per-revision cache (grants, limits and rates",
        "are memoised per combination of roles, not per employee).",
        "Verified tokens are cached up to `[identity] token_cache_size` (10,000 by default).",
        "",
        table(results),
        "",
    ]
    path.write_text("\n".join(body), encoding="utf-8")
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 10_000, 100_000])
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(asyncio.run(child(args.child))))
        return
    results = [run_child(size) for size in args.sizes]
    print(table(results))
    print(f"written to {write_report(results)}")


if __name__ == "__main__":
    main()

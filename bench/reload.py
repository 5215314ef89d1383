"""Serving while a big roster reloads: request latency with and without a reload going on.

A `broker run` process with a policy of `--size` (100,000) employees over 500 branches
(bench/roster.py) stands in front of the sample API, as in bench/http.py (RS256 tokens
checked against a JWKS served here, the clock inside every shift, the audit log a file).
This process offers it a fixed request rate (`--rate`, open loop: each request is due
at its time and its latency is counted from then, so a stall of the broker shows in
every request it held up, not only in the one it caught), cycling through the tokens of
up to 200 employees of the branches the sample API serves.

Each round has two windows, one after the other:

* steady: `--steady` seconds of load, no reload;
* reload: roster.csv edited (a comment line: a new revision, the whole policy rebuilt)
  and SIGHUP sent; the window holds the requests due from the signal until `/-/policy`
  counts the reload, plus `--tail` seconds (the swap's after-effects: a garbage
  collection of the new policy, cold caches).

The report gives p50, p99 and max of each kind of window over all rounds, the ratio of
the p99s (the target: at most 3), how long each reload took, and the broker's RSS after
start-up, after the rounds, and at its peak (VmHWM). With `--baseline DIR`, a second
broker runs the code of another source tree (e.g. `git archive <commit> | tar -x -C DIR`)
on the same policy; the two are measured in turn, round by round, each alone under load.

    .venv/bin/python -m bench.reload [--size 100000] [--rate 200] [--rounds 3] [--baseline DIR]

Writes bench/results/reload-<date>[-<tag>].md and .json; progress goes to stderr.
Numbers are from a noisy 2-CPU machine: compare within one run (the ratio), not across.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import shutil
import signal
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

import aiohttp

from bench.http import (
    NOW_TEXT,
    WAYBILLS,
    Caller,
    JwksServer,
    broker_toml,
    make_identity,
    shifts_on_duty,
    wait_until_up,
)
from bench.meter import GENEROUS_LIMITS
from bench.process import BenchError, Fleet, free_port, log, run_benchmark
from bench.roster import people, write_policy_dir

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
RELOAD_TIMEOUT_SECONDS = 180.0
POLL_SECONDS = 0.05
LEAD_SECONDS = 0.5
"""Load offered before the SIGHUP of a reload window (not counted in it)."""
TARGET_RATIO = 3.0


@dataclass
class Variant:
    key: str
    label: str
    port: int
    pid: int
    policy: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@dataclass
class Window:
    """The requests of one window: when each was due (loop time), its latency, its status."""

    due: list[float] = field(default_factory=list)
    latency: list[float] = field(default_factory=list)
    ok: list[bool] = field(default_factory=list)
    late: dict[float, float] = field(default_factory=dict)
    """Due time -> how late this process sent the request: where it could not keep to
    the schedule itself, a latency is the client's as much as the broker's."""

    @property
    def failed(self) -> int:
        return self.ok.count(False)

    def between(self, start: float, end: float) -> Window:
        """The requests due from `start` to `end`."""
        picked = Window()
        for due, latency, ok in zip(self.due, self.latency, self.ok, strict=True):
            if start <= due <= end:
                picked.due.append(due)
                picked.latency.append(latency)
                picked.ok.append(ok)
                picked.late[due] = self.late.get(due, 0.0)
        return picked


@dataclass
class Tally:
    """One variant's figures over every round."""

    steady: list[float] = field(default_factory=list)
    reload: list[float] = field(default_factory=list)
    steady_late: float = 0.0
    reload_late: float = 0.0
    """The most this process was late sending a request, in each kind of window."""
    steady_failed: int = 0
    reload_failed: int = 0
    reload_seconds: list[float] = field(default_factory=list)
    slowest: list[list[tuple[float, float]]] = field(default_factory=list)
    """Per reload: its 10 slowest requests as (seconds after the SIGHUP they were due,
    latency in seconds): where in the reload the stalls fall."""
    rss_started_mb: float = 0.0
    rss_after_mb: float = 0.0
    rss_peak_mb: float = 0.0


def percentile(values: Sequence[float], pct: int) -> float:
    if len(values) < 2:
        return values[0] if values else float("nan")
    return statistics.quantiles(values, n=100, method="inclusive")[pct - 1]


def proc_status_mb(pid: int, key: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{key}:"):
            return int(line.split()[1]) / 1024
    raise BenchError(f"no {key} in /proc/{pid}/status")


async def one_request(session: aiohttp.ClientSession, url: str, token: str, due: float, window: Window) -> None:
    ok = False
    with contextlib.suppress(aiohttp.ClientError, TimeoutError):
        async with session.get(url, headers={"Authorization": f"Bearer {token}"}) as answer:
            await answer.read()
            ok = answer.status == 200
    window.due.append(due)
    window.latency.append(asyncio.get_running_loop().time() - due)
    window.ok.append(ok)


async def offer(
    session: aiohttp.ClientSession, variant: Variant, callers: Sequence[Caller], rate: float, stop: asyncio.Event
) -> Window:
    """Requests at `rate` per second until `stop`, each due at its time; then waits for
    the answers still out."""
    loop = asyncio.get_running_loop()
    window, pending = Window(), set[asyncio.Task[None]]()
    start, n = loop.time(), 0
    while not stop.is_set():
        due = start + n / rate
        if due > loop.time():
            await asyncio.sleep(due - loop.time())
        window.late[due] = loop.time() - due
        caller = callers[n % len(callers)]
        task = asyncio.create_task(one_request(session, variant.url + caller.path, caller.token, due, window))
        pending.add(task)
        task.add_done_callback(pending.discard)
        n += 1
    await asyncio.gather(*pending)
    return window


async def policy_state(session: aiohttp.ClientSession, variant: Variant) -> dict[str, Any]:
    async with session.get(variant.url + "/-/policy") as answer:
        state: dict[str, Any] = await answer.json()
        return state


async def steady_window(
    session: aiohttp.ClientSession, variant: Variant, callers: Sequence[Caller], rate: float, seconds: float
) -> Window:
    stop = asyncio.Event()
    load = asyncio.create_task(offer(session, variant, callers, rate, stop))
    await asyncio.sleep(seconds)
    stop.set()
    return await load


async def reload_window(
    session: aiohttp.ClientSession, variant: Variant, callers: Sequence[Caller], rate: float, tail: float, tag: str
) -> tuple[Window, float]:
    """The load from the SIGHUP until the reload is counted, plus `tail` seconds; and
    how long the reload took."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    load = asyncio.create_task(offer(session, variant, callers, rate, stop))
    await asyncio.sleep(LEAD_SECONDS)
    before = await policy_state(session, variant)
    roster = variant.policy / "roster.csv"
    roster.write_text(roster.read_text(encoding="utf-8") + f"# bench/reload.py: {tag}\n", encoding="utf-8")
    signalled = loop.time()
    os.kill(variant.pid, signal.SIGHUP)
    while True:
        await asyncio.sleep(POLL_SECONDS)
        state = await policy_state(session, variant)
        if state["rejected"] != before["rejected"]:
            raise BenchError(f"{variant.label}: the reload was refused: {state.get('last_rejected')}")
        if state["reloads"] != before["reloads"]:
            break
        if loop.time() - signalled > RELOAD_TIMEOUT_SECONDS:
            raise BenchError(f"{variant.label}: no reload within {RELOAD_TIMEOUT_SECONDS:.0f} s of SIGHUP")
    applied = loop.time()
    await asyncio.sleep(tail)
    stop.set()
    window = await load
    during = window.between(signalled, applied + tail)
    during.due = [due - signalled for due in during.due]
    during.late = {due - signalled: late for due, late in during.late.items()}
    return during, applied - signalled


async def measure(variants: Sequence[Variant], callers: Sequence[Caller], args: argparse.Namespace) -> dict[str, Tally]:
    tallies = {v.key: Tally() for v in variants}
    connector = aiohttp.TCPConnector(limit=128)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=60)) as session:
        for variant in variants:
            log(f"{variant.label}: warm-up {args.warmup:.0f} s ...")
            await steady_window(session, variant, callers, args.rate, args.warmup)
            tallies[variant.key].rss_started_mb = proc_status_mb(variant.pid, "VmRSS")
        for round_no in range(1, args.rounds + 1):
            for variant in variants:
                tally = tallies[variant.key]
                steady = await steady_window(session, variant, callers, args.rate, args.steady)
                during, seconds = await reload_window(
                    session, variant, callers, args.rate, args.tail, f"round {round_no}"
                )
                tally.steady += steady.latency
                tally.reload += during.latency
                tally.steady_late = max(tally.steady_late, *steady.late.values())
                tally.reload_late = max(tally.reload_late, *during.late.values())
                tally.steady_failed += steady.failed
                tally.reload_failed += during.failed
                tally.reload_seconds.append(seconds)
                tally.slowest.append(sorted(zip(during.due, during.latency, strict=True), key=lambda p: -p[1])[:10])
                log(
                    f"round {round_no} {variant.label}: steady p99 {percentile(steady.latency, 99) * 1000:.1f} ms, "
                    f"during the reload ({seconds:.1f} s) p99 {percentile(during.latency, 99) * 1000:.1f} ms, "
                    f"max {max(during.latency) * 1000:.0f} ms"
                )
        for variant in variants:
            tallies[variant.key].rss_after_mb = proc_status_mb(variant.pid, "VmRSS")
            tallies[variant.key].rss_peak_mb = proc_status_mb(variant.pid, "VmHWM")
    return tallies


def start_brokers(
    fleet: Fleet, workdir: Path, jwks: JwksServer, callers: Sequence[Caller], baseline: Path | None
) -> list[Variant]:
    python = sys.executable
    upstream_port = free_port()
    fleet.start("upstream", [python, "-m", "bench.upstream", "--port", str(upstream_port), "--waybills", str(WAYBILLS)])
    env = {**os.environ, "BROKER_CLOCK": NOW_TEXT}
    env.pop("BROKER_DEV_SECRET", None)
    trees = [("new", "this tree", ROOT, workdir / "policies")]
    if baseline is not None:
        # the same files, in a directory of its own (each broker's reloads edit its roster)
        copy = shutil.copytree(workdir / "policies", workdir / "policies-old")
        trees.insert(0, ("old", f"baseline {baseline.name}", baseline, copy))
    variants = []
    for key, label, tree, policy in trees:
        port = free_port()
        config = broker_toml(workdir, key, port, upstream_port, jwks.url, reuse_port=False, policy=policy)
        proc = fleet.start(f"broker-{key}", [python, "-m", "broker", "run", "-c", str(config)], env=env, cwd=tree)
        variants.append(Variant(key, label, port, proc.pid, policy))
    sample = {"Authorization": f"Bearer {callers[0].token}"}
    for variant in variants:
        log(f"{variant.label}: starting (a policy of this size takes a while to load) ...")
        wait_until_up(fleet, variant.label, variant.url + callers[0].path, sample)
    return variants


def summary_rows(variants: Sequence[Variant], tallies: dict[str, Tally]) -> list[dict[str, Any]]:
    rows = []
    for variant in variants:
        t = tallies[variant.key]
        steady99, reload99 = percentile(t.steady, 99), percentile(t.reload, 99)
        rows.append(
            {
                "variant": variant.label,
                "steady_n": len(t.steady),
                "steady_p50_ms": percentile(t.steady, 50) * 1000,
                "steady_p99_ms": steady99 * 1000,
                "steady_max_ms": max(t.steady) * 1000,
                "reload_n": len(t.reload),
                "reload_p50_ms": percentile(t.reload, 50) * 1000,
                "reload_p99_ms": reload99 * 1000,
                "reload_max_ms": max(t.reload) * 1000,
                "p99_ratio": reload99 / steady99,
                "failed": t.steady_failed + t.reload_failed,
                "client_late_ms": (t.steady_late * 1000, t.reload_late * 1000),
                "reload_s": t.reload_seconds,
                "rss_started_mb": t.rss_started_mb,
                "rss_after_mb": t.rss_after_mb,
                "rss_peak_mb": t.rss_peak_mb,
            }
        )
    return rows


def report(rows: Sequence[dict[str, Any]], args: argparse.Namespace, callers: int) -> str:
    lines = [
        f"# Serving during a reload of {args.size:,} employees",
        "",
        f"Machine: {platform.node()}, {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}. "
        f"Command: `python -m bench.reload --size {args.size} --rate {args.rate:g} --rounds {args.rounds} "
        f"--steady {args.steady:g} --tail {args.tail:g}`.",
        "",
        f"{args.rate:g} requests/s offered (open loop; latency from when each request was due), {callers} employees'",
        f"tokens in turn; per round {args.steady:g} s steady, then a reload (roster.csv edited, SIGHUP) whose window",
        f"runs from the signal until `/-/policy` counts the reload, plus {args.tail:g} s. Target: p99 during a reload",
        f"at most {TARGET_RATIO:g}x the p99 without one.",
        "",
        "| broker | steady p50 / p99 / max ms | during a reload p50 / p99 / max ms | p99 ratio "
        "| reload s | failed | client late max ms: steady / reload | RSS after start / after reloads / peak MB |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        reloads = ", ".join(f"{s:.1f}" for s in r["reload_s"])
        lines.append(
            f"| {r['variant']} | {r['steady_p50_ms']:.1f} / {r['steady_p99_ms']:.1f} / {r['steady_max_ms']:.0f} "
            f"| {r['reload_p50_ms']:.1f} / {r['reload_p99_ms']:.1f} / {r['reload_max_ms']:.0f} "
            f"| **{r['p99_ratio']:.2f}x** | {reloads} | {r['failed']} "
            f"| {r['client_late_ms'][0]:.0f} / {r['client_late_ms'][1]:.0f} "
            f"| {r['rss_started_mb']:.0f} / {r['rss_after_mb']:.0f} / {r['rss_peak_mb']:.0f} |"
        )
    counts = ", ".join(f"{r['variant']}: {r['steady_n']:,} steady, {r['reload_n']:,} during reloads" for r in rows)
    lines += [
        "",
        f"Requests measured: {counts}. Client late: the most this process itself fell behind its schedule",
        "when sending (its own stalls count in every latency, in both kinds of window).",
        "",
    ]
    return "\n".join(lines)


def benchmark(args: argparse.Namespace, fleet: Fleet, cleanup: contextlib.ExitStack) -> int:
    workdir = fleet.workdir
    log(f"workdir {workdir}; writing a roster of {args.size:,} ...")
    staff = people(args.size)
    policy = write_policy_dir(workdir / "policies", staff)
    (policy / "limits.csv").write_text(GENEROUS_LIMITS, encoding="utf-8")
    identity = make_identity(staff, shifts_on_duty(policy))
    del staff
    jwks = JwksServer(identity.jwks)
    cleanup.callback(jwks.close)
    variants = start_brokers(fleet, workdir, jwks, identity.callers, args.baseline)
    tallies = asyncio.run(measure(variants, identity.callers, args))
    fleet.check_alive()
    rows = summary_rows(variants, tallies)
    text = report(rows, args, len(identity.callers))
    RESULTS.mkdir(exist_ok=True)
    stem = f"reload-{date.today().isoformat()}" + (f"-{args.tag}" if args.tag else "")
    (RESULTS / f"{stem}.md").write_text(text, encoding="utf-8")
    raw = {"args": {k: str(v) for k, v in vars(args).items()}, "rows": rows, "tallies": {}}
    raw["tallies"] = {k: asdict(t) for k, t in tallies.items()}
    (RESULTS / f"{stem}.json").write_text(json.dumps(raw, indent=1) + "\n", encoding="utf-8")
    print(text)
    log(f"results in {RESULTS.relative_to(ROOT)}/{stem}.*")
    return 0


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=100_000, help="employees on the roster (default 100,000)")
    parser.add_argument("--rate", type=float, default=200.0, help="requests per second offered (default 200)")
    parser.add_argument("--rounds", type=int, default=3, help="steady + reload windows per broker (default 3)")
    parser.add_argument("--steady", type=float, default=8.0, help="seconds of each steady window (default 8)")
    parser.add_argument("--tail", type=float, default=1.0, help="seconds counted after each reload (default 1)")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds of load before measuring (default 3)")
    parser.add_argument("--baseline", type=Path, help="also a broker running the code of this source tree")
    parser.add_argument("--tag", default="", help="results go to bench/results/reload-<date>-<tag>.*")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (configs, logs, audit files)")
    args = parser.parse_args(argv)
    if args.size < 100 or args.rate <= 0 or args.rounds < 1 or args.steady <= 0 or args.tail < 0 or args.warmup < 0:
        parser.error("--size at least 100; --rate, --rounds and --steady above 0; --tail and --warmup at least 0")
    if args.baseline is not None and not (args.baseline / "broker").is_dir():
        parser.error(f"--baseline {args.baseline}: no broker/ package there")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    return run_benchmark("bench.reload", lambda fleet, cleanup: benchmark(args, fleet, cleanup), keep=args.keep)


if __name__ == "__main__":
    started = time.monotonic()
    code = main()
    log(f"total {time.monotonic() - started:.0f} s")
    sys.exit(code)

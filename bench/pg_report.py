"""The pure parts of bench/pg.py: reading pgbench's output and logs, medians, ratios, tables.

Nothing here starts a process or opens a socket, so tests/unit/test_bench_pg.py can
check it quickly.
"""

from __future__ import annotations

import math
import re
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

_TPS = re.compile(
    r"^tps = ([0-9.]+) \((?:without initial connection time|excluding connections establishing)\)", re.MULTILINE
)
_LATENCY = re.compile(r"^latency average = ([0-9.]+) ms", re.MULTILINE)
_PROCESSED = re.compile(r"^number of transactions actually processed: ([0-9]+)", re.MULTILINE)
_FAILED = re.compile(r"^number of failed transactions: ([0-9]+)", re.MULTILINE)
_CONNECT = re.compile(r"^initial connection time = ([0-9.]+) ms", re.MULTILINE)
_ABORTED = re.compile(r"^client [0-9]+ aborted .*$", re.MULTILINE)


class PgbenchOutputError(ValueError):
    """pgbench's report lacks a figure the benchmark needs."""


@dataclass(frozen=True)
class PgbenchSummary:
    tps: float
    """Transactions per second, initial connection time excluded (pgbench's own figure)."""
    latency_avg_ms: float
    transactions: int
    failed: int
    connect_ms: float | None
    aborted: tuple[str, ...]
    """"client N aborted ..." lines: clients pgbench gave up on after an error."""


def parse_pgbench(stdout: str, stderr: str = "") -> PgbenchSummary:
    """The figures of pgbench's end-of-run report (PostgreSQL 13 to 17 wordings)."""
    tps, latency, processed = _TPS.search(stdout), _LATENCY.search(stdout), _PROCESSED.search(stdout)
    if tps is None or processed is None:
        raise PgbenchOutputError(f"no tps / transaction count in pgbench's output:\n{stdout}\n{stderr}")
    failed, connect = _FAILED.search(stdout), _CONNECT.search(stdout)
    return PgbenchSummary(
        tps=float(tps[1]),
        latency_avg_ms=float(latency[1]) if latency else math.nan,
        transactions=int(processed[1]),
        failed=int(failed[1]) if failed else 0,
        connect_ms=float(connect[1]) if connect else None,
        aborted=tuple(_ABORTED.findall(stderr + "\n" + stdout)),
    )


@dataclass(frozen=True)
class Latencies:
    count: int
    p50_ms: float
    p99_ms: float
    max_ms: float
    not_done: int
    """Log lines whose time is not a number (pgbench writes 'failed' or 'skipped')."""


def percentile(ordered: Sequence[int], fraction: float) -> float:
    """Nearest-rank percentile of an ascending sequence; NaN when it is empty."""
    if not ordered:
        return math.nan
    rank = max(1, math.ceil(fraction * len(ordered)))
    return float(ordered[min(rank, len(ordered)) - 1])


def read_latencies(lines: Iterable[str]) -> Latencies:
    """From pgbench `-l` per-transaction log lines: `client_id transaction_no time script_no
    time_epoch time_us [...]`, time in microseconds."""
    values: list[int] = []
    not_done = 0
    for line in lines:
        fields = line.split()
        if len(fields) < 3:
            continue
        if fields[2].isdigit():
            values.append(int(fields[2]))
        else:
            not_done += 1
    values.sort()
    return Latencies(
        count=len(values),
        p50_ms=percentile(values, 0.50) / 1000,
        p99_ms=percentile(values, 0.99) / 1000,
        max_ms=(values[-1] / 1000) if values else math.nan,
        not_done=not_done,
    )


def read_latency_logs(paths: Iterable[Path]) -> Latencies:
    def lines() -> Iterable[str]:
        for path in paths:
            with path.open(encoding="ascii", errors="replace") as handle:
                yield from handle

    return read_latencies(lines())


@dataclass
class Run:
    target: str
    mode: str
    round: int
    seconds: int
    tps: float
    latency_avg_ms: float
    p50_ms: float
    p99_ms: float
    max_ms: float
    transactions: int
    failed: int
    aborted: int
    proxy_cpu_us_per_tx: float | None
    """utime + stime of the proxy process (all its threads) over the run, per transaction."""
    proxy_cpu_percent: float | None
    """The same as a share of one CPU over the run (100 = one core busy all along)."""
    pg_cpu_us_per_tx: float | None
    """PostgreSQL (postmaster and every backend, finished ones included), per transaction."""
    pgbench_cpu_us_per_tx: float
    host_busy_percent: float
    host_steal_percent: float
    host_others_percent: float
    """CPU of the processes outside the measurement (alive at the run's end), as a share of
    the machine: other work on this shared machine."""
    host_irq_percent: float = 0.0
    """Hard and soft interrupt time (loopback networking): busy, but no process's."""
    other_cpu: str = ""
    """The busiest processes besides the measured ones (CPU seconds over the run)."""
    errors: str = ""
    """What pgbench said went wrong (aborted clients, error lines), if anything."""


@dataclass(frozen=True)
class Row:
    target: str
    mode: str
    rounds: int
    tps: float
    tps_min: float
    tps_max: float
    latency_avg_ms: float
    p50_ms: float
    p99_ms: float
    p99_min: float
    p99_max: float
    proxy_cpu_us_per_tx: float | None
    proxy_cpu_percent: float | None
    pg_cpu_us_per_tx: float | None
    pgbench_cpu_us_per_tx: float
    transactions: int
    failed: int
    aborted: int


def _median(values: Iterable[float | None]) -> float | None:
    found = [v for v in values if v is not None and not math.isnan(v)]
    return statistics.median(found) if found else None


def _nan(value: float | None) -> float:
    return math.nan if value is None else value


def summarise(runs: Sequence[Run], targets: Sequence[str], modes: Sequence[str]) -> list[Row]:
    """One row per (mode, target) that has runs, in the given order: medians over rounds,
    totals for the counts."""
    rows = []
    for mode in modes:
        for target in targets:
            mine = [r for r in runs if r.target == target and r.mode == mode]
            if not mine:
                continue
            rates = [r.tps for r in mine]
            p99s = [r.p99_ms for r in mine]
            rows.append(
                Row(
                    target=target,
                    mode=mode,
                    rounds=len(mine),
                    tps=statistics.median(rates),
                    tps_min=min(rates),
                    tps_max=max(rates),
                    latency_avg_ms=_nan(_median(r.latency_avg_ms for r in mine)),
                    p50_ms=_nan(_median(r.p50_ms for r in mine)),
                    p99_ms=_nan(_median(p99s)),
                    p99_min=min(p99s),
                    p99_max=max(p99s),
                    proxy_cpu_us_per_tx=_median(r.proxy_cpu_us_per_tx for r in mine),
                    proxy_cpu_percent=_median(r.proxy_cpu_percent for r in mine),
                    pg_cpu_us_per_tx=_median(r.pg_cpu_us_per_tx for r in mine),
                    pgbench_cpu_us_per_tx=_nan(_median(r.pgbench_cpu_us_per_tx for r in mine)),
                    transactions=sum(r.transactions for r in mine),
                    failed=sum(r.failed for r in mine),
                    aborted=sum(r.aborted for r in mine),
                )
            )
    return rows


def ratio(value: float | None, base: float | None) -> str:
    """`value / base` as '0.42x'; '-' when either is missing or the base is 0."""
    if value is None or base is None or math.isnan(value) or math.isnan(base) or base == 0:
        return "-"
    return f"{value / base:.2f}x"


def _num(value: float | None, digits: int = 0) -> str:
    if value is None or math.isnan(value):
        return "-"
    return f"{value:,.{digits}f}"


def markdown_table(rows: Sequence[Row], labels: dict[str, str]) -> list[str]:
    """The absolute figures, one line per (mode, target)."""
    lines = [
        "| mode | target | tps (median) | tps min-max | latency avg ms | p50 ms | p99 ms (min-max) "
        "| proxy CPU µs/tx | proxy CPU % of 1 core | PostgreSQL CPU µs/tx | pgbench CPU µs/tx "
        "| transactions | failed / aborted |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        lines.append(
            f"| {r.mode} | {labels.get(r.target, r.target)} | {_num(r.tps)} | {_num(r.tps_min)}-{_num(r.tps_max)} "
            f"| {_num(r.latency_avg_ms, 3)} | {_num(r.p50_ms, 3)} "
            f"| {_num(r.p99_ms, 3)} ({_num(r.p99_min, 3)}-{_num(r.p99_max, 3)}) "
            f"| {_num(r.proxy_cpu_us_per_tx, 1)} | {_num(r.proxy_cpu_percent)} | {_num(r.pg_cpu_us_per_tx, 1)} "
            f"| {_num(r.pgbench_cpu_us_per_tx, 1)} | {r.transactions:,} | {r.failed} / {r.aborted} |"
        )
    return lines


def ratio_table(rows: Sequence[Row], labels: dict[str, str], direct: str, pooler: str) -> list[str]:
    """Each row against the direct row and the pooler row of the same mode. Throughput: higher
    is better; latency and CPU: lower is better."""
    base = {(r.mode, r.target): r for r in rows}
    lines = [
        "| mode | target | tps ÷ direct | tps ÷ PgBouncer | avg latency ÷ direct | avg latency ÷ PgBouncer "
        "| p99 ÷ direct | p99 ÷ PgBouncer | proxy CPU/tx ÷ PgBouncer's |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        d, p = base.get((r.mode, direct)), base.get((r.mode, pooler))
        lines.append(
            f"| {r.mode} | {labels.get(r.target, r.target)} "
            f"| {ratio(r.tps, d and d.tps)} | {ratio(r.tps, p and p.tps)} "
            f"| {ratio(r.latency_avg_ms, d and d.latency_avg_ms)} | {ratio(r.latency_avg_ms, p and p.latency_avg_ms)} "
            f"| {ratio(r.p99_ms, d and d.p99_ms)} | {ratio(r.p99_ms, p and p.p99_ms)} "
            f"| {ratio(r.proxy_cpu_us_per_tx, p and p.proxy_cpu_us_per_tx)} |"
        )
    return lines


def round_table(runs: Sequence[Run], labels: dict[str, str]) -> list[str]:
    """Every run, in the order it ran: the raw material of the medians."""
    lines = [
        "| round | mode | target | tps | p99 ms | proxy CPU µs/tx | host busy % | irq % | others % "
        "| steal % | failed | aborted | busiest other processes |",
        "| ---: | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in runs:
        lines.append(
            f"| {r.round} | {r.mode} | {labels.get(r.target, r.target)} | {_num(r.tps)} | {_num(r.p99_ms, 3)} "
            f"| {_num(r.proxy_cpu_us_per_tx, 1)} | {_num(r.host_busy_percent)} "
            f"| {_num(r.host_irq_percent, 1)} | {_num(r.host_others_percent, 1)} "
            f"| {_num(r.host_steal_percent, 1)} "
            f"| {r.failed} | {r.aborted} | {r.other_cpu or '-'} |"
        )
    return lines

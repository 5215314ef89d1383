"""The pure parts of the PostgreSQL benchmark (bench/pg_report.py): no processes, no load."""

from __future__ import annotations

import math

import pytest

from bench.pg_report import (
    PgbenchOutputError,
    Run,
    markdown_table,
    parse_pgbench,
    percentile,
    ratio,
    ratio_table,
    read_latencies,
    summarise,
)

PG15_OUTPUT = """\
pgbench (15.20 (Debian 15.20-0+deb12u1))
transaction type: select.sql
scaling factor: 10
query mode: simple
number of clients: 8
number of threads: 2
maximum number of tries: 1
duration: 10 s
number of transactions actually processed: 51052
number of failed transactions: 3 (0.006%)
latency average = 0.468 ms
initial connection time = 12.345 ms
tps = 17091.123456 (without initial connection time)
"""

PG13_OUTPUT = """\
number of transactions actually processed: 100
latency average = 1.000 ms
tps = 990.000000 (including connections establishing)
tps = 1000.000000 (excluding connections establishing)
"""


def test_pgbench_15_report_is_read() -> None:
    summary = parse_pgbench(PG15_OUTPUT, "client 3 aborted in command 1 (SQL) of script 0; ERROR:  boom\n")
    assert summary.tps == pytest.approx(17091.123456)
    assert summary.latency_avg_ms == pytest.approx(0.468)
    assert summary.transactions == 51052
    assert summary.failed == 3
    assert summary.connect_ms == pytest.approx(12.345)
    assert summary.aborted == ("client 3 aborted in command 1 (SQL) of script 0; ERROR:  boom",)


def test_older_pgbench_takes_the_figure_without_connections() -> None:
    summary = parse_pgbench(PG13_OUTPUT)
    assert summary.tps == 1000.0
    assert summary.failed == 0
    assert summary.connect_ms is None


def test_a_report_without_tps_is_an_error() -> None:
    with pytest.raises(PgbenchOutputError):
        parse_pgbench("pgbench: error: connection to server failed\n")


def test_latency_log_percentiles_in_ms_and_failed_lines_counted() -> None:
    lines = [f"0 {n} {n * 10} 0 1700000000 {n}" for n in range(1, 101)]  # 10 .. 1000 µs
    lines += ["1 7 failed 0 1700000000 5", "", "garbage"]
    found = read_latencies(lines)
    assert found.count == 100
    assert found.p50_ms == pytest.approx(0.5)
    assert found.p99_ms == pytest.approx(0.99)
    assert found.max_ms == pytest.approx(1.0)
    assert found.not_done == 1


def test_percentile_edges() -> None:
    assert math.isnan(percentile([], 0.5))
    assert percentile([7], 0.99) == 7.0
    assert percentile([1, 2, 3, 4], 0.5) == 2.0


def test_ratio_formatting() -> None:
    assert ratio(50, 200) == "0.25x"
    assert ratio(None, 1) == "-"
    assert ratio(1, 0) == "-"
    assert ratio(math.nan, 1) == "-"


def run(target: str, mode: str, round_no: int, tps: float, p99: float, cpu: float | None) -> Run:
    return Run(
        target=target,
        mode=mode,
        round=round_no,
        seconds=10,
        tps=tps,
        latency_avg_ms=8 / tps * 1000,
        p50_ms=p99 / 4,
        p99_ms=p99,
        max_ms=p99 * 2,
        transactions=int(tps * 10),
        failed=0,
        aborted=0,
        proxy_cpu_us_per_tx=cpu,
        proxy_cpu_percent=None if cpu is None else 50.0,
        pg_cpu_us_per_tx=20.0,
        pgbench_cpu_us_per_tx=10.0,
        host_busy_percent=99.0,
        host_steal_percent=0.0,
        host_others_percent=1.0,
    )


RUNS = [
    run("A", "simple", 1, 10_000, 1.0, None),
    run("B", "simple", 1, 8_000, 2.0, 20.0),
    run("C", "simple", 1, 2_000, 4.0, 200.0),
    run("A", "simple", 2, 12_000, 3.0, None),
    run("B", "simple", 2, 6_000, 2.0, 30.0),
    run("C", "simple", 2, 3_000, 6.0, 100.0),
    run("A", "simple", 3, 11_000, 2.0, None),
    run("B", "simple", 3, 7_000, 2.0, 25.0),
    run("C", "simple", 3, 2_500, 5.0, 150.0),
]
LABELS = {"A": "A direct", "B": "B PgBouncer", "C": "C broker"}


def test_summaries_are_medians_over_rounds_in_target_order() -> None:
    rows = summarise(RUNS, ["A", "B", "C"], ["simple", "prepared"])
    assert [(r.target, r.mode) for r in rows] == [("A", "simple"), ("B", "simple"), ("C", "simple")]
    direct, pooler, broker = rows
    assert (direct.tps, direct.tps_min, direct.tps_max) == (11_000, 10_000, 12_000)
    assert direct.p99_ms == 2.0
    assert direct.proxy_cpu_us_per_tx is None
    assert pooler.proxy_cpu_us_per_tx == 25.0
    assert broker.tps == 2_500
    assert broker.transactions == 75_000
    assert broker.rounds == 3


def test_ratio_table_compares_with_direct_and_pgbouncer_of_the_same_mode() -> None:
    rows = summarise(RUNS, ["A", "B", "C"], ["simple"])
    table = ratio_table(rows, LABELS, "A", "B")
    broker = next(line for line in table if "C broker" in line)
    cells = [c.strip() for c in broker.strip("|").split("|")]
    # tps 2,500 vs 11,000 and 7,000; p99 5.0 vs 2.0 and 2.0; proxy CPU 150 vs 25
    assert cells[2:4] == ["0.23x", "0.36x"]
    assert cells[6:9] == ["2.50x", "2.50x", "6.00x"]
    direct = next(line for line in table if "A direct" in line)
    assert direct.rstrip().endswith("| - |")


def test_markdown_table_has_a_line_per_row_and_aligned_columns() -> None:
    rows = summarise(RUNS, ["A", "B", "C"], ["simple"])
    table = markdown_table(rows, LABELS)
    assert len(table) == 2 + len(rows)
    assert len({line.count("|") for line in table}) == 1
    assert "| simple | C broker | 2,500 | 2,000-3,000 |" in table[-1]

"""What a statement-cache miss costs: `analyse()` per statement vs parsing alone.

Apps using the simple query protocol send literal values inline, so nearly every
statement text is new to the session's cache and is analysed from scratch. This times
`broker.pg.sql.analyse` on a handful of representative statements (each call with a
fresh literal, as an app would send it) side by side with the floor, pglast's
`parse_sql` of the same text, in one run and interleaved (floor, analyse, floor,
analyse, ...), and prints medians and p99 per statement. A third contender, "cache hit by shape", is
`StatementCache.analyse` with the statement's shape already cached (one earlier text of it
analysed, outside the timed loop): scanning the new text and making its Statement from the
cached analysis (broker/pg/sql_shape.py); a statement not shaped falls back to analyse.

With `--baseline REV` the analyser as committed at REV (broker/pg/sql.py and
broker/pg/sql_scope.py, loaded from git into a private module) is timed in the same
loop, so before and after are measured on the same machine at the same moment.

Usage: python -m bench.sql [--calls 3000] [--baseline REV] [--label after]
Writes the table to bench/results/sql-<date>.md, replacing only the section `## <label>`.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import date
from pathlib import Path
from typing import Any

from pglast.parser import parse_sql

from broker.pg.analyser import InlineAnalyser, run_now
from broker.pg.sql import analyse
from broker.pg.statement_cache import StatementCache
from broker.policy.snapshot import PolicySnapshot
from broker.policy.table import TableMap, parse_tables

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"

STATEMENTS: list[tuple[str, str]] = [
    ("no table", "SELECT 1"),
    ("one scoped table, literal", "SELECT id, status FROM waybills WHERE waybill_no = 'BR001-{n}' LIMIT 1"),
    (
        "join of two scoped tables",
        "SELECT w.id, w.status, c.name FROM waybills w JOIN customers c ON c.id = w.customer_id "
        "WHERE w.waybill_no = 'BR001-{n}' LIMIT 10",
    ),
    (
        "CTE",
        "WITH recent AS (SELECT id, status FROM waybills WHERE created_at > '2026-11-01' AND id > {n}) "
        "SELECT status, count(*) FROM recent GROUP BY status",
    ),
    ("UPDATE", "UPDATE waybills SET status = 'delivered' WHERE waybill_no = 'BR001-{n}'"),
    (
        "INSERT with params",
        "INSERT INTO waybills (waybill_no, branch_code, sender_name, status) VALUES ($1, $2, $3, $4) -- {n}",
    ),
    ("one scoped table, non-ASCII literal", "SELECT id FROM waybills WHERE recipient_name = '张三{n}' LIMIT 1"),
]


def _tables() -> TableMap:
    text = (ROOT / "policies" / "tables.toml").read_text(encoding="utf-8")
    tables, problems = parse_tables("tables.toml", text.encode())
    assert tables is not None, problems
    return tables


def _baseline(rev: str) -> Callable[[str, TableMap], Any]:
    """`analyse` as committed at `rev`, imported from a private copy of the two modules."""
    folder = Path(tempfile.mkdtemp(prefix="bench-sql-"))
    package = folder / "_sql_baseline"
    package.mkdir()
    (package / "__init__.py").write_text("")
    for name in ("sql", "sql_scope"):
        source = subprocess.run(
            ["git", "show", f"{rev}:broker/pg/{name}.py"],
            cwd=ROOT,
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        source = source.replace("broker.pg.sql_", "_sql_baseline.sql_")
        (package / f"{name}.py").write_text(source)
    sys.path.insert(0, str(folder))
    module = importlib.import_module("_sql_baseline.sql")
    return module.analyse  # type: ignore[no-any-return]


def _percentile(values: list[int], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] / 1000


def run(calls: int, baseline: str | None) -> list[str]:
    tables = _tables()
    contenders: list[tuple[str, Callable[[str], Any]]] = [("parse_sql (floor)", parse_sql)]
    if baseline is not None:
        old = _baseline(baseline)
        contenders.append((f"analyse @{baseline}", lambda sql: old(sql, tables)))
    contenders.append(("analyse (working tree)", lambda sql: analyse(sql, tables)))
    none: Any = None
    snapshot = PolicySnapshot("bench", ROOT, none, none, none, (), (), (), tables=tables)
    cache = StatementCache(InlineAnalyser())
    contenders.append(("cache hit by shape", lambda sql: run_now(cache.analyse(sql, snapshot))))
    warmup = 200
    times: dict[tuple[str, str], list[int]] = {(label, who): [] for label, _ in STATEMENTS for who, _ in contenders}
    texts = {label: [template.format(n=n) for n in range(calls + warmup)] for label, template in STATEMENTS}
    for label, _ in STATEMENTS:  # every statement must be accepted by every contender (this primes the shapes)
        for _who, call in contenders:
            call(texts[label][0])
    gc.collect()
    clock = time.perf_counter_ns
    for n in range(calls + warmup):
        for label, _ in STATEMENTS:
            sql = texts[label][n]
            for who, call in contenders:
                started = clock()
                call(sql)
                elapsed = clock() - started
                if n >= warmup:
                    times[(label, who)].append(elapsed)
    header = "| statement | " + " | ".join(f"{who} median / p99 (µs)" for who, _ in contenders) + " | ... / floor |"
    lines = [header, "|" + " --- |" * (len(contenders) + 2)]
    for label, _ in STATEMENTS:
        cells = []
        medians = []
        for who, _ in contenders:
            values = times[(label, who)]
            medians.append(statistics.median(values) / 1000)
            cells.append(f"{medians[-1]:.1f} / {_percentile(values, 0.99):.1f}")
        ratio = " / ".join(f"{m / medians[0]:.1f}" for m in medians[1:])
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {ratio} |")
    return lines


def _write(label: str, body: list[str], calls: int) -> Path:
    path = RESULTS / f"sql-{date.today().isoformat()}.md"
    sections: dict[str, str] = {}
    order: list[str] = []
    title = "# SQL analysis per cache miss (`python -m bench.sql`)\n"
    if path.exists():
        current = None
        for line in path.read_text(encoding="utf-8").splitlines(keepends=True):
            if line.startswith("## "):
                current = line[3:].strip()
                order.append(current)
                sections[current] = ""
            elif current is not None:
                sections[current] += line
    if label not in sections:
        order.append(label)
    legend = (
        f"\n{calls} calls per statement and contender after 200 warm-up calls, interleaved; each call gets a "
        "fresh literal, so no text repeats (the shape-cache contender has each statement's shape cached "
        "before the timed calls). Times are per call in µs; ... / floor is each contender's median over "
        "parse_sql's.\n\n"
    )
    sections[label] = legend + "\n".join(body) + "\n\n"
    path.write_text(title + "".join(f"\n## {name}\n{sections[name].lstrip(chr(10))}" for name in order))
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=3000, help="timed calls per statement and contender")
    parser.add_argument("--baseline", help="also time analyse as committed at this git revision")
    parser.add_argument("--label", default="after", help="section of the results file to write")
    args = parser.parse_args()
    lines = run(args.calls, args.baseline)
    print("\n".join(lines))
    print(f"\nwritten to {_write(args.label, lines, args.calls)}")


if __name__ == "__main__":
    main()

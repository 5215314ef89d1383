"""Audit events per second: the chained, checkpointed writer against the plain one.

Each variant gets the same decision events (the shape `broker run` writes, ~700 bytes)
emitted on an event loop as fast as it can take them, yielding to the loop every 256
events so the batch timer runs, as it would between requests; the clock runs from the
first event to `close()` returning, so everything is on disk (or in the page cache,
fsync off) when it stops. Variants, interleaved per round, medians across rounds:

    plain      the writer before chaining (a batch per 50 ms, one write each; no chain)
    chain      chained lines, a signed checkpoint every second, fsync off
    chain+fsync batch   ... and fsync after every write (the default)
    chain+fsync 1s      ... fsync at most once a second

Usage: python -m bench.audit_writer [--events 200000] [--rounds 3]
Writes bench/results/audit-writer-<date>.md. One core's worth: the writer thread and the
loop share the GIL, which is what the HTTP door's loop sees.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import queue
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from datetime import date
from pathlib import Path
from typing import Any

from broker.audit.checkpoint import load_signer, write_key_pair
from broker.audit.log import LINGER_SECONDS, FileAuditSink, render
from broker.config import AuditSettings

RESULTS = Path(__file__).resolve().parent / "results"
EVENT: dict[str, Any] = {
    "time": "2026-12-02T07:00:00.123456Z", "decision_id": "5f2a9c0d1e3b0000000001", "door": "http",
    "employee": "e000054", "roles": ["courier"], "branches": ["BR006"], "client": "127.0.0.1",
    "method": "GET", "path": "/api/branches/BR006/waybills?limit=1", "resource": "waybill", "action": "read",
    "record_branch": "BR006", "verdict": "allow", "reason": "allow", "detail": None,
    "rule": "p, courier, waybill, read (roles.csv:3)", "policy_revision": "9eee4025b583",
    "records_requested": 1, "records_returned": 1, "records_charged": 1, "quota_left": 499,
    "probe": False, "meter": "local", "status": 200, "latency_ms": 2.137,
}  # fmt: skip


class PlainSink:
    """The writer as it was before chaining: lines batched on the loop, one write per
    batch in a thread, nothing else. The baseline this bench compares against."""

    def __init__(self, path: str) -> None:
        self._batches: queue.SimpleQueue[list[bytes] | None] = queue.SimpleQueue()
        self._stream = Path(path).open("ab")  # noqa: SIM115 - closed in close()
        self._pending: list[bytes] = []
        self._timer: asyncio.TimerHandle | None = None
        self._thread = threading.Thread(target=self._drain, daemon=True)
        self._thread.start()

    def emit(self, event: dict[str, Any]) -> None:
        self._pending.append(render(event))
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(LINGER_SECONDS, self._hand_over)

    def _hand_over(self) -> None:
        self._timer = None
        if self._pending:
            batch, self._pending = self._pending, []
            self._batches.put(batch)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._hand_over()
        self._batches.put(None)
        self._thread.join()
        self._stream.close()

    def _drain(self) -> None:
        while (batch := self._batches.get()) is not None:
            self._stream.write(b"".join(batch))
            self._stream.flush()


async def timed(make: Callable[[str], Any], path: str, events: int) -> float:
    sink = make(path)
    started = time.perf_counter()
    for n in range(events):
        sink.emit(EVENT)
        if n % 256 == 255:
            await asyncio.sleep(0)
    sink.close()
    return events / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="broker-audit-bench-"))
    write_key_pair(work / "key", work / "key.pub")
    signer = load_signer(work / "key")

    def chained(fsync: str, interval: float = 1.0) -> Callable[[str], Any]:
        settings = {"checkpoint_seconds": 1.0, "fsync": fsync, "fsync_interval_seconds": interval}
        return lambda path: FileAuditSink(AuditSettings(path=path, **settings), signer)  # type: ignore[arg-type]

    variants: dict[str, Callable[[str], Any]] = {
        "plain (no chain, no fsync)": PlainSink,
        "chain + checkpoints, fsync off": chained("off"),
        "chain + checkpoints, fsync every batch (default)": chained("batch"),
        "chain + checkpoints, fsync every 1 s": chained("interval"),
    }
    rates: dict[str, list[float]] = {name: [] for name in variants}
    for round_ in range(args.rounds):
        for index, (name, make) in enumerate(variants.items()):
            path = work / f"audit-{round_}-{index}.log"
            rates[name].append(asyncio.run(timed(make, str(path), args.events)))
            print(f"round {round_ + 1}: {name}: {rates[name][-1]:,.0f} events/s", file=sys.stderr)
            os.unlink(path)
    base = statistics.median(rates["plain (no chain, no fsync)"])
    lines = [
        f"# Audit writer, {date.today().isoformat()}",
        "",
        f"Command: `python -m bench.audit_writer --events {args.events} --rounds {args.rounds}`; "
        f"{os.cpu_count()} CPUs, Python {sys.version.split()[0]}, file in {work.parent} "
        "(whatever filesystem that is: fsync costs what the disk under it costs).",
        "",
        "| writer | events/s (median) | vs plain | spread (min-max) |",
        "|---|---:|---:|---:|",
    ]
    for name, found in rates.items():
        median = statistics.median(found)
        lines.append(f"| {name} | {median:,.0f} | {median / base:.2f}x | {min(found):,.0f}-{max(found):,.0f} |")
    text = "\n".join(lines) + "\n"
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"audit-writer-{date.today().isoformat()}.md").write_text(text, encoding="utf-8")
    print(text)


if __name__ == "__main__":
    main()

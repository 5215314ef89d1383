"""The audit line and its time text stay what structlog and clock.iso made them."""

from __future__ import annotations

import math
import queue
import random

import orjson
import structlog

from broker.audit.event import utc_iso
from broker.audit.log import EVENT_NAME, render
from broker.core.clock import iso


def _structlog_line(event: dict[str, object]) -> bytes:
    """What the audit sink wrote before: structlog with an orjson renderer."""
    lines: queue.SimpleQueue[bytes] = queue.SimpleQueue()

    class Sink:
        def info(self, line: bytes) -> None:
            lines.put(line)

    def rendered(_: object, __: str, event_dict: dict[str, object]) -> bytes:
        return orjson.dumps(event_dict, default=str) + b"\n"

    structlog.wrap_logger(Sink(), processors=[rendered]).info(EVENT_NAME, **event)
    return lines.get_nowait()


def test_render_matches_the_structlog_line() -> None:
    event: dict[str, object] = {"time": "2026-12-02T07:00:00.5Z", "roles": ["courier"], "quota_left": None, "n": 3}
    assert render(event) == _structlog_line(event)
    assert render(event).endswith(b',"event":"decision"}\n')


def test_render_edge_events_as_before() -> None:
    def before(event: dict[str, object]) -> bytes:
        return orjson.dumps({**event, "event": EVENT_NAME}, default=str) + b"\n"

    for event in ({}, {"when": iso(0.0), "odd": {1, 2} and frozenset({3})}, {"k": "é\n"}):
        assert render(event) == before(event), event
    # an event that names itself keeps its name (signals raised on an employee)
    assert render({"event": "signal", "n": 1}) == b'{"event":"signal","n":1}\n'


def test_utc_iso_is_clock_iso() -> None:
    rng = random.Random(7)  # noqa: S311 - test data, not secrets
    edges = [1796191200 + k / 1e6 for k in range(-50, 50)] + [1796191200.9999995, 1796191200.0000005, 0.0, 0.25]
    values = edges + [math.nextafter(v, 0) for v in edges] + [rng.uniform(1.7e9, 1.9e9) for _ in range(20_000)]
    for value in values + sorted(values):
        assert utc_iso(value) == iso(value), value

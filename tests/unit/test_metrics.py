"""The decision metrics are tallied per request and folded in when scraped: what a scrape
shows must be exactly what prometheus_client's own calls would have shown."""

from __future__ import annotations

import random

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from broker.admin.metrics import LATENCY_BUCKETS, Metrics


def _samples(text: bytes, prefixes: tuple[str, ...]) -> list[tuple[str, float]]:
    """(series, value), the value rounded: a sum added in another order differs in its
    last bits."""
    found = []
    for line in text.decode().splitlines():
        if line.startswith(prefixes) and "_created" not in line:
            series, value = line.rsplit(" ", 1)
            found.append((series, round(float(value), 6)))
    return sorted(found)


def test_tallied_decisions_scrape_as_prometheus_client_would_count_them() -> None:
    metrics = Metrics()
    registry = CollectorRegistry()
    decisions = Counter("broker_decisions_total", "d", ["verdict", "reason"], registry=registry)
    latency = Histogram("broker_request_duration_seconds", "l", ["verdict"], buckets=LATENCY_BUCKETS, registry=registry)
    served = Counter("broker_meter_served_total", "m", ["served"], registry=registry)
    records = Counter("broker_records_returned_total", "r", ["resource"], registry=registry)
    chooser = random.Random(7)  # noqa: S311 - a repeatable mix of figures, not a secret
    for round_no in range(3):  # scraped between rounds: nothing counted twice, nothing lost
        for _ in range(500):
            verdict, reason = chooser.choice([("allow", "allow"), ("deny", "bulk.over_cap")])
            seconds = chooser.choice([*LATENCY_BUCKETS, 0.0, 0.0001, 0.003, 11.0, 99.0])
            metered = chooser.choice(["local", ""])
            metrics.decided(verdict, reason, seconds, metered)
            decisions.labels(verdict, reason).inc()
            latency.labels(verdict).observe(seconds)
            if metered:
                served.labels(metered).inc()
            metrics.returned("waybill", round_no + 1)
            records.labels("waybill").inc(round_no + 1)
        prefixes = (
            "broker_decisions_total",
            "broker_request_duration_seconds",
            "broker_meter_served_total",
            "broker_records_returned_total",
        )
        assert _samples(metrics.render(), prefixes) == _samples(generate_latest(registry), prefixes)

"""Prometheus metrics, one registry per broker so tests can run several side by side."""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self._tallies: dict[tuple[str, str, str], list[float]] = {}
        """(verdict, reason, meter) -> decisions per latency bucket (+Inf last), then the sum."""
        self._returned: dict[str, int] = {}
        self._statements: dict[tuple[str, str], int] = {}
        """PostgreSQL statements by (verdict, reason), tallied like decisions."""
        self.decisions = Counter(
            "broker_decisions_total",
            "Decisions by verdict and reason code",
            ["verdict", "reason"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "broker_request_duration_seconds",
            "Time from request received to response sent, through the broker",
            ["verdict"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.upstream_errors = Counter(
            "broker_upstream_errors_total", "Upstream failures by kind", ["kind"], registry=self.registry
        )
        self.records = Counter(
            "broker_records_returned_total",
            "Records passed on to employees, by resource",
            ["resource"],
            registry=self.registry,
        )
        self.metered = Counter(
            "broker_meter_served_total",
            "Decisions by which counters metered them: shared, local, fallback or refused",
            ["served"],
            registry=self.registry,
        )
        self.shadow_decisions = Counter(
            "broker_shadow_decisions_total",
            "What the report-only shadow policy would have decided, by verdict and reason",
            ["verdict", "reason"],
            registry=self.registry,
        )
        self.policy_reloads = Counter(
            "broker_policy_reloads_total",
            "Policy reload attempts by outcome",
            ["outcome"],
            registry=self.registry,
        )
        self.policy_build_failures = Counter(
            "broker_policy_build_failures_total",
            "Policy reloads whose build failed whatever the policy says, by cause: the build process "
            "overran [policy] build_timeout_seconds (timeout), died (crash) or raised (error); "
            "the last good policy kept serving",
            ["cause"],
            registry=self.registry,
        )
        self.store_persistent = Gauge(
            "broker_meter_store_persistent",
            "1 when the shared counter store keeps its counts across its own restart (Redis appendonly), "
            "0 when it does not or would not say (a restart would hand out fresh quotas); unset in memory",
            registry=self.registry,
        )
        self.signals = Counter(
            "broker_signals_total",
            "Signals of a rented login raised, by signal and action (flag or freeze)",
            ["signal", "action"],
            registry=self.registry,
        )
        self.policy_loaded = Gauge("broker_policy_loaded", "1 while a valid policy is loaded", registry=self.registry)
        self.pg_sessions = Gauge(
            "broker_pg_sessions", "Employee sessions open through the PostgreSQL door", registry=self.registry
        )
        self.pg_logins = Counter(
            "broker_pg_logins_total",
            "PostgreSQL door logins by verdict and reason code",
            ["verdict", "reason"],
            registry=self.registry,
        )
        self.pg_statements = Counter(
            "broker_pg_statements_total",
            "Statements through the PostgreSQL door by verdict and reason code (SQLSTATE class for server errors)",
            ["verdict", "reason"],
            registry=self.registry,
        )
        self.pg_cut = Counter(
            "broker_pg_statements_cut_total",
            "Statements stopped mid-stream for returning more rows or bytes than allowed",
            registry=self.registry,
        )

        self.roster_pulls = Counter(
            "broker_roster_pulls_total",
            "Roster pulls by the running broker, by outcome: applied, unchanged, refused, unreadable, shrink, failed",
            ["outcome"],
            registry=self.registry,
        )
        self.roster_pulled = Gauge(
            "broker_roster_last_pull_success_timestamp_seconds",
            "When a roster pull last succeeded (applied or unchanged), seconds since the epoch; 0 until one has",
            registry=self.registry,
        )

    def decided(self, verdict: str, reason: str, seconds: float, metered: str) -> None:
        """Count one decision: tallied in plain lists here and folded into the Prometheus
        series when they are read (`render`). prometheus_client's own path (a lock per
        counter, a Python loop over the histogram's buckets) cost ~3 µs a request; this
        is a dictionary lookup and a C bisect, with memory bounded by the label values."""
        key = (verdict, reason, metered)
        tally = self._tallies.get(key)
        if tally is None:
            tally = self._tallies[key] = [0.0] * (len(LATENCY_BUCKETS) + 2)
        tally[bisect_left(LATENCY_BUCKETS, seconds)] += 1  # the bucket Histogram.observe picks
        tally[-1] += seconds

    def returned(self, resource: str, count: int) -> None:
        """Count records passed on (tallied like `decided`)."""
        self._returned[resource] = self._returned.get(resource, 0) + count

    def statement_counted(self, verdict: str, reason: str) -> None:
        """Count one statement of the PostgreSQL door (tallied like `decided`: a Counter's
        inc takes a lock, and there is one per statement)."""
        key = (verdict, reason)
        self._statements[key] = self._statements.get(key, 0) + 1

    def _fold_tallies(self) -> None:
        """Add what was tallied since the last read to the Prometheus series."""
        for (verdict, reason, metered), tally in self._tallies.items():
            decided = int(sum(tally[:-1]))
            if not decided:
                continue
            self.decisions.labels(verdict, reason).inc(decided)
            if metered:
                self.metered.labels(metered).inc(decided)
            histogram = self.latency.labels(verdict)
            # prometheus_client (pinned) keeps one value per bucket, non-cumulative, and the
            # sum: added to directly, as observe() would have one by one
            # (tests/unit/test_metrics.py holds the two equal)
            for index, count in enumerate(tally[:-1]):
                if count:
                    histogram._buckets[index].inc(count)
            histogram._sum.inc(tally[-1])
            tally[:] = [0.0] * len(tally)
        returned, self._returned = self._returned, {}
        for resource, records in returned.items():
            self.records.labels(resource).inc(records)
        statements, self._statements = self._statements, {}
        for (verdict, reason), times in statements.items():
            self.pg_statements.labels(verdict, reason).inc(times)

    def signal_counted(self, signal: str, action: str) -> None:
        self.signals.labels(signal, action).inc()

    def watch_audit(self, sink: object) -> None:
        """Audit backlog figures, read from the sink at each scrape (no work per event)."""
        backlog = getattr(sink, "backlog", None)
        if backlog is None:
            return
        accepting = Gauge(
            "broker_audit_accepting",
            "1 while the audit log is being written; 0 while its backlog is past the bounds and records are refused",
            registry=self.registry,
        )
        accepting.set_function(lambda: 1.0 if getattr(sink, "accepting", True) else 0.0)
        figures = {
            "broker_audit_backlog_bytes": ("Audit events handed to the writer and not yet written, in bytes", "bytes"),
            "broker_audit_backlog_events": ("Audit events handed to the writer and not yet written", "events"),
            "broker_audit_dropped": (
                "Audit events dropped since start: the backlog was past twice its bound",
                "dropped",
            ),
            "broker_audit_write_failures": (
                "Failed writes to the audit log since start (each retried)",
                "write_failures",
            ),
        }
        for name, (text, field) in figures.items():
            Gauge(name, text, registry=self.registry).set_function(_reader(backlog, field))

    def render(self) -> bytes:
        self._fold_tallies()
        return generate_latest(self.registry)


def _reader(source: object, field: str) -> Callable[[], float]:
    return lambda: float(getattr(source, field))

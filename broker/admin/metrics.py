"""Prometheus metrics, one registry per broker so tests can run several side by side."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self._children: dict[tuple[str, str, str], tuple[Counter, Histogram, Counter | None]] = {}
        self._records: dict[str, Counter] = {}
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

    def decided(self, verdict: str, reason: str, seconds: float, metered: str) -> None:
        """Count one decision. Label children are cached: `labels()` costs microseconds
        per call, and this runs on every request."""
        key = (verdict, reason, metered)
        children = self._children.get(key)
        if children is None:
            children = (
                self.decisions.labels(verdict, reason),
                self.latency.labels(verdict),
                self.metered.labels(metered) if metered else None,
            )
            self._children[key] = children
        children[0].inc()
        children[1].observe(seconds)
        if children[2] is not None:
            children[2].inc()

    def returned(self, resource: str, count: int) -> None:
        """Count records passed on (label child cached, as in `decided`)."""
        child = self._records.get(resource)
        if child is None:
            child = self._records[resource] = self.records.labels(resource)
        child.inc(count)

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
        return generate_latest(self.registry)


def _reader(source: object, field: str) -> Callable[[], float]:
    return lambda: float(getattr(source, field))

"""The running broker's roster pulls: at start, then every `[roster] pull_interval_seconds`.

Each pull is `broker roster pull` without --allow-shrink, run off the event loop. A pull
that is refused or fails writes nothing, so the last good roster keeps serving; it is
logged with its problems, counted in `broker_roster_pulls_total`, and audited, as is a
pull that changes the roster (who was added, removed, changed): an investigator asking
"since when could e1001 read BR002?" finds the answer in the audit trail. A pull that
changes nothing is counted only.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import structlog

from broker.admin.metrics import Metrics
from broker.audit.log import AuditSink
from broker.core.clock import Clock, iso
from broker.roster.pull import Outcome, PullOptions, PullResult, pull
from broker.roster.settings import RosterSettings
from broker.roster.source import RosterSource, source_from

log = structlog.get_logger("broker.roster")
AUDITED_EMPLOYEES = 1000
"""At most this many employee ids per kind of change in one audit event (the counts are
always whole): one line stays readable when HR reorganises a region."""
AUDITED_PROBLEMS = 20


class RosterSchedule:
    def __init__(
        self,
        source: RosterSource,
        directory: Path,
        options: PullOptions,
        interval_seconds: float,
        *,
        clock: Clock,
        audit: AuditSink,
        metrics: Metrics,
        reload: Callable[[str], Awaitable[bool]] | None,
    ) -> None:
        """`reload`: applies a written roster at once; None when the policy watcher will."""
        self._source = source
        self._directory = directory
        self._options = options
        self._interval = interval_seconds
        self._clock = clock
        self._audit = audit
        self._metrics = metrics
        self._reload = reload
        self._unchanged_since: tuple[object, object] | None = None
        """The source's fingerprint and the policy files' stats after the last good pull."""

    @classmethod
    def from_settings(
        cls,
        settings: RosterSettings,
        directory: Path,
        *,
        clock: Clock,
        audit: AuditSink,
        metrics: Metrics,
        reload: Callable[[str], Awaitable[bool]] | None,
    ) -> RosterSchedule:
        options = PullOptions(settings.max_removed_fraction, headquarters_branch=settings.headquarters_branch)
        return cls(
            source_from(settings),
            directory,
            options,
            settings.pull_interval_seconds,
            clock=clock,
            audit=audit,
            metrics=metrics,
            reload=reload,
        )

    async def run(self) -> None:
        """Pull now, then every interval, until cancelled."""
        while True:
            await self.pull_once()
            await asyncio.sleep(self._interval)

    async def pull_once(self) -> PullResult:
        try:
            result = await asyncio.to_thread(self._pull_if_changed)
        except Exception as exc:  # a surprise must not end the schedule, nor touch the policy
            result = PullResult(Outcome.FAILED, self._source.name, problems=[f"unexpected error: {exc!r}"])
        self._record(result)
        if result.outcome is Outcome.APPLIED and self._reload is not None:
            await self._reload("roster pull")
        return result

    def _pull_if_changed(self) -> PullResult:
        """A pull, unless neither the source nor a policy file changed since the last one
        that succeeded (at 100,000 employees a pull reads for seconds, in this process)."""
        inputs = self._inputs()
        if inputs is not None and inputs == self._unchanged_since:
            return PullResult(Outcome.UNCHANGED, self._source.name)
        result = pull(self._source, self._directory, self._options)
        self._unchanged_since = None
        if result.outcome.succeeded and inputs is not None:
            self._unchanged_since = (inputs[0], _stats(self._directory))  # the files as the pull left them
        return result

    def _inputs(self) -> tuple[object, object] | None:
        source = self._source.fingerprint()
        return None if source is None else (source, _stats(self._directory))

    def _record(self, result: PullResult) -> None:
        outcome = result.outcome.value
        self._metrics.roster_pulls.labels(outcome).inc()
        counts = result.diff.summary() if result.diff else {}
        if result.outcome.succeeded:
            self._metrics.roster_pulled.set(self._clock.now())
        if result.outcome is Outcome.UNCHANGED:
            return
        if result.outcome is Outcome.APPLIED:
            log.info("roster.pulled", source=result.source, revision=result.revision, **counts)
        else:
            log.error("roster.pull_refused", outcome=outcome, source=result.source, problems=result.problems, **counts)
        self._audit.emit(self._event(result))

    def _event(self, result: PullResult) -> dict[str, Any]:
        event: dict[str, Any] = {
            "time": iso(self._clock.now()),
            "event": "roster",
            "action": "pull",
            "outcome": result.outcome.value,
            "source": result.source,
        }
        if result.revision:
            event["policy_revision"] = result.revision
        if result.diff is not None:
            change = result.diff
            event.update(change.summary())
            event["employees_added"] = change.added[:AUDITED_EMPLOYEES]
            event["employees_removed"] = change.removed[:AUDITED_EMPLOYEES]
            event["employees_changed"] = [employee for employee, _, _ in change.changed[:AUDITED_EMPLOYEES]]
        if result.problems:
            event["problems"] = result.problems[:AUDITED_PROBLEMS]
            event["problem_count"] = len(result.problems)
        return event


def _stats(directory: Path) -> object:
    """Every policy rule file's identity, size and time: a hand edit shows here."""
    found = []
    for path in sorted(directory.glob("*.csv")):
        try:
            stat = path.stat()
        except OSError:
            continue
        found.append((path.name, stat.st_ino, stat.st_size, stat.st_mtime_ns))
    return tuple(found)

"""The running broker pulls the roster itself ([roster] pull_interval_seconds): a good pull
lets a new hire in, a broken one is refused, logged, counted and audited while the last
good roster keeps serving. A real `broker run` process, real files, real sockets."""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from broker.admin.metrics import Metrics
from broker.config import load_settings
from broker.core.clock import SystemClock
from broker.identity.jwt_authenticator import mint_token
from broker.roster.csv_source import CsvRosterSource
from broker.roster.mapping import ColumnMap
from broker.roster.pull import Outcome, PullOptions
from broker.roster.row import Fetched
from broker.roster.schedule import RosterSchedule
from tests.harness import SECRET, TUESDAY_10_SHANGHAI, free_port, start_broker_process
from tests.roster_workspace import HEADER, SHIPPED_ROWS, Workspace

NEW_HIRE = "e1005,Sun Hao,courier,BR002,always\n"


class RunningBroker:
    def __init__(self, work: Workspace, port: int, process: subprocess.Popen[bytes], output: Path) -> None:
        self.work, self.port, self.process, self.output = work, port, process, output

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    async def on_roster(self, session: aiohttp.ClientSession, employee: str) -> bool:
        """Whether /-/me answers the employee (403 identity.not_on_roster otherwise)."""
        token = mint_token(SECRET, employee, now=TUESDAY_10_SHANGHAI)  # the broker's clock starts there
        async with session.get(self.url("/-/me"), headers={"Authorization": f"Bearer {token}"}) as reply:
            assert reply.status in (200, 403), reply.status
            return reply.status == 200

    async def revision(self, session: aiohttp.ClientSession) -> str:
        async with session.get(self.url("/-/policy")) as reply:
            return str((await reply.json())["revision"])

    async def pulled(self, session: aiohttp.ClientSession, outcome: str) -> bool:
        """Whether /-/metrics counts a pull with this outcome."""
        async with session.get(self.url("/-/metrics")) as reply:
            text = await reply.text()
        series = f'broker_roster_pulls_total{{outcome="{outcome}"}} '
        return any(float(line.split()[-1]) >= 1 for line in text.splitlines() if line.startswith(series))

    def audited(self) -> list[dict[str, object]]:
        lines = (self.work.root / "audit.log").read_text().splitlines()
        return [event for event in map(json.loads, lines) if event.get("event") == "roster"]


async def until(check: Callable[[], Awaitable[bool]], within: float = 15.0) -> None:
    """Polled with short sleeps: the broker pulls every second, on the real clock."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if await check():
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"not within {within} s")


@pytest.fixture
def running(tmp_path: Path) -> Iterator[RunningBroker]:
    work = Workspace(tmp_path)
    work.write_export(HEADER + SHIPPED_ROWS + NEW_HIRE)
    port = free_port()
    work.configure(
        "pull_interval_seconds = 1\n"
        f"\n[server]\nport = {port}\ndrain_seconds = 0\n"
        '\n[audit]\npath = "audit.log"\nfsync = "batch"\ncheckpoint_seconds = 1\n'
    )
    config = work.root / "broker.toml"
    config.write_text(config.read_text().replace('directory = "policies"', 'directory = "policies"\nwatch = false'))
    output = tmp_path / "broker.out"
    with output.open("wb") as log:
        env = {"BROKER_DEV_SECRET": SECRET, "BROKER_CLOCK": "2026-12-01T10:00:00+08:00"}  # any test process clock
        process = start_broker_process(config, env, output=log, wait_port=port)
    try:
        yield RunningBroker(work, port, process, output)
    finally:
        process.terminate()
        process.wait(timeout=15)


async def test_the_broker_pulls_a_new_hire_in_and_keeps_the_roster_through_broken_pulls(
    running: RunningBroker,
) -> None:
    work = running.work
    async with aiohttp.ClientSession() as session:
        assert not await running.on_roster(session, "e7777")
        await until(lambda: running.on_roster(session, "e1005"))  # pulled at start, reloaded without a watcher
        revision = await running.revision(session)
        assert "g, e1005, courier, BR002" in (work.policies / "roster.csv").read_text()

        work.write_export((HEADER + SHIPPED_ROWS + NEW_HIRE).replace(",", ";"))
        await until(lambda: running.pulled(session, "unreadable"))
        work.write_export(HEADER + "".join(line + "\n" for line in SHIPPED_ROWS.splitlines()[:3]) + NEW_HIRE)
        await until(lambda: running.pulled(session, "shrink"))

        assert await running.revision(session) == revision, "a refused pull changed the live policy"
        assert await running.on_roster(session, "e1005") and await running.on_roster(session, "e2012")
    running.process.terminate()
    running.process.wait(timeout=15)
    events = running.audited()
    applied = next(e for e in events if e["outcome"] == "applied")
    assert applied["employees_added"] == ["e1005"] and applied["policy_revision"] == revision
    unreadable = next(e for e in events if e["outcome"] == "unreadable")
    assert "the header is semicolon-separated" in str(unreadable["problems"])
    shrink = next(e for e in events if e["outcome"] == "shrink")
    assert shrink["removed"] == 4 and shrink["employees_removed"] == ["e1004", "e2001", "e2012", "e9001"]
    log = running.output.read_text()
    assert "roster.pull_refused" in log and "semicolon-separated" in log


class ListAuditSink:
    """The audit events, kept in a list (the audit file is another test's subject)."""

    accepting = True

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    def emit(self, event: dict[str, Any]) -> None:
        self.events.append(event)

    def close(self) -> None:
        pass


class CountedCsvSource(CsvRosterSource):
    fetches = 0

    def fetch(self) -> Fetched:
        self.fetches += 1
        return super().fetch()


async def test_a_source_and_policy_unchanged_since_the_last_good_pull_are_not_read_again(tmp_path: Path) -> None:
    work = Workspace(tmp_path)
    work.write_export(HEADER + SHIPPED_ROWS + NEW_HIRE)
    settings = load_settings(work.root / "broker.toml").roster
    source = CountedCsvSource(work.export, ColumnMap.from_settings(settings), ",", "utf-8", 1000)
    audit, metrics = ListAuditSink(), Metrics()
    schedule = RosterSchedule(
        source, work.policies, PullOptions(), 60, clock=SystemClock(), audit=audit, metrics=metrics, reload=None
    )
    assert (await schedule.pull_once()).outcome is Outcome.APPLIED
    assert (await schedule.pull_once()).outcome is Outcome.UNCHANGED
    assert source.fetches == 1, "nothing changed: the second pull must not read the export"
    roster = work.policies / "roster.csv"
    roster.write_text(roster.read_text().replace("# The roster", "# Edited by hand: the roster"))
    assert (await schedule.pull_once()).outcome is Outcome.APPLIED, "a hand edit is undone by the next pull"
    assert source.fetches == 2 and roster.read_text().startswith("# The roster")
    work.write_export(HEADER + SHIPPED_ROWS + NEW_HIRE + "e1006,Hu Bo,courier,BR001,day-cn\n")
    assert (await schedule.pull_once()).outcome is Outcome.APPLIED and source.fetches == 3
    assert [e["outcome"] for e in audit.events] == ["applied", "applied", "applied"]
    assert audit.events[-1]["employees_added"] == ["e1006"]
    scraped = metrics.registry.get_sample_value("broker_roster_pulls_total", {"outcome": "unchanged"})
    assert scraped == 1.0

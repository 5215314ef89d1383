"""The audit trail cannot be quietly edited, truncated or lost (issue #15): every way of
changing a written file is named by `broker audit verify`, and a sink that cannot write
stops the broker serving records instead of piling events up in memory."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import orjson
import pytest
from aiohttp import web

from broker.audit.chain import Chain, line_hash
from broker.audit.checkpoint import load_signer, write_key_pair
from broker.audit.log import FileAuditSink
from broker.config import AuditSettings
from tests.conftest import BrokerFactory
from tests.harness import Harness, free_port, start_broker_process

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def keys(tmp_path: Path) -> tuple[Path, Path]:
    private, public = tmp_path / "audit.key", tmp_path / "audit.pub"
    write_key_pair(private, public)
    return private, public


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "broker", *args], capture_output=True, text=True, timeout=60, cwd=REPO, check=False
    )


def write_events(path: Path, private: Path | None, count: int, **settings: object) -> None:
    """`count` decision events through a sink of its own, closed at the end (which adds a
    final checkpoint); written from no event loop, as a command-line tool would."""
    signer = load_signer(private) if private else None
    sink = FileAuditSink(AuditSettings(path=str(path), **settings), signer)  # type: ignore[arg-type]
    for n in range(count):
        sink.emit({"decision_id": f"d{n}", "employee": "e1001", "verdict": "allow", "records_returned": n})
    sink.close()


def lines_of(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)


def verify(*files: Path, key: Path | None = None, extra: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
    options = ("--key", str(key)) if key else ()
    return cli("audit", "verify", *map(str, files), *options, *extra)


def test_a_written_trail_verifies_with_its_key(tmp_path: Path, keys: tuple[Path, Path]) -> None:
    log = tmp_path / "audit.log"
    write_events(log, keys[0], 20)
    events = [orjson.loads(line) for line in lines_of(log)]
    assert [e["seq"] for e in events] == list(range(1, 22))  # 20 decisions and the closing checkpoint
    assert events[-1]["event"] == "audit.checkpoint" and events[-1]["covers"] == 20
    result = verify(log, key=keys[1])
    assert result.returncode == 0, result.stdout + result.stderr
    assert "20 event(s), 1 valid checkpoint(s)" in result.stdout


@pytest.mark.parametrize(
    ("tamper", "named"),
    [
        ("edit", "audit.log:5: does not follow the line before it"),
        ("delete", "audit.log:5: seq 6 after seq 4: 1 line(s) before this one were removed"),
        ("reorder", "audit.log:5: seq 6 after seq 4"),
        ("insert", "audit.log:5: seq 1 after seq 4: lines were reordered or inserted"),
        ("tear", "audit.log:5: not a whole JSON line"),
    ],
)
def test_every_change_to_a_line_is_named(tmp_path: Path, keys: tuple[Path, Path], tamper: str, named: str) -> None:
    log = tmp_path / "audit.log"
    write_events(log, keys[0], 10)
    lines = lines_of(log)
    if tamper == "edit":  # the fourth decision now says fewer records left
        lines[3] = lines[3].replace(b'"records_returned":3', b'"records_returned":0')
    elif tamper == "delete":
        del lines[4]
    elif tamper == "reorder":
        lines[4], lines[5] = lines[5], lines[4]
    elif tamper == "insert":  # a line copied from another chain's start
        lines.insert(4, lines[0])
    elif tamper == "tear":
        lines[4] = lines[4][:40] + b"\n"
    log.write_bytes(b"".join(lines))
    result = verify(log, key=keys[1])
    assert result.returncode == 1
    first_bad = next(line for line in result.stdout.splitlines() if line.startswith("bad:"))
    assert named in first_bad, result.stdout


def test_a_rewritten_chain_fails_on_its_checkpoint_signature(tmp_path: Path, keys: tuple[Path, Path]) -> None:
    """Someone who rewrites the file with consistent hashes still cannot sign its head."""
    other_private = tmp_path / "other.key"
    write_key_pair(other_private, tmp_path / "other.pub")
    forged = tmp_path / "forged.log"
    write_events(forged, other_private, 5)  # a consistent chain, signed with another key
    result = verify(forged, key=keys[1])
    assert result.returncode == 1 and "signature does not verify" in result.stdout
    log = tmp_path / "audit.log"
    write_events(log, keys[0], 5)
    lines = lines_of(log)
    checkpoint = orjson.loads(lines[-1])
    checkpoint["signature"] = base64.b64encode(b"x" * 64).decode()
    lines[-1] = orjson.dumps(checkpoint) + b"\n"
    log.write_bytes(b"".join(lines))
    edited = verify(log, key=keys[1])
    assert edited.returncode == 1 and "audit.log:6: checkpoint signature does not verify" in edited.stdout
    unsigned = verify(log)  # without the key only the links are checked, and it says so
    assert unsigned.returncode == 0 and "without --key" in unsigned.stdout


def test_a_broker_stopped_while_its_audit_cannot_be_written_exits_in_bounded_time(tmp_path: Path) -> None:
    config, port = tmp_path / "broker.toml", free_port()
    config.write_text(
        f'[server]\nport = {port}\n[policy]\ndirectory = "{REPO / "policies"}"\nwatch = false\n'
        '[audit]\npath = "/dev/full"\nshutdown_timeout_seconds = 1.0\ncheckpoint_seconds = 0.2\n'
    )
    process = start_broker_process(config, {"BROKER_DEV_SECRET": "s" * 32}, output=subprocess.PIPE, wait_port=port)
    time.sleep(1)  # serving, and its checkpoints are failing to be written
    process.send_signal(signal.SIGTERM)
    started = time.monotonic()
    output, _ = process.communicate(timeout=20)
    assert time.monotonic() - started < 8
    assert b"No space left on device" in output and b"not written" in output, output[-2000:]


def test_a_cut_off_tail_shows_as_an_old_last_checkpoint(tmp_path: Path, keys: tuple[Path, Path]) -> None:
    log = tmp_path / "audit.log"
    write_events(log, keys[0], 10)
    recent = verify(log, key=keys[1], extra=("--max-age", "60"))
    assert recent.returncode == 0, recent.stdout
    # the closing checkpoint and the last events are cut: the last checkpoint left is none
    log.write_bytes(b"".join(lines_of(log)[:-3]))
    cut = verify(log, key=keys[1], extra=("--max-age", "60"))
    assert cut.returncode == 1 and "no checkpoint" in cut.stdout and "not proven" in cut.stdout


def test_a_restarted_broker_continues_the_chain_after_a_torn_line(tmp_path: Path, keys: tuple[Path, Path]) -> None:
    log = tmp_path / "audit.log"
    write_events(log, keys[0], 3)
    with log.open("ab") as stream:  # a crash in the middle of a line
        stream.write(b'{"decision_id":"half')
    write_events(log, keys[0], 3)
    events = [orjson.loads(line) for line in lines_of(log) if line.startswith(b"{") and line.endswith(b"}\n")]
    assert [e["seq"] for e in events] == list(range(1, 10))  # 3, final, resumed (unclean), 3, final
    assert events[4]["kind"] == "resumed-unclean"
    result = verify(log, key=keys[1])
    assert result.returncode == 1  # the torn line, and the restart that found it
    assert [line for line in result.stdout.splitlines() if line.startswith("bad:")] == [
        f"bad: {log}:5: not a whole JSON line (torn by a crash, or edited)",
        f"bad: {log}:6: the run before ended without its final checkpoint (a crash, or the file was cut or edited): "
        f"the 0 line(s) after {log}:4 up to here cannot be proven",
    ]


def test_a_clean_restart_continues_the_chain_and_verifies(tmp_path: Path, keys: tuple[Path, Path]) -> None:
    log = tmp_path / "audit.log"
    write_events(log, keys[0], 3)
    write_events(log, keys[0], 3)
    kinds = [e.get("kind") for e in map(orjson.loads, lines_of(log))]
    assert kinds == [None] * 3 + ["final", "resumed"] + [None] * 3 + ["final"]
    result = verify(log, key=keys[1])
    assert result.returncode == 0, result.stdout


def test_cutting_the_tail_and_forging_a_line_before_a_restart_is_named(tmp_path: Path, keys: tuple[Path, Path]) -> None:
    """The file is cut back to its fourth line (dropping the signed final checkpoint) and a
    made-up fifth line is linked to it; the broker restarts on it. The restart says it
    found no final checkpoint, so the forged line is never proven."""
    log = tmp_path / "audit.log"
    write_events(log, keys[0], 10)
    kept = lines_of(log)[:4]
    forged = {"decision_id": "forged", "verdict": "deny", "reason": "policy.other_branch"}
    chain = Chain(4, line_hash(kept[-1]))
    log.write_bytes(b"".join(kept) + chain.link(orjson.dumps(forged) + b"\n"))
    write_events(log, keys[0], 2)
    result = verify(log, key=keys[1], extra=("--max-age", "60"))
    assert result.returncode == 1
    assert "the run before ended without its final checkpoint" in result.stdout
    assert "the 5 line(s) from the start up to here cannot be proven" in result.stdout


@pytest.mark.parametrize("rotation", [{"rotate_bytes": 2_000}, {"rotate_seconds": 0.1}])
def test_the_chain_continues_across_rotation(
    tmp_path: Path, keys: tuple[Path, Path], rotation: dict[str, float]
) -> None:
    log = tmp_path / "audit.log"
    signer = load_signer(keys[0])
    sink = FileAuditSink(AuditSettings(path=str(log), **rotation), signer)  # type: ignore[arg-type]
    for round_ in range(6):
        for n in range(10):
            sink.emit({"decision_id": f"d{round_}-{n}", "verdict": "allow", "pad": "x" * 50})
        time.sleep(0.06)
    sink.close()
    files = [*sorted(tmp_path.glob("audit.log.*")), log]
    assert len(files) >= 3
    result = verify(*files, key=keys[1])
    assert result.returncode == 0, result.stdout
    assert "60 event(s)" in result.stdout
    missing_first = verify(*files[1:], key=keys[1])
    assert missing_first.returncode == 1 and "the lines before it are missing" in missing_first.stdout


def test_checkpoints_are_written_when_nothing_happens(tmp_path: Path, keys: tuple[Path, Path]) -> None:
    log = tmp_path / "audit.log"
    sink = FileAuditSink(AuditSettings(path=str(log), checkpoint_seconds=0.2), load_signer(keys[0]))
    time.sleep(0.9)
    sink.close()
    checkpoints = [orjson.loads(line) for line in lines_of(log)]
    assert len(checkpoints) >= 4 and all(c["event"] == "audit.checkpoint" for c in checkpoints)
    assert verify(log, key=keys[1]).returncode == 0


def test_a_failed_write_is_retried_from_the_first_unwritten_byte(tmp_path: Path, keys: tuple[Path, Path]) -> None:
    """EFBIG half-way through a batch (a file size limit): the part written stays, the
    rest follows once the disk takes it; no line twice, none torn."""
    log = tmp_path / "audit.log"
    script = textwrap.dedent(
        f"""
        import resource, signal, time
        from broker.audit.checkpoint import load_signer
        from broker.audit.log import FileAuditSink
        from broker.config import AuditSettings
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (5_000, resource.RLIM_INFINITY))
        from pathlib import Path
        sink = FileAuditSink(AuditSettings(path={str(log)!r}), load_signer(Path({str(keys[0])!r})))
        for n in range(100):
            sink.emit({{"decision_id": f"d{{n}}", "verdict": "allow", "pad": "x" * 60}})
        time.sleep(0.5)
        assert sink.backlog.write_failures > 0, "the limit never bit"
        assert 0 < sink.backlog.events < 100, sink.backlog  # some written, the rest waiting
        resource.setrlimit(resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
        sink.close()
        """
    )
    run = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, timeout=60, check=False
    )
    assert run.returncode == 0, run.stderr
    assert "File too large" in run.stderr
    result = verify(log, key=keys[1])
    assert result.returncode == 0, result.stdout
    assert "100 event(s)" in result.stdout


async def test_a_full_disk_stops_records_and_keeps_refusals(make_broker: BrokerFactory) -> None:
    broker = await make_broker(audit={"path": "/dev/full", "max_backlog_seconds": 0.3, "shutdown_timeout_seconds": 0.5})
    first = await broker.get("/api/branches/BR001/waybills?limit=1", "e1001")
    assert first.status == 200  # the sink has not failed for long yet
    await asyncio.sleep(0.6)
    refused = await broker.get("/api/branches/BR001/waybills?limit=1", "e1001")
    assert refused.status == 503 and refused.json["reason"] == "audit.unavailable"
    assert b"waybill_no" not in refused.body and int(refused.headers["Retry-After"]) >= 1
    other = await broker.get("/api/branches/BR002/waybills?limit=1", "e1001")
    assert other.status == 403 and other.json["reason"] == "policy.other_branch"  # refusals still work
    ready = await broker.get("/-/readyz")
    assert ready.status == 503 and ready.json["audit"]["accepting"] is False
    assert "No space left" in ready.json["audit"]["last_error"]
    metrics = (await broker.get("/-/metrics")).body.decode()
    assert "broker_audit_accepting 0.0" in metrics
    assert "broker_audit_write_failures" in metrics


def test_stopping_with_a_failing_sink_is_bounded_and_says_what_was_lost(tmp_path: Path) -> None:
    started = time.monotonic()
    sink = FileAuditSink(AuditSettings(path="/dev/full", shutdown_timeout_seconds=0.5))
    sink.emit({"decision_id": "d1", "verdict": "allow"})
    sink.close()
    assert time.monotonic() - started < 3


def test_keygen_refuses_to_overwrite_a_key(tmp_path: Path) -> None:
    first = cli("audit", "keygen", "--private", str(tmp_path / "k"), "--public", str(tmp_path / "k.pub"))
    assert first.returncode == 0 and "key id" in first.stdout
    assert os.stat(tmp_path / "k").st_mode & 0o077 == 0  # the private key is its owner's alone
    again = cli("audit", "keygen", "--private", str(tmp_path / "k"), "--public", str(tmp_path / "k.pub"))
    assert again.returncode == 2 and "refusing to overwrite" in again.stderr


def test_sigkill_loses_at_most_the_last_moments_of_events(tmp_path: Path) -> None:
    """Events handed over more than the linger time before a SIGKILL are on disk: 20
    refusals, a pause longer than the 50 ms batch time, then the kill."""
    port, log = free_port(), tmp_path / "audit.log"
    config = tmp_path / "broker.toml"
    config.write_text(
        f'[server]\nport = {port}\n[policy]\ndirectory = "{REPO / "policies"}"\nwatch = false\n'
        f'[audit]\npath = "{log}"\n'
    )
    process = start_broker_process(config, {"BROKER_DEV_SECRET": "s" * 32}, wait_port=port)
    try:
        for n in range(20):  # no token: each is refused and audited
            with socket.create_connection(("127.0.0.1", port), timeout=5) as client:
                client.sendall(f"GET /api/waybills/SF{n} HTTP/1.1\r\nHost: b\r\nConnection: close\r\n\r\n".encode())
                assert client.recv(100).startswith(b"HTTP/1.1 401")
        time.sleep(0.5)
    finally:
        process.kill()
        process.wait(timeout=10)
    events = [orjson.loads(line) for line in lines_of(log)]
    assert [e["reason"] for e in events if e.get("event") == "decision"] == ["identity.missing"] * 20
    assert verify(log).returncode == 0


class CollectorServer:
    """An HTTP collector on a real socket: stores each POSTed batch, keeps the first
    line of each seq (batches may come twice), and fails the first `failures` POSTs."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.posts = 0
        self.lines: dict[int, bytes] = {}

    async def take(self, request: web.Request) -> web.Response:
        self.posts += 1
        if self.posts <= self.failures:
            return web.Response(status=503)
        for line in (await request.read()).splitlines(keepends=True):
            self.lines.setdefault(orjson.loads(line)["seq"], line)
        return web.Response(status=204)

    def stored(self) -> bytes:
        return b"".join(self.lines[seq] for seq in sorted(self.lines))


async def test_a_collector_gets_the_chain_at_least_once_and_across_restarts(
    tmp_path: Path, keys: tuple[Path, Path]
) -> None:
    collector = CollectorServer(failures=2)
    app = web.Application()
    app.router.add_post("/ingest", collector.take)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    url, state = f"http://127.0.0.1:{port}/ingest", tmp_path / "chain.state"
    try:
        for run in range(2):  # the second run continues the first one's chain from the state file
            settings = AuditSettings(path=url, chain_state=str(state), checkpoint_seconds=30)
            sink = FileAuditSink(settings, load_signer(keys[0]))
            for n in range(5):
                sink.emit({"decision_id": f"run{run}-{n}", "verdict": "allow"})
            await asyncio.sleep(0.2)
            await asyncio.to_thread(sink.close)
    finally:
        await runner.cleanup()
    assert collector.posts > 2  # the refused batches were sent again
    stored = tmp_path / "collected.log"
    stored.write_bytes(collector.stored())
    result = verify(stored, key=keys[1])
    assert result.returncode == 0, result.stdout
    assert "10 event(s), 3 valid checkpoint(s)" in result.stdout  # final, resumed, final


async def test_the_help_desk_explains_a_past_decision_from_the_chained_audit(broker: Harness, tmp_path: Path) -> None:
    """'Why was I refused?': the employee gives the decision id; explain reads who, what,
    when and the quota used from the audit (a chained file with checkpoints) and redoes it."""
    for _ in range(3):
        assert (await broker.get("/api/branches/BR001/waybills?limit=20", "e1003")).status == 200
    refused = await broker.get("/api/branches/BR001/waybills?limit=20", "e1003")
    assert refused.status == 429 and refused.json["reason"] == "quota.exceeded"
    await broker.audit_events(at_least=4)
    config = tmp_path / "explain.toml"
    config.write_text(f'[policy]\ndirectory = "{broker.broker.settings.policy.directory}"\n')
    result = await asyncio.to_thread(
        cli, "explain", "-c", str(config), "--decision", refused.json["decision_id"], "--audit", str(broker.audit_path),
        "--json",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    explained = json.loads(result.stdout)
    assert explained["employee"] == "e1003" and explained["reason"] == "quota.exceeded"
    assert explained["recorded"]["quota_used_before"] == 60 and explained["recorded"]["reason"] == "quota.exceeded"
    missing = await asyncio.to_thread(cli, "explain", "--decision", "nope", "--audit", str(broker.audit_path))
    assert missing.returncode == 2 and "decision nope is not in" in missing.stderr

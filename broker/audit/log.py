"""Writing audit events without blocking the event loop, without losing them quietly,
and so that a changed, removed or cut-off line shows.

Each event is rendered to a JSON line on the loop (one orjson call) and kept in a batch
on the loop; a timer hands the whole batch to a writer thread (one queue put). The
batch lives on the loop, not in the queue, because every line the writer thread took
from the queue cost the event loop a GIL hand-off (py-spy under load: 10-28 µs a
request); now the thread wakes once per batch.

The writer thread chains each line (`chain.py`), adds a signed checkpoint every
`checkpoint_seconds` even when idle (`checkpoint.py`), and appends with `os.write` on a
file opened for appending: a failed write is retried from the first byte not written,
so a full disk never leaves a line twice, and lines are whole unless the process dies
in the middle of one (the verifier then names the torn line).

While the file cannot be written, events wait in memory. Past `max_backlog_bytes` or
`max_backlog_seconds` of them the sink stops *accepting*: the decision core refuses
everything that would return records (`audit.unavailable`, readiness off, a metric),
while refusals keep working and keep being queued, up to twice the byte bound; past
that, new events are dropped and counted (metric and standard error). Stopping waits
`shutdown_timeout_seconds` at most and says what could not be written.

The line is what structlog's JSON rendering of `log.info("decision", **event)` gave:
the event's fields in order, then `"event": "decision"`, then the chain's `seq` and
`prev`.
"""

from __future__ import annotations

import asyncio
import queue
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import orjson

from broker.audit.checkpoint import CHECKPOINT_EVENT, FINAL, PERIODIC, RESUMED, RESUMED_UNCLEAN, Signer
from broker.audit.destination import open_destination, save_state
from broker.config import AuditSettings

EVENT_NAME = "decision"
LINGER_SECONDS = 0.05
"""How long lines gather on the loop before the writer thread gets them in one piece.
Every wake-up of the writer thread costs the event loop forced GIL hand-offs (strace
under load: ~13 futex calls a cycle), so fewer, larger batches; an event reaches the
file at most this much later."""
POLL_SECONDS = 0.02
"""How often the idle writer looks for a batch. It polls with time.sleep rather than
waiting on the queue with a timeout: a timed wait on a lock is computed from the clock
and never returns when the clock is moved under it (libfaketime, a suite run a year
ahead), while sleep keeps working; 50 wake-ups a second cost nothing measurable."""
MAX_BATCH_LINES = 4096
"""A batch this long is handed over at once, whatever the timer says: bounded memory."""


class AuditSink(Protocol):
    def emit(self, event: dict[str, Any]) -> None: ...

    @property
    def accepting(self) -> bool:
        """False while unwritten events are past the backlog bounds: nothing that returns
        records may be allowed, since its event might never be written."""
        ...

    def close(self) -> None: ...


_EVENT_TAIL = b',"event":"' + EVENT_NAME.encode() + b'"}\n'


def render(event: dict[str, Any]) -> bytes:
    """One audit line: the event's fields, then the event name (as structlog had it):
    "decision" unless the event names itself (a signal raised on an employee).

    The name is appended to the rendered object rather than to a copy of the event
    (a ~25-field dict copied per request)."""
    if "event" in event:
        return orjson.dumps(event, default=str) + b"\n"
    if not event:
        return orjson.dumps({"event": EVENT_NAME}) + b"\n"
    return orjson.dumps(event, default=str)[:-1] + _EVENT_TAIL


@dataclass(slots=True)
class Backlog:
    """Events handed to the writer and not yet on disk (guarded by the sink's lock)."""

    bytes: int = 0
    events: int = 0
    oldest: float = 0.0
    """time.monotonic() when the oldest unwritten batch was handed over (0: none)."""
    dropped: int = 0
    write_failures: int = 0
    last_error: str = ""


class FileAuditSink:
    def __init__(self, settings: AuditSettings | str, signer: Signer | None = None) -> None:
        self.settings = settings if isinstance(settings, AuditSettings) else AuditSettings(path=settings)
        self.path = self.settings.path
        self._signer = signer
        self._batches: queue.SimpleQueue[list[bytes] | None] = queue.SimpleQueue()
        self._pending: list[bytes] = []
        self._pending_bytes = 0
        self._timer: asyncio.TimerHandle | None = None
        self._lock = threading.Lock()
        self.backlog = Backlog()
        self.written = 0
        self._destination = open_destination(self.path, self.settings.chain_state)
        self._chain = self._destination.chain
        self._state = Path(self.settings.chain_state) if self.settings.chain_state else None
        self._opened_at = time.monotonic()
        self._synced_at = time.monotonic()
        self._stopping = threading.Event()
        self.observers: list[Callable[[dict[str, Any]], None]] = []
        """Called with every event after it is queued (the rented-login signals)."""
        self._writer_thread = threading.Thread(target=self._drain, name="audit-writer", daemon=True)
        self._writer_thread.start()

    # -- on the event loop -------------------------------------------------------------

    def emit(self, event: dict[str, Any]) -> None:
        line = render(event)
        if self._pending and len(self._pending) < MAX_BATCH_LINES - 1 and self._timer is not None:
            # a batch is open and far from full: append (what _queue_line does then, with
            # the backlog bound still checked), without its call; one event per statement
            if self.backlog.bytes + self._pending_bytes <= 2 * self.settings.max_backlog_bytes:
                self._pending.append(line)
                self._pending_bytes += len(line)
            else:
                self._drop()
        else:
            self._queue_line(line)
        for observe in self.observers:
            try:
                observe(event)
            except Exception:  # an observer's bug must not cost the audit or the answer
                print(f"broker: audit observer {observe!r} failed", file=sys.stderr)

    def _queue_line(self, line: bytes) -> None:
        backlog = self.backlog
        if backlog.bytes + self._pending_bytes > 2 * self.settings.max_backlog_bytes:
            self._drop()
            return
        pending = self._pending
        pending.append(line)
        self._pending_bytes += len(line)
        if len(pending) >= MAX_BATCH_LINES:
            self._hand_over()
        elif self._timer is None:
            try:
                self._timer = asyncio.get_running_loop().call_later(LINGER_SECONDS, self._hand_over)
            except RuntimeError:  # no loop in this thread (a command-line tool): write now
                self._hand_over()

    @property
    def accepting(self) -> bool:
        backlog = self.backlog
        if backlog.bytes > self.settings.max_backlog_bytes:
            return False
        oldest = backlog.oldest
        return not oldest or time.monotonic() - oldest <= self.settings.max_backlog_seconds

    def close(self) -> None:
        """Write out everything pending and queued, within the shutdown timeout; say on
        standard error what could not be written. Then close the file."""
        self._hand_over()
        self._batches.put(None)
        _join(self._writer_thread, self.settings.shutdown_timeout_seconds)
        if self._writer_thread.is_alive():
            self._stopping.set()
            _join(self._writer_thread, 1.0)
            with self._lock:
                lost = self.backlog.events
            print(
                f"broker: audit log {self.path}: stopped with {lost} event(s) not written "
                f"({self.backlog.last_error or 'the writer did not finish in time'})",
                file=sys.stderr,
            )
            return
        self._destination.close()

    def _hand_over(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._pending:
            batch, size = self._pending, self._pending_bytes
            self._pending, self._pending_bytes = [], 0
            with self._lock:
                backlog = self.backlog
                backlog.bytes += size
                backlog.events += len(batch)
                if not backlog.oldest:
                    backlog.oldest = time.monotonic()
            self._batches.put(batch)

    def _drop(self) -> None:
        with self._lock:
            self.backlog.dropped += 1
            dropped = self.backlog.dropped
        if dropped == 1 or dropped % 1000 == 0:
            print(
                f"broker: audit log {self.path}: {dropped} event(s) dropped: "
                f"{self.backlog.bytes} bytes are waiting to be written ({self.backlog.last_error})",
                file=sys.stderr,
            )

    # -- in the writer thread -------------------------------------------------------------

    def _drain(self) -> None:
        every = self.settings.checkpoint_seconds
        last_checkpoint = time.monotonic()
        if self._chain.seq:  # a run before this one wrote here: say how it ended, signed
            kind = RESUMED if self._chain.clean else RESUMED_UNCLEAN
            if not self._write(self._checkpoint(kind), 0):
                return
        while True:
            try:
                batch = self._batches.get_nowait()
            except queue.Empty:
                if time.monotonic() - last_checkpoint < every:
                    time.sleep(POLL_SECONDS)
                    continue
                batch = []
            final = batch is None
            data = self._chain.link_all(batch) if batch else b""
            if final or time.monotonic() - last_checkpoint >= every:
                data += self._checkpoint(FINAL if final else PERIODIC)
                last_checkpoint = time.monotonic()
            events = len(batch or ())
            if data and not self._write(data, events, final=final):
                return  # stopping: what is left was reported by close()
            if final:
                return
            self._rotate_if_due()

    def _checkpoint(self, kind: str) -> bytes:
        now = datetime.now(UTC).isoformat().replace("+00:00", "Z")
        covers, head = self._chain.seq, self._chain.head
        event: dict[str, Any] = {
            "time": now,
            "event": CHECKPOINT_EVENT,
            "kind": kind,
            "covers": covers,
            "head": head,
            "key_id": self._signer.key_id if self._signer else None,
            "signature": self._signer.sign(covers, head, now, kind) if self._signer else None,
        }
        return self._chain.link(orjson.dumps(event) + b"\n")

    def _write(self, data: bytes, events: int, *, final: bool = False) -> bool:
        """Append `data`, retrying from the first unwritten byte while the disk refuses;
        False if the sink is stopping before it could."""
        # offsets, not `while view:` on a shrinking memoryview: compiled (mypyc), a
        # memoryview's truth is not its length
        whole, written, delay, synced = memoryview(data), 0, 0.05, False
        while written < len(data) or not synced:
            try:
                if written < len(data):
                    written += self._destination.write(whole[written:])
                    continue
                self._sync()  # an fsync that fails is retried too: the lines are not yet safe
                synced = True
            except OSError as exc:
                with self._lock:
                    self.backlog.write_failures += 1
                    self.backlog.last_error = f"{type(exc).__name__}: {exc.strerror or exc}"
                if self.backlog.write_failures in (1, 10) or self.backlog.write_failures % 100 == 0:
                    print(f"broker: audit log {self.path}: {exc}; retrying", file=sys.stderr)
                time.sleep(delay)
                if self._stopping.is_set():
                    return False
                delay = min(delay * 2, 2.0)
        if self._state is not None:
            save_state(self._state, self._chain, clean=final)
        with self._lock:
            backlog = self.backlog
            backlog.bytes = max(0, backlog.bytes - len(data))
            backlog.events = max(0, backlog.events - events)
            backlog.oldest = time.monotonic() if backlog.events else 0.0
            backlog.last_error = ""
        self.written += events
        return True

    def _sync(self) -> None:
        mode = self.settings.fsync
        if mode == "off":
            return
        now = time.monotonic()
        if mode == "batch" or now - self._synced_at >= self.settings.fsync_interval_seconds:
            self._destination.sync()  # OSError: the caller retries, the backlog stays
            self._synced_at = now

    def _rotate_if_due(self) -> None:
        settings = self.settings
        opened = time.monotonic() - self._opened_at
        if self._destination.maybe_rotate(settings.rotate_bytes, opened, settings.rotate_seconds):
            self._opened_at = time.monotonic()


def _join(thread: threading.Thread, within: float) -> None:
    """`thread.join(within)` by polling: a timed join is a timed lock wait (see
    POLL_SECONDS)."""
    deadline = time.monotonic() + within
    while thread.is_alive() and time.monotonic() < deadline:
        time.sleep(POLL_SECONDS)

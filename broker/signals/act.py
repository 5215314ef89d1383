"""What happens when a signal fires: the audit, a metric, the alert webhook, a freeze.

A flag is written to the audit trail as an event of its own (`"event": "signal"`, with
its evidence), counted in `broker_signals_total{signal,action}`, logged, and sent to
the webhook in `signals.toml` by a background thread (retried, never blocking a
decision). A "freeze" also sets the employee's freeze key in the counter store, which
every admission checks in the same round trip as the quota: with Redis every replica
refuses the employee from their next request on, and the freeze outlives restarts,
until `broker unfreeze` clears it.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

import orjson
import structlog

from broker.core.clock import iso
from broker.core.window import freeze_key
from broker.meter.meter import Meter
from broker.meter.store import StoreUnavailable
from broker.signals.flag import Flag

log = structlog.get_logger("broker.signals")
FREEZE_SECONDS = 366 * 86400
"""A freeze lasts until a person lifts it; the key expires after a year so a forgotten
employee does not stay in the store forever."""
WEBHOOK_TIMEOUT_SECONDS = 5.0
WEBHOOK_ATTEMPTS = 5
WEBHOOK_QUEUE = 1000


async def set_frozen(meter: Meter, employee: str, frozen: bool, now: float) -> None:
    """Freeze or unfreeze `employee` in the shared store and in the local fallback the
    meter uses while the shared one is away (a freeze holds while failing open too)."""
    key, delta = freeze_key(employee), 1 if frozen else -(1 << 40)
    await meter.store.add(key, delta, now + FREEZE_SECONDS, now)
    if meter.shared:
        await meter.fallback.add(key, delta, now + FREEZE_SECONDS, now)


class Webhook:
    """POSTs each flag as JSON from a thread of its own: retried with backoff, dropped
    (and counted) only when the queue of unsent alerts is full."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.sent = 0
        self.failed = 0
        self.dropped = 0
        self._queue: queue.Queue[bytes | None] = queue.Queue(WEBHOOK_QUEUE)
        self._thread = threading.Thread(target=self._run, name="signal-webhook", daemon=True)
        self._thread.start()

    def send(self, body: bytes) -> None:
        try:
            self._queue.put_nowait(body)
        except queue.Full:
            self.dropped += 1
            log.error("signals.webhook_queue_full", url=self.url, dropped=self.dropped)

    def close(self) -> None:
        self._queue.put(None)
        deadline = time.monotonic() + WEBHOOK_TIMEOUT_SECONDS  # polled, as the audit writer's join
        while self._thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.02)

    def _run(self) -> None:
        while (body := self._queue.get()) is not None:
            delay = 0.5
            for attempt in range(1, WEBHOOK_ATTEMPTS + 1):
                if self._post(body):
                    self.sent += 1
                    break
                if attempt == WEBHOOK_ATTEMPTS:
                    self.failed += 1
                    log.error("signals.webhook_failed", url=self.url, attempts=attempt)
                else:
                    time.sleep(delay)
                    delay *= 2

    def _post(self, body: bytes) -> bool:
        request = urllib.request.Request(  # noqa: S310 - signals.toml admits http(s) URLs only
            self.url, data=body, method="POST", headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(request, timeout=WEBHOOK_TIMEOUT_SECONDS) as answer:  # noqa: S310
                answer.read()
                return True
        except (urllib.error.URLError, OSError) as exc:
            log.warning("signals.webhook_retry", url=self.url, error=str(exc))
            return False


class SignalActions:
    def __init__(
        self,
        meter: Meter,
        emit: Callable[[dict[str, Any]], None],
        counted: Callable[[str, str], None],
        webhook_url: Callable[[], str],
    ) -> None:
        self._meter = meter
        self._emit = emit
        self._counted = counted
        self._webhook_url = webhook_url
        self._webhook: Webhook | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    def flagged(self, flag: Flag) -> None:
        event = {
            "time": iso(flag.at),
            "event": "signal",
            "signal": flag.signal,
            "employee": flag.employee,
            "action": flag.action,
            "severity": flag.severity,
            "detail": flag.detail,
            "evidence": flag.evidence,
        }
        self._emit(event)
        self._counted(flag.signal, flag.action)
        log.warning("signals.flagged", signal=flag.signal, employee=flag.employee, action=flag.action)
        url = self._webhook_url()
        if url:
            if self._webhook is None or self._webhook.url != url:
                self._webhook = Webhook(url)
            self._webhook.send(orjson.dumps(event))
        if flag.action == "freeze":
            task = asyncio.get_running_loop().create_task(self._freeze(flag))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _freeze(self, flag: Flag) -> None:
        try:
            await set_frozen(self._meter, flag.employee, True, flag.at)
        except StoreUnavailable as exc:
            log.error("signals.freeze_failed", employee=flag.employee, error=str(exc))
            return
        log.warning("signals.frozen", employee=flag.employee, signal=flag.signal)

    async def close(self) -> None:
        for task in list(self._tasks):
            await task
        if self._webhook is not None:
            await asyncio.to_thread(self._webhook.close)

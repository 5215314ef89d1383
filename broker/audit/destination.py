"""Where the audit writer's bytes go: a file, standard output, or a collector over HTTP.

Each destination takes whole batches of chained lines from the writer thread and either
takes all of them or raises OSError, so the writer's retry loop is the same for all:
a file takes what `os.write` accepted and the rest is retried from the first byte not
written; a collector takes a batch in one POST and a failed POST is sent again whole
(at least once: a collector keeps the first line of each `seq` it sees, and `broker
audit verify` proves what it stored).
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

import orjson

from broker.audit.chain import Chain, resume

COLLECTOR_TIMEOUT_SECONDS = 5.0


class Destination(Protocol):
    chain: Chain
    """The chain as this destination last saw it: where a restarted writer continues."""

    def write(self, data: memoryview) -> int:
        """Take a prefix of `data` (at least one byte) or raise OSError."""
        ...

    def sync(self) -> None: ...

    def maybe_rotate(self, max_bytes: int, opened_seconds: float, max_seconds: float) -> bool: ...

    def close(self) -> None: ...


class FileDestination:
    """Appends to a file opened O_APPEND: a line is never written over, and a restarted
    broker continues the chain from the file's own end."""

    def __init__(self, path: str) -> None:
        self.path = path
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        self.chain, torn = resume(target) if target.is_file() else (self._resume_rotated(target), False)
        self._fd = self._open()
        if torn:  # a crash cut the last line: the next one starts on a line of its own
            os.write(self._fd, b"\n")

    def _open(self) -> int:
        return os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)

    @staticmethod
    def _resume_rotated(target: Path) -> Chain:
        """After a rotation the current file is new: the chain goes on from the newest
        rotated file."""
        rotated = sorted(target.parent.glob(target.name + ".*"))
        return resume(rotated[-1])[0] if rotated else Chain()

    def write(self, data: memoryview) -> int:
        return os.write(self._fd, data)

    def sync(self) -> None:
        os.fsync(self._fd)

    def maybe_rotate(self, max_bytes: int, opened_seconds: float, max_seconds: float) -> bool:
        size_due = max_bytes and os.fstat(self._fd).st_size >= max_bytes
        time_due = max_seconds and opened_seconds >= max_seconds
        if not (size_due or time_due):
            return False
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S.%fZ")
        try:
            os.rename(self.path, f"{self.path}.{stamp}")
        except OSError as exc:
            print(f"broker: audit log {self.path}: cannot rotate: {exc}", file=sys.stderr)
            return False
        os.close(self._fd)
        self._fd = self._open()
        return True

    def close(self) -> None:
        os.close(self._fd)


class _Stream:
    """A destination that is not a file of ours: nothing to sync, rotate or close, and the
    chain resumed from the state file (it cannot be read back from where it went)."""

    def __init__(self, state: Path | None) -> None:
        self.chain = load_state(state)

    def sync(self) -> None:
        return None

    def maybe_rotate(self, max_bytes: int, opened_seconds: float, max_seconds: float) -> bool:
        return False

    def close(self) -> None:
        return None


class StandardOutput(_Stream):
    """The same chained lines on standard output, for a log stack that collects it."""

    def write(self, data: memoryview) -> int:
        return os.write(sys.stdout.fileno(), data)


class Collector(_Stream):
    """POSTs each batch to an HTTP collector; anything but a 2xx is a failed write."""

    def __init__(self, url: str, state: Path | None) -> None:
        super().__init__(state)
        self.url = url

    def write(self, data: memoryview) -> int:
        request = urllib.request.Request(  # noqa: S310 - open_destination admits http(s) URLs only
            self.url, data=bytes(data), method="POST", headers={"Content-Type": "application/x-ndjson"}
        )
        try:
            with urllib.request.urlopen(request, timeout=COLLECTOR_TIMEOUT_SECONDS) as answer:  # noqa: S310
                answer.read()
        except urllib.error.HTTPError as exc:
            raise OSError(f"the collector answered {exc.code}") from exc
        except urllib.error.URLError as exc:
            raise OSError(f"the collector is unreachable ({exc.reason})") from exc
        return len(data)


def load_state(path: Path | None) -> Chain:
    """The chain a previous run left in its state file (a fresh chain without one)."""
    if path is None or not path.is_file():
        return Chain()
    try:
        state = orjson.loads(path.read_bytes())
        return Chain(int(state["seq"]), str(state["head"]), state.get("clean") is True)
    except (OSError, orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        print(f"broker: audit chain state {path} is unreadable ({exc}); a new chain starts", file=sys.stderr)
        return Chain()


def save_state(path: Path, chain: Chain, clean: bool = False) -> None:
    """Replace the state file in one rename, so a crash leaves the old state or the new;
    `clean` only after the run's final checkpoint was written."""
    partial = path.with_name(path.name + ".partial")
    partial.write_bytes(orjson.dumps({"seq": chain.seq, "head": chain.head, "clean": clean}))
    os.replace(partial, path)


def open_destination(path: str, state: str) -> Destination:
    state_path = Path(state) if state else None
    if path == "-":
        return StandardOutput(state_path)
    if path.startswith(("http://", "https://")):
        return Collector(path, state_path)
    return FileDestination(path)

"""The processes of the end-to-end benchmarks (bench/http.py, bench/pg.py): starting them,
waiting for them, and stopping every one of them however the benchmark ends.

A benchmark that dies halfway must not leave a proxy, a server or a PgBouncer running on
a shared machine, so each process is started in a session (process group) of its own and
stopped by that group's id, never by name; and a benchmark runs inside `run_benchmark`,
which stops them on an error, on Ctrl-C, on SIGTERM or SIGHUP, and when all went well.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import types
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

ROOT = Path(__file__).resolve().parent.parent
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
"""SIGINT too: a job started in the background begins with it ignored."""


class BenchError(Exception):
    """The benchmark cannot go on; the message says why."""


def log(message: str) -> None:
    """Progress goes to stderr, so stdout carries only the report."""
    print(message, file=sys.stderr, flush=True)


@dataclass
class Started:
    name: str
    proc: subprocess.Popen[bytes]
    log_path: Path
    log_file: IO[bytes]


class Fleet:
    """Every long-running process a benchmark starts, each in a session of its own with its
    output in `workdir`/<name>.log, stopped by its id (its process group) at the end."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.started: list[Started] = []

    def start(
        self, name: str, command: Sequence[str], env: dict[str, str] | None = None, cwd: Path = ROOT
    ) -> subprocess.Popen[bytes]:
        log_path = self.workdir / f"{name}.log"
        log_file = log_path.open("wb")
        proc = subprocess.Popen(
            list(command),
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.started.append(Started(name, proc, log_path, log_file))
        return proc

    def check_alive(self) -> None:
        """A process that exited mid-benchmark makes every later figure meaningless: stop."""
        for item in self.started:
            if item.proc.poll() is not None:
                raise BenchError(f"{item.name} (pid {item.proc.pid}) exited with {item.proc.returncode}:\n{tail(item)}")

    def log_of(self, proc: subprocess.Popen[bytes], lines: int = 30) -> str:
        return next((tail(item, lines) for item in self.started if item.proc is proc), "")

    def wait_for(self, ready: Callable[[], bool], timeout: float) -> bool:
        """Whether `ready()` came true within `timeout` seconds, polled every 0.1 s; raises
        BenchError as soon as any process of the fleet has exited (it will not come up)."""
        deadline = time.monotonic() + timeout
        while True:
            self.check_alive()
            if ready():
                return True
            if time.monotonic() > deadline:
                return False
            time.sleep(0.1)

    def stop_all(self) -> None:
        """SIGTERM to each started process group (its workers too), SIGKILL after 10 s."""
        running = [item for item in reversed(self.started) if item.proc.poll() is None]
        for item in running:
            _signal_group(item.proc, signal.SIGTERM)
        deadline = time.monotonic() + 10
        for item in running:
            with contextlib.suppress(subprocess.TimeoutExpired):
                item.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        for item in running:
            if item.proc.poll() is None:
                log(f"{item.name} (pid {item.proc.pid}) ignored SIGTERM; killing it")
                _signal_group(item.proc, signal.SIGKILL)
                item.proc.wait(timeout=5)
        for item in self.started:
            item.log_file.close()


def _signal_group(proc: subprocess.Popen[bytes], signum: int) -> None:
    """The process group this benchmark created for `proc` (start_new_session): the process
    and its own children, e.g. nginx's worker; nothing else."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signum)


def tail(item: Started, lines: int = 30) -> str:
    item.log_file.flush()
    text = item.log_path.read_text(encoding="utf-8", errors="replace")
    return "\n".join(text.splitlines()[-lines:])


def free_port() -> int:
    """A loopback port nobody listens on now (the kernel's pick; free until someone binds it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_open(port: int) -> bool:
    """Whether something accepts TCP connections on the loopback `port`."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(1.0)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _interrupted(signum: int, _frame: types.FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def run_benchmark(
    name: str, benchmark: Callable[[Fleet, contextlib.ExitStack], int], *, keep: bool, shared_workdir: bool = False
) -> int:
    """`benchmark(fleet, cleanup)` with a fresh temp dir as the fleet's workdir; its exit
    code, 1 on BenchError, 130 on a stop signal. Whatever happens, the fleet is stopped,
    then `cleanup` closed (e.g. a test database dropped), then the temp dir removed unless
    `keep`; stop signals are ignored meanwhile, so a second Ctrl-C does not cut it short.
    `shared_workdir`: readable by other users (PgBouncer runs as postgres)."""
    for signum in STOP_SIGNALS:
        signal.signal(signum, _interrupted)
    workdir = Path(tempfile.mkdtemp(prefix=f"{name.replace('.', '-')}-"))
    if shared_workdir:
        workdir.chmod(0o755)
    fleet = Fleet(workdir)
    cleanup = contextlib.ExitStack()
    try:
        return benchmark(fleet, cleanup)
    except BenchError as exc:
        log(f"{name}: {exc}")
        return 1
    except KeyboardInterrupt:
        log(f"{name}: interrupted; stopping everything it started")
        return 130
    finally:
        for signum in STOP_SIGNALS:
            signal.signal(signum, signal.SIG_IGN)
        fleet.stop_all()
        cleanup.close()
        if keep:
            log(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)

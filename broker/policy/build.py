"""Building a policy snapshot in a child process, so a reload never stalls serving.

At 100,000 employees a snapshot is seconds of pure-Python work: read, check, compile,
then run the policy's own cases against it. Done in a thread of the serving process it
held the GIL for 7-11 s (p99 latency of 2-4 s meanwhile), and what it freed stayed in
the process as fragmented heap (RSS 205 MB after start-up, 503 MB after three reloads).
So every snapshot, the first one included, is built in a child process and sent back
pickled (about 2 MB at 100,000 employees, unpickled in milliseconds: see `employee`),
and the serving process only installs it.

The children are forked from multiprocessing's fork server: started once, with the
broker's modules already imported, so a build starts in milliseconds instead of the half
second a fresh interpreter takes. A reload's child runs at a lower CPU priority than the
broker, and cannot hang it or take it down: one that overruns its time is killed, and one
that dies, overruns or raises is a failed build (`BuildFailed`), which refuses the new
snapshot like a broken edit does; the holder keeps the last good policy, logs and counts
it.
"""

from __future__ import annotations

import ast
import asyncio
import contextlib
import multiprocessing
import os
import pickle
import signal
import sys
import tempfile
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

from broker.policy.problem import PolicyError, PolicyProblem
from broker.policy.snapshot import PolicySnapshot, load_snapshot

Verify = Callable[[PolicySnapshot], list[PolicyProblem]]

RELOAD_NICENESS = 10
"""How much lower a reload's child's CPU priority is: on a busy machine the broker's
requests go first and the build takes what is left. (At start-up nothing is served yet:
the child builds at the broker's own priority.)"""
REAP_SECONDS = 5.0
"""How long a child that has answered (or closed its end) may take to exit before it is
killed."""

_BUILT, _REFUSED, _FAILED = "built", "refused", "failed"
_CONTEXT = multiprocessing.get_context("forkserver")


class NoTempDirectory(RuntimeError):
    """No writable temporary directory: the fork server cannot make its socket, so no
    policy can be built. The message is one line that names the fix."""


NO_TEMP_DIRECTORY_FIX = (
    "no writable temporary directory (tried $TMPDIR, /tmp, /var/tmp, /usr/tmp and the working directory): "
    "the policy builder's fork server keeps its socket there; give the broker's container a private tmpfs "
    "at /tmp (docker run --read-only --tmpfs /tmp; compose: tmpfs: [/tmp]; Kubernetes: an emptyDir at /tmp "
    "mounted in the broker's container only), never /dev/shm, which every container of a pod shares"
)


def ensure_temp_directory() -> str:
    """The temporary directory the fork server's socket will go to (multiprocessing
    makes a private pymp-* directory in it); NoTempDirectory if there is none writable.
    Python 3.11's fork server does not authenticate who connects and its children
    unpickle what they are sent: that directory must be private to this container."""
    try:
        return tempfile.gettempdir()
    except FileNotFoundError as exc:  # tempfile's "No usable temporary directory found in [...]"
        raise NoTempDirectory(NO_TEMP_DIRECTORY_FIX) from exc


class BuildFailed(PolicyError):
    """The build itself failed, whatever the policy says: the child died, overran its
    time or raised. Refuses the snapshot like a broken edit, with one problem that names
    the directory and says what happened."""

    def __init__(self, directory: Path, cause: str, detail: str, trace: str = "") -> None:
        self.cause = cause
        """"timeout", "crash" or "error": the label of the failure metric."""
        self.detail = detail
        self.trace = trace
        """The child's traceback, for the log (an error)."""
        hint = "the last good policy stays; the broker log's policy.build_failed event has the details"
        super().__init__([PolicyProblem(str(directory.resolve()), 0, detail, hint)])


def build_and_send(directory: Path, verify: Verify | None, sender: Connection, niceness: int) -> None:
    """The child's work: build and verify the snapshot, send it back (or the problems)."""
    if niceness:
        with contextlib.suppress(OSError):
            os.nice(niceness)
    message: tuple[str, Any]
    try:
        snapshot = load_snapshot(directory)
        problems = verify(snapshot) if verify is not None else []
        message = (_REFUSED, problems) if problems else (_BUILT, snapshot)
    except PolicyError as exc:
        message = (_REFUSED, list(exc.problems))
    except Exception as exc:  # any surprise goes back as a failed build, with its traceback
        message = (_FAILED, "".join(traceback.format_exception(exc)))
    try:
        sender.send_bytes(pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL))
    except BrokenPipeError:  # the broker stopped (or gave up on this build) meanwhile: nobody to tell
        return
    sender.close()


@dataclass(frozen=True, slots=True)
class _Child:
    process: BaseProcess
    receiver: Connection
    pid: int


class SnapshotBuilder:
    """Builds snapshots of a policy directory in child processes, within `timeout`."""

    def __init__(self, verify: Verify | None, timeout: float) -> None:
        """`verify` (a module-level function: it is sent to the child by name) runs on
        every candidate snapshot in the child; any problem it returns refuses it."""
        self.verify = verify
        self.timeout = timeout
        self.running: BaseProcess | None = None
        """The child building now, if any."""
        _CONTEXT.set_forkserver_preload(_preload(verify))  # only until the fork server has started

    def build(self, directory: Path) -> PolicySnapshot:
        """Build now, blocking (start-up: nothing is served yet)."""
        child = self._start(directory, 0)
        answered = False
        try:
            answered = child.receiver.poll(self.timeout)
            message = _receive(child.receiver) if answered else None
        finally:
            if not answered:
                child.process.kill()
            exitcode = self._finish(child)
        if not answered:
            raise self._overran(directory, child)
        return self._outcome(directory, child, message, exitcode)

    async def build_async(self, directory: Path) -> PolicySnapshot:
        """Build off the event loop: the child does the work, a thread waits for its
        answer and unpickles it; the loop only awaits."""
        child = await asyncio.to_thread(self._start, directory, RELOAD_NICENESS)
        answer = asyncio.ensure_future(asyncio.to_thread(_receive, child.receiver))
        try:
            done, _ = await asyncio.wait({answer}, timeout=self.timeout)
        finally:
            if not answer.done():  # overran, or cancelled (shutdown): it must not linger
                child.process.kill()
            await asyncio.wait({answer})  # the killed child's end of the pipe closes: the thread ends
            exitcode = await asyncio.to_thread(self._finish, child)
        if not done:
            raise self._overran(directory, child)
        return self._outcome(directory, child, answer.result(), exitcode)

    def _start(self, directory: Path, niceness: int) -> _Child:
        ensure_temp_directory()  # the first start starts the fork server, whose socket needs one
        receiver, sender = _CONTEXT.Pipe(duplex=False)
        args = (directory, self.verify, sender, niceness)
        process = _CONTEXT.Process(target=build_and_send, args=args, name="broker-policy-build", daemon=True)
        try:
            process.start()
        except BaseException:
            receiver.close()
            raise
        finally:
            sender.close()  # the child holds its own copy: its death closes the pipe
        self.running = process
        assert process.pid is not None  # started
        return _Child(process, receiver, process.pid)

    def _overran(self, directory: Path, child: _Child) -> BuildFailed:
        return BuildFailed(
            directory,
            "timeout",
            f"building the policy took longer than {self.timeout:g} s ([policy] build_timeout_seconds): "
            f"the build process (pid {child.pid}) was killed",
        )

    def _outcome(
        self, directory: Path, child: _Child, message: tuple[str, Any] | None, exitcode: int | None
    ) -> PolicySnapshot:
        if message is None:
            raise BuildFailed(directory, "crash", f"the build process (pid {child.pid}) {_death(exitcode)}")
        kind, value = message
        if kind == _BUILT and isinstance(value, PolicySnapshot):
            return value
        if kind == _REFUSED:
            raise PolicyError(value)
        trace = str(value) if kind == _FAILED else f"the build process answered {kind!r}"
        last = trace.strip().splitlines()[-1] if trace.strip() else "no detail"
        raise BuildFailed(directory, "error", f"building the policy failed: {last}", trace)

    def _finish(self, child: _Child) -> int | None:
        """Reap the child (killed if it lingers after answering), close the pipe; its
        exit code (negative: the signal that ended it)."""
        process = child.process
        process.join(REAP_SECONDS)
        if process.exitcode is None:
            process.kill()
            process.join()
        exitcode = process.exitcode
        child.receiver.close()
        process.close()
        if self.running is process:
            self.running = None
        return exitcode


def _preload(verify: Verify | None) -> list[str]:
    """What the fork server imports before it forks anyone: this module, the check's,
    every broker module this process has imported, and what the main script imports."""
    wanted = {__name__, *(name for name in sys.modules if name.startswith("broker."))}
    if verify is not None:
        wanted.add(verify.__module__)
    return sorted(wanted | _main_script_imports())


def _main_script_imports() -> set[str]:
    """The modules the main script imports at its top level. A child runs its parent's
    main script again (multiprocessing's rule for children it does not fork from the
    parent itself; `python -m` mains excepted): the `broker` console script imports
    broker.cli (~0.4 s), pytest's imports pytest. Preloaded, they cost a child nothing."""
    path = getattr(sys.modules.get("__main__"), "__file__", None)
    if not isinstance(path, str):
        return set()
    try:
        tree = ast.parse(Path(path).read_bytes())
    except (OSError, SyntaxError, ValueError):
        return set()
    found: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module)
    return found


def _receive(receiver: Connection) -> tuple[str, Any] | None:
    """The child's answer, unpickled; None if it closed its end without one (it died).
    Its own code built the pickle from the policy files the broker trusts, like any
    module it imports."""
    try:
        payload = receiver.recv_bytes()
    except (EOFError, OSError):
        return None
    try:
        message = pickle.loads(payload)  # noqa: S301 - our own child's answer, see above
    except Exception as exc:  # a truncated or garbled answer is a failed build, not a crash of ours
        return (_FAILED, f"its answer could not be read: {exc!r}")
    if not (isinstance(message, tuple) and len(message) == 2 and isinstance(message[0], str)):
        return (_FAILED, "its answer was not a (kind, value) pair")
    return message


def _death(exitcode: int | None) -> str:
    if exitcode is None:
        return "closed its pipe without answering and did not exit"
    if exitcode < 0:
        with contextlib.suppress(ValueError):
            return f"was killed by {signal.Signals(-exitcode).name} without answering"
        return f"was killed by signal {-exitcode} without answering"
    return f"exited with code {exitcode} without answering"

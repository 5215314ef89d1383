"""The live policy: loaded at start, rebuilt on file change or SIGHUP, swapped whole.

A rebuild runs in a worker thread (a 100,000-employee roster takes seconds to load)
so the event loop keeps serving with the previous snapshot meanwhile. A broken edit
is logged with file, line and reason and the last good snapshot stays live.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import structlog
import watchfiles

from broker.policy.problem import PolicyError, PolicyProblem
from broker.policy.snapshot import PolicySnapshot, load_snapshot

log = structlog.get_logger("broker.policy")


class PolicyHolder:
    def __init__(
        self,
        directory: Path,
        clock: Callable[[], float],
        verify: Callable[[PolicySnapshot], list[PolicyProblem]] | None = None,
    ) -> None:
        """`verify` runs on every candidate snapshot before it can go live (the policy's
        own test cases); any problem it returns refuses the snapshot."""
        self.directory = directory
        self._verify = verify
        self._clock = clock
        self._current: PolicySnapshot | None = None
        self._lock = asyncio.Lock()
        self.loaded_at: float | None = None
        self.last_error: PolicyError | None = None
        self.last_attempt_at: float | None = None
        self.reloads = 0
        self.rejected = 0
        self.on_outcome: Callable[[bool], None] | None = None
        """Told of every reload attempt, whatever triggered it (a file change, SIGHUP, the
        CLI): the metrics count them all."""

    @property
    def current(self) -> PolicySnapshot | None:
        return self._current

    def load_initial(self) -> PolicySnapshot:
        """Load synchronously before serving; raises PolicyError if the files are bad."""
        snapshot = self._build()
        self._install(snapshot)
        return snapshot

    async def reload(self, trigger: str) -> bool:
        """Rebuild off the loop and swap; False (old policy kept) if the files are bad."""
        ok = await self._reload(trigger)
        if self.on_outcome is not None:
            self.on_outcome(ok)
        return ok

    async def _reload(self, trigger: str) -> bool:
        async with self._lock:
            self.last_attempt_at = self._clock()
            try:
                snapshot = await asyncio.to_thread(self._build)
            except PolicyError as exc:
                self._reject(exc, trigger)
                return False
            except Exception as exc:  # any other surprise must not take the live policy down
                problem = PolicyProblem(str(self.directory), 0, f"unexpected error while loading: {exc!r}")
                self._reject(PolicyError([problem]), trigger)
                return False
            previous = self._current.revision if self._current else None
            self._install(snapshot)
            self.reloads += 1
            log.info("policy.reloaded", trigger=trigger, revision=snapshot.revision, previous=previous)
            return True

    async def watch(self, stop: asyncio.Event) -> None:
        """Reload whenever a policy file changes: the files of the directory and the
        policy's own test cases under `tests/` (a snapshot goes live only if it passes
        them, so a changed case re-decides whether the policy may serve)."""
        root = self.directory.resolve()
        watched = (root, root / "tests")

        def is_policy_file(_change: object, path: str) -> bool:
            return Path(path).parent in watched

        async for changes in watchfiles.awatch(
            root, stop_event=stop, debounce=300, recursive=True, watch_filter=is_policy_file
        ):
            names = sorted({str(Path(path).relative_to(root)) for _, path in changes})
            await self.reload(f"file change: {', '.join(names)}")

    def _build(self) -> PolicySnapshot:
        snapshot = load_snapshot(self.directory)
        problems = self._verify(snapshot) if self._verify else []
        if problems:
            raise PolicyError(problems)
        return snapshot

    def _install(self, snapshot: PolicySnapshot) -> None:
        self._current = snapshot
        self.loaded_at = self._clock()
        self.last_error = None

    def _reject(self, exc: PolicyError, trigger: str) -> None:
        self.last_error = exc
        self.rejected += 1
        log.error(
            "policy.rejected",
            trigger=trigger,
            kept_revision=self._current.revision if self._current else None,
            problems=[str(p) for p in exc.problems],
        )

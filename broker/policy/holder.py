"""The live policy: loaded at start, rebuilt on file change or SIGHUP, swapped whole.

Every snapshot is built in a child process (`build`: a 100,000-employee roster takes
seconds), so the event loop keeps serving with the previous snapshot meanwhile and only
installs the new one. A broken edit is logged with file, line and reason, a failed build
(the child died or overran `[policy] build_timeout_seconds`) with its cause, and either
way the last good snapshot stays live.
"""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Callable
from pathlib import Path

import structlog
import watchfiles

from broker.policy.build import BuildFailed, NoTempDirectory, SnapshotBuilder, Verify
from broker.policy.problem import PolicyError
from broker.policy.snapshot import PolicySnapshot

DEFAULT_BUILD_TIMEOUT = 120.0

log = structlog.get_logger("broker.policy")


class PolicyHolder:
    def __init__(
        self,
        directory: Path,
        clock: Callable[[], float],
        verify: Verify | None = None,
        build_timeout: float = DEFAULT_BUILD_TIMEOUT,
    ) -> None:
        """`verify` runs on every candidate snapshot before it can go live (the policy's
        own test cases), in the build process; any problem it returns refuses the
        snapshot. It must be a module-level function (it is sent to the child by name)."""
        self.directory = directory
        self.builder = SnapshotBuilder(verify, build_timeout)
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
        self.on_build_failure: Callable[[str], None] | None = None
        """Told the cause ("timeout", "crash", "error") of every reload whose build failed
        whatever the policy says: the metrics count them apart from broken edits."""

    @property
    def current(self) -> PolicySnapshot | None:
        return self._current

    def load_initial(self) -> PolicySnapshot:
        """Load synchronously before serving; raises PolicyError if the files are bad or
        the build failed (BuildFailed)."""
        try:
            snapshot = self.builder.build(self.directory)
        except (PolicyError, NoTempDirectory):  # the latter is no policy problem: it names its fix
            raise
        except Exception as exc:  # the child could not even start: say so as a policy problem
            raise BuildFailed(self.directory, "error", f"could not build the policy: {exc!r}") from exc
        self._install(snapshot)
        return snapshot

    async def reload(self, trigger: str) -> bool:
        """Rebuild in a child process and swap; False (old policy kept) if the files are
        bad or the build failed."""
        ok = await self._reload(trigger)
        if self.on_outcome is not None:
            self.on_outcome(ok)
        return ok

    async def _reload(self, trigger: str) -> bool:
        async with self._lock:
            self.last_attempt_at = self._clock()
            try:
                snapshot = await self.builder.build_async(self.directory)
            except BuildFailed as exc:
                self._failed(exc, trigger)
                return False
            except PolicyError as exc:
                self._reject(exc, trigger)
                return False
            except Exception as exc:  # any other surprise must not take the live policy down
                self._failed(BuildFailed(self.directory, "error", f"could not build the policy: {exc!r}"), trigger)
                return False
            previous = self._current.revision if self._current else None
            self._install(snapshot)
            # What is alive now lives until the next reload: keep the cyclic GC from
            # walking it on every full collection (a stall for every request in flight).
            # Objects of the requests in flight are frozen too: those of them that later
            # become cyclic garbage are never collected (bounded by what is in flight).
            gc.freeze()
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

    def _install(self, snapshot: PolicySnapshot) -> None:
        self._current = snapshot
        self.loaded_at = self._clock()
        self.last_error = None

    def _failed(self, exc: BuildFailed, trigger: str) -> None:
        log.error(
            "policy.build_failed",
            trigger=trigger,
            cause=exc.cause,
            detail=exc.detail,
            trace=exc.trace or None,
            kept_revision=self._current.revision if self._current else None,
        )
        if self.on_build_failure is not None:
            self.on_build_failure(exc.cause)
        self._reject(exc, trigger)

    def _reject(self, exc: PolicyError, trigger: str) -> None:
        self.last_error = exc
        self.rejected += 1
        log.error(
            "policy.rejected",
            trigger=trigger,
            kept_revision=self._current.revision if self._current else None,
            problems=[str(p) for p in exc.problems],
        )

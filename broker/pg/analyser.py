"""SQL analysis in a worker process: a parser crash costs one statement, never the broker.

libpg_query (through pglast) is C code fed text an employee wrote. A 48 kB
`SELECT 1+1+...+1` made it segfault inside the broker's own process, taking both doors
down for everyone, and a 1 MB `IN (...)` list held the event loop for seconds. So a
statement the cache has not seen is analysed in a separate process, with a time limit:

- a crash (the worker dies) or a timeout (the worker is killed) refuses that one
  statement with SQLSTATE 54001 statement_too_complex, and a fresh worker takes over;
- Python's own recursion limit in the tree walk is the nesting limit: RecursionError is
  a refusal (54001), not a dropped session;
- the event loop only waits on a future meanwhile: other sessions, logins and the HTTP
  door go on.

Statements are sent as text with the table map, and come back as plain data
(`Statement`, `Literals`); refusals come back as their three fields, since SqlRefused
does not survive pickling with its extra arguments.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import multiprocessing
from collections.abc import Coroutine
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any, Protocol, TypeVar, cast

import structlog

from broker.messages.said import Said, said
from broker.pg.sql import Literals, SqlRefused, Statement, analyse_with_literals
from broker.policy.table import TableMap

log = structlog.get_logger("broker.pg")

Analysed = list[tuple[Statement, Literals]]
T = TypeVar("T")
_Outcome = tuple[Analysed | None, tuple[str, Said | None, str] | None]

TOO_COMPLEX = "54001"
STARTUP_SECONDS = 30.0
HINT = said("too_complex")


class Analyser(Protocol):
    async def analyse(self, sql: str, tables: TableMap) -> Analysed: ...


def analyse_in_worker(sql: str, tables: TableMap) -> _Outcome:
    """Runs in the worker process."""
    try:
        return analyse_with_literals(sql, tables), None
    except SqlRefused as exc:
        return None, (exc.message, exc.said, exc.sqlstate)
    except RecursionError:
        return None, ("the statement is nested too deeply to be checked", HINT, TOO_COMPLEX)


class InlineAnalyser:
    """Analysis in this process, for tests and benchmarks of what surrounds it (the
    door always uses SqlAnalyser): it never suspends, so `run_now` can drive it."""

    async def analyse(self, sql: str, tables: TableMap) -> Analysed:
        return analyse_with_literals(sql, tables)


def run_now(coroutine: Coroutine[Any, Any, T]) -> T:
    """The result of a coroutine that completes without suspending (InlineAnalyser's)."""
    try:
        coroutine.send(None)
    except StopIteration as done:
        return cast(T, done.value)
    coroutine.close()
    raise RuntimeError("the coroutine suspended; run it on an event loop")


class SqlAnalyser:
    """A small pool of analysis processes (spawned, not forked: the broker has threads)."""

    def __init__(self, workers: int = 2, timeout: float = 2.0) -> None:
        self._workers = workers
        self._timeout = timeout
        self._pool: ProcessPoolExecutor | None = None
        self._warm: list[Future[None]] = []
        """The first of the trivial jobs sent to a new pool, one per worker (the pool starts a
        process for each job it has no idle worker for): done once a worker is up."""
        self.restarts = 0
        """Workers replaced after a crash or a timeout (for metrics and tests)."""

    async def analyse(self, sql: str, tables: TableMap) -> Analysed:
        """The statements in `sql`, or SqlRefused (54001 when the analysis crashed or ran
        past the time limit)."""
        try:
            analysed, refused = await self._in_worker(sql, tables)
        except BrokenProcessPool:
            # A worker died: this statement's doing, or another's queued in the same pool
            # (killed after its timeout, or crashed). One more try in a fresh pool tells.
            self._replace("crash", len(sql))
            try:
                analysed, refused = await self._in_worker(sql, tables)
            except BrokenProcessPool:
                self._replace("crash", len(sql))
                raise SqlRefused(
                    "the statement could not be checked (its analysis failed)", HINT, TOO_COMPLEX
                ) from None
        if refused is not None:
            raise SqlRefused(*refused)
        assert analysed is not None
        return analysed

    async def _in_worker(self, sql: str, tables: TableMap) -> _Outcome:
        pool = self._ready()
        await self._started()
        future = asyncio.get_running_loop().run_in_executor(pool, analyse_in_worker, sql, tables)
        try:
            async with asyncio.timeout(self._timeout):
                return await future
        except TimeoutError:
            if self._pool is pool:  # not already replaced by another statement's failure
                self._replace("timeout", len(sql))
            raise SqlRefused(
                f"the statement could not be checked within {self._timeout:g} s", HINT, TOO_COMPLEX
            ) from None

    def start(self) -> None:
        """Start the workers now, so the first statement does not wait for them."""
        self._ready()

    async def _started(self) -> None:
        """Wait (up to STARTUP_SECONDS) for a new pool's workers to have started and
        imported the analysis code: the analysis time limit is for the statement, and
        spawning a worker on a busy machine once took longer than the limit, refusing
        the first statement after every restart."""
        warm = [future for future in self._warm if not future.done()]
        if not warm:
            return
        with contextlib.suppress(TimeoutError, BrokenProcessPool):
            async with asyncio.timeout(STARTUP_SECONDS):
                await asyncio.gather(*(asyncio.wrap_future(future) for future in warm))

    def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            _stop(pool)

    def _ready(self) -> ProcessPoolExecutor:
        if self._pool is None:
            self._pool = ProcessPoolExecutor(self._workers, mp_context=multiprocessing.get_context("spawn"))
            # each warm-up imports the analysis code (pglast and the statement rules), so
            # the statement's time limit never pays for a worker's imports
            module = analyse_in_worker.__module__
            warming = [self._pool.submit(_warm_up, module) for _ in range(self._workers)]
            self._warm = warming
        return self._pool

    def _replace(self, why: str, size: int) -> None:
        log.error("pg.analysis_worker_replaced", why=why, statement_bytes=size)
        self.restarts += 1
        self.close()
        self.start()


def _warm_up(module: str) -> None:
    """Run in a new worker: import the module the analysis function lives in (and so
    everything it needs) before the first statement arrives."""
    importlib.import_module(module)


def _stop(pool: ProcessPoolExecutor) -> None:
    """Stop a pool whose worker may be stuck in C code: shutdown() alone would wait for it.
    The executor has no public way to kill its workers, hence `_processes`."""
    processes = list((getattr(pool, "_processes", None) or {}).values())
    pool.shutdown(wait=False, cancel_futures=True)
    for process in processes:
        if process.is_alive():
            process.kill()

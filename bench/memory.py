"""Resident memory of a broker at 100 / 10,000 / 100,000 employees, and where it goes.

For each roster size the parent writes a policy directory (bench/roster.py); a fresh
child process then builds a whole broker (policy, identity, meter, guard) from it, as
`broker run` does, and reports:

1. RSS after imports, after the policy is loaded, and after one policy reload (the same
   files edited: a whole new snapshot built and swapped in, the old one dropped), and the
   longest the event loop was kept from running during that reload;
2. what one full garbage collection costs after the load and after the reload (a stall
   for every request in flight: the loaded policy should be frozen out of the cyclic GC,
   or hold few objects it tracks);
3. RSS after every employee made one metered decision (each then holds a live quota
   counter, a rate counter and the per-revision caches, as after a busy shift);
4. where the memory goes: the size of each structure of the policy snapshot, its index
   and the busy broker's caches (objects reached from each, shared ones counted once, in
   the order listed; `sys.getsizeof`, so allocator overhead is not included: RSS is the
   authoritative figure). `--tracemalloc` adds the lines that allocated most while the
   policy loaded (slow: about 10x the load time).

RSS is read from /proc after a full collection at each step. The employee ids are read
back from the loaded policy, so the generator's own lists are not in the child's RSS.

    python -m bench.memory                          # 100, 10,000 and 100,000 employees
    python -m bench.memory --sizes 100000           # one size
    python -m bench.memory --baseline DIR           # also the code of another source tree
                                                    # (e.g. `git archive <commit> | tar -x -C DIR`),
                                                    # child by child, in the same run
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import platform
import subprocess
import sys
import tempfile
import time
import tracemalloc
import types
from collections.abc import Awaitable, Iterable
from datetime import date
from pathlib import Path
from typing import Any, TypeVar

from bench.roster import people, write_policy_dir

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
SECRET = "bench-memory-secret-0123456789abcdef0123456789"  # noqa: S105 - a bench-only dev secret
NOW = "2026-12-02T15:00:00+08:00"  # a Wednesday afternoon: every generated shift is on
T = TypeVar("T")
SHOWN_MB = 0.05
"""Structures smaller than this are summed into one "the rest" line."""
_SKIPPED = (type, types.ModuleType, types.FunctionType, types.BuiltinFunctionType, types.MethodType)
"""Reached from everything, owned by nothing measured: code, not data."""


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status (this benchmark needs Linux)")


def settled_rss() -> float:
    gc.collect()
    return rss_mb()


def full_collection_ms() -> float:
    started = time.perf_counter()
    gc.collect()
    return (time.perf_counter() - started) * 1000


async def with_loop_watched(work: Awaitable[T]) -> tuple[T, float]:
    """`work`'s result, and the longest the event loop was kept from running (ms) meanwhile:
    a ticker asks to wake every millisecond and notes how late it woke."""
    loop = asyncio.get_running_loop()
    worst, done = 0.0, False

    async def tick() -> None:
        nonlocal worst
        while not done:
            asked = loop.time()
            await asyncio.sleep(0.001)
            worst = max(worst, loop.time() - asked - 0.001)

    ticker = asyncio.create_task(tick())
    try:
        result = await work
    finally:
        done = True
        await ticker
    return result, worst * 1000


def deep_size(root: object, seen: set[int]) -> int:
    """Bytes of `root` and everything it reaches that is not in `seen` (then added)."""
    total, stack = 0, [root]
    while stack:
        obj = stack.pop()
        if id(obj) in seen or isinstance(obj, _SKIPPED):
            continue
        seen.add(id(obj))
        total += sys.getsizeof(obj)
        if type(obj).__module__.startswith("marisa_trie"):
            total += len(obj.tobytes())  # its C++ structure, which getsizeof does not see
        stack.extend(gc.get_referents(obj))
    return total


def attributes(obj: object) -> list[tuple[str, object]]:
    """An object's own fields: its slots (a dataclass's) and its __dict__."""
    names = [name for cls in type(obj).__mro__ for name in getattr(cls, "__slots__", ())]
    found = [(name, getattr(obj, name)) for name in names if hasattr(obj, name)]
    return found + list(getattr(obj, "__dict__", {}).items())


def breakdown(label: str, fields: Iterable[tuple[str, object]], seen: set[int]) -> list[tuple[str, float]]:
    """(label.field, MB) for each field of at least SHOWN_MB, the rest summed."""
    rows, rest = [], 0.0
    for name, value in fields:
        size = deep_size(value, seen) / 2**20
        if size >= SHOWN_MB:
            rows.append((f"{label}.{name}", size))
        else:
            rest += size
    return [*rows, (f"{label}: the rest", rest)]


def policy_breakdown(snapshot: Any, seen: set[int]) -> list[tuple[str, float]]:
    index = snapshot.index
    seen.add(id(snapshot))
    seen.add(id(index))
    rows = breakdown("index", attributes(index), seen)
    return rows + breakdown("snapshot", [(n, v) for n, v in attributes(snapshot) if v is not index], seen)


def busy_breakdown(broker: Any, seen: set[int]) -> list[tuple[str, float]]:
    """The caches and counters the decisions filled (the policy already counted)."""
    rows = breakdown("meter.store", attributes(broker.meter.store), seen)
    rows += breakdown("authenticator", attributes(broker.authenticator), seen)
    rows += breakdown("guard", attributes(broker.guard), seen)
    return rows + breakdown("audit", attributes(broker.audit), seen)


def top_allocations(directory: Path, count: int = 12) -> list[tuple[str, float]]:
    """The source lines that hold most of a freshly loaded snapshot (tracemalloc)."""
    from broker.policy.snapshot import load_snapshot  # noqa: PLC0415 - from the tree under test

    tracemalloc.start(1)
    snapshot = load_snapshot(directory)
    stats = tracemalloc.take_snapshot().statistics("lineno")
    tracemalloc.stop()
    del snapshot
    root = str(ROOT)
    return [(str(s.traceback[0]).replace(root + "/", ""), s.size / 2**20) for s in stats[:count]]


async def child(size: int, directory: Path, with_tracemalloc: bool) -> dict[str, Any]:
    """One size, in this process (the code under test first on sys.path): numbers as JSON."""
    from dataclasses import replace  # noqa: PLC0415 - imported with the code under test

    from broker.app import build_broker  # noqa: PLC0415
    from broker.config import Settings  # noqa: PLC0415
    from broker.core.access import Access  # noqa: PLC0415
    from broker.core.clock import FakeClock, parse_instant  # noqa: PLC0415
    from broker.identity.jwt_authenticator import mint_token  # noqa: PLC0415
    from broker.meter.store import MemoryCounterStore  # noqa: PLC0415

    baseline = settled_rss()
    settings = Settings()
    settings = replace(
        settings,
        identity=replace(settings.identity, hs256_secret=SECRET),
        policy=replace(settings.policy, directory=directory, watch=False),
        audit=replace(settings.audit, path="/dev/null"),
    )
    clock = FakeClock(parse_instant(NOW))
    started = time.perf_counter()
    broker = build_broker(settings, clock=clock, store=MemoryCounterStore())
    load_s = time.perf_counter() - started
    loaded = settled_rss()
    gc_loaded_ms = full_collection_ms()
    gc.freeze()  # as `broker run` does once the policy is loaded
    gc_frozen_ms = full_collection_ms()
    roster = directory / "roster.csv"
    roster.write_text(roster.read_text(encoding="utf-8") + "# edited by bench/memory.py\n", encoding="utf-8")
    started = time.perf_counter()
    reloaded_ok, stall_ms = await with_loop_watched(broker.reload("bench"))
    if not reloaded_ok:
        raise SystemExit(f"the reload was refused: {broker.policy.last_error}")
    reload_s = time.perf_counter() - started
    gc_reloaded_ms = full_collection_ms()
    reloaded = settled_rss()
    snapshot = broker.policy.current
    seen: set[int] = set()
    policy_rows = policy_breakdown(snapshot, seen)
    allowed = 0
    for employee in list(snapshot.index.employees):
        token = mint_token(SECRET, employee, now=clock.now(), ttl_seconds=8 * 3600)
        access = Access(token, "127.0.0.1", "GET /api/waybills", "waybill", "read", None, 20)
        decision = await broker.guard.decide(access)
        allowed += decision.allowed
    busy = settled_rss()
    busy_rows = busy_breakdown(broker, seen)
    broker.audit.close()
    return {
        "size": size,
        "imports_mb": baseline,
        "loaded_mb": loaded,
        "reloaded_mb": reloaded,
        "busy_mb": busy,
        "load_s": load_s,
        "reload_s": reload_s,
        "reload_stall_ms": stall_ms,
        "gc_loaded_ms": gc_loaded_ms,
        "gc_frozen_ms": gc_frozen_ms,
        "gc_reloaded_ms": gc_reloaded_ms,
        "allowed": allowed,
        "employees": len(snapshot.index.employees),
        "policy_rows": policy_rows,
        "busy_rows": busy_rows,
        "top_allocations": top_allocations(directory) if with_tracemalloc else [],
    }


def run_child(size: int, code: Path, label: str, with_tracemalloc: bool) -> dict[str, Any]:
    print(f"size {size:,}, {label}: loading, reloading, making every employee's quota active ...", flush=True)
    directory = write_policy_dir(Path(tempfile.mkdtemp(prefix=f"bench-memory-{size}-")) / "policies", people(size))
    command = [sys.executable, "-m", "bench.memory", "--child", str(size), "--policy", str(directory)]
    command += ["--code", str(code)] + (["--tracemalloc"] if with_tracemalloc else [])
    done = subprocess.run(command, capture_output=True, text=True, check=False, cwd=ROOT)
    if done.returncode:
        raise SystemExit(f"the size {size} child ({label}) failed:\n{done.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    result["code"] = label
    print(
        f"size {size:,}, {label}: RSS {result['loaded_mb']:.0f} MB loaded, {result['reloaded_mb']:.0f} MB after a "
        f"reload, {result['busy_mb']:.0f} MB with every quota active; full GC after the reload "
        f"{result['gc_reloaded_ms']:.0f} ms",
        flush=True,
    )
    return result


def table(results: list[dict[str, Any]]) -> str:
    lines = [
        "| code | employees | after imports MB | loaded MB | after a reload MB | every quota active MB "
        "| KB per employee | load s | reload s | loop stall in the reload ms "
        "| full GC ms: loaded / frozen / after reload |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        per_employee = (r["busy_mb"] - r["imports_mb"]) * 1024 / r["size"]
        lines.append(
            f"| {r['code']} | {r['size']:,} | {r['imports_mb']:.0f} | {r['loaded_mb']:.0f} | {r['reloaded_mb']:.0f} "
            f"| {r['busy_mb']:.0f} | {per_employee:.2f} | {r['load_s']:.1f} | {r['reload_s']:.1f} "
            f"| {r['reload_stall_ms']:.0f} "
            f"| {r['gc_loaded_ms']:.0f} / {r['gc_frozen_ms']:.0f} / {r['gc_reloaded_ms']:.0f} |"
        )
    return "\n".join(lines)


def where_it_goes(results: list[dict[str, Any]]) -> str:
    """One table per code at the largest size: MB per structure."""
    largest = max(r["size"] for r in results)
    mine = [r for r in results if r["size"] == largest]
    names = list(dict.fromkeys(name for r in mine for name, _ in [*r["policy_rows"], *r["busy_rows"]]))
    lines = [
        f"| structure at {largest:,} employees | " + " | ".join(f"{r['code']} MB" for r in mine) + " |",
        "|---|" + "---:|" * len(mine),
    ]
    for name in names:
        sizes = [dict([*r["policy_rows"], *r["busy_rows"]]).get(name) for r in mine]
        lines.append(f"| {name} | " + " | ".join("" if s is None else f"{s:.1f}" for s in sizes) + " |")
    for r in mine:
        if r["top_allocations"]:
            lines += ["", f"Lines holding most of a freshly loaded snapshot ({r['code']}, tracemalloc):", ""]
            lines += [f"- {where}: {mb:.1f} MB" for where, mb in r["top_allocations"]]
    return "\n".join(lines)


def write_report(results: list[dict[str, Any]], tag: str) -> Path:
    RESULTS.mkdir(exist_ok=True)
    stem = f"memory-{date.today().isoformat()}" + (f"-{tag}" if tag else "")
    path = RESULTS / f"{stem}.md"
    body = [
        "# Broker memory: policy, reload and active quota counters",
        "",
        f"Machine: {platform.node()}, {platform.machine()}, Python {platform.python_version()}. "
        "Command: `python -m bench.memory`. Each size and code in a fresh process; RSS after `gc.collect()`.",
        "",
        "Loaded: the broker built as `broker run` builds it. After a reload: roster.csv edited and the",
        "policy reloaded as on SIGHUP. Every quota active: every employee then made one metered decision",
        "(waybill read, 20 records), so each has a live quota counter and a rate counter in the",
        'in-memory store (with `[meter] store = "redis"` they live in Redis instead), plus its',
        "principal in the per-revision cache. Verified tokens are cached up to",
        "`[identity] token_cache_size` (10,000 by default). Loop stall: the longest a ticker asking to",
        "wake every millisecond overslept while the reload ran (what every request in flight would wait).",
        "Full GC: one `gc.collect()` after the load,",
        "after `gc.freeze()` (what `broker run` does after loading), and after the reload.",
        "",
        table(results),
        "",
        "## Where the memory goes",
        "",
        "Objects reached from each structure, shared ones counted once (with the first structure",
        "listed that reaches them); `sys.getsizeof`, so allocator overhead is not included.",
        "",
        where_it_goes(results),
        "",
    ]
    path.write_text("\n".join(body), encoding="utf-8")
    path.with_suffix(".json").write_text(json.dumps(results, indent=1), encoding="utf-8")
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 10_000, 100_000])
    parser.add_argument("--baseline", type=Path, help="also measure the code of this source tree, in the same run")
    parser.add_argument("--tracemalloc", action="store_true", help="also list the lines that allocate the policy")
    parser.add_argument("--tag", default="", help="results go to bench/results/memory-<date>-<tag>.md")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--policy", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--code", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        sys.path.insert(0, str(args.code))
        print(json.dumps(asyncio.run(child(args.child, args.policy, args.tracemalloc))))
        return
    if args.baseline is not None and not (args.baseline / "broker").is_dir():
        parser.error(f"--baseline {args.baseline}: no broker/ package there")
    codes = [(ROOT, "this tree")]
    if args.baseline is not None:
        codes.append((args.baseline.resolve(), f"baseline {args.baseline.name}"))
    results = [run_child(size, code, label, args.tracemalloc) for size in args.sizes for code, label in codes]
    print(table(results))
    print(f"written to {write_report(results, args.tag)}")


if __name__ == "__main__":
    main()

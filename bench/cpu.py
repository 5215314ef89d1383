"""CPU accounting for the end-to-end benchmarks (bench/http.py, bench/pg.py), from /proc.

A proxy's cost is its CPU per request, so each run reads clock ticks before and after:
of the processes measured, of the whole machine (to see what else was busy: a shared
machine, a noisy VM neighbour, loopback interrupts charged to no process) and of every
process (to name the busiest outsiders in the report). Linux only.
"""

from __future__ import annotations

import contextlib
import os
import resource
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

CLK_TCK = os.sysconf("SC_CLK_TCK")
"""Clock ticks per second: the unit of every figure below."""


def cpu_model() -> str:
    """The CPU's model name, for the report: figures only compare on like machines."""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown"


def stat_fields(pid: int) -> list[str]:
    """/proc/<pid>/stat from its 3rd field (state) on: comm, the 2nd, may hold spaces and
    parentheses, so the split starts after its last ')'. Raises OSError if `pid` is gone."""
    text = Path(f"/proc/{pid}/stat").read_text()
    return text[text.rindex(")") + 2 :].split()


def cpu_ticks(pids: Sequence[int]) -> int:
    """utime + stime of `pids`, every thread included."""
    total = 0
    for pid in pids:
        fields = stat_fields(pid)
        total += int(fields[11]) + int(fields[12])
    return total


class ProcessTicks(NamedTuple):
    name: str
    parent: int
    ticks: int
    """utime + stime."""


def all_ticks() -> dict[int, ProcessTicks]:
    """Every process on the machine by pid; one that exits while being read is left out."""
    found = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, ValueError, IndexError):
                text = (entry / "stat").read_text()
                fields = text[text.rindex(")") + 2 :].split()
                name = text[text.index("(") + 1 : text.rindex(")")]
                found[int(entry.name)] = ProcessTicks(name, int(fields[1]), int(fields[11]) + int(fields[12]))
    return found


def children(pid: int) -> list[int]:
    """The live children of `pid` (nginx's worker under its master)."""
    return [child for child, process in all_ticks().items() if process.parent == pid]


def tree_ticks(root: int) -> int:
    """utime + stime of `root`, of its live children and of its finished, reaped ones
    (cutime + cstime): PostgreSQL's backends come and go with the client connections."""
    own = sum(int(f) for f in stat_fields(root)[11:15])
    return own + sum(process.ticks for process in all_ticks().values() if process.parent == root)


def children_cpu_seconds() -> float:
    """CPU of this process's finished, reaped children (the load generator, once it has
    exited: wrk, pgbench)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


class HostTicks(NamedTuple):
    """Clock ticks of the whole machine, summed over its CPUs, from /proc/stat."""

    busy: int
    """Everything but idle, iowait and steal."""
    steal: int
    """Time the hypervisor gave this VM's CPUs to someone else: a noisy neighbour, not us."""
    total: int
    irq: int
    """Hard + soft interrupt time (loopback networking): busy, but charged to no process."""

    def __sub__(self, earlier: tuple[int, ...]) -> HostTicks:
        """What was spent between `earlier` and this reading."""
        return HostTicks(*(a - b for a, b in zip(self, earlier, strict=True)))


def host_ticks() -> HostTicks:
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:9]]
    idle, steal = values[3] + values[4], values[7]
    return HostTicks(sum(values) - idle - steal, steal, sum(values), values[5] + values[6])


class Others(NamedTuple):
    """What processes outside the measurement used over a run: a concurrent job on a
    shared machine shows here, and its CPU is not the measured process's."""

    ticks: int
    busiest: list[tuple[int, str, int]]
    """(ticks, name, pid), busiest first."""

    def top(self, count: int = 3, decimals: int = 1) -> str:
        """The `count` busiest as `name[pid] 1.2 s`, or "none"."""
        shown = self.busiest[:count]
        return ", ".join(f"{name}[{pid}] {t / CLK_TCK:.{decimals}f} s" for t, name, pid in shown) or "none"


def others(
    before: dict[int, ProcessTicks], after: dict[int, ProcessTicks], mine: set[int], *, their_children: bool
) -> Others:
    """The processes alive at the end of a run (`after`) that used CPU during it, except
    `mine` and, if `their_children`, the children of `mine` (PostgreSQL's backends)."""
    used = [
        (process.ticks - (before[pid].ticks if pid in before else 0), process.name, pid)
        for pid, process in after.items()
        if pid not in mine and not (their_children and process.parent in mine)
    ]
    busy = sorted((u for u in used if u[0] > 0), reverse=True)
    return Others(sum(u[0] for u in busy), busy)

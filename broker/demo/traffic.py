"""Traffic plans for `broker demo --simulate`: an honest shift and two rented-login scrapes.

A plan is a list of visits in time order, each an employee's request from one client
address at an offset from the plan's start. Plans are plain data so the same honest
shift can be played at a newcomer's pace against the demo (real time, compressed) and
as a whole day on a fake clock in a test that counts the flags it raises (target: none).

The honest shift is what the roster's people do: lists of their own branch, a few
waybills looked up from them, an occasional wrong branch or mistyped path. The scrapes
are the two shapes of a rented login the signals catch: the owner's token used from
three places at once (shared login), and a renter working alone from one address who
pages through the branch's lists and then fetches every waybill one by one (enumeration).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

LOOKUP = "lookup"
"""A visit whose path is a waybill the employee saw in an earlier list answer."""


@dataclass(frozen=True, slots=True)
class Visit:
    at: float
    """Seconds from the start of the plan."""
    employee: str
    address: str
    path: str
    attack: bool = False


@dataclass(frozen=True, slots=True)
class Worker:
    employee: str
    branch: str
    address: str
    list_every: float
    """Seconds between two looks at the branch's list."""
    limit: int
    lookups: int
    """Waybills looked up from each list."""
    hours: float


HONEST_WORKERS = (
    Worker("e1001", "BR001", "127.0.1.1", 600, 5, 2, 10),  # courier: quota 500 a shift
    Worker("e1003", "BR001", "127.0.1.2", 3600, 3, 1, 10),  # trainee: quota 60 a shift
    Worker("e1004", "BR001", "127.0.1.3", 300, 10, 3, 10),  # clerk: quota 2000
    Worker("e2001", "BR003", "127.0.1.4", 300, 20, 4, 14),  # manager: day and late shifts
)
"""Who works the simulated day (the demo roster), each from their own desk's address."""


def honest_day(seed: int = 7, workers: tuple[Worker, ...] = HONEST_WORKERS) -> list[Visit]:
    """A working day from the start of the day shift: lists, look-ups and a few mistakes."""
    chance = random.Random(seed)
    visits: list[Visit] = []
    for worker in workers:
        at = chance.uniform(0, 120)
        while at < worker.hours * 3600:
            own = f"/api/branches/{worker.branch}/waybills?limit={worker.limit}&offset={chance.randrange(0, 80)}"
            visits.append(Visit(at, worker.employee, worker.address, own))
            for n in range(worker.lookups):
                visits.append(Visit(at + 20 * (n + 1) + chance.uniform(0, 10), worker.employee, worker.address, LOOKUP))
            if chance.random() < 0.05:  # a wrong branch typed now and then
                visits.append(Visit(at + 5, worker.employee, worker.address, "/api/branches/BR002/waybills?limit=5"))
            if chance.random() < 0.02:  # a mistyped path
                visits.append(Visit(at + 7, worker.employee, worker.address, "/api/waybill?limit=5"))
            at += worker.list_every * chance.uniform(0.7, 1.3)
    return sorted(visits, key=lambda v: v.at)


def shared_login_scrape(start: float, owner: str = "e1001", branch: str = "BR001") -> list[Visit]:
    """The owner's token sold to three renters at once, each paging through the lists.
    (Two renters and the owner make three addresses too, but the flag then waits for
    the owner's next request: the window holds only addresses seen in the last minutes.)"""
    visits = []
    for n in range(40):
        address = ("127.0.2.1", "127.0.2.2", "127.0.2.3")[n % 3]
        path = f"/api/branches/{branch}/waybills?limit=50&offset={n * 50}"
        visits.append(Visit(start + n * 0.5, owner, address, path, attack=True))
    return visits


def enumeration_scrape(start: float, owner: str = "e1004", branch: str = "BR001", pace: float = 0.2) -> list[Visit]:
    """A renter alone at one address: three pages of the branch's list, then every
    waybill on them one by one, `pace` seconds apart (a script, not a person)."""
    visits = [
        Visit(start + n, owner, "127.0.3.1", f"/api/branches/{branch}/waybills?limit=100&offset={n * 100}", True)
        for n in range(3)
    ]
    visits += [Visit(start + 3 + n * pace, owner, "127.0.3.1", LOOKUP, True) for n in range(300)]
    return visits

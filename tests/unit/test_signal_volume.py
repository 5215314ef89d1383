"""The volume signal's rule (#14): an employee's records per shift against what their
role-and-branch peers take, the quota fallback without peers, its windows, its check
points (what it costs per event), and how `[volume]` is read from signals.toml."""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from broker.native import PURE_ENV
from broker.policy.index import PolicyIndex
from broker.policy.snapshot import load_snapshot
from broker.signals.flag import Flag
from broker.signals.rules import SignalRules, Volume, parse_signals
from broker.signals.volume import VolumeWatch
from broker.signals.watch import SignalWatcher
from tests.harness import TUESDAY_10_SHANGHAI

REPO = Path(__file__).resolve().parents[2]
PEERS = ("e1101", "e1102", "e1103", "e1104")
"""Couriers of BR001 beside e1001, on the same day shift."""
_ids = itertools.count()


def roster(tmp_path: Path, *, limits: str | None = None, e1201_in: str = "BR002") -> PolicyIndex:
    """The shipped policy with four more couriers in BR001 (and e1201, a courier of BR002
    unless it says otherwise)."""
    target = tmp_path / "policies"
    shutil.copytree(REPO / "policies", target)
    with (target / "roster.csv").open("a") as extra:
        extra.writelines(f"g, {e}, courier, BR001\n" for e in PEERS)
        extra.write(f"g, e1201, courier, {e1201_in}\n")
    with (target / "shifts.csv").open("a") as extra:
        extra.writelines(f"g2, {e}, day-cn\n" for e in (*PEERS, "e1201"))
    if limits is not None:
        (target / "limits.csv").write_text(limits)
    return load_snapshot(target).index


class Scene:
    """A watcher over a roster, fed audit events by hand on a clock the test moves."""

    def __init__(self, index: PolicyIndex, **volume: Any) -> None:
        self.now = TUESDAY_10_SHANGHAI
        self.index = index
        self.flags: list[Flag] = []
        rules = SignalRules(shared_login=None, probing=None, enumeration=None, volume=Volume(**volume))
        self.watcher = SignalWatcher(lambda: rules, lambda: self.now, self.flags.append, lambda: self.index)

    def take(self, employee: str, records: int, times: int = 1, resource: str | None = "waybill") -> None:
        for _ in range(times):
            event = {"employee": employee, "verdict": "allow", "door": "pg", "records_returned": records}
            event["resource"] = resource
            self.watcher.observe({**event, "decision_id": f"d{next(_ids)}"})


def test_far_above_the_peers_median_is_flagged_with_its_evidence(tmp_path: Path) -> None:
    scene = Scene(roster(tmp_path), min_records=200)
    for peer, take in zip(PEERS, (30, 40, 40, 60), strict=True):
        scene.take(peer, take)
    scene.take("e1001", 50, times=4)
    assert scene.flags == []  # 200 is not more than 5 x 40
    scene.take("e1001", 50)
    [flag] = scene.flags
    assert (flag.signal, flag.employee, flag.action, flag.severity) == ("volume", "e1001", "flag", "medium")
    evidence = flag.evidence
    assert evidence["records"] == 250 and evidence["basis"] == "peers" and evidence["threshold"] == 201
    assert (evidence["peers"], evidence["peer_median"], evidence["peer_mean"]) == (4, 40, 42.5)
    assert evidence["peer_group"] == {"branches": {"BR001": ["courier"]}, "roles": []}
    assert len(evidence["decision_ids"]) == 5 and evidence["last_decision_id"] == evidence["decision_ids"][-1]
    assert evidence["window"]["shift"] and evidence["window"]["start"].endswith("00:00Z")  # 08:00 Shanghai
    assert "6.2x the median of 4 peers (40)" in flag.detail
    scene.take("e1001", 50, times=4)
    assert len(scene.flags) == 1, "one flag per window"


def test_an_honest_peer_group_raises_nothing(tmp_path: Path) -> None:
    scene = Scene(roster(tmp_path), min_records=100)
    for round_ in range(10):
        for n, employee in enumerate(("e1001", *PEERS)):
            scene.take(employee, 5 + (n + round_) % 4 * 10)  # 5 to 35 records a request, unevenly
    assert scene.flags == []


def test_min_records_holds_back_small_takes_and_far_above_is_high(tmp_path: Path) -> None:
    scene = Scene(roster(tmp_path), min_records=200)
    for peer in PEERS:
        scene.take(peer, 10)
    scene.take("e1001", 150)
    assert scene.flags == [], "15 x the median, but under min_records"
    scene.take("e1001", 50)
    [flag] = scene.flags
    assert flag.evidence["records"] == 200 and flag.severity == "high"  # 20 x the median, factor 5


def test_peers_are_the_same_roles_in_the_same_branch(tmp_path: Path) -> None:
    """A courier of another branch and a clerk of the same branch are not peers."""
    scene = Scene(roster(tmp_path), min_records=100)
    for other in ("e1201", "e1004"):  # courier BR002, clerk BR001
        scene.take(other, 5, times=3)
    scene.take("e1101", 10)
    scene.take("e1001", 100, times=3)
    assert scene.flags == [], "one peer is fewer than min_peers: the quota (500) is the norm"
    scene.take("e1001", 100, times=2)
    [flag] = scene.flags
    assert flag.evidence["basis"] == "quota" and flag.evidence["peers"] == 1 and flag.evidence["quota"] == 500
    assert flag.severity == "medium" and "fewer than 3 peers" in flag.detail


def test_without_peers_a_share_of_the_own_quotas_is_the_norm(tmp_path: Path) -> None:
    scene = Scene(roster(tmp_path), min_records=100, quota_share=0.5)
    scene.take("e2001", 100, times=29)  # manager of BR003: waybill 5000 + customer 1000 a shift
    assert scene.flags == []
    scene.take("e2001", 100)
    [flag] = scene.flags
    assert flag.evidence["quota"] == 6000 and flag.evidence["threshold"] == 3000


def test_no_peers_and_an_unlimited_quota_is_no_norm(tmp_path: Path) -> None:
    shipped = (REPO / "policies" / "limits.csv").read_text()
    index = roster(
        tmp_path, limits=shipped.replace("p3, manager, customer, 100, 1000", "p3, manager, customer, 100, unlimited")
    )
    scene = Scene(index, min_records=100)
    scene.take("e2001", 1000, times=20)
    assert scene.flags == []


def test_each_shift_starts_afresh_and_peers_are_judged_by_their_last_shift(tmp_path: Path) -> None:
    scene = Scene(roster(tmp_path), min_records=100)
    for peer in PEERS:
        scene.take(peer, 40)
    scene.take("e1001", 60, times=3)  # 180 <= 5 x 40
    scene.now += 86_400  # Wednesday, same hour: a new shift for everyone
    scene.take("e1001", 60, times=3)
    assert scene.flags == [], "yesterday's 180 does not count today"
    scene.take("e1001", 30)  # 210: above 5 x 40, the peers' last shift
    assert [f.evidence["records"] for f in scene.flags] == [210]


def test_someone_not_in_the_roster_is_not_counted(tmp_path: Path) -> None:
    scene = Scene(roster(tmp_path), min_records=1)
    scene.take("stranger", 10_000, times=3)
    assert scene.flags == []


def test_rows_of_no_mapped_table_are_not_records(tmp_path: Path) -> None:
    """`SELECT 1`, `SHOW ...` through the PostgreSQL door return rows, not records."""
    scene = Scene(roster(tmp_path), min_records=100)
    scene.take("e2001", 1000, times=10, resource=None)
    assert scene.flags == []


def test_a_reload_that_moves_an_employee_changes_their_peers_at_the_next_window(tmp_path: Path) -> None:
    scene = Scene(roster(tmp_path), min_records=100)
    for peer in PEERS:
        scene.take(peer, 10)
    scene.take("e1201", 80)  # courier of BR002, no peers there
    moved = tmp_path / "moved"
    moved.mkdir()
    scene.index = roster(moved, e1201_in="BR001")
    scene.now += 86_400
    scene.take("e1201", 120)
    assert [f.evidence["basis"] for f in scene.flags] == ["peers"]  # 120 > 5 x 10 among BR001's couriers


def count_peer_reads(tmp_path: Path) -> tuple[int, int]:
    """Flags raised and peer reads made while four peers take 10 records each and e1001
    takes 1 record 10,000 times."""
    scene = Scene(roster(tmp_path), min_records=100, factor=1000)
    reads = 0
    original = VolumeWatch._peer_takes

    def counted(self: VolumeWatch, *args: Any) -> list[int]:
        nonlocal reads
        reads += 1
        return original(self, *args)

    VolumeWatch._peer_takes = counted  # type: ignore[method-assign]
    try:
        for peer in PEERS:
            scene.take(peer, 10)
        scene.take("e1001", 1, times=10_000)
    finally:
        VolumeWatch._peer_takes = original  # type: ignore[method-assign]
    return len(scene.flags), reads


def test_peers_are_read_only_at_check_points(tmp_path: Path) -> None:
    """What a record-bearing event costs: a lookup and two additions; the peers are read
    when the count reaches its next check point, at most a tenth above the last. Counted in
    a second interpreter running the sources (BROKER_PURE_PYTHON=1): compiled, the watch
    calls its own method directly, and a patched one would count nothing."""
    code = (
        "import sys; from pathlib import Path; from tests.unit.test_signal_volume import count_peer_reads; "
        "print(*count_peer_reads(Path(sys.argv[1])))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path)],
        cwd=REPO, env={**os.environ, PURE_ENV: "1"}, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    flags, reads = map(int, result.stdout.split())
    assert flags == 0 and 0 < reads < 60, (flags, reads)


def test_forget_starts_the_window_afresh(tmp_path: Path) -> None:
    scene = Scene(roster(tmp_path), min_records=100)
    for peer in PEERS:
        scene.take(peer, 10)
    scene.take("e1001", 100)
    scene.watcher.forget("e1001")  # a person unfroze them
    scene.take("e1001", 60)
    assert [f.evidence["records"] for f in scene.flags] == [100]
    scene.take("e1001", 40)
    assert [f.evidence["records"] for f in scene.flags] == [100, 100]


def test_the_shipped_section_and_its_defaults() -> None:
    rules, problems = parse_signals("signals.toml", (REPO / "policies" / "signals.toml").read_bytes())
    assert problems == [] and rules is not None
    assert rules.volume == Volume(factor=5.0, min_records=500, min_peers=3, quota_share=1.0, window=0, action="flag")
    defaults, _ = parse_signals("signals.toml", b"")
    assert defaults is not None and defaults.volume == Volume()
    off, _ = parse_signals("signals.toml", b"[volume]\nenabled = false\n")
    assert off is not None and off.volume is None
    timed, _ = parse_signals("signals.toml", b'[volume]\nwindow = "8h"\nfactor = 2.5\naction = "freeze"\n')
    assert timed is not None and timed.volume == Volume(factor=2.5, window=28_800, action="freeze")


@pytest.mark.parametrize(
    ("text", "line", "problem"),
    [
        ("[volume]\nfactor = 1\n", 2, "[volume] factor = 1 must be a number greater than 1"),
        ('[volume]\nfactor = "5"\n', 2, "must be a number greater than 1"),
        ("# peers\n\n[volume]\nmin_records = 0\n", 4, "[volume] min_records = 0 must be a whole number from 1 up"),
        ("[volume]\nmin_peers = 2.5\n", 2, "[volume] min_peers = 2.5 must be a whole number"),
        ("[volume]\nquota_share = 1.5\n", 2, "must be a share above 0 and at most 1"),
        ('[volume]\nwindow = "a shift"\n', 2, "[volume] window"),
        ("[volume]\nwindow = 8\n", 2, 'must be a duration such as "5m" or "shift"'),
        ('[volume]\naction = "ban"\n', 2, 'must be "flag" or "freeze"'),
        ("[volume]\nfactors = 5\n", 2, "[volume] has unknown keys factors"),
        ('[probing]\nrefusals = 3\n\n[volume]\nmin_records = 10\naction = "ban"\n', 6, "action"),
        ("[shared_login]\naddresses = 2\n\n[shared_login.branches]\nBR001 = 0\n", 5, "BR001 = 0"),
        ("[volume]\nmin_records = 10\n[volumes]\n", 3, "unknown section [volumes]"),
        ("[volume]\nfactor = \n", 2, "not valid TOML"),
    ],
)
def test_a_bad_volume_section_is_refused_with_its_line(text: str, line: int, problem: str) -> None:
    rules, problems = parse_signals("signals.toml", text.encode())
    assert rules is None
    assert any(p.line == line and problem in p.message for p in problems), problems


def test_every_section_s_problem_is_reported_not_only_the_first() -> None:
    _, problems = parse_signals("signals.toml", b"[probing]\nrefusals = 0\n[volume]\nfactor = 0\n")
    assert [p.line for p in problems] == [2, 4]

"""End-to-end HTTP benchmark: the broker against no proxy, nginx and a bare aiohttp proxy.

Everything runs on loopback, each server in its own process(es) on a free port:

    A  direct     wrk -> sample API (no proxy)
    B  nginx      wrk -> nginx proxy_pass (1 worker, upstream keepalive 64) -> sample API
    C  bare       wrk -> bench/bare_proxy.py (aiohttp pass-through, no checks) -> sample API
    D  broker     wrk -> `broker run` (1 process) -> sample API
    E  broker x2  wrk -> two `broker run` processes sharing the port (SO_REUSEPORT) -> sample API

The upstream is the demo sample API (`build_upstream_app(waybill_count=36_000)`). The
brokers run a realistic policy: 10,000 employees over 500 branches (bench/roster.py) with
generous limits (as in bench/meter.py, so the allow path is measured in full), RS256
tokens checked against a JWKS this script serves on loopback, an audit log file, policy
watch off, and the clock set inside every shift of the roster. wrk cycles through
pre-minted tokens of up to 200 employees on shift (staff of the 12 branches the sample API
serves, plus 2 HQ auditors), each asking for one waybill of their own branch;
every variant gets the same requests.

Each round runs every variant in turn (A B C D E, A B C D E, ...): `wrk -t1 -c32 -d8s`,
then CPU per request from /proc/<pid>/stat of the variant's own processes (not the
upstream's, which is reported apart). Medians across rounds. Then the same again at a
fixed, moderate request rate (250 req/s: latency when nobody is saturated; 5 rounds, as
its p99 rests on few samples per run), then the
closed loop for C and D alone, each pinned to a CPU of its own (no scheduler interleaving), then
C and D (and D0, DP) side by side: all at once on one CPU, so a slow spell of this shared
machine lands on them alike and the ratio of their CPU per request is read within a round, and with
--profile a py-spy recording of the one-process broker (and of the bare proxy, to compare)
under load, each pinned to a CPU of its own.

    .venv/bin/python -m bench.http [--duration 8] [--rounds 3] [--connections 32] [--quick] [--profile]

Needs wrk and nginx (`apt-get install -y wrk nginx`); --profile needs py-spy
(`.venv/bin/pip install py-spy`). Writes bench/results/http-<date>.md, .json, .png
(when matplotlib is importable) and, with --profile, -profile.svg and -profile.txt.
Progress goes to stderr. Must be run as a module: as a script, bench/http.py would
shadow the standard library's `http` package.
"""

from __future__ import annotations

import sys

if __package__ in (None, ""):
    sys.exit("run it as a module: .venv/bin/python -m bench.http")

import argparse
import contextlib
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import date
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import metadata
from pathlib import Path
from typing import Any

import jwt  # noqa: TID251 - the benchmark plays the identity provider: it signs tokens, it does not check them
from cryptography.hazmat.primitives.asymmetric import rsa

from bench.audit import count_audit
from bench.broker_config import common_sections
from bench.cpu import CLK_TCK, all_ticks, children, children_cpu_seconds, cpu_model, cpu_ticks, host_ticks, others
from bench.meter import GENEROUS_LIMITS
from bench.process import BenchError, Fleet, free_port, log, run_benchmark
from bench.roster import BRANCH_SHIFTS, HQ_SHIFT, Person, people, write_policy_dir
from broker.core.clock import parse_instant
from broker.demo.data import BRANCHES
from broker.native import PURE_ENV
from broker.policy.shift import build_shift

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
RESULTS = BENCH / "results"
NGINX_TEMPLATE = BENCH / "nginx.conf.template"

NOW_TEXT = "2026-12-02T15:00:00+08:00"
"""A Wednesday, 15:00 in Shanghai: inside day-cn, late-cn, day-xj and always (bench/roster.py)."""
NOW = parse_instant(NOW_TEXT)
ROSTER_SIZE = 10_000
TOKEN_PEOPLE = 200
HQ_CALLERS = 2
"""HQ auditors among the token holders: about their 1% share of the roster."""
MIN_CALLERS = 100
WAYBILLS = 36_000
RECORDS_PER_REQUEST = 1
ISSUER = "https://idp.bench.invalid/"
AUDIENCE = "broker"
KEY_ID = "bench-rs256-1"
TOKEN_TTL_SECONDS = 4 * 3600
WARMUP_SECONDS = 2
PROFILE_MIN_SECONDS = 10
START_TIMEOUT_SECONDS = 90.0
INSTALL_HINT = "install them with: apt-get install -y wrk nginx"


GC_WRAPPER = """\
# bench/http.py --gc-stats: `broker run` with a gc callback; SIGUSR1 prints the totals so far
import gc, json, signal, sys, time
totals = {g: [0, 0.0, 0.0] for g in (0, 1, 2)}
began = [0.0]
def watch(phase, info):
    if phase == "start":
        began[0] = time.perf_counter()
        return
    spent = time.perf_counter() - began[0]
    entry = totals[info["generation"]]
    entry[0] += 1
    entry[1] += spent
    entry[2] = max(entry[2], spent)
def dump(*_):
    found = {g: {"count": c, "total_ms": t * 1000, "max_ms": m * 1000} for g, (c, t, m) in totals.items()}
    print("BENCH-GC " + json.dumps(found), file=sys.stderr, flush=True)
gc.callbacks.append(watch)
signal.signal(signal.SIGUSR1, dump)
from broker.cli import main
sys.exit(main(sys.argv[1:]))
"""


# --------------------------------------------------------------------------- HTTP


def fetch(url: str, headers: dict[str, str] | None = None, timeout: float = 5.0) -> tuple[int, bytes]:
    request = urllib.request.Request(url, headers=headers or {})  # noqa: S310 - http://127.0.0.1 only
    try:
        with urllib.request.urlopen(request, timeout=timeout) as answer:  # noqa: S310
            return int(answer.status), bytes(answer.read())
    except urllib.error.HTTPError as exc:
        return int(exc.code), bytes(exc.read())


def wait_until_up(fleet: Fleet, name: str, url: str, headers: dict[str, str] | None = None) -> None:
    """Until `url` answers at all (any status), or the fleet lost a process, or time is up."""

    def answers() -> bool:
        try:
            fetch(url, headers, timeout=2.0)
        except (urllib.error.URLError, OSError):
            return False
        return True

    if not fleet.wait_for(answers, START_TIMEOUT_SECONDS):
        raise BenchError(f"{name} did not answer {url} within {START_TIMEOUT_SECONDS:.0f} s")


# --------------------------------------------------------------------------- CPU affinity


def pin(pids: Sequence[int], cpus: set[int]) -> None:
    """Every thread of `pids` (processes this benchmark started) onto `cpus`."""
    for pid in pids:
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError):
                os.sched_setaffinity(int(task.name), cpus)


# --------------------------------------------------------------------------- identity


@dataclass(frozen=True)
class Caller:
    employee: str
    branch: str
    token: str

    @property
    def path(self) -> str:
        return f"/api/branches/{self.branch}/waybills?limit={RECORDS_PER_REQUEST}"


class JwksServer:
    """The identity provider's key set on http://127.0.0.1:<port>/jwks.json (a stdlib
    server on a thread of this process: the broker fetches it once per process)."""

    def __init__(self, document: bytes) -> None:
        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path != "/jwks.json":
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(document)))
                self.end_headers()
                self.wfile.write(document)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, name="jwks", daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/jwks.json"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def shifts_on_duty(policy: Path) -> dict[str, bool]:
    """{shift name: whether it covers NOW}, from the policy's shifts.csv by the broker's own
    shift rules. bench/roster.py assumes its shifts all cover NOW; the file may say otherwise."""
    found = {}
    for line in (policy / "shifts.csv").read_text(encoding="utf-8").splitlines():
        fields = [f.strip() for f in line.split(",")]
        if fields[0] == "p2" and len(fields) == 6:
            found[fields[1]] = build_shift(*fields[1:6]).occurrence_at(NOW) is not None
    return found


@dataclass(frozen=True)
class Identity:
    jwks: bytes
    callers: list[Caller]
    off_duty_shifts: list[str]
    skipped_off_duty: int
    auditors: int


def make_identity(staff: Sequence[Person], on_duty: dict[str, bool]) -> Identity:
    """A fresh RS256 key, its JWKS, and tokens for up to TOKEN_PEOPLE employees on shift at
    NOW: branch staff of the 12 branches the sample API serves (of the roster's 500), in
    roster order, plus HQ_CALLERS HQ auditors (about their 1% share of the roster), each
    given one of those 12 branches."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk: dict[str, Any] = jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key(), as_dict=True)
    jwk.update(kid=KEY_ID, alg="RS256", use="sig")
    served = sorted(branch.code for branch in BRANCHES)
    chosen: list[tuple[Person, str]] = []
    hq: list[Person] = []
    skipped = 0
    for person in staff:
        branch = next((b for b, _ in person.branch_roles if b in served), None)
        if person.branch_roles and branch is None:
            continue
        if not on_duty.get(person.shift, False):
            skipped += 1
        elif branch is None:
            hq.append(person)
        elif len(chosen) < TOKEN_PEOPLE - HQ_CALLERS:
            chosen.append((person, branch))
    chosen += [(person, served[n % len(served)]) for n, person in enumerate(hq[:HQ_CALLERS])]
    if len(chosen) < MIN_CALLERS:
        raise BenchError(
            f"only {len(chosen)} employees of the roster are on shift at {NOW_TEXT} in a branch the sample API "
            f"serves; shifts on duty then: {on_duty}"
        )
    callers = []
    for person, branch in chosen:
        claims = {
            "sub": person.id,
            "iss": ISSUER,
            "aud": AUDIENCE,
            "iat": int(NOW) - 60,
            "exp": int(NOW) + TOKEN_TTL_SECONDS,
        }
        token = jwt.encode(claims, key, algorithm="RS256", headers={"kid": KEY_ID})
        callers.append(Caller(person.id, branch, token))
    off = [name for name in (*BRANCH_SHIFTS, HQ_SHIFT) if not on_duty.get(name, False)]
    auditors = min(len(hq), HQ_CALLERS)
    return Identity(json.dumps({"keys": [jwk]}).encode(), callers, off, skipped, auditors)


# --------------------------------------------------------------------------- wrk


LUA_TEMPLATE = """\
-- generated by bench/http.py: one pre-built request per employee, cycled in order
local paths = {%(paths)s}
local auths = {%(auths)s}
local pace_ms = %(pace_ms)s  -- > 0: each connection waits an exponential delay of this mean between requests
local reqs = {}
local n = #paths
local i = 0

function init(args)
  for k = 1, n do
    reqs[k] = wrk.format("GET", paths[k], {["Authorization"] = auths[k]})
  end
end

function request()
  i = i %% n + 1
  return reqs[i]
end

if pace_ms > 0 then
  function delay()
    return math.floor(-math.log(1 - math.random()) * pace_ms)
  end
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH-JSON {"requests":%%d,"duration_us":%%d,"bytes":%%d,"connect":%%d,"read":%%d,"write":%%d,' ..
    '"status":%%d,"timeout":%%d,"p50_us":%%d,"p90_us":%%d,"p99_us":%%d,"max_us":%%d,"mean_us":%%.1f}\\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max, latency.mean))
end
"""


def write_lua(target: Path, callers: Sequence[Caller], pace_ms: float) -> Path:
    def quoted(values: Iterator[str]) -> str:
        return ",\n  ".join(json.dumps(value) for value in values)  # JSON strings of ASCII are Lua strings

    target.write_text(
        LUA_TEMPLATE
        % {
            "paths": "\n  " + quoted(c.path for c in callers) + "\n",
            "auths": "\n  " + quoted(f"Bearer {c.token}" for c in callers) + "\n",
            "pace_ms": f"{pace_ms:.3f}",
        },
        encoding="utf-8",
    )
    return target


def wrk(url: str, script: Path, connections: int, seconds: int, cpu: int | None = None) -> dict[str, float]:
    pinned = ["taskset", "-c", str(cpu)] if cpu is not None else []
    command = [*pinned, "wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", "-s", str(script), url]
    done = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 60, check=False)
    line = next((ln for ln in done.stdout.splitlines() if ln.startswith("BENCH-JSON ")), None)
    if done.returncode != 0 or line is None:
        raise BenchError(f"wrk failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return {k: float(v) for k, v in json.loads(line.removeprefix("BENCH-JSON ")).items()}


# --------------------------------------------------------------------------- variants


@dataclass
class Variant:
    key: str
    name: str
    port: int
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    with_children: bool = False
    """Count the processes' children too (nginx: master + worker)."""

    @property
    def label(self) -> str:
        return f"{self.key} {self.name}"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def pids(self) -> list[int]:
        found = [p.pid for p in self.procs]
        if self.with_children:
            found += [child for p in self.procs for child in children(p.pid)]
        return found


@dataclass
class Run:
    variant: str
    phase: str
    round: int
    requests: int
    seconds: float
    rate: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    status_errors: int
    socket_errors: int
    bytes_per_request: float
    cpu_us_per_request: float | None
    upstream_cpu_us_per_request: float
    wrk_cpu_us_per_request: float
    host_busy_percent: float
    host_steal_percent: float
    host_others_percent: float
    """Host busy minus the variant, the upstream and wrk: other work on the machine."""
    other_cpu: str
    """The busiest processes besides the variant, the upstream and wrk (CPU seconds over the run)."""


def wrk_figures(result: dict[str, float], requests: int) -> dict[str, Any]:
    """The fields of a Run that come from one wrk run's result."""
    seconds = result["duration_us"] / 1e6
    return {
        "requests": requests,
        "seconds": seconds,
        "rate": requests / seconds,
        "p50_ms": result["p50_us"] / 1000,
        "p90_ms": result["p90_us"] / 1000,
        "p99_ms": result["p99_us"] / 1000,
        "max_ms": result["max_us"] / 1000,
        "status_errors": int(result["status"]),
        "socket_errors": int(result["connect"] + result["read"] + result["write"] + result["timeout"]),
        "bytes_per_request": result["bytes"] / requests,
    }


def measure(
    variant: Variant,
    upstream_pid: int,
    script: Path,
    connections: int,
    seconds: int,
    phase: str,
    round_no: int,
    wrk_cpu: int | None = None,
) -> Run:
    pids = variant.pids()
    before, upstream_before, host_before = cpu_ticks(pids), cpu_ticks([upstream_pid]), host_ticks()
    wrk_before, everyone_before = children_cpu_seconds(), all_ticks()
    result = wrk(variant.url, script, connections, seconds, wrk_cpu)
    wrk_used, everyone_after = children_cpu_seconds() - wrk_before, all_ticks()
    after, upstream_after, host_after = cpu_ticks(pids), cpu_ticks([upstream_pid]), host_ticks()
    mine = {*pids, upstream_pid, os.getpid()}
    requests = max(1, int(result["requests"]))
    per_request = 1e6 / CLK_TCK / requests
    busy, steal, total, _irq = host_after - host_before
    return Run(
        variant=variant.key,
        phase=phase,
        round=round_no,
        **wrk_figures(result, requests),
        cpu_us_per_request=(after - before) * per_request if pids else None,
        upstream_cpu_us_per_request=(upstream_after - upstream_before) * per_request,
        wrk_cpu_us_per_request=wrk_used * 1e6 / requests,
        host_busy_percent=100 * busy / max(1, total),
        host_steal_percent=100 * steal / max(1, total),
        host_others_percent=100
        * (busy - (after - before) - (upstream_after - upstream_before) - wrk_used * CLK_TCK)
        / max(1, total),
        other_cpu=others(everyone_before, everyone_after, mine, their_children=False).top(decimals=2),
    )


def check_answer(variant: Variant, caller: Caller) -> int:
    """The sample request must get 200 and one record of the caller's branch; the body size."""
    status, body = fetch(variant.url + caller.path, {"Authorization": f"Bearer {caller.token}"})
    try:
        items = json.loads(body)["items"] if status == 200 else None
    except (ValueError, KeyError, TypeError):
        items = None
    if status != 200 or not isinstance(items, list) or len(items) != RECORDS_PER_REQUEST:
        raise BenchError(f"{variant.label} answered {status} to GET {caller.path}:\n{body.decode(errors='replace')}")
    if any(item.get("branch_code") != caller.branch for item in items):
        raise BenchError(f"{variant.label} returned records of another branch: {body.decode(errors='replace')}")
    return len(body)


@dataclass
class Setup:
    workdir: Path
    fleet: Fleet
    upstream: subprocess.Popen[bytes]
    upstream_port: int
    variants: list[Variant]
    callers: list[Caller]
    audit_logs: dict[str, Path]
    notes: list[str] = field(default_factory=list)
    """Sentences for the report about anything unusual in this run."""


def baseline_policy(workdir: Path, baseline: Path) -> Path:
    """The benchmark's policy as a baseline tree reads it: the same roster, limits and
    routes, with the baseline's own model.conf, and without the files its loader does not
    know (a newer format would stop it from starting at all)."""
    target = workdir / "policies-baseline"
    shutil.copytree(workdir / "policies", target)
    own = baseline / "policies"
    if (own / "model.conf").is_file():
        shutil.copy(own / "model.conf", target / "model.conf")
    sources = "".join(path.read_text(encoding="utf-8") for path in (baseline / "broker" / "policy").rglob("*.py"))
    for name in ("branches.csv", "policy.toml"):
        if f'"{name}"' not in sources:  # a file the baseline's loader has never heard of
            (target / name).unlink(missing_ok=True)
    return target


def broker_toml(
    workdir: Path,
    name: str,
    port: int,
    upstream_port: int,
    jwks_url: str,
    reuse_port: bool,
    policy: Path | None = None,
) -> Path:
    text = f"""\
# generated by bench/http.py
[server]
host = "127.0.0.1"
port = {port}
reuse_port = {str(reuse_port).lower()}
shutdown_timeout_seconds = 2.0

[upstream]
url = "http://127.0.0.1:{upstream_port}"

[identity]
jwks_url = "{jwks_url}"
issuer = "{ISSUER}"
audience = "{AUDIENCE}"

{common_sections(policy or workdir / "policies", workdir / f"audit-{name}.log")}
[clock]
start = "{NOW_TEXT}"
"""
    path = workdir / f"broker-{name}.toml"
    path.write_text(text, encoding="utf-8")
    return path


def start_everything(
    workdir: Path,
    fleet: Fleet,
    jwks: JwksServer,
    callers: list[Caller],
    bare_loop: str,
    gc_stats: bool,
    baseline: Path | None = None,
    only: str = "",
) -> Setup:
    python = sys.executable
    upstream_port = free_port()
    log(f"upstream: sample API with {WAYBILLS:,} waybills on :{upstream_port} ...")
    upstream = fleet.start(
        "upstream",
        [python, "-m", "bench.upstream", "--port", str(upstream_port), "--waybills", str(WAYBILLS)],
    )
    nginx_port, bare_port, broker_port, broker2_port = (free_port() for _ in range(4))

    nginx_dir = workdir / "nginx"
    nginx_dir.mkdir()
    conf = nginx_dir / "nginx.conf"
    conf.write_text(
        NGINX_TEMPLATE.read_text(encoding="utf-8")
        .replace("@PREFIX@", str(nginx_dir))
        .replace("@UPSTREAM_PORT@", str(upstream_port))
        .replace("@PORT@", str(nginx_port)),
        encoding="utf-8",
    )
    nginx_bin = nginx_binary() or "nginx"
    nginx = fleet.start("nginx", [nginx_bin, "-p", str(nginx_dir), "-c", str(conf), "-e", str(nginx_dir / "error.log")])

    bare = fleet.start(
        "bare",
        [
            python, "-m", "bench.upstream", "--bare-proxy", "--loop", bare_loop,
            "--port", str(bare_port), "--upstream", f"http://127.0.0.1:{upstream_port}",
        ],
    )  # fmt: skip

    env = {**os.environ, "BROKER_CLOCK": NOW_TEXT}
    env.pop("BROKER_DEV_SECRET", None)  # RS256 via the JWKS only
    one = broker_toml(workdir, "D", broker_port, upstream_port, jwks.url, reuse_port=False)
    two = broker_toml(workdir, "E", broker2_port, upstream_port, jwks.url, reuse_port=True)
    log(f"brokers: 1 process on :{broker_port}, 2 processes on :{broker2_port} (policy of {ROSTER_SIZE:,}) ...")
    launcher = ["-c", GC_WRAPPER] if gc_stats else ["-m", "broker"]
    broker = fleet.start("broker-D", [python, *launcher, "run", "-c", str(one)], env=env)
    # the same code as D, its per-request modules run as Python rather than compiled
    pure_port = free_port()
    pure_toml = broker_toml(workdir, "DP", pure_port, upstream_port, jwks.url, reuse_port=False)
    pure = fleet.start("broker-DP", [python, "-m", "broker", "run", "-c", str(pure_toml)], env={**env, PURE_ENV: "1"})
    broker_e1 = fleet.start("broker-E1", [python, "-m", "broker", "run", "-c", str(two)], env=env)
    broker_e2 = fleet.start("broker-E2", [python, "-m", "broker", "run", "-c", str(two)], env=env)

    variants = [
        Variant("A", "direct (no proxy)", upstream_port),
        Variant("B", "nginx proxy_pass, 1 worker", nginx_port, [nginx], with_children=True),
        Variant("C", "bare aiohttp proxy", bare_port, [bare]),
        Variant("DP", "broker, 1 process, not compiled (BROKER_PURE_PYTHON=1)", pure_port, [pure]),
        Variant("D", "broker, 1 process", broker_port, [broker]),
        Variant("E", "broker, 2 processes (SO_REUSEPORT)", broker2_port, [broker_e1, broker_e2]),
    ]
    audit_logs = {"DP": workdir / "audit-DP.log", "D": workdir / "audit-D.log", "E": workdir / "audit-E.log"}
    if baseline is not None:
        # The same broker, but the code of another tree (e.g. `git archive <commit>`): before
        # and after a change, measured side by side in the same run.
        port = free_port()
        policy = baseline_policy(workdir, baseline)
        config = broker_toml(workdir, "D0", port, upstream_port, jwks.url, reuse_port=False, policy=policy)
        proc = fleet.start("broker-D0", [python, "-m", "broker", "run", "-c", str(config)], env=env, cwd=baseline)
        variants.insert(3, Variant("D0", f"broker, 1 process, baseline code ({baseline.name})", port, [proc]))
        audit_logs["D0"] = workdir / "audit-D0.log"
    if only:
        wanted = set(only.split(","))
        variants = [v for v in variants if v.key in wanted]
        audit_logs = {k: v for k, v in audit_logs.items() if k in wanted}
    sample = {"Authorization": f"Bearer {callers[0].token}"}
    for variant in variants:
        wait_until_up(fleet, variant.label, variant.url + callers[0].path, sample)
    # Both E processes must be serving before anything is measured: each must have bound
    # the port, which its log says; the kernel then spreads connections between them.
    sharing = [broker_e1, broker_e2] if any(v.key == "E" for v in variants) else []

    def silent() -> list[subprocess.Popen[bytes]]:
        return [proc for proc in sharing if "broker.listening" not in fleet.log_of(proc)]

    if not fleet.wait_for(lambda: not silent(), START_TIMEOUT_SECONDS):
        proc = next(iter(silent()), sharing[0])
        raise BenchError(f"broker pid {proc.pid} never logged broker.listening:\n{fleet.log_of(proc)}")
    return Setup(workdir, fleet, upstream, upstream_port, variants, callers, audit_logs)


# --------------------------------------------------------------------------- the runs


def preflight(setup: Setup, identity: Identity) -> None:
    """Every caller once on every variant: all must be allowed (this also fills the brokers'
    token caches). Notes what was unusual about the callers."""
    if identity.off_duty_shifts:
        setup.notes.append(
            f"policies/shifts.csv shift(s) {', '.join(identity.off_duty_shifts)} do not cover {NOW_TEXT}, although "
            "bench/roster.py assigns them as if they did: the token holders are on-shift employees only "
            f"({identity.skipped_off_duty} off-shift staff of the 12 served branches skipped), "
            f"{len(setup.callers)} in all."
        )
    for variant in setup.variants:
        for caller in setup.callers:
            check_answer(variant, caller)


def gc_totals(setup: Setup) -> dict[str, dict[str, float]]:
    """D's garbage-collection totals so far (--gc-stats: SIGUSR1 makes the wrapper print them)."""
    broker = next(v for v in setup.variants if v.key == "D").procs[0]
    seen = setup.fleet.log_of(broker, lines=100_000).count("BENCH-GC ")
    broker.send_signal(signal.SIGUSR1)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        text = setup.fleet.log_of(broker, lines=100_000)
        if text.count("BENCH-GC ") > seen:
            last = text[text.rindex("BENCH-GC ") :].splitlines()[0]
            found: dict[str, dict[str, float]] = json.loads(last.removeprefix("BENCH-GC "))
            return found
        time.sleep(0.05)
    raise BenchError("broker D did not report its gc totals (--gc-stats)")


def gc_note(before: dict[str, dict[str, float]], after: dict[str, dict[str, float]], runs: int) -> str:
    parts = []
    for generation in ("0", "1", "2"):
        count = after[generation]["count"] - before[generation]["count"]
        total = after[generation]["total_ms"] - before[generation]["total_ms"]
        biggest = after[generation]["max_ms"] if count else 0.0
        parts.append(f"gen {generation}: {count:,.0f} collections, {total:,.0f} ms in all, longest {biggest:.1f} ms")
    return (
        f"Garbage collection in D from the warm-up to the end of the {runs} measured runs (--gc-stats: D ran "
        "`broker run` through a gc.callbacks wrapper; longest = since start): " + "; ".join(parts) + "."
    )


def idle_cpu(setup: Setup, seconds: float = 2.0) -> dict[str, float]:
    """% of one CPU each variant's processes (and the upstream) use with no load at all."""
    groups = {v.key: v.pids() for v in setup.variants if v.procs} | {"upstream": [setup.upstream.pid]}
    before, host_before = {key: cpu_ticks(pids) for key, pids in groups.items()}, host_ticks()
    time.sleep(seconds)
    found = {key: 100 * (cpu_ticks(pids) - before[key]) / CLK_TCK / seconds for key, pids in groups.items()}
    host_after = host_ticks()
    spent = host_after - host_before
    found["whole machine, % of all CPUs"] = 100 * spent.busy / max(1, spent.total)
    return found


PINNED_VARIANTS = ("C", "D0", "DP", "D")
"""The one-process proxies: each gets a CPU of its own in the pinned phase (E's two
processes would share that one CPU, A and B are not Python)."""


def run_phase(
    setup: Setup, script: Path, args: argparse.Namespace, phase: str, seconds: int, rounds: int, pinned: bool = False
) -> list[Run]:
    """`rounds` of every variant in turn. `pinned`: only the one-process proxies, each on
    CPU 1 with wrk and the upstream on CPU 0, so the proxy no longer competes with them for
    a CPU and the ratio shows its own cost per request without the scheduler interleaving
    three busy processes on two CPUs (a hypervisor's steal still moves it; the unpinned
    table is the one the targets are read from)."""
    everything = set(range(os.cpu_count() or 1))
    variants = [v for v in setup.variants if v.key in PINNED_VARIANTS] if pinned else setup.variants
    runs: list[Run] = []
    for round_no in range(1, rounds + 1):
        for variant in variants:
            setup.fleet.check_alive()
            check_answer(variant, setup.callers[round_no % len(setup.callers)])
            if pinned:
                pin(variant.pids(), {1})
                pin([setup.upstream.pid], {0})
            wrk_cpu = 0 if pinned else None
            try:
                run = measure(variant, setup.upstream.pid, script, args.connections, seconds, phase, round_no, wrk_cpu)
            finally:
                if pinned:
                    pin([*variant.pids(), setup.upstream.pid], everything)
            flag = "  <-- ERRORS" if run.status_errors or run.socket_errors else ""
            cpu = f"{run.cpu_us_per_request:.0f}" if run.cpu_us_per_request is not None else "-"
            log(
                f"  {phase} round {round_no} {variant.label:<40} {run.rate:>8,.0f} req/s  p50 {run.p50_ms:6.2f} ms  "
                f"p99 {run.p99_ms:6.2f} ms  cpu {cpu:>4} µs/req  upstream {run.upstream_cpu_us_per_request:.0f} "
                f"µs/req  wrk {run.wrk_cpu_us_per_request:.0f} µs/req  host {run.host_busy_percent:.0f}% "
                f"(others {run.host_others_percent:.0f}%, steal {run.host_steal_percent:.0f}%)  "
                f"non-2xx {run.status_errors} "
                f"sock {run.socket_errors}{flag}  others: {run.other_cpu}"
            )
            runs.append(run)
    return runs


def run_shared(setup: Setup, script: Path, args: argparse.Namespace) -> list[Run]:
    """`args.shared_rounds` rounds of the one-process proxies all at once, sharing CPU 1
    (the upstream and one wrk per proxy on CPU 0). A slow spell of the machine (another
    guest, a frequency change) lands on every proxy of a round alike, so the ratio of
    their CPU per request holds steady where runs one after the other swing by a fifth."""
    everything = set(range(os.cpu_count() or 1))
    variants = [v for v in setup.variants if v.key in PINNED_VARIANTS]
    runs: list[Run] = []
    for round_no in range(1, args.shared_rounds + 1):
        setup.fleet.check_alive()
        for variant in variants:
            check_answer(variant, setup.callers[round_no % len(setup.callers)])
            pin(variant.pids(), {1})
        pin([setup.upstream.pid], {0})
        try:
            found = measure_together(variants, setup.upstream.pid, script, args.connections, args.duration, round_no)
        finally:
            pin([*(pid for v in variants for pid in v.pids()), setup.upstream.pid], everything)
        bare = next((r.cpu_us_per_request for r in found if r.variant == "C"), None) or 0.0
        shown = [(r.variant, r.rate, r.cpu_us_per_request or 0.0) for r in found]
        log(
            f"  shared round {round_no}: "
            + "; ".join(
                f"{key} {rate:,.0f} req/s {cpu:.0f} µs/req" + (f" ({cpu / bare:.3f}x C)" if bare else "")
                for key, rate, cpu in shown
            )
        )
        runs += found
    return runs


def measure_together(
    variants: Sequence[Variant], upstream_pid: int, script: Path, connections: int, seconds: int, round_no: int
) -> list[Run]:
    """One wrk per variant, all started together on CPU 0; each variant's CPU per request
    from /proc over the same window. The upstream's and wrk's CPU cannot be told apart
    by variant: their totals per request of all variants go in every row."""
    pids = {v.key: v.pids() for v in variants}
    before = {key: cpu_ticks(found) for key, found in pids.items()}
    upstream_before, host_before = cpu_ticks([upstream_pid]), host_ticks()
    wrk_before, everyone_before = children_cpu_seconds(), all_ticks()
    results: dict[str, dict[str, float]] = {}
    failures: list[BenchError] = []

    def load(variant: Variant) -> None:
        try:
            results[variant.key] = wrk(variant.url, script, connections, seconds, 0)
        except BenchError as exc:
            failures.append(exc)

    threads = [threading.Thread(target=load, args=(v,)) for v in variants]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if failures:
        raise failures[0]
    wrk_used, everyone_after = children_cpu_seconds() - wrk_before, all_ticks()
    after = {key: cpu_ticks(found) for key, found in pids.items()}
    upstream_after, host_after = cpu_ticks([upstream_pid]), host_ticks()
    busy, steal, total, _irq = host_after - host_before
    requests = {key: max(1, int(result["requests"])) for key, result in results.items()}
    all_requests = sum(requests.values())
    mine = {*(pid for found in pids.values() for pid in found), upstream_pid, os.getpid()}
    variants_cpu = sum(after[key] - before[key] for key in pids)
    upstream_cpu = upstream_after - upstream_before
    runs = []
    for variant in variants:
        result, count = results[variant.key], requests[variant.key]
        runs.append(
            Run(
                variant=variant.key,
                phase="shared",
                round=round_no,
                **wrk_figures(result, count),
                cpu_us_per_request=(after[variant.key] - before[variant.key]) * 1e6 / CLK_TCK / count,
                upstream_cpu_us_per_request=upstream_cpu * 1e6 / CLK_TCK / all_requests,
                wrk_cpu_us_per_request=wrk_used * 1e6 / all_requests,
                host_busy_percent=100 * busy / max(1, total),
                host_steal_percent=100 * steal / max(1, total),
                host_others_percent=100 * (busy - variants_cpu - upstream_cpu - wrk_used * CLK_TCK) / max(1, total),
                other_cpu=others(everyone_before, everyone_after, mine, their_children=False).top(decimals=2),
            )
        )
    return runs


@dataclass
class SharedRow:
    variant: str
    rate: float
    cpu_us: float
    ratios: list[float]
    """Per round: the variant's CPU per request over the bare proxy's in the same round."""
    status_errors: int
    socket_errors: int


def summarise_shared(variants: Sequence[Variant], runs: Sequence[Run]) -> list[SharedRow]:
    bare = {r.round: r.cpu_us_per_request for r in runs if r.variant == "C" and r.cpu_us_per_request}
    rows = []
    for variant in variants:
        mine = [r for r in runs if r.variant == variant.key and r.cpu_us_per_request]
        if not mine:
            continue
        rows.append(
            SharedRow(
                variant=variant.label,
                rate=statistics.median(r.rate for r in mine),
                cpu_us=statistics.median(r.cpu_us_per_request or 0 for r in mine),
                ratios=[(r.cpu_us_per_request or 0) / bare[r.round] for r in mine if r.round in bare],
                status_errors=sum(r.status_errors for r in mine),
                socket_errors=sum(r.socket_errors for r in mine),
            )
        )
    return rows


def shared_table(rows: Sequence[SharedRow]) -> list[str]:
    lines = [
        "| variant | req/s while sharing | CPU µs/req | CPU vs bare, median of rounds (min-max) "
        "| throughput vs bare when CPU-bound (bare's CPU / variant's) | non-2xx | socket errors |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        ratio = statistics.median(row.ratios) if row.ratios else None
        span = f" ({min(row.ratios):.3f}-{max(row.ratios):.3f})" if row.ratios else ""
        lines.append(
            f"| {row.variant} | {row.rate:,.0f} | {row.cpu_us:.0f} | "
            + (f"{ratio:.3f}{span} | {1 / ratio:.2f}" if ratio else "- | -")
            + f" | {row.status_errors} | {row.socket_errors} |"
        )
    return lines


@dataclass
class Profile:
    variant: str
    pid: int
    run: Run
    samples: int
    expected: int
    text: str


def profile_variant(setup: Setup, key: str, script: Path, args: argparse.Namespace, svg: Path | None) -> Profile | None:
    """py-spy on one single-process variant during one more closed-loop run, with the
    variant's threads pinned to CPU 1 and wrk, the upstream and py-spy to CPU 0: so a
    sample means the variant was on its CPU, not waiting for one, and shares of samples
    times its CPU per request give µs per request. A raw (collapsed) recording for the
    text summary and, if `svg`, a flame graph, both from the same run."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(spy).exists():
        log("--profile: py-spy not found; install it with: .venv/bin/pip install py-spy (profile skipped)")
        return None
    variant = next(v for v in setup.variants if v.key == key)
    pid = variant.procs[0].pid
    seconds, rate = max(args.duration, PROFILE_MIN_SECONDS), 250
    raw = setup.workdir / f"profile-{key}.raw"
    common = ["--pid", str(pid), "--duration", str(seconds + 1), "--rate", str(rate), "--nonblocking"]
    outputs = [["-o", str(raw), "--format", "raw", "--function"]]
    if svg is not None:
        outputs.append(["-o", str(svg), "--format", "flamegraph"])
    everything = list(range(os.cpu_count() or 1))
    two_cpus = len(everything) >= 2
    log(f"profile: py-spy record on {variant.label} (pid {pid}) for {seconds} s under wrk -c{args.connections} ...")
    if two_cpus:
        pin([pid], {1})
        pin([setup.upstream.pid], {0})
    recorders, logs = [], []
    try:
        for n, output in enumerate(outputs):
            logged = (setup.workdir / f"py-spy-{key}-{n}.log").open("wb")
            logs.append(logged)
            pinned = ["taskset", "-c", "0"] if two_cpus else []
            recorders.append(
                subprocess.Popen(
                    [*pinned, spy, "record", *output, *common],
                    stdout=logged,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                )
            )
        time.sleep(0.5)
        run = measure(
            variant, setup.upstream.pid, script, args.connections, seconds, "profile", 1, 0 if two_cpus else None
        )
    finally:
        for recorder in recorders:
            try:
                recorder.wait(timeout=seconds + 30)
            except subprocess.TimeoutExpired:
                recorder.terminate()
                recorder.wait(timeout=5)
        for logged in logs:
            logged.close()
        pin([pid, setup.upstream.pid], set(everything))
    if not raw.exists():
        log(f"profile: py-spy wrote nothing; see {setup.workdir}/py-spy-{key}-0.log")
        return None
    text, samples = summarise_profile(raw.read_text(encoding="utf-8"), run)
    return Profile(variant.label, pid, run, samples, rate * seconds, text)


def _area(frame: str) -> str:
    """Which package a frame (`function (path/file.py:line)`) belongs to."""
    where = frame[frame.rfind("(") + 1 :]
    for marker, name in (
        ("broker/", "broker"),
        ("aiohttp/", "aiohttp"),
        ("multidict/", "multidict"),
        ("yarl/", "yarl"),
        ("structlog/", "structlog"),
        ("prometheus_client/", "prometheus_client"),
        ("jwt/", "jwt"),
        ("asyncio/", "asyncio"),
        ("bench/", "bench"),
    ):
        if marker in where:
            return name
    return "other (stdlib, threads)"


def summarise_profile(text: str, run: Run) -> tuple[str, int]:
    """Self time by package, top functions by self and inclusive time, as % of samples and
    as µs per request (the share times the run's measured CPU µs per request)."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    areas: Counter[str] = Counter()
    total = 0
    for line in text.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [f for f in stack.split(";") if "(" in f]  # drop process/thread pseudo-frames
        if not frames:
            continue
        total += count
        own[frames[-1]] += count
        areas[_area(frames[-1])] += count
        for frame in set(frames):
            inclusive[frame] += count
    if not total:
        return "py-spy recorded no samples\n", 0
    cpu = run.cpu_us_per_request or 0.0

    def entry(name: str, n: int) -> str:
        return f"{100 * n / total:6.1f}%  {cpu * n / total:6.1f} µs/req  {name}"

    lines = [
        "Self time by package (file of the innermost Python frame):",
        *[entry(name, n) for name, n in areas.most_common()],
        "",
        "Top 30 functions by self time (innermost Python frame):",
        *[entry(name, n) for name, n in own.most_common(30)],
        "",
        "Top 40 functions by inclusive time (anywhere on the stack):",
        *[entry(name, n) for name, n in inclusive.most_common(40)],
    ]
    return "\n".join(lines) + "\n", total


def profile_report(profiles: Sequence[Profile], duration: int) -> str:
    head = [
        f"py-spy record, {duration} s per variant, 250 Hz, --nonblocking (stopping the process for each sample "
        "cut the broker's throughput by two thirds and made py-spy count the audit thread's blocking queue.get() "
        "as busy), "
        "--function (frames aggregated by function: the line shown is the function's first line), idle "
        "time not sampled. The variant's threads were pinned to CPU 1, wrk, the upstream and py-spy to "
        "CPU 0, so a sample means the variant was running (or preempted by another program on CPU 1). "
        "µs/req = share of samples x the run's CPU µs per request from /proc (threads included). C code "
        "(uvloop, the kernel's loopback TCP inside send(), the HTTP parser, orjson, hashing) is charged to "
        "the Python frame that called it: `StreamWriter._write` is mostly the send() system call, which on "
        "loopback also runs the receiving side's TCP stack, and `run_app` is uvloop's own loop (epoll, "
        "recv). The profiler costs the variant some CPU: compare variants within this file, not with the "
        "tables. A function's few-percent share moves by a point or two between runs.",
        "",
    ]
    parts = []
    for profile in profiles:
        run = profile.run
        cpu = f"{run.cpu_us_per_request:.0f}" if run.cpu_us_per_request is not None else "?"
        parts += [
            f"## {profile.variant} (pid {profile.pid})",
            "",
            f"Load meanwhile: {run.rate:,.0f} req/s, p99 {run.p99_ms:.2f} ms, {cpu} µs CPU per request; "
            f"{profile.samples} samples with Python frames of {profile.expected} possible "
            f"({100 * profile.samples / max(1, profile.expected):.0f}% of the time on CPU, threads summed).",
            "",
            profile.text,
        ]
    return "\n".join(head + parts)


def audit_kind(event: dict[str, Any]) -> str:
    """An HTTP door audit event: its verdict, why, and the status sent back."""
    return f"verdict={event.get('verdict')} reason={event.get('reason')} status={event.get('status')}"


# --------------------------------------------------------------------------- report


@dataclass
class Row:
    variant: str
    rate: float
    rate_min: float
    rate_max: float
    p50_ms: float
    p99_ms: float
    p99_min: float
    p99_max: float
    cpu_us: float | None
    upstream_cpu_us: float
    wrk_cpu_us: float
    host_busy: float
    host_others: float
    host_steal: float
    status_errors: int
    socket_errors: int
    bytes_per_request: float


def summarise(variants: Sequence[Variant], runs: Sequence[Run]) -> list[Row]:
    rows = []
    for variant in variants:
        mine = [r for r in runs if r.variant == variant.key]
        if not mine:
            continue
        cpus = [r.cpu_us_per_request for r in mine if r.cpu_us_per_request is not None]
        rows.append(
            Row(
                variant=variant.label,
                rate=statistics.median(r.rate for r in mine),
                rate_min=min(r.rate for r in mine),
                rate_max=max(r.rate for r in mine),
                p50_ms=statistics.median(r.p50_ms for r in mine),
                p99_ms=statistics.median(r.p99_ms for r in mine),
                p99_min=min(r.p99_ms for r in mine),
                p99_max=max(r.p99_ms for r in mine),
                cpu_us=statistics.median(cpus) if cpus else None,
                upstream_cpu_us=statistics.median(r.upstream_cpu_us_per_request for r in mine),
                wrk_cpu_us=statistics.median(r.wrk_cpu_us_per_request for r in mine),
                host_busy=statistics.median(r.host_busy_percent for r in mine),
                host_others=max(r.host_others_percent for r in mine),
                host_steal=max(r.host_steal_percent for r in mine),
                status_errors=sum(r.status_errors for r in mine),
                socket_errors=sum(r.socket_errors for r in mine),
                bytes_per_request=statistics.median(r.bytes_per_request for r in mine),
            )
        )
    return rows


def _ratio(value: float | None, base: float | None) -> str:
    if value is None or not base:
        return "-"
    return f"{value / base:.2f}"


def markdown_table(rows: Sequence[Row], paced: bool) -> list[str]:
    bare = next((r for r in rows if r.variant.startswith("C ")), None)
    head = "achieved req/s" if paced else "req/s"
    lines = [
        f"| variant | {head} | vs bare | p50 ms | p99 ms | p99 vs bare | CPU µs/req | CPU vs bare "
        "| upstream CPU µs/req | wrk CPU µs/req | host CPU busy (others, steal) | bytes/resp | non-2xx "
        "| socket errors |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        flagged = row.status_errors or row.socket_errors
        name = f"**{row.variant} ⚠ errors**" if flagged else row.variant
        cpu = f"{row.cpu_us:.0f}" if row.cpu_us is not None else "- (none)"
        lines.append(
            f"| {name} | {row.rate:,.0f} | {_ratio(row.rate, bare.rate if bare else None)} | {row.p50_ms:.2f} "
            f"| {row.p99_ms:.2f} | {_ratio(row.p99_ms, bare.p99_ms if bare else None)} | {cpu} "
            f"| {_ratio(row.cpu_us, bare.cpu_us if bare else None)} | {row.upstream_cpu_us:.0f} "
            f"| {row.wrk_cpu_us:.0f} | {row.host_busy:.0f}% ({row.host_others:.0f}%, {row.host_steal:.0f}%) "
            f"| {row.bytes_per_request:.0f} | {row.status_errors} | {row.socket_errors} |"
        )
    return lines


NOISY_STEAL_PERCENT = 5.0
NOISY_OTHERS_PERCENT = 10.0


def spread(rows: Sequence[Row]) -> str:
    """The lowest and highest throughput and p99 per variant across the rounds of a phase."""
    return (
        "Run-to-run spread (min-max across rounds): "
        + "; ".join(
            f"{r.variant.split()[0]} {r.rate_min:,.0f}-{r.rate_max:,.0f} req/s, p99 {r.p99_min:.2f}-{r.p99_max:.2f} ms"
            for r in rows
        )
        + "."
    )


def noise_warning(runs: Sequence[Run]) -> list[str]:
    """A warning line when runs of this phase shared the machine with other work."""
    noisy = [
        r for r in runs if r.host_steal_percent > NOISY_STEAL_PERCENT or r.host_others_percent > NOISY_OTHERS_PERCENT
    ]
    if not noisy:
        return []
    which = ", ".join(
        f"{r.variant}{r.round} ({r.host_others_percent:.0f}% others, {r.host_steal_percent:.0f}% steal)" for r in noisy
    )
    return [
        "",
        f"**Noisy**: {len(noisy)} of {len(runs)} runs shared the CPUs with other work (variant+round: {which}); "
        "their throughput and especially their tail latency are disturbed. Medians damp this; compare CPU µs/req, "
        "which other work does not inflate much, and rerun on a quiet machine for latency.",
    ]


def versions() -> dict[str, str]:
    wrk_version = subprocess.run(["wrk", "-v"], capture_output=True, text=True, check=False).stdout.splitlines()
    nginx_version = subprocess.run(
        [nginx_binary() or "nginx", "-v"], capture_output=True, text=True, check=False
    ).stderr.strip()
    found = {
        "nproc": str(os.cpu_count()),
        "cpu": cpu_model(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "wrk": wrk_version[0].split(" [")[0] if wrk_version else "?",
        "nginx": nginx_version.removeprefix("nginx version: "),
    }
    for package in ("aiohttp", "uvloop", "pyjwt"):
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            found[package] = "not installed"
    return found


def report(
    args: argparse.Namespace,
    setup: Setup,
    closed: list[Run],
    paced: list[Run],
    pinned: list[Run],
    shared: list[Run],
    body_bytes: dict[str, int],
    idle: dict[str, float],
    audits: dict[str, Counter[str]],
    elapsed: float,
    plot_note: str,
    profile_note: str,
) -> str:
    info = versions()
    caller = setup.callers[0]
    rows = summarise(setup.variants, closed)
    lines = [
        f"# HTTP benchmark, {date.today().isoformat()}",
        "",
        f"Machine: {info['nproc']} CPUs ({info['cpu']}), Linux {info['kernel']}; Python {info['python']}, "
        f"aiohttp {info['aiohttp']}, uvloop {info['uvloop']}, PyJWT {info['pyjwt']}; {info['wrk']}; "
        f"nginx {info['nginx']}. Everything on loopback, on the same {info['nproc']} CPUs: wrk, the upstream "
        "and the variant compete for them, so the numbers show relative cost on a small box, not capacity.",
        "",
        f"Command: `python -m bench.http {' '.join(sys.argv[1:])}`; total run time {elapsed:.0f} s.",
        "",
        f"**Request**: `GET /api/branches/<branch>/waybills?limit={RECORDS_PER_REQUEST}` with "
        "`Authorization: Bearer <RS256 JWT>`, cycling in order through pre-minted tokens of "
        f"{len(setup.callers)} employees on shift ({len(setup.callers) - HQ_CALLERS} branch staff of the 12 "
        f"branches the sample API serves, in roster order, and {HQ_CALLERS} HQ auditors, about their 1% share), "
        f"each asking for their own branch (e.g. `{caller.path}` for "
        f'{caller.employee}). The answer is 200 with `{{"items":[one waybill],"total","limit","offset"}}`: '
        f"{body_bytes.get('A', 0)} bytes of JSON body direct from the sample API (one ~510-byte record plus "
        "the envelope); `bytes/resp` in the tables is what wrk read per response, headers included (the "
        "broker adds X-Broker-Decision and RateLimit headers). The same wrk script (header included) is "
        "used for every variant.",
        "",
        f"**Load**: `wrk -t1 -c{args.connections} -d{args.duration}s --latency`, closed loop; {args.rounds} "
        "round(s), each running A, B, C, D, E in turn; medians across rounds (p50/p99 are wrk's, per run, "
        f"then the median of the runs). A {WARMUP_SECONDS} s warm-up per variant before round 1 is not counted. "
        "CPU µs/req: utime+stime from /proc/<pid>/stat of the variant's own processes (nginx master + "
        "worker; the bare proxy; the broker process(es), all threads including the audit writer) over the "
        "run, divided by the requests; the upstream's and wrk's (getrusage of the finished wrk) are in their "
        "own columns; `host CPU busy` is the whole machine from /proc/stat (100% = all "
        f"{info['nproc']} CPUs); in parentheses, the largest over the runs of (1) the share of the machine that "
        "was neither the variant, the upstream nor wrk: other work on this shared machine (the JSON names the "
        "busiest such processes), and (2) steal: time the hypervisor gave these CPUs to other guests (not "
        "counted as busy). non-2xx is wrk's count of status >= 400 (no variant "
        "redirects); before each run a sample request must get 200 with one record of the caller's branch.",
        "",
        "**Variants**: A direct to the sample API; B nginx `proxy_pass` to an upstream block with "
        '`keepalive 64`, `proxy_http_version 1.1`, `proxy_set_header Connection ""`, **worker_processes 1**, '
        "access_log off, keepalive_requests raised to 1,000,000 (client and upstream side), run in the "
        "foreground from a temp dir (bench/nginx.conf.template); C bench/bare_proxy.py (aiohttp pass-through, "
        f"no checks) on the **{args.bare_loop}** event loop; D `broker run` (uvloop), E two `broker run` "
        "processes on one port via `[server] reuse_port = true`. Both brokers: a policy of "
        f"{ROSTER_SIZE:,} employees over 500 branches (bench/roster.py) with the generous limits of "
        'bench/meter.py (every request is allowed and metered in full), `[meter] store = "memory"` (so in E '
        "each process keeps its own quota counters; production would use Redis there, which bench/meter.py "
        "measures), RS256 tokens verified against a JWKS served on loopback (`[identity] jwks_url`, issuer "
        "and audience checked; a verified token is then cached), the audit log written to a file, policy "
        f"watch off, `BROKER_CLOCK={NOW_TEXT}` (a Wednesday afternoon; tokens are minted around that instant, "
        "only for employees whose shift covers it). Upstream: "
        f"`build_upstream_app(waybill_count={WAYBILLS:,})` in its own "
        "process on uvloop (it serves 12 branches, so the token holders are employees of those 12).",
        "",
        "## Closed loop (throughput)",
        "",
        *markdown_table(rows, paced=False),
        *noise_warning(closed),
        "",
        spread(rows),
    ]
    if paced:
        paced_rows = summarise(setup.variants, paced)
        lines += [
            "",
            f"## Fixed rate ({args.paced_rate:,} req/s offered)",
            "",
            f"wrk with a Lua `delay()`: each of the {args.connections} connections waits an exponential "
            f"pause (mean {args.connections * 1000 / args.paced_rate:.0f} ms) between its requests, about "
            f"{args.paced_rate:,} req/s in all, below every variant's capacity, so latency is not queueing "
            "behind a saturated proxy. Still closed per connection (wrk, not wrk2): no coordinated-omission "
            f"correction, and a variant that falls behind serves less than offered. {args.paced_rounds} round(s) "
            f"of {args.duration} s, interleaved, after the closed-loop rounds (more rounds than the closed "
            "loop's: a run at this rate holds few samples, and its p99 is the most run-to-run noise of the "
            "table).",
            "",
            *markdown_table(paced_rows, paced=True),
            *noise_warning(paced),
            "",
            spread(paced_rows),
        ]
    else:
        lines += ["", "Fixed-rate runs skipped (`--paced-rate 0`)."]
    if pinned:
        lines += [
            "",
            "## Closed loop, each one-process proxy on a CPU of its own",
            "",
            "The closed loop again for C and D (and D0), each pinned to CPU 1 with wrk and the upstream on CPU 0, "
            f"{args.pinned_rounds} round(s) of {args.duration} s, interleaved, after the phases above. Unpinned, "
            "the proxy, the upstream and wrk are three busy processes on two CPUs and each run's ratio depends "
            "on how the scheduler interleaves them; pinned, the proxy is the bottleneck on a CPU of its own and "
            "the ratio is its cost per request against the bare proxy's. The targets are read from the unpinned "
            "table above; this one leaves out the scheduler's interleaving, not a hypervisor's steal (see steal).",
            "",
            *markdown_table(summarise(setup.variants, pinned), paced=False),
            *noise_warning(pinned),
        ]
    if shared:
        lines += [
            "",
            "## Side by side: the one-process proxies at the same time on one CPU",
            "",
            f"{args.shared_rounds} round(s) of {args.duration} s after the phases above. In each, C, D and (when "
            "measured) D0 and DP run at once, all pinned to CPU 1, which the scheduler shares fairly between "
            "them; the upstream and one wrk per proxy run on CPU 0. The runs of the tables above follow one "
            "another, and on this shared machine the same proxy's CPU per request moves by a fifth from one run "
            "to the next (other guests, frequency); here whatever slows a round slows every proxy in it alike, "
            "so the ratio of their CPU per request is read within each round and holds steady across rounds. "
            "The last column is what that ratio means for a proxy whose own CPU is the bottleneck, as the "
            "pinned table's is: its throughput against the bare proxy's.",
            "",
            *shared_table(summarise_shared(setup.variants, shared)),
            *noise_warning(shared),
        ]
    lines += ["", "## Checks", ""]
    lines += [f"- **Note**: {note}" for note in setup.notes]
    lines.append(
        f"- Before the warm-up, each of the {len(setup.callers)} callers' requests got 200 with one record of "
        "their branch from every variant."
    )
    lines.append(
        "- CPU with no load, over 2 s before the warm-up (% of one CPU): "
        + ", ".join(f"{k} {v:.1f}%" for k, v in idle.items())
        + "."
    )
    for key, found in audits.items():
        summary = ", ".join(f"{n:,} {what}" for what, n in found.most_common()) or "no audit file"
        lines.append(f"- Audit log of {key} (warm-up, checks and runs included): {summary}.")
    flagged = [
        r.variant
        for r in [*rows, *summarise(setup.variants, paced), *summarise(setup.variants, pinned)]
        if r.status_errors or r.socket_errors
    ]
    lines.append(
        "- Variants with errors: "
        + (", ".join(sorted(set(flagged))) if flagged else "none (0 non-2xx, 0 socket errors).")
    )
    lines += [f"- Plot: {plot_note}", f"- Profile: {profile_note}", ""]
    return "\n".join(lines)


def plot(path: Path, variants: Sequence[Variant], closed: Sequence[Run], paced: Sequence[Run]) -> str:
    try:
        import matplotlib  # noqa: PLC0415 - optional, not a project dependency

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # noqa: PLC0415
    except ImportError:
        return "skipped: matplotlib is not importable (`.venv/bin/pip install matplotlib`)"
    rows = summarise(variants, closed)
    paced_rows = {r.variant: r for r in summarise(variants, paced)}
    labels = [r.variant.replace(" ", "\n", 1).replace(" (", "\n(").replace(", ", ",\n", 1) for r in rows]
    xs = list(range(len(rows)))
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 5))
    bars = left.bar(
        xs,
        [r.rate for r in rows],
        yerr=[[r.rate - r.rate_min for r in rows], [r.rate_max - r.rate for r in rows]],
        color="tab:blue",
        capsize=4,
    )
    left.bar_label(bars, [f"{r.rate:,.0f}" for r in rows], fontsize=8)
    left.set_title("Throughput, closed loop (median, min-max)")
    left.set_ylabel("requests / s")
    width = 0.4 if paced_rows else 0.8
    closed_bars = right.bar(
        [x - width / 2 if paced_rows else x for x in xs],
        [r.p99_ms for r in rows],
        width,
        yerr=[[r.p99_ms - r.p99_min for r in rows], [r.p99_max - r.p99_ms for r in rows]],
        capsize=4,
        color="tab:orange",
        label="closed loop (saturated)",
    )
    if paced_rows:
        right.bar(
            [x + width / 2 for x in xs],
            [paced_rows[r.variant].p99_ms if r.variant in paced_rows else 0 for r in rows],
            width,
            color="tab:green",
            label="fixed rate",
        )
        right.legend()
    right.bar_label(closed_bars, [f"{r.p99_ms:.1f}" for r in rows], fontsize=8)
    right.set_title("p99 latency (median of runs)")
    right.set_ylabel("ms")
    for axis in (left, right):
        axis.set_xticks(xs, labels, fontsize=8)
        axis.grid(axis="y", alpha=0.3)
    fig.suptitle(f"broker HTTP benchmark {date.today().isoformat()} (loopback, {os.cpu_count()} CPUs)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return f"`{path.relative_to(ROOT)}`"


# --------------------------------------------------------------------------- main


def nginx_binary() -> str | None:
    """nginx on PATH, or where Debian puts it (/usr/sbin is not on every user's PATH)."""
    return shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx", "/sbin/nginx") if Path(p).exists()), None)


def check_tools() -> None:
    missing = [tool for tool, found in (("wrk", shutil.which("wrk")), ("nginx", nginx_binary())) if found is None]
    if missing:
        log(f"bench.http needs {' and '.join(missing)}; {INSTALL_HINT}")
        sys.exit(2)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=int, default=8, help="seconds per wrk run (default 8)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    parser.add_argument("--connections", type=int, default=32, help="wrk connections (default 32)")
    parser.add_argument("--quick", action="store_true", help="1 round of 3 s per variant and phase")
    parser.add_argument(
        "--paced-rate",
        type=int,
        default=250,
        help="offered req/s of the fixed-rate phase; 0 skips it (default 250)",
    )
    parser.add_argument(
        "--paced-rounds",
        type=int,
        default=5,
        help="rounds of the fixed-rate phase (default 5: its p99 needs more samples than a closed-loop run's)",
    )
    parser.add_argument(
        "--bare-loop",
        choices=("uvloop", "asyncio"),
        default="uvloop",
        help="event loop of the bare proxy (default uvloop, as `broker run`; asyncio = bench/bare_proxy.py as is)",
    )
    parser.add_argument(
        "--pinned-rounds",
        type=int,
        default=None,
        help="rounds of the pinned phase (C and D, each on a CPU of its own; default --rounds, 0 skips it)",
    )
    parser.add_argument(
        "--shared-rounds",
        type=int,
        default=None,
        help="rounds of the side-by-side phase (the one-process proxies at once on one CPU; default --rounds, "
        "0 skips it)",
    )
    parser.add_argument(
        "--profile", action="store_true", help="py-spy the one-process broker and the bare proxy, one more run each"
    )
    parser.add_argument(
        "--gc-stats",
        action="store_true",
        help="start D through a wrapper that times its garbage collections (no longer plain `broker run`)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (configs, logs, audit files)")
    parser.add_argument(
        "--baseline",
        type=Path,
        default=None,
        help="also run variant D0: `broker run` from this source tree (e.g. `git archive HEAD | tar -x -C DIR`), "
        "to compare code before and after a change in the same run",
    )
    parser.add_argument("--tag", default="", help="results go to bench/results/http-<date>-<tag>.*")
    parser.add_argument(
        "--variants", default="", help="measure only these variants, comma-separated (e.g. C,D0,D); default all"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.duration, args.rounds, args.paced_rounds = 3, 1, 1
    if args.pinned_rounds is None:
        args.pinned_rounds = args.rounds
    if args.shared_rounds is None:
        args.shared_rounds = args.rounds
    if (os.cpu_count() or 1) < 2:
        args.pinned_rounds = args.shared_rounds = 0  # nothing to pin apart on one CPU
    if (
        min(args.duration, args.rounds, args.connections, args.paced_rounds) < 1
        or args.paced_rate < 0
        or args.pinned_rounds < 0
        or args.shared_rounds < 0
    ):
        parser.error(
            "--duration, --rounds, --paced-rounds and --connections must be at least 1, "
            "--paced-rate, --pinned-rounds and --shared-rounds at least 0"
        )
    return args


def run_profiles(setup: Setup, args: argparse.Namespace, script: Path, stamp: str) -> tuple[str | None, str]:
    """(the profile text, a sentence for the report) from py-spy on D and, to compare, C."""
    svg = RESULTS / f"http-{stamp}-profile.svg"
    found = [
        profile
        for key, image in (("D", svg), ("D0", None), ("C", None))
        if any(v.key == key for v in setup.variants)
        if (profile := profile_variant(setup, key, script, args, image)) is not None
    ]
    if not found:
        return None, "requested but py-spy did not produce a recording (see stderr)"
    text = profile_report(found, max(args.duration, PROFILE_MIN_SECONDS))
    (RESULTS / f"http-{stamp}-profile.txt").write_text(text, encoding="utf-8")
    return text, (
        f"`bench/results/http-{stamp}-profile.svg` (flame graph of D) and "
        f"`bench/results/http-{stamp}-profile.txt` (top functions of D and, for comparison, C): py-spy "
        "during one extra closed-loop run each, after the measured ones, with the variant pinned to CPU 1."
    )


def run_phases(
    setup: Setup, closed_script: Path, callers: Sequence[Caller], args: argparse.Namespace
) -> tuple[list[Run], list[Run], list[Run], list[Run]]:
    """The measured runs, phase after phase: closed loop, fixed rate, pinned, side by side."""
    workdir = setup.workdir
    log(f"closed loop: {args.rounds} round(s) x {len(setup.variants)} variants x {args.duration} s ...")
    closed = run_phase(setup, closed_script, args, "closed", args.duration, args.rounds)
    paced: list[Run] = []
    if args.paced_rate:
        paced_script = write_lua(workdir / "paced.lua", callers, args.connections * 1000 / args.paced_rate)
        log(f"fixed rate {args.paced_rate} req/s: {args.paced_rounds} round(s) ...")
        paced = run_phase(setup, paced_script, args, "paced", args.duration, args.paced_rounds)
    pinned: list[Run] = []
    if args.pinned_rounds and any(v.key in PINNED_VARIANTS for v in setup.variants):
        log(f"pinned closed loop: {args.pinned_rounds} round(s), C and D each on a CPU of its own ...")
        pinned = run_phase(setup, closed_script, args, "pinned", args.duration, args.pinned_rounds, pinned=True)
    shared: list[Run] = []
    if args.shared_rounds and sum(v.key in PINNED_VARIANTS for v in setup.variants) > 1:
        log(f"side by side: {args.shared_rounds} round(s), the one-process proxies at once on CPU 1 ...")
        shared = run_shared(setup, closed_script, args)
    return closed, paced, pinned, shared


def benchmark(args: argparse.Namespace, fleet: Fleet, cleanup: contextlib.ExitStack, started: float) -> int:
    workdir, stamp = fleet.workdir, date.today().isoformat() + (f"-{args.tag}" if args.tag else "")
    log(f"workdir {workdir}; roster of {ROSTER_SIZE:,}, tokens for up to {TOKEN_PEOPLE} employees ...")
    staff = people(ROSTER_SIZE)
    policy = write_policy_dir(workdir / "policies", staff)
    (policy / "limits.csv").write_text(GENEROUS_LIMITS, encoding="utf-8")
    identity = make_identity(staff, shifts_on_duty(policy))
    callers = identity.callers
    if identity.off_duty_shifts:
        log(
            f"NOTE: shifts {identity.off_duty_shifts} of policies/shifts.csv do not cover {NOW_TEXT}, though "
            f"bench/roster.py assigns them; skipped {identity.skipped_off_duty} off-shift employees"
        )
    jwks = JwksServer(identity.jwks)
    cleanup.callback(jwks.close)
    setup = start_everything(workdir, fleet, jwks, callers, args.bare_loop, args.gc_stats, args.baseline, args.variants)
    preflight(setup, identity)
    body_bytes = {v.key: check_answer(v, callers[0]) for v in setup.variants}
    log(f"all up after {time.monotonic() - started:.1f} s; sample answers (body bytes): {body_bytes}")
    idle = idle_cpu(setup)
    log("idle CPU over 2 s (% of one CPU): " + ", ".join(f"{k} {v:.1f}%" for k, v in idle.items()))

    closed_script = write_lua(workdir / "closed.lua", callers, 0)
    gc_before = gc_totals(setup) if args.gc_stats else None
    log(f"warm-up: {WARMUP_SECONDS} s per variant ...")
    for variant in setup.variants:
        wrk(variant.url, closed_script, args.connections, WARMUP_SECONDS)
    closed, paced, pinned, shared = run_phases(setup, closed_script, callers, args)
    if gc_before is not None:
        setup.notes.append(gc_note(gc_before, gc_totals(setup), sum(r.variant == "D" for r in [*closed, *paced])))
        log(setup.notes[-1])

    RESULTS.mkdir(exist_ok=True)
    profile_text, profile_note = run_profiles(setup, args, closed_script, stamp) if args.profile else (None, "")
    profile_note = profile_note or "not requested (`--profile`)"

    fleet.stop_all()  # the brokers drain their audit queues to the files on the way out
    audits = {key: count_audit(path, audit_kind) for key, path in setup.audit_logs.items()}
    plot_note = plot(RESULTS / f"http-{stamp}.png", setup.variants, closed, paced)
    elapsed = time.monotonic() - started
    text = report(
        args, setup, closed, paced, pinned, shared, body_bytes, idle, audits, elapsed, plot_note, profile_note
    )
    (RESULTS / f"http-{stamp}.md").write_text(text, encoding="utf-8")
    raw = {
        "args": vars(args),
        "machine": versions(),
        "closed": [asdict(r) for r in closed],
        "paced": [asdict(r) for r in paced],
        "pinned": [asdict(r) for r in pinned],
        "shared": [asdict(r) for r in shared],
        "body_bytes": body_bytes,
        "idle_cpu_percent": idle,
        "audit": {k: dict(v) for k, v in audits.items()},
    }
    (RESULTS / f"http-{stamp}.json").write_text(json.dumps(raw, indent=1, default=str) + "\n", encoding="utf-8")
    print(text)
    if profile_text:
        print(profile_text)
    log(f"total {time.monotonic() - started:.0f} s; results in {RESULTS.relative_to(ROOT)}/http-{stamp}.*")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    check_tools()
    started = time.monotonic()
    return run_benchmark("bench.http", lambda fleet, cleanup: benchmark(args, fleet, cleanup, started), keep=args.keep)


if __name__ == "__main__":
    sys.exit(main())

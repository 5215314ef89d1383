"""The image run as a container would run it, and its behaviour checked.

Inside a private mount and network namespace (the caller's `unshare --mount --net`):
the replayed root is remounted read-only (`docker run --read-only`) with a private tmpfs
at /tmp, as compose (`tmpfs: [/tmp]`) and the pod (an emptyDir in the broker's container
only) give it, and a private tmpfs at /dev/shm (not this machine's): a write to /tmp is
allowed, a write anywhere else (/dev/shm included: a pod's containers share it) is
reported whether it failed or not. The entrypoint runs as the Dockerfile's USER with
the image's ENV and nothing else but the one setting a deployment must give (a key
source, BROKER_DEV_SECRET), and the network is a loopback of its own, so the config's
own ports (8080, upstream 127.0.0.1:8081) are used unchanged, as in a pod.

The sample API (`python -m broker.demo.upstream`, from the same image, as compose runs
it) stands in for the app; an employee always on shift is added by a policy directory
mounted over the image's (the README's way to bring your own policies), so the allowed
request is allowed at any hour.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from broker.config import Settings, load_settings
from deploy.image_check import strace_log
from deploy.image_check.report import Check, verdict
from deploy.image_check.rootfs import in_root, mount
from deploy.image_check.spec import ImageSpec

EMPLOYEE, OWN_BRANCH, OTHER_BRANCH = "e7001", "BR001", "BR002"
ADDED_POLICY = {"roster.csv": f"g, {EMPLOYEE}, courier, {OWN_BRANCH}\n", "shifts.csv": f"g2, {EMPLOYEE}, always\n"}
READY_WITHIN = 120.0
"""strace slows start-up severalfold; the policy build child is traced too."""


@dataclass(frozen=True, slots=True)
class Layout:
    workdir: Path
    root: Path
    local_bin: Path

    @classmethod
    def at(cls, workdir: Path) -> Layout:
        return cls(workdir, workdir / "root", workdir / "local-bin")


class Container:
    """The root, mounted, with processes started in it as the image's user."""

    def __init__(self, layout: Layout, spec: ImageSpec, config: str, settings: Settings) -> None:
        self.layout, self.spec, self.config, self.settings = layout, spec, config, settings
        self.secret = secrets.token_hex(24)

    def command(self, argv: list[str], *, secret: bool = True) -> list[str]:
        env = self.spec.container_env() | ({"BROKER_DEV_SECRET": self.secret} if secret else {})
        return in_root(self.layout.root, argv, env=env, cwd=self.spec.workdir, user=self.spec.user)

    def run(self, argv: list[str], *, secret: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.command(argv, secret=secret), capture_output=True, text=True, timeout=timeout, check=False
        )


def run_checks(layout: Layout, spec: ImageSpec) -> list[Check]:
    config = spec.entrypoint[spec.entrypoint.index("-c") + 1]
    settings = load_settings(layout.root / config.lstrip("/"))
    policies = _policies_with_test_employee(layout, settings)
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    mount(layout.root, layout.local_bin, read_only=True, tmp=True, extra=[(policies, str(settings.policy.directory))])
    container = Container(layout, spec, config, settings)
    checks = [_refuses_without_key(container)]
    with ExitStack() as stack:
        upstream = _start_upstream(container)
        stack.callback(_stop, upstream)
        checks += _serve_and_probe(container, stack)
    return checks


def _policies_with_test_employee(layout: Layout, settings: Settings) -> Path:
    mounted = layout.workdir / "policies-mounted"
    shutil.copytree(layout.root / str(settings.policy.directory).lstrip("/"), mounted)
    for name, line in ADDED_POLICY.items():
        with (mounted / name).open("a", encoding="utf-8") as file:
            file.write(line)
    return mounted


def _refuses_without_key(container: Container) -> Check:
    done = container.run(container.spec.entrypoint, secret=False)
    said = (done.stderr.strip().splitlines() or ["(nothing)"])[-1]
    problems = [] if done.returncode and "key source" in done.stderr else [f"exit {done.returncode}: {said}"]
    return verdict(
        "refuses to start until a key source is configured",
        "the entrypoint run with the image's ENV only",
        problems,
        [f"exit {done.returncode}: {said}"],
    )


def _start_upstream(container: Container) -> subprocess.Popen[bytes]:
    address = urlsplit(container.settings.upstream.url)
    host, port = address.hostname or "127.0.0.1", address.port or 80
    argv = ["python", "-m", "broker.demo.upstream", "--host", host, "--port", str(port)]
    log = (container.layout.workdir / "upstream.log").open("wb")
    process = subprocess.Popen(container.command(argv), stdout=log, stderr=subprocess.STDOUT)
    _wait_for_port(port, process, within=60)
    return process


def _serve_and_probe(container: Container, stack: ExitStack) -> list[Check]:
    workdir, server = container.layout.workdir, container.settings.server
    trace = workdir / "broker.strace"
    stdout, stderr = (workdir / "broker.stdout").open("wb"), (workdir / "broker.stderr").open("wb")
    strace = ["strace", "-f", "-qq", "-y", "-s", "4096", "-e", f"trace={strace_log.TRACED}", "-o", str(trace)]
    process = subprocess.Popen([*strace, *container.command(container.spec.entrypoint)], stdout=stdout, stderr=stderr)
    stack.callback(_stop, process)
    admin = server.admin_port or server.port
    ready, waited = _wait_ready(admin, process)
    checks: list[Check] = []
    if not ready:
        tail = (workdir / "broker.stderr").read_text(errors="replace").strip().splitlines()[-5:]
        checks.append(
            verdict("serves: /-/readyz answers 200", f"GET :{admin}/-/readyz", [f"not ready: {waited}", *tail])
        )
    else:
        checks.append(verdict("serves: /-/readyz answers 200", f"GET :{admin}/-/readyz polled", [], [waited]))
        checks += _probe(container, admin)
    broker_pid = _entrypoint_pid(trace, container.spec.entrypoint[0])
    checks.append(_runs_as(container, broker_pid))
    stopped = _terminate(process, broker_pid, server.drain_seconds + server.shutdown_timeout_seconds + 20)
    checks.append(verdict("stops cleanly on SIGTERM", "SIGTERM to the entrypoint's process", stopped))
    checks.append(_audit_on_stdout(workdir / "broker.stdout"))
    checks.append(_writes(trace, container.spec.entrypoint[0], container.layout.root))
    return checks


def _probe(container: Container, admin: int) -> list[Check]:
    token = container.run(["broker", "token", "-c", container.config, "--sub", EMPLOYEE])
    if token.returncode:
        return [verdict("a proxied request is decided", "`broker token` in the container", [token.stderr.strip()])]
    port = container.settings.server.port
    statuses = {
        branch: _get(f"http://127.0.0.1:{port}/api/branches/{branch}/waybills?limit=5", token.stdout.strip())
        for branch in (OWN_BRANCH, OTHER_BRANCH)
    }
    expected = {OWN_BRANCH: 200, OTHER_BRANCH: 403}
    health = container.run(container.spec.healthcheck)
    return [
        verdict(
            "a proxied request is decided: own branch 200, another branch's 403",
            f"token from `broker token` in the container; GET :{port}/api/branches/<branch>/waybills as {EMPLOYEE}",
            [f"{b}: {statuses[b]}, expected {expected[b]}" for b in expected if statuses[b] != expected[b]],
            [f"{b}: {statuses[b]}" for b in expected],
        ),
        verdict(
            "the Dockerfile's HEALTHCHECK passes",
            "its CMD run in the container as the image's user",
            [f"exit {health.returncode}: {health.stderr.strip()[-200:]}"] if health.returncode else [],
            [f"exit 0 (probes port {admin})"],
        ),
    ]


def _get(url: str, token: str) -> int:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})  # noqa: S310
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:  # noqa: S310
            return int(answer.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def _wait_ready(port: int, process: subprocess.Popen[bytes]) -> tuple[bool, str]:
    started = time.monotonic()
    while time.monotonic() - started < READY_WITHIN:
        if process.poll() is not None:
            return False, f"the broker exited with status {process.returncode}"
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/-/readyz", timeout=2) as answer:
                if answer.status == 200:
                    return True, f"ready after {time.monotonic() - started:.1f} s (under strace)"
        except (OSError, urllib.error.URLError):
            pass
        time.sleep(0.5)
    return False, f"no 200 within {READY_WITHIN:.0f} s"


def _wait_for_port(port: int, process: subprocess.Popen[bytes], within: float) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline and process.poll() is None:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"the sample upstream did not listen on port {port} (see upstream.log)")


def _entrypoint_pid(trace: Path, entrypoint: str) -> int | None:
    with trace.open(encoding="utf-8", errors="replace") as lines:
        for call in strace_log.calls(lines):
            if call.name == "execve" and not call.failed and call.paths[0].rsplit("/", 1)[-1] == entrypoint:
                return call.pid
    return None


def _runs_as(container: Container, pid: int | None) -> Check:
    """Every process whose root is the container's: its uids, gids and capabilities."""
    uid, gid = container.spec.user
    seen: list[str] = []
    problems: list[str] = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if os.readlink(entry / "root") != str(container.layout.root):
                continue
            status = dict(line.split(":", 1) for line in (entry / "status").read_text().splitlines() if ":" in line)
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            continue  # gone meanwhile
        uids, gids, caps = status["Uid"].split(), status["Gid"].split(), status["CapEff"].strip()
        seen.append(f"pid {entry.name} uid {uids[0]} gid {gids[0]} CapEff {caps}: {command[:70]}")
        if set(uids) != {str(uid)} or set(gids) != {str(gid)} or int(caps, 16):
            problems.append(seen[-1])
    if pid is None:
        problems.append("the entrypoint's process was not found in the trace")
    return verdict(
        f"runs as non-root uid {uid}, no capabilities",
        "/proc/<pid>/status of every process in the container (real, effective, saved and fs ids)",
        problems,
        seen,
    )


def _terminate(process: subprocess.Popen[bytes], pid: int | None, within: float) -> list[str]:
    if process.poll() is not None:
        return [f"it had exited before, with status {process.returncode}"]
    if pid is None:
        return ["no entrypoint process to signal"]
    os.kill(pid, signal.SIGTERM)
    try:
        status = process.wait(within)
    except subprocess.TimeoutExpired:
        return [f"still running {within:.0f} s after SIGTERM"]
    return [f"exit status {status}"] if status else []


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _audit_on_stdout(path: Path) -> Check:
    lines = [line for line in path.read_text(encoding="utf-8", errors="replace").splitlines() if line.strip()]
    events, problems = [], []
    for line in lines:
        try:
            events.append(json.loads(line))
        except json.JSONDecodeError:
            problems.append(f"not a JSON event on stdout: {line[:100]}")
    ours = [e for e in events if isinstance(e, dict) and e.get("employee") == EMPLOYEE]
    verdicts = {e.get("record_branch"): e.get("verdict") for e in ours}
    if verdicts.get(OWN_BRANCH) != "allow" or verdicts.get(OTHER_BRANCH) != "deny":
        problems.append(f"decisions for {EMPLOYEE} on stdout: {verdicts or 'none'}")
    return verdict(
        "the audit goes to standard output, one JSON event per decision",
        "the entrypoint's stdout read back",
        problems,
        [f"{len(lines)} lines on stdout, all JSON; {EMPLOYEE}: {verdicts}"],
    )


def _writes(trace: Path, entrypoint: str, root: Path) -> Check:
    with trace.open(encoding="utf-8", errors="replace") as lines:
        started, attempts = strace_log.write_attempts(lines, entrypoint, str(root))
    on_root = [a.describe() for a in attempts if a.where == "root"]
    on_tmpfs = [a.describe() for a in attempts if a.where == "tmpfs"]
    problems = on_root if started else ["the trace never reached the entrypoint"]
    calls = strace_log.TRACED.count(",") + 1
    return verdict(
        "writes nothing under / but its private /tmp (read-only root filesystem ready; nothing in /dev/shm)",
        f"strace -f of start-up, serving and shutdown ({calls} calls that change files); the root read-only, "
        "/tmp a private tmpfs (allowed), /dev/shm a private tmpfs (a write there is broken: a pod shares it)",  # noqa: S108 - text
        problems,
        [f"no write attempt outside /tmp; {len(on_tmpfs)} in the container's private /tmp tmpfs", *on_tmpfs[:5]],
    )

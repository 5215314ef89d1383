"""The command line, as an operator or a CI job runs it: exit codes and output."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
import structlog

from broker.cli import configure_logging
from broker.config import load_settings
from broker.core.clock import FakeClock
from broker.identity.jwt_authenticator import JwtAuthenticator, mint_token
from broker.identity.settings import IdentitySettings
from tests.harness import SECRET, TUESDAY_10_SHANGHAI, free_port, start_broker_process

REPO = Path(__file__).resolve().parents[2]


def broker_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "broker", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
        check=False,
    )


def test_check_accepts_the_shipped_policy() -> None:
    result = broker_cli("check", "--policies", str(REPO / "policies"), env={"BROKER_DEV_SECRET": SECRET})
    assert result.returncode == 0, result.stderr
    assert "OK: revision" in result.stdout and "7 employees" in result.stdout


def test_check_reports_every_problem_with_file_and_line(tmp_path: Path) -> None:
    policies = tmp_path / "policies"
    shutil.copytree(REPO / "policies", policies)
    roster = policies / "roster.csv"
    roster.write_text(roster.read_text() + "pp, e5, courier, BR001\ng, e6, curier, BR001 # new hire\ng, e7, clerk\n")
    result = broker_cli("check", "--policies", str(policies), env={"BROKER_DEV_SECRET": SECRET})
    assert result.returncode == 1
    lines = len(roster.read_text().splitlines())
    assert f"roster.csv:{lines - 2}: unknown line type 'pp'" in result.stderr
    assert f"roster.csv:{lines - 1}: inline comment after a rule" in result.stderr
    assert f"roster.csv:{lines}: g line has 2 fields, expected 3" in result.stderr
    assert "3 problem(s)" in result.stderr


def test_check_reports_config_problems(tmp_path: Path) -> None:
    config = tmp_path / "broker.toml"
    config.write_text('[upstream]\nurl = "ftp://x"\n')
    result = broker_cli("check", "-c", str(config), "--policies", str(REPO / "policies"))
    assert result.returncode == 2
    assert "url 'ftp://x' must start with http://" in result.stderr
    assert "no key source" in result.stderr


def test_check_without_a_key_source_checks_the_policy_and_exits_0(tmp_path: Path) -> None:
    """A policy-only CI job needs no dummy key."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BROKER_")}
    result = subprocess.run(
        [sys.executable, "-m", "broker", "check", "--policies", str(REPO / "policies")],
        capture_output=True, text=True, timeout=60, env=env, check=False, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "OK: revision" in result.stdout
    assert "note: [identity] no key source" in result.stderr and "needed to serve, not to check" in result.stderr


def test_config_paths_are_relative_to_the_config_file(tmp_path: Path) -> None:
    deploy = tmp_path / "deploy"
    shutil.copytree(REPO / "policies", deploy / "policies")
    config = deploy / "broker.toml"
    config.write_text('[policy]\ndirectory = "policies"\n[audit]\npath = "logs/audit.log"\n')
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    result = subprocess.run(
        [sys.executable, "-m", "broker", "check", "-c", str(config)],
        capture_output=True, text=True, timeout=60, env={**os.environ, "BROKER_DEV_SECRET": SECRET},
        check=False, cwd=elsewhere,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert f"policy {deploy / 'policies'} OK" in result.stdout
    settings = load_settings(config)
    assert settings.audit.path == str(deploy / "logs" / "audit.log")


def test_unknown_config_key_is_named(tmp_path: Path) -> None:
    config = tmp_path / "broker.toml"
    config.write_text("[upstream]\nurll = 1\n")
    result = broker_cli("check", "-c", str(config))
    assert result.returncode == 2
    assert "unknown key 'urll' in [upstream]" in result.stderr


def test_token_mints_a_token_the_broker_accepts() -> None:
    result = broker_cli("token", "--sub", "e1001", env={"BROKER_DEV_SECRET": SECRET})
    assert result.returncode == 0, result.stderr
    token = result.stdout.strip()
    authenticator = JwtAuthenticator(IdentitySettings(hs256_secret=SECRET), FakeClock(time.time()))
    assert asyncio.run(authenticator.authenticate(token)) == "e1001"


def test_token_without_secret_says_how_to_configure() -> None:
    env = {k: v for k, v in os.environ.items() if k != "BROKER_DEV_SECRET"}
    result = subprocess.run(
        [sys.executable, "-m", "broker", "token", "--sub", "e1"], capture_output=True, text=True, env=env, check=False
    )
    assert result.returncode == 2 and "BROKER_DEV_SECRET" in result.stderr


def test_dev_cert_writes_a_private_key_and_certificate_once(tmp_path: Path) -> None:
    from cryptography import x509  # noqa: PLC0415 - only this test reads a certificate

    out = tmp_path / "tls"
    result = broker_cli("dev-cert", "--out", str(out), "--host", "broker", "--host", "10.0.0.7")
    assert result.returncode == 0, result.stderr
    cert_file, key_file = out / "door.crt", out / "door.key"
    assert "localhost, 127.0.0.1, ::1, broker, 10.0.0.7" in result.stdout
    assert {p.name: p.stat().st_mode & 0o777 for p in out.iterdir()} == {"door.crt": 0o600, "door.key": 0o600}
    assert out.stat().st_mode & 0o777 == 0o700
    cert = x509.load_pem_x509_certificate(cert_file.read_bytes())
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(names.get_values_for_type(x509.DNSName)) == {"localhost", "broker"}
    assert {str(a) for a in names.get_values_for_type(x509.IPAddress)} == {"127.0.0.1", "::1", "10.0.0.7"}
    key_before = key_file.read_bytes()
    again = broker_cli("dev-cert", "--out", str(out))
    assert again.returncode == 2 and "exists; refusing to overwrite" in again.stderr
    assert key_file.read_bytes() == key_before
    kept = broker_cli("dev-cert", "--out", str(out), "--if-missing")
    assert kept.returncode == 0 and "left as they are" in kept.stdout and key_file.read_bytes() == key_before
    cert_file.unlink()  # half a pair is no pair: --if-missing still refuses to overwrite the key
    half = broker_cli("dev-cert", "--out", str(out), "--if-missing")
    assert half.returncode == 2 and f"{key_file} exists" in half.stderr and not cert_file.exists()
    bad = broker_cli("dev-cert", "--out", str(tmp_path / "other"), "--host", "a b")
    assert bad.returncode == 2 and "neither an IP address nor a DNS name" in bad.stderr
    assert not (tmp_path / "other").exists()
    shown = broker_cli("dev-cert", "--help")
    assert "--out" in shown.stdout and "--host" in shown.stdout and "sslmode=require" in shown.stdout


def test_help_lists_every_command() -> None:
    result = broker_cli("--help")
    for command in ("run", "check", "token", "demo"):
        assert command in result.stdout


@pytest.fixture
def running_broker(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], int, Path]]:
    policies = tmp_path / "policies"
    shutil.copytree(REPO / "policies", policies)
    port = free_port()
    config = tmp_path / "broker.toml"
    config.write_text(
        f'[server]\nport = {port}\ndrain_seconds = 0.5\n[upstream]\nurl = "http://127.0.0.1:{free_port()}"\n'
        f'[policy]\ndirectory = "{policies}"\nwatch = false\n[audit]\npath = "{tmp_path / "audit.log"}"\n'
    )
    env = {**os.environ, "BROKER_DEV_SECRET": SECRET, "BROKER_CLOCK": "2026-12-01T10:00:00+08:00"}
    log = (tmp_path / "broker.out").open("w")
    process = start_broker_process(config, env, output=log, wait_port=port)
    try:
        yield process, port, policies
    finally:
        process.terminate()
        process.wait(timeout=15)
        log.close()


async def test_run_serves_reloads_on_sighup_and_stops_cleanly(
    running_broker: tuple[subprocess.Popen[bytes], int, Path], tmp_path: Path
) -> None:
    process, port, policies = running_broker
    base = f"http://127.0.0.1:{port}"
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{base}/-/readyz") as ready:
            assert ready.status == 200
            revision = (await ready.json())["policy_revision"]
        roster = policies / "roster.csv"
        roster.write_text(roster.read_text() + "g, e3001, courier, BR004\ng2, e3001, day-cn\n")
        process.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            async with session.get(f"{base}/-/policy") as reply:
                state = await reply.json()
            if state["revision"] != revision:
                break
            await asyncio.sleep(0.1)
        assert state["revision"] != revision and state["employees"] == 8
        # BROKER_CLOCK put the broker at Tuesday 10:00 in Shanghai: e1002 is off shift
        token = mint_token(SECRET, "e1002", now=TUESDAY_10_SHANGHAI)
        async with session.get(
            f"{base}/api/branches/BR002/waybills", headers={"Authorization": f"Bearer {token}"}
        ) as reply:
            assert reply.status == 403 and (await reply.json())["reason"] == "shift.outside"
    process.terminate()
    assert process.wait(timeout=15) == 0
    audit = (tmp_path / "audit.log").read_text()
    assert '"reason":"shift.outside"' in audit


def test_run_refuses_a_broken_policy_with_file_and_line(tmp_path: Path) -> None:
    policies = tmp_path / "policies"
    shutil.copytree(REPO / "policies", policies)
    (policies / "roles.csv").write_bytes(b"\xef\xbb\xbf" + (policies / "roles.csv").read_bytes())
    config = tmp_path / "broker.toml"
    config.write_text(f'[policy]\ndirectory = "{policies}"\n')
    result = broker_cli("run", "-c", str(config), env={"BROKER_DEV_SECRET": SECRET})
    assert result.returncode == 1
    assert "roles.csv:1: file starts with a UTF-8 byte order mark" in result.stderr


def test_run_stops_when_the_policy_build_overruns_its_time(tmp_path: Path) -> None:
    config = tmp_path / "broker.toml"
    config.write_text(f'[policy]\ndirectory = "{REPO / "policies"}"\nbuild_timeout_seconds = 0.001\n')
    result = broker_cli("run", "-c", str(config), env={"BROKER_DEV_SECRET": SECRET})
    assert result.returncode == 1, result.stderr
    assert f"broker: policy problem: {REPO / 'policies'}: building the policy took longer than 0.001 s" in result.stderr


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("unshare") is None, reason="needs root and unshare")
def test_run_without_a_writable_temp_directory_says_in_one_line_to_mount_a_private_tmp(tmp_path: Path) -> None:
    """As in a read-only container with no /tmp mount: /tmp and /var/tmp read-only (in a
    mount namespace of the broker's own), TMPDIR unset, the working directory /proc."""
    config = tmp_path / "broker.toml"
    config.write_text(f'[policy]\ndirectory = "{REPO / "policies"}"\n')
    read_only = " && ".join(
        f"mount --bind {d} {d} && mount -o remount,bind,ro {d}" for d in ("/tmp", "/var/tmp") if Path(d).is_dir()
    )
    env = {k: v for k, v in os.environ.items() if k not in ("TMPDIR", "TEMP", "TMP")}
    result = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c",
         f'{read_only} && cd /proc && exec "$0" -m broker run -c "$1"', sys.executable, str(config)],
        capture_output=True, text=True, timeout=60, env={**env, "BROKER_DEV_SECRET": SECRET}, check=False,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    said = [line for line in result.stderr.splitlines() if line.startswith("broker:")]
    assert said == [
        "broker: no writable temporary directory (tried $TMPDIR, /tmp, /var/tmp, /usr/tmp and the working "
        "directory): the policy builder's fork server keeps its socket there; give the broker's container a "
        "private tmpfs at /tmp (docker run --read-only --tmpfs /tmp; compose: tmpfs: [/tmp]; Kubernetes: an "
        "emptyDir at /tmp mounted in the broker's container only), never /dev/shm, which every container of a "
        "pod shares"
    ], result.stderr
    assert "policy problem" not in result.stderr and "Traceback" not in result.stderr


def test_run_refuses_a_build_timeout_that_is_not_above_zero(tmp_path: Path) -> None:
    config = tmp_path / "broker.toml"
    config.write_text(f'[policy]\ndirectory = "{REPO / "policies"}"\n')
    env = {"BROKER_DEV_SECRET": SECRET, "BROKER_POLICY_BUILD_TIMEOUT_SECONDS": "0"}
    result = broker_cli("run", "-c", str(config), env=env)
    assert result.returncode == 2
    assert "[policy] build_timeout_seconds must be above 0, not 0.0" in result.stderr


def test_run_refuses_a_shadow_policy_that_fails_its_own_cases_naming_the_shadow(tmp_path: Path) -> None:
    shadow = tmp_path / "policies-next"
    shutil.copytree(REPO / "policies", shadow)
    roster = shadow / "roster.csv"
    roster.write_text(roster.read_text().replace("g, e1001, courier, BR001", "g, e1001, courier, BR002"))
    config = tmp_path / "broker.toml"
    config.write_text(f'[policy]\ndirectory = "{REPO / "policies"}"\nshadow_directory = "{shadow}"\n')
    result = broker_cli("run", "-c", str(config), env={"BROKER_DEV_SECRET": SECRET})
    assert result.returncode == 1
    assert f"broker: policy problem: {shadow.resolve()}/tests/shipped.toml:" in result.stderr, result.stderr
    assert f"{REPO / 'policies'}/{shadow}" not in result.stderr  # named once, not under the live policy


def test_policy_tests_pass_on_the_shipped_policy() -> None:
    result = broker_cli("test", "--policies", str(REPO / "policies"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "PASS  a courier reads their own branch in their shift" in result.stdout
    assert "19 passed, 0 failed" in result.stdout
    assert "coverage: 19 of 21 permission and limit lines exercised" in result.stdout
    assert "not exercised: roles.csv:5 (p, clerk, waybill, read)" in result.stdout


def test_a_failing_policy_test_shows_expected_and_actual(tmp_path: Path) -> None:
    cases = tmp_path / "extra.toml"
    cases.write_text(
        '[[case]]\nname = "couriers may read BR002 (wrong on purpose)"\nemployee = "e1001"\n'
        'request = "GET /api/branches/BR002/waybills?limit=5"\nat = "2026-12-01T10:00:00+08:00"\nexpect = "allow"\n'
    )
    result = broker_cli("test", "--policies", str(REPO / "policies"), str(cases))
    assert result.returncode == 1
    assert f"FAIL  couriers may read BR002 (wrong on purpose)  ({cases}:1)" in result.stdout
    assert "expected: allow" in result.stdout
    assert "actual:   policy.other_branch  [p, courier, waybill, read (roles.csv:3)]" in result.stdout
    assert "0 passed, 1 failed" in result.stdout


def test_bad_test_case_files_are_reported(tmp_path: Path) -> None:
    cases = tmp_path / "bad.toml"
    cases.write_text('[[case]]\nname = "x"\nemployee = "e1001"\nrequest = "nonsense"\nat = "2026"\nexpect = "maybe"\n')
    result = broker_cli("test", "--policies", str(REPO / "policies"), str(cases))
    assert result.returncode == 1
    assert f"{cases}:1: case #1: expect = 'maybe' is neither 'allow' nor a reason code" in result.stderr


def test_policy_test_on_a_broken_policy(tmp_path: Path) -> None:
    policies = tmp_path / "policies"
    shutil.copytree(REPO / "policies", policies)
    (policies / "roles.csv").write_text((policies / "roles.csv").read_text() + "p, courier, waybill\n")
    result = broker_cli("test", "--policies", str(policies))
    assert result.returncode == 1
    line = len((policies / "roles.csv").read_text().splitlines())
    assert f"roles.csv:{line}: p line has 2 fields, expected 3" in result.stderr


def test_check_refuses_a_policy_that_fails_its_own_tests(tmp_path: Path) -> None:
    policies = tmp_path / "policies"
    shutil.copytree(REPO / "policies", policies)
    roster = policies / "roster.csv"
    roster.write_text(roster.read_text().replace("g, e1001, courier, BR001", "g, e1001, courier, BR002"))
    result = broker_cli("check", "--policies", str(policies), env={"BROKER_DEV_SECRET": SECRET})
    assert result.returncode == 1
    assert "policy test 'a courier reads their own branch in their shift' expected allow" in result.stderr


def test_check_refuses_a_matcher_that_excludes_one_employee(tmp_path: Path) -> None:
    """Issue #17: with 307 employees this edit passed a sampled check and was not enforced."""
    policies = tmp_path / "policies"
    shutil.copytree(REPO / "policies", policies)
    roster = policies / "roster.csv"
    roster.write_text(
        roster.read_text() + "".join(f"g, e{n}, courier, BR001\ng2, e{n}, day-cn\n" for n in range(4900, 5200))
    )
    model = policies / "model.conf"
    lines = model.read_text().splitlines()
    at = next(n for n, line in enumerate(lines, start=1) if line.startswith("m = "))
    model.write_text(model.read_text().replace(lines[at - 1], lines[at - 1] + ' && r.sub != "e5000"'))
    result = broker_cli("check", "--policies", str(policies), env={"BROKER_DEV_SECRET": SECRET})
    assert result.returncode == 1
    assert f'model.conf:{at}: the matcher tests `r.sub != "e5000"`, which the allow-and-deny model does not' in (
        result.stderr
    )
    assert "write a deny line (p, e5000, *, *, *, deny)" in result.stderr
    assert "1 problem(s); the policy would be refused" in result.stderr


def test_explain_names_the_deny_line_that_closes_a_branch(tmp_path: Path) -> None:
    policies = tmp_path / "policies"
    shutil.copytree(REPO / "policies", policies)
    shutil.rmtree(policies / "tests")
    (policies / "deny.csv").write_text("p, courier, *, *, BR001, deny\n")
    result = broker_cli(
        "explain", "--policies", str(policies), "--employee", "e1001",
        "--request", "GET /api/branches/BR001/waybills?limit=5", "--at", "2026-12-01T10:00:00+08:00",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "closed in BR001 by the deny line p, courier, *, *, BR001, deny (deny.csv:1)" in result.stdout
    assert "verdict: deny (policy.denied)" in result.stdout


def test_explain_shows_each_check_in_order() -> None:
    result = broker_cli(
        "explain", "--policies", str(REPO / "policies"), "--employee", "e1002",
        "--request", "GET /api/branches/BR002/waybills?limit=5", "--at", "2026-12-01T10:00:00+08:00",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    checks = [line.split()[1] for line in lines if line.startswith("  ") and line.split()[0] in ("ok", "DENY", "--")]
    assert checks == ["identity", "roster", "route", "permission", "branch", "shift", "cap", "rate", "quota"]
    assert any(line.startswith("  DENY shift") and "22:00:00+08:00" in line for line in lines)
    assert "roles courier@BR002; shifts night-cn" in result.stdout
    assert "verdict: deny (shift.outside)" in result.stdout


def test_explain_json_for_tools() -> None:
    result = broker_cli(
        "explain", "--policies", str(REPO / "policies"), "--employee", "e1003", "--json", "--used", "50",
        "--request", "GET /api/branches/BR001/waybills?limit=20", "--at", "2026-12-01T10:00:00+08:00",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    body = json.loads(result.stdout)
    assert body["verdict"] == "deny" and body["reason"] == "quota.exceeded"
    assert body["rule"] == "p3, trainee, waybill, 20, 60, shift (limits.csv:5)"
    assert [s["result"] for s in body["steps"]][-2:] == ["pass", "deny"]


def test_explain_rejects_a_malformed_request() -> None:
    result = broker_cli("explain", "--policies", str(REPO / "policies"), "--employee", "e1", "--request", "nope")
    assert result.returncode == 2 and "must look like 'GET /path?query'" in result.stderr


def test_check_warnings_fail_only_under_strict(tmp_path: Path) -> None:
    policies = tmp_path / "policies"
    shutil.copytree(REPO / "policies", policies)
    roster = policies / "roster.csv"
    roster.write_text(roster.read_text() + "g, e3001, courier, BR004\n")
    shifts = policies / "shifts.csv"
    shifts.write_text(shifts.read_text() + "g2, e3001, day-cn\ng2, e3001, always\n")
    line = len(shifts.read_text().splitlines())
    relaxed = broker_cli("check", "--policies", str(policies), env={"BROKER_DEV_SECRET": SECRET})
    assert relaxed.returncode == 0
    assert f"shifts.csv:{line}: warning: employee e3001's shifts day-cn and always overlap" in relaxed.stderr
    strict = broker_cli("check", "--strict", "--policies", str(policies), env={"BROKER_DEV_SECRET": SECRET})
    assert strict.returncode == 1 and "refused under --strict" in strict.stderr


def test_claims_settings_come_in_pairs(tmp_path: Path) -> None:
    config = tmp_path / "broker.toml"
    config.write_text(f'[identity]\nhs256_secret = "{SECRET}"\nbranch_claim = "branch"\n')
    result = broker_cli("check", "-c", str(config), "--policies", str(REPO / "policies"))
    assert result.returncode == 2
    assert "branch_claim and roles_claim are set together or not at all" in result.stderr


def test_logged_tracebacks_carry_no_local_variables(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("json")
    try:
        hs256_secret = "do-not-log-this-secret"  # a frame's local, as in the token check
        raise OverflowError(f"cannot convert ({len(hs256_secret)})")
    except OverflowError:
        structlog.get_logger("test").exception("decision failed")
    finally:
        structlog.reset_defaults()
    logged = capsys.readouterr().err
    assert "decision failed" in logged and "OverflowError" in logged
    assert "do-not-log-this-secret" not in logged


@pytest.mark.parametrize(
    ("request_line", "branch_says", "route_says"),
    [
        ("GET /api/waybills?limit=5", "checked on every record in the answer", "anywhere in it is counted"),
        ("GET /api/branches/BR001/waybills?limit=5", "BR001 (from the request's path)", "only a 2xx answer passes"),
        ("POST /api/waybills/SF1/scans", "read first from GET /api/waybills/{waybill_no}", "one record"),
    ],
)
def test_explain_says_what_the_door_really_checks_for_each_route_kind(
    request_line: str, branch_says: str, route_says: str
) -> None:
    result = broker_cli(
        "explain", "--policies", str(REPO / "policies"), "--employee", "e1004",
        "--request", request_line, "--at", "2026-12-01T10:00:00+08:00", "--json",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    steps = {step["check"]: step["detail"] for step in json.loads(result.stdout)["steps"]}
    assert branch_says in steps["branch"] and route_says in steps["route"]
    assert "checked per returned record" not in result.stdout


def test_check_names_new_limits_that_would_refuse_everything(tmp_path: Path) -> None:
    config = tmp_path / "broker.toml"
    config.write_text(
        "[server]\nidle_timeout_seconds = 0.0\nmax_headers = 0\n"
        "[upstream]\nrequest_body_timeout_seconds = -1.0\nheld_answers_budget_bytes = 1000\n"
    )
    result = broker_cli("check", "-c", str(config), "--policies", str(REPO / "policies"))
    assert result.returncode == 2
    for problem in (
        "[server] idle_timeout_seconds must be above 0",
        "[server] max_headers must be above 0",
        "[upstream] request_body_timeout_seconds must be above 0",
        "[upstream] held_answers_budget_bytes must be at least max_response_inspect_bytes",
    ):
        assert problem in result.stderr, problem


def test_demo_on_a_port_in_use_says_so_in_one_line(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = broker_cli(
            "demo", "--port", str(free_port()), "--upstream-port", str(port), "--audit", str(tmp_path / "a.log")
        )
    assert result.returncode == 1
    assert "broker demo: cannot listen" in result.stdout and "--upstream-port" in result.stdout
    assert "Traceback" not in result.stdout + result.stderr

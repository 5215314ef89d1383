"""Device certificates on the HTTP door (mutual TLS, `[server] client_ca_file`): a rented
password is not enough without a device registered for its owner. From the client's
side, against `broker run` over real TLS, with certificates made for the test."""

from __future__ import annotations

import asyncio
import datetime
import hashlib
import json
import shutil
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from broker.config import ServerSettings, Settings
from broker.identity.jwt_authenticator import mint_token
from broker.policy.device import fingerprint_text, parse_devices
from tests.certs import self_signed
from tests.harness import REPO_ROOT, SECRET, TUESDAY_10_SHANGHAI, free_port, start_broker_process

LIST_BR001 = "/api/branches/BR001/waybills?limit=5"
LIST_BR003 = "/api/branches/BR003/waybills?limit=5"
VALIDITY = datetime.timedelta(days=800)
"""Wide: the broker runs on the real clock while the suite may run a year ahead of it."""


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


@dataclass(frozen=True)
class Authority:
    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate

    @classmethod
    def new(cls, name: str) -> Authority:
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(_name(name))
            .issuer_name(_name(name))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - VALIDITY)
            .not_valid_after(now + VALIDITY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .sign(key, hashes.SHA256())
        )
        return cls(key, cert)

    def issue(self, directory: Path, device: str) -> tuple[Path, Path, str]:
        """(certificate file, key file, SHA-256 fingerprint) of a client certificate."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(_name(device))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - VALIDITY)
            .not_valid_after(now + VALIDITY)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .sign(self.key, hashes.SHA256())
        )
        cert_file, key_file = directory / f"{device}.crt", directory / f"{device}.key"
        cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_file.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
        return cert_file, key_file, hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


@dataclass
class DeviceBroker:
    port: int
    server_cert: Path
    devices: dict[str, tuple[Path, Path, str]]
    audit: Path

    def context(self, device: str | None) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.server_cert))
        if device is not None:
            cert, key, _ = self.devices[device]
            context.load_cert_chain(cert, key)
        return context

    async def get(self, path: str, employee: str, device: str | None) -> tuple[int, dict[str, object], str]:
        token = mint_token(SECRET, employee, now=TUESDAY_10_SHANGHAI, ttl_seconds=8 * 3600)
        async with (
            aiohttp.ClientSession() as session,
            session.get(
                f"https://127.0.0.1:{self.port}{path}",
                headers={"Authorization": f"Bearer {token}"},
                ssl=self.context(device),
            ) as reply,
        ):
            return reply.status, json.loads(await reply.read()), reply.headers.get("X-Broker-Decision", "")


@pytest.fixture
def device_broker(tmp_path: Path, upstream: TestServer) -> Iterator[DeviceBroker]:
    authority, stranger = Authority.new("Branch devices CA"), Authority.new("Someone else's CA")
    ca_file = tmp_path / "devices-ca.pem"
    ca_file.write_bytes(authority.cert.public_bytes(serialization.Encoding.PEM))
    devices = {name: authority.issue(tmp_path, name) for name in ("scanner-e1001", "pc-br001", "new-scanner")}
    devices["forged"] = stranger.issue(tmp_path, "forged")
    policies = tmp_path / "policies"
    shutil.copytree(REPO_ROOT / "policies", policies)
    (policies / "devices.toml").write_text(
        "[[device]]\n"
        'id = "scanner-e1001"\n'
        f'fingerprint = "{":".join(devices["scanner-e1001"][2][i : i + 2].upper() for i in range(0, 64, 2))}"\n'
        'employees = ["e1001"]\n\n'
        "[[device]]\n"
        'id = "pc-br001"\n'
        f'fingerprint = "{devices["pc-br001"][2]}"\n'
        'branches = ["BR001"]\n'
    )
    server_cert, server_key = self_signed(tmp_path, "broker.test")
    port = free_port()
    audit = tmp_path / "audit.log"
    config = tmp_path / "broker.toml"
    config.write_text(
        f'[server]\nport = {port}\ntls_cert_file = "{server_cert}"\ntls_key_file = "{server_key}"\n'
        f'client_ca_file = "{ca_file}"\ndrain_seconds = 0.1\n'
        f'[upstream]\nurl = "{str(upstream.make_url("")).rstrip("/")}"\n'
        f'[policy]\ndirectory = "{policies}"\nwatch = false\n[audit]\npath = "{audit}"\n'
        f'[clock]\nstart = "2026-12-01T10:00:00+08:00"\n'
    )
    process = start_broker_process(config, {"BROKER_DEV_SECRET": SECRET}, wait_port=port)
    try:
        yield DeviceBroker(port, server_cert, devices, audit)
    finally:
        process.terminate()
        process.wait(timeout=15)


async def test_a_registered_device_carries_its_own_employees_requests(device_broker: DeviceBroker) -> None:
    status, body, _ = await device_broker.get(LIST_BR001, "e1001", "scanner-e1001")
    assert status == 200 and body["items"]
    status, body, _ = await device_broker.get(LIST_BR001, "e1003", "pc-br001")  # registered for the branch
    assert status == 200 and body["items"]


async def test_a_rented_password_without_a_device_gets_nothing(device_broker: DeviceBroker) -> None:
    status, body, decision = await device_broker.get(LIST_BR001, "e1001", None)
    assert status == 403 and body["reason"] == "device.missing" and decision == body["decision_id"]
    assert "items" not in body and "registered devices" in str(body["detail"])


async def test_another_employees_device_does_not_carry_this_login(device_broker: DeviceBroker) -> None:
    # a colleague's personal scanner, same branch
    status, body, _ = await device_broker.get(LIST_BR001, "e1003", "scanner-e1001")
    assert status == 403 and body["reason"] == "device.not_yours" and "items" not in body
    assert "scanner-e1001" in str(body["detail"]) and "devices.toml" in str(body["rule"])
    # another branch's PC
    status, body, _ = await device_broker.get(LIST_BR003, "e2001", "pc-br001")
    assert status == 403 and body["reason"] == "device.not_yours" and "items" not in body


async def test_an_unregistered_device_is_refused_with_its_fingerprint_for_the_help_desk(
    device_broker: DeviceBroker,
) -> None:
    status, body, _ = await device_broker.get(LIST_BR001, "e1001", "new-scanner")
    assert status == 403 and body["reason"] == "device.unknown"
    assert body["device_fingerprint"] == device_broker.devices["new-scanner"][2]


async def test_a_certificate_from_another_authority_never_reaches_a_decision(device_broker: DeviceBroker) -> None:
    with pytest.raises(aiohttp.ClientError):
        await device_broker.get(LIST_BR001, "e1001", "forged")


async def test_the_audit_names_the_device_of_each_decision(device_broker: DeviceBroker) -> None:
    await device_broker.get(LIST_BR001, "e1001", "scanner-e1001")
    await device_broker.get(LIST_BR001, "e1001", "new-scanner")
    await device_broker.get(LIST_BR001, "e1001", None)
    for _ in range(100):  # the audit writer hands its batch over within 50 ms
        events = [json.loads(line) for line in device_broker.audit.read_text().splitlines() if '"decision_id"' in line]
        if len(events) >= 3:
            break
        await asyncio.sleep(0.05)
    devices = [(e["reason"], e["device"]) for e in events]
    unknown = f"unregistered sha256:{device_broker.devices['new-scanner'][2]}"
    assert devices == [("allow", "scanner-e1001"), ("device.unknown", unknown), ("device.missing", None)]


def test_device_file_mistakes_are_named_with_their_line() -> None:
    roster = {"e1001": type("E", (), {"roles_by_branch": {"BR001": frozenset({"courier"})}})()}
    good = "a" * 64
    cases = {
        'fingerprint = "abc"': "SHA-256 fingerprint",
        f'fingerprint = "{good}"\nemployees = ["e9999"]': "not on the roster: e9999",
        f'fingerprint = "{good}"\nbranches = ["BR777"]': "no employee on the roster works in: BR777",
        f'fingerprint = "{good}"': "names no employees and no branches",
        f'fingerprint = "{good}"\nemployees = ["e1001"]\nowner = "x"': "unknown keys owner",
    }
    for body, message in cases.items():
        devices, problems = parse_devices(
            "devices.toml", f'# devices\n[[device]]\nid = "d1"\n{body}\n'.encode(), roster
        )
        assert devices is None and message in str(problems[0]) and "devices.toml:2" in str(problems[0]), body
    twice = f'[[device]]\nid = "a"\nfingerprint = "{good}"\nemployees = ["e1001"]\n' * 2
    devices, problems = parse_devices("devices.toml", twice.encode(), roster)
    assert devices is None and "already registered" in str(problems[0]) and "devices.toml:5" in str(problems[0])
    assert fingerprint_text("SHA256:" + ":".join(["AB"] * 32)) == "ab" * 32


def test_client_certificates_without_tls_is_a_configuration_error() -> None:
    settings = Settings(server=ServerSettings(client_ca_file="/etc/ca.pem"))
    assert any("client_ca_file needs tls_cert_file" in problem for problem in settings.problems())


async def test_a_rented_password_without_a_device_reads_nothing_of_its_owner_either(
    device_broker: DeviceBroker,
) -> None:
    """/-/me tells its owner's roles, branches, shifts and quota left: not to a rented
    password on a machine that is not one of the owner's devices."""
    status, body, _ = await device_broker.get("/-/me", "e1001", None)
    assert status == 403 and body["reason"] == "device.missing" and "shifts" not in body
    status, body, _ = await device_broker.get("/-/me", "e1003", "scanner-e1001")
    assert status == 403 and body["reason"] == "device.not_yours" and "quotas" not in body
    status, body, _ = await device_broker.get("/-/me", "e1001", "new-scanner")
    assert status == 403 and body["reason"] == "device.unknown"
    status, body, _ = await device_broker.get("/-/me", "e1001", "scanner-e1001")
    assert status == 200 and body["employee"] == "e1001" and body["shifts"]

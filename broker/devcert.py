"""`broker dev-cert`: a self-signed certificate and key for a development door.

The PostgreSQL door refuses a token over plain TCP unless the client is on loopback, and
a client on the host reaches a container through Docker's port forwarding (its peer is
the bridge's address, not loopback): so the compose stack's door needs TLS from the
start. This makes the files it uses, once (an existing file is never overwritten).
Clients connect with `sslmode=require`: the certificate is signed by nobody, so it
encrypts the token on the wire but proves nothing; production mounts a real one.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CERT_NAME, KEY_NAME = "door.crt", "door.key"
ALWAYS = ("localhost", "127.0.0.1", "::1")
"""Names every development certificate carries, besides the --host ones."""
FILE_MODE = 0o600


class DevCertExists(FileExistsError):
    """A file the command would write is there already."""


@dataclass(frozen=True, slots=True)
class DevCert:
    cert_file: Path
    key_file: Path
    names: tuple[str, ...]
    not_after: datetime.datetime


def paths(out: Path) -> tuple[Path, Path]:
    return out / CERT_NAME, out / KEY_NAME


def write_dev_cert(out: Path, hosts: list[str], days: int, now: datetime.datetime | None = None) -> DevCert:
    """Write `out`/door.crt and `out`/door.key (both 0600), valid `days` from now for
    localhost, 127.0.0.1, ::1 and `hosts` (DNS names or IP addresses). Refuses
    (DevCertExists) when either file exists; ValueError for a bad name or `days`."""
    if days < 1:
        raise ValueError(f"--days must be at least 1, not {days}")
    names = tuple(dict.fromkeys([*ALWAYS, *hosts]))
    alternative = [_general_name(name) for name in names]
    cert_file, key_file = paths(out)
    for existing in (cert_file, key_file):
        if existing.exists() or existing.is_symlink():
            raise DevCertExists(f"{existing} exists; refusing to overwrite it (delete both files to make new ones)")
    key = ec.generate_private_key(ec.SECP256R1())
    now = now or datetime.datetime.now(datetime.UTC)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0] if hosts else "localhost")])
    not_after = now + datetime.timedelta(days=days)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(not_after)
        .add_extension(x509.SubjectAlternativeName(alternative), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(key, hashes.SHA256())
    )
    out.mkdir(mode=0o700, parents=True, exist_ok=True)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    _write_new(key_file, key_pem)
    try:
        _write_new(cert_file, cert.public_bytes(serialization.Encoding.PEM))
    except BaseException:
        key_file.unlink(missing_ok=True)  # never leave a key without its certificate
        raise
    return DevCert(cert_file, key_file, names, not_after)


def _general_name(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        pass
    if not name or any(c.isspace() or c in "/:@" for c in name) or len(name) > 253:
        raise ValueError(f"--host {name!r} is neither an IP address nor a DNS name")
    return x509.DNSName(name)


def _write_new(path: Path, data: bytes) -> None:
    """Create `path` (never an existing file or a link's target) 0600, and write `data`."""
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, FILE_MODE)
    except FileExistsError as exc:
        raise DevCertExists(f"{path} exists; refusing to overwrite it (delete both files to make new ones)") from exc
    with os.fdopen(descriptor, "wb") as file:
        os.fchmod(file.fileno(), FILE_MODE)  # whatever the umask
        file.write(data)

"""Signed checkpoints: the broker's Ed25519 signature over the head of the audit chain.

A checkpoint is an ordinary chained line (`"event": "audit.checkpoint"`) whose fields say
which line it covers (`covers`: that line's seq, `head`: its hash, which is also the
checkpoint's own `prev`) and when, signed with the key in `[audit] signing_key`. Whoever
can write the file can still rewrite it, but cannot sign a new head: every line up to
the last valid checkpoint is proven complete and unaltered. The writer adds one at a
fixed interval even when no request comes, so cutting lines off the end shows as a
last checkpoint older than that interval.

The signed bytes are a fixed text, not JSON, so that signer and verifier cannot
disagree about serialisation.
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from broker.keyfile import KeyFileError, read_private_key

CHECKPOINT_EVENT = "audit.checkpoint"
_DOMAIN = b"broker audit checkpoint v2\n"
PERIODIC, FINAL, RESUMED, RESUMED_UNCLEAN = "periodic", "final", "resumed", "resumed-unclean"
KINDS = (PERIODIC, FINAL, RESUMED, RESUMED_UNCLEAN)
"""What a checkpoint marks: every `checkpoint_seconds`; the last line a run wrote when it
stopped cleanly; the first line of a run that found the file ending in its predecessor's
final checkpoint; or in anything else (a crash, or a file cut or edited after its last
checkpoint: the lines since that checkpoint can never be proven)."""


class AuditKeyError(ValueError):
    """A key file that cannot be used, with the reason in words."""


def signed_bytes(covers: int, head: str, time: str, kind: str) -> bytes:
    return _DOMAIN + f"{covers}\n{head}\n{time}\n{kind}\n".encode()


@dataclass(frozen=True, slots=True)
class Signer:
    key: Ed25519PrivateKey
    key_id: str
    """The first 16 hex digits of the public key's SHA-256: which key to verify with."""

    def sign(self, covers: int, head: str, time: str, kind: str) -> str:
        return base64.b64encode(self.key.sign(signed_bytes(covers, head, time, kind))).decode()


def key_id(public: Ed25519PublicKey) -> str:
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def load_signer(path: Path) -> Signer:
    try:
        key = read_private_key(path, "the audit signing key")
    except KeyFileError as exc:
        raise AuditKeyError(str(exc)) from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise AuditKeyError(f"{path} holds a {type(key).__name__}; the audit log is signed with Ed25519 keys")
    return Signer(key, key_id(key.public_key()))


def load_public_key(path: Path) -> Ed25519PublicKey:
    try:
        key = serialization.load_pem_public_key(path.read_bytes())
    except OSError as exc:
        raise AuditKeyError(f"cannot read the public key {path}: {exc.strerror}") from exc
    except (ValueError, TypeError) as exc:
        raise AuditKeyError(f"{path} is not a PEM public key ({exc})") from exc
    if not isinstance(key, Ed25519PublicKey):
        raise AuditKeyError(f"{path} holds a {type(key).__name__}, not an Ed25519 public key")
    return key


def signature_holds(public: Ed25519PublicKey, signature: str, covers: int, head: str, time: str, kind: str) -> bool:
    try:
        public.verify(base64.b64decode(signature, validate=True), signed_bytes(covers, head, time, kind))
    except (InvalidSignature, ValueError):
        return False
    return True


def write_key_pair(private_path: Path, public_path: Path) -> str:
    """A new Ed25519 key pair as PEM files (the private one readable by its owner only);
    returns the key id."""
    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    public = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    private_path.touch(mode=0o600, exist_ok=False)
    private_path.write_bytes(private)
    public_path.write_bytes(public)
    return key_id(key.public_key())

"""Reading the broker's own private keys (the audit checkpoint signer, the upstream
assertion signer) from PEM files, with one wording for what can go wrong."""

from __future__ import annotations

from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes


class KeyFileError(ValueError):
    """A key file that cannot be used, with the reason in words."""


def read_private_key(path: Path, what: str = "") -> PrivateKeyTypes:
    """The unencrypted PEM private key in `path`; `what` names it in the error
    ("the audit signing key")."""
    named = f"{what} {path}" if what else str(path)
    try:
        return serialization.load_pem_private_key(path.read_bytes(), password=None)
    except OSError as exc:
        raise KeyFileError(f"cannot read {named}: {exc.strerror}") from exc
    except (ValueError, TypeError) as exc:
        raise KeyFileError(f"{path} is not an unencrypted PEM private key ({exc})") from exc

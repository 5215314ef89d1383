"""A real OpenID provider for the tests: `oidc-provider-mock` (Flask + Authlib's
authorization server) run as a process of its own, with PKCE made mandatory.

The mock accepts a `code_challenge` but registers no PKCE check, so a client that sent
a wrong verifier (or none) would pass. Here Authlib's own `CodeChallenge` extension is
added to its authorization-code grant: the authorization request must carry an S256
challenge, and the code exchange must bring the verifier that hashes to it. Run as
`python -m tests.oidc_provider --port N [--token-max-age S]` (the mock's own options).
"""

from __future__ import annotations

from typing import Any

from authlib.oauth2.rfc6749.errors import InvalidRequestError
from authlib.oauth2.rfc7636 import CodeChallenge
from oidc_provider_mock import _app
from oidc_provider_mock.__main__ import run

_challenges: dict[str, tuple[str, str]] = {}
"""authorization code -> (challenge, method): the mock's code records have no room for them."""


class RequiredS256(CodeChallenge):  # type: ignore[misc]
    SUPPORTED_CODE_CHALLENGE_METHOD = ["S256"]  # noqa: RUF012 - Authlib's class attribute

    def validate_code_challenge(self, grant: Any, redirect_uri: str) -> None:
        if not grant.request.payload.data.get("code_challenge"):
            raise InvalidRequestError("PKCE is required: send an S256 code_challenge")
        super().validate_code_challenge(grant, redirect_uri)

    def get_authorization_code_challenge(self, authorization_code: Any) -> str | None:
        return _challenges.get(authorization_code.code, (None, None))[0]

    def get_authorization_code_challenge_method(self, authorization_code: Any) -> str | None:
        return _challenges.get(authorization_code.code, (None, None))[1]


class OpenIDCodeWithPkce(_app.OpenIDCode):  # type: ignore[misc]
    def __call__(self, grant: Any) -> None:
        super().__call__(grant)
        RequiredS256(required=True)(grant)


_save = _app.AuthorizationCodeGrant.save_authorization_code


def _save_with_challenge(self: Any, code: str, request: Any) -> None:
    data = request.payload.data
    _challenges[code] = (data.get("code_challenge"), data.get("code_challenge_method") or "plain")
    _save(self, code, request)


_app.OpenIDCode = OpenIDCodeWithPkce
_app.AuthorizationCodeGrant.save_authorization_code = _save_with_challenge

if __name__ == "__main__":
    run()

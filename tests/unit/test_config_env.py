"""Every setting from the environment, and the README's table of them kept equal to the code."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from broker.config import Settings
from broker.config_env import EnvError, apply_env, env_table

REPO = Path(__file__).resolve().parents[2]


def test_every_kind_of_setting_parses_from_the_environment(tmp_path: Path) -> None:
    secret = tmp_path / "hs256"
    secret.write_text("a-secret-from-a-mounted-file-of-32-bytes\n")
    settings = apply_env(
        Settings(),
        {
            "BROKER_SERVER_PORT": "9999",
            "BROKER_SERVER_REUSE_PORT": "true",
            "BROKER_SERVER_DRAIN_SECONDS": "0.5",
            "BROKER_UPSTREAM_STRIP_HEADERS": "X-Legacy-User, X-Tenant",
            "BROKER_POLICY_DIRECTORY": "/etc/broker/policies",
            "BROKER_IDENTITY_HS256_SECRET_FILE": str(secret),
            "BROKER_METER_STORE": "redis",
        },
    )
    assert settings.server.port == 9999 and settings.server.reuse_port is True
    assert settings.server.drain_seconds == 0.5
    assert settings.upstream.strip_headers == ("X-Legacy-User", "X-Tenant")
    assert settings.policy.directory == Path("/etc/broker/policies")
    assert settings.identity.hs256_secret == "a-secret-from-a-mounted-file-of-32-bytes"
    assert settings.meter.store == "redis"


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("BROKER_SERVER_PORT", "eighty", "BROKER_SERVER_PORT='eighty' must be a whole number"),
        ("BROKER_SERVER_REUSE_PORT", "maybe", "must be true or false"),
        ("BROKER_AUDIT_CHECKPOINT_SECONDS", "1m", "must be a number"),
        ("BROKER_IDENTITY_HS256_SECRET_FILE", "/nonexistent/secret", "BROKER_IDENTITY_HS256_SECRET_FILE: cannot read"),
    ],
)
def test_a_value_that_does_not_parse_names_its_variable(name: str, value: str, message: str) -> None:
    with pytest.raises(EnvError, match=re.escape(message)):
        apply_env(Settings(), {name: value})


def test_the_readme_table_is_the_code() -> None:
    readme = (REPO / "README.md").read_text()
    found = re.search(r"<!-- settings-table:start -->\n(.*?)<!-- settings-table:end -->", readme, re.S)
    assert found is not None, "the README lost its settings table markers"
    assert found[1] == env_table(Settings()), "regenerate it: python -m broker.config_env"

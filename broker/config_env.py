"""Every setting from the environment: `BROKER_<SECTION>_<KEY>`, and `..._FILE` for secrets.

A sidecar is configured by its orchestrator: a ConfigMap for the TOML file, environment
variables for what differs per deployment, and mounted Secret files for keys and
passwords. Each key of every `[section]` can be set as `BROKER_SECTION_KEY` (upper case)
or read from the file named by `BROKER_SECTION_KEY_FILE` (its content, without the
trailing newline); the environment wins over the file. Values are parsed by the
setting's type, and a value that does not parse names its variable. The table in the
README is `env_table()`'s output, checked by a test, so it cannot drift from the code.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import fields, replace
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")
PREFIX = "BROKER_"


class EnvError(ValueError):
    """An environment variable that does not parse as its setting's type."""


def variable(section: str, key: str) -> str:
    return f"{PREFIX}{section}_{key}".upper()


def apply_env(settings: T, environ: Mapping[str, str] | None = None) -> T:
    """`settings` with every section's keys overridden from the environment."""
    environ = os.environ if environ is None else environ
    sections: dict[str, Any] = {}
    for section in fields(settings):  # type: ignore[arg-type]
        if section.name == "source":
            continue
        current = getattr(settings, section.name)
        values: dict[str, Any] = {}
        for key in fields(current):
            raw = _raw(environ, section.name, key.name)
            if raw is not None:
                values[key.name] = _parse(variable(section.name, key.name), getattr(current, key.name), raw)
        if values:
            sections[section.name] = replace(current, **values)
    return replace(settings, **sections) if sections else settings  # type: ignore[type-var]


def _raw(environ: Mapping[str, str], section: str, key: str) -> str | None:
    name = variable(section, key)
    if name in environ:
        return environ[name]
    path = environ.get(name + "_FILE")
    if path is None:
        return None
    try:
        return Path(path).read_text(encoding="utf-8").rstrip("\n")
    except OSError as exc:
        raise EnvError(f"{name}_FILE: cannot read {path}: {exc.strerror}") from exc


def _parse(name: str, default: Any, raw: str) -> Any:
    if isinstance(default, bool):
        if raw.lower() in ("true", "1", "yes", "on"):
            return True
        if raw.lower() in ("false", "0", "no", "off"):
            return False
        raise EnvError(f"{name}={raw!r} must be true or false")
    if isinstance(default, int):
        try:
            return int(raw)
        except ValueError:
            raise EnvError(f"{name}={raw!r} must be a whole number") from None
    if isinstance(default, float):
        try:
            return float(raw)
        except ValueError:
            raise EnvError(f"{name}={raw!r} must be a number") from None
    if isinstance(default, tuple):
        return tuple(part.strip() for part in raw.split(",") if part.strip())
    if isinstance(default, Path):
        return Path(raw)
    return raw


def env_table(settings: Any) -> str:
    """The README's table of every setting, its variable and its default."""
    rows = ["| setting | environment variable | default |", "| --- | --- | --- |"]
    for section in fields(settings):
        if section.name == "source":
            continue
        current = getattr(settings, section.name)
        for key in fields(current):
            default = getattr(current, key.name)
            shown = ", ".join(default) if isinstance(default, tuple) else str(default)
            shown = f"`{shown}`" if shown else "(empty)"
            rows.append(f"| `[{section.name}] {key.name}` | `{variable(section.name, key.name)}` | {shown} |")
    return "\n".join(rows) + "\n"


if __name__ == "__main__":  # regenerate the README's table: python -m broker.config_env
    from broker.config import Settings

    print(env_table(Settings()), end="")

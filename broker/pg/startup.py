"""What a client may ask for in its StartupMessage, and what is passed on to the database.

The broker pins the settings its SQL analysis depends on (search_path decides which
table a name means; standard_conforming_strings decides how a literal is lexed;
row_security is a second line of defence): a client may not change them at startup.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from broker.pg.setting import PINNED_SETTINGS, timeout_refusal

PASSED_ON = frozenset(
    {"application_name", "datestyle", "timezone", "extra_float_digits", "intervalstyle", "lc_monetary",
     "lc_numeric", "lc_time", "statement_timeout", "lock_timeout", "idle_in_transaction_session_timeout",
     "bytea_output"}
)  # fmt: skip
"""Ordinary session settings a driver may send at startup or SET later; they reach the
database. Nothing else does: planner and memory settings (work_mem, jit, enable_*,
cost constants) are a way to starve the server, and the debug_* and client_min_messages
settings send plans, with statistics over every branch, to the client."""

UTF8_NAMES = frozenset({"utf8", "utf-8", "unicode"})
LANGUAGE_SETTING = "lc_messages"
"""Read by the broker (the language of its refusals), never passed on: on the server it
is a superuser's setting, and the broker's own messages are the ones it would change."""
MAX_LANGUAGE_CHARS = 64


class StartupRefused(Exception):
    """The startup packet asks for something the broker will not do (FATAL at login)."""

    def __init__(self, sqlstate: str, text: str, hint: str = "") -> None:
        super().__init__(text)
        self.sqlstate, self.text, self.hint = sqlstate, text, hint


@dataclass(frozen=True, slots=True)
class StartupRequest:
    user: str
    database: str
    passed_on: dict[str, str]
    language: str = ""
    """`lc_messages` as the client gave it (`zh_CN.UTF-8`), at start-up or in `options`."""


def read_request(parameters: dict[str, str], database: str) -> StartupRequest:
    """The employee id, and the settings to pass on; refuses replication, a different
    database, a non-UTF-8 encoding and `options` touching protected settings."""
    user = parameters.get("user", "")
    if not user:
        raise StartupRefused("28000", "no user name was given", "Connect with user=<your employee id>.")
    if parameters.get("replication", "false").lower() not in ("false", "off", "no", "0"):
        raise StartupRefused("42501", "replication connections are not allowed through the broker")
    asked = parameters.get("database") or user
    if asked != database:
        raise StartupRefused("3D000", f'database "{asked}" is not served here', f"Connect with dbname={database}.")
    encoding = parameters.get("client_encoding", "UTF8")
    if encoding.strip("'\"").lower() not in UTF8_NAMES:  # asyncpg sends 'utf-8', quotes included
        raise StartupRefused("22023", f"client_encoding {encoding} is not supported", "Use client_encoding=UTF8.")
    passed_on = dict(_options(parameters.get("options", "")))
    language = passed_on.pop(LANGUAGE_SETTING, "")
    for name, value in parameters.items():
        if name.lower() in PASSED_ON:
            passed_on[name] = value
        elif name.lower() == LANGUAGE_SETTING:
            language = value
    return StartupRequest(user, database, passed_on, language[:MAX_LANGUAGE_CHARS])


def _options(options: str) -> Iterator[tuple[str, str]]:
    """`-c name=value` / `--name=value` pairs, split the way the server splits them
    (whitespace separates, a backslash escapes the next character)."""
    words = _split_options(options)
    while words:
        word = words.pop(0)
        if word == "-c" and words:
            word = "--" + words.pop(0)
        elif word.startswith("-c"):
            word = "--" + word[2:]
        if not word.startswith("--") or "=" not in word:
            raise StartupRefused("42501", f"the startup option {word!r} is not accepted by the broker")
        name, value = word[2:].split("=", 1)
        name = name.replace("-", "_").lower()
        if name not in PASSED_ON and name != LANGUAGE_SETTING:  # pinned ones (and custom x.y ones) never pass
            hint = PINNED_SETTINGS.get(name, "Leave it out of options, or SET it after connecting.")
            raise StartupRefused("42501", f"the setting {name} cannot be set through the broker", hint)
        if name == "statement_timeout" and (refusal := timeout_refusal(value)) is not None:
            raise StartupRefused("22023", refusal, "Leave it out: every session gets the broker's limit.")
        yield name, value


def _split_options(options: str) -> list[str]:
    words, current, escaped = [], [], False
    for char in options:
        if escaped:
            current.append(char)
            escaped = False
        elif char == "\\":
            escaped = True
        elif char.isspace():
            if current:
                words.append("".join(current))
                current = []
        else:
            current.append(char)
    if current:
        words.append("".join(current))
    return words

"""What a client may ask for in its StartupMessage, and what is passed on to the database.

The broker pins the settings its SQL analysis depends on (search_path decides which
table a name means; standard_conforming_strings decides how a literal is lexed;
row_security is a second line of defence): a client may not change them at startup.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from broker.messages.said import Said, said
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
    """The startup packet asks for something the broker will not do (FATAL at login),
    named as `pg` texts: the door words them in the language the packet asked for."""

    def __init__(self, sqlstate: str, text: Said, hint: Said | None = None) -> None:
        super().__init__(text.key)
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
        raise StartupRefused("28000", said("no_user"), said("connect_as_user"))
    if parameters.get("replication", "false").lower() not in ("false", "off", "no", "0"):
        raise StartupRefused("42501", said("no_replication"))
    asked = parameters.get("database") or user
    if asked != database:
        raise StartupRefused(
            "3D000", said("other_database", database=asked), said("connect_to_database", database=database)
        )
    encoding = parameters.get("client_encoding", "UTF8")
    if encoding.strip("'\"").lower() not in UTF8_NAMES:  # asyncpg sends 'utf-8', quotes included
        raise StartupRefused("22023", said("encoding", encoding=encoding), said("use_utf8"))
    passed_on = dict(_options(parameters.get("options", "")))
    language = passed_on.pop(LANGUAGE_SETTING, "")
    for name, value in parameters.items():
        if name.lower() in PASSED_ON:
            passed_on[name] = value
        elif name.lower() == LANGUAGE_SETTING:
            language = value
    return StartupRequest(user, database, passed_on, language[:MAX_LANGUAGE_CHARS])


def asked_language(parameters: dict[str, str]) -> str:
    """`lc_messages` from a start-up packet as `read_request` reads it, for a refusal
    worded before (or because) that fails: never raises, whatever the options say."""
    language = ""
    words = _split_options(parameters.get("options", ""))
    for before, given in zip(["", *words], words, strict=False):
        word = f"--{given}" if before == "-c" else f"--{given[2:]}" if given.startswith("-c") else given
        name, _, value = word.removeprefix("--").partition("=")
        if word.startswith("--") and name.replace("-", "_").lower() == LANGUAGE_SETTING:
            language = value
    for name, value in parameters.items():
        if name.lower() == LANGUAGE_SETTING:
            language = value
    return language[:MAX_LANGUAGE_CHARS]


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
            raise StartupRefused("42501", said("startup_option", option=repr(word)))
        name, value = word[2:].split("=", 1)
        name = name.replace("-", "_").lower()
        if name not in PASSED_ON and name != LANGUAGE_SETTING:  # pinned ones (and custom x.y ones) never pass
            hint = PINNED_SETTINGS.get(name, said("leave_out_or_set"))
            raise StartupRefused("42501", said("startup_setting", name=name), hint)
        if name == "statement_timeout" and (refusal := timeout_refusal(value)) is not None:
            raise StartupRefused("22023", refusal, said("timeout_leave_out"))
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

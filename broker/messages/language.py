"""Which locale to answer in: HTTP's Accept-Language, PostgreSQL's lc_messages.

Accept-Language is read as RFC 9110 says (ranges with q-values, highest first, q=0
meaning "not this one") and matched by RFC 4647 lookup: `zh-Hans-CN` tries `zh-hans-cn`,
then `zh-hans`, then `zh`. Anything unreadable is skipped, never an error: a header
cannot make a refusal fail, only fall back to the configured default.
"""

from __future__ import annotations

import re
from collections.abc import Container

ENGLISH = "en"
MAX_HEADER_CHARS = 1024
MAX_RANGES = 32
LOCALE_TAG = re.compile(r"[a-z]{2,3}(-[a-z0-9]{1,8})*\Z")
"""A catalogue's locale names: lower-case language tags such as `en`, `zh`, `zh-tw`."""
_QUALITY = re.compile(r"q=(0(\.\d{0,3})?|1(\.0{0,3})?)\Z")


def best_locale(header: str, locales: Container[str], default: str) -> str:
    """The first locale of `locales` the header's ranges accept, by quality; `default`
    when none does (or the header says `*` first)."""
    for language in _ranges(header[:MAX_HEADER_CHARS]):
        if language == "*":
            return default
        found = _lookup(language, locales)
        if found:
            return found
    return default


def locale_of_pg_setting(lc_messages: str, locales: Container[str], default: str) -> str:
    """`zh_CN.UTF-8` (how PostgreSQL clients name a locale) as a catalogue locale."""
    language = lc_messages.split(".", 1)[0].split("@", 1)[0].replace("_", "-").strip().lower()
    return _lookup(language, locales) or default


def _ranges(header: str) -> list[str]:
    weighted: list[tuple[float, int, str]] = []
    for position, item in enumerate(header.split(",")[:MAX_RANGES]):
        language, *params = (part.strip() for part in item.split(";"))
        quality = 1.0
        for param in params:
            found = _QUALITY.match(param.lower().replace(" ", ""))
            if found is None:
                quality = -1.0  # an unreadable weight: skip the range rather than guess
                break
            quality = float(found[1])
        if language and quality > 0:
            weighted.append((-quality, position, language.lower()))
    return [language for _, _, language in sorted(weighted)]


def _lookup(language: str, locales: Container[str]) -> str:
    parts = language.split("-")
    while parts:
        candidate = "-".join(parts)
        if candidate in locales:
            return candidate
        parts.pop()
    return ""

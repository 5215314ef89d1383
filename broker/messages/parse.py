"""`policies/messages.toml`: the help desk's contact, the default locale, and any text
that should read differently from the shipped English and Chinese.

```toml
default_locale = "zh"            # when a request names no language the catalogue has

[contact]                        # shown in every denial; phone, email, url, hours
phone = "400-800-1234"

[en."quota.exceeded"]            # override one reason's title, message and/or explanation
message = "Your {resource} quota is used up until {resets_at}."
explanation = "Quotas reset every shift; ask your supervisor for more."   # /-/problems

[zh.pg]                          # the PostgreSQL door's hints and own refusals, by key
bulk_unbounded = "请在查询中加上 LIMIT n（n 不超过每条语句的上限）。"

[en]                             # a locale's help line, appended to every message
help = "Call the help desk on {contact} and quote {decision_id}."
```

A locale the broker does not ship (say `ja`) must give every reason (title, message,
explanation), both help lines and every `pg` text; a `pg` text may use the placeholders
the shipped English one uses, no others. Every problem names its line; a file with any problem refuses the whole policy
(the last good one stays live), as the other policy files do.
"""

from __future__ import annotations

import difflib
import re
import tomllib
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from broker.core.reason import Reason
from broker.messages.catalogue import Catalogue, Contact, Entry, LocaleTexts
from broker.messages.language import ENGLISH, LOCALE_TAG
from broker.messages.placeholder import HELP_LINE, offered
from broker.messages.template import Template, TemplateError, compile_template
from broker.policy.problem import PolicyProblem
from broker.policy.toml_lines import key_line, line_of

MESSAGES_FILE = "messages.toml"
SHIPPED = ("en", "zh")
DENIALS: tuple[Reason, ...] = tuple(reason for reason in Reason if reason is not Reason.ALLOWED)
MAX_TEXT_CHARS = 2000
CONTACT_KEYS = ("phone", "email", "url", "hours")
SHIPPED_ENGLISH = "broker/messages/shipped/en.toml"
ENTRY_KEYS = ("title", "message", "explanation")
_CONTACT_ONLY = frozenset({"contact"})
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class TextProblem(ValueError):
    """A bad value, with the table and key it sits under (for its line number)."""

    def __init__(self, table: str, key: str, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.table, self.key, self.hint = table, key, hint


@dataclass(slots=True)
class _Draft:
    """A locale's texts while they are read: the shipped ones, then the file's on top."""

    titles: dict[Reason, str]
    messages: dict[Reason, Template]
    help: Template | None
    help_without_decision: Template | None
    explanations: dict[Reason, Template] = field(default_factory=dict)
    pg: dict[str, Template] = field(default_factory=dict)


def parse_messages(name: str, raw: bytes) -> tuple[Catalogue | None, list[PolicyProblem]]:
    """The catalogue `messages.toml` makes of the shipped texts, or every problem with it."""
    try:
        doc = tomllib.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        line = int(m[1]) if (m := re.search(r"line (\d+)", str(exc))) else 1
        return None, [PolicyProblem(name, line, f"not valid TOML: {exc}")]
    drafts = shipped_drafts()
    problems: list[TextProblem] = []
    default = doc.pop("default_locale", ENGLISH)
    contact = _contact(doc.pop("contact", {}), problems)
    reference = pg_fields(drafts[ENGLISH])
    for locale, table in doc.items():
        _read_locale(locale, table, drafts, problems, reference)
    problems += _incomplete(drafts, reference)
    if not isinstance(default, str) or default.lower() not in drafts:
        known = ", ".join(sorted(drafts))
        problems.append(TextProblem("", "default_locale", f"default_locale {default!r} is not a locale here", known))
    if problems:
        return None, [_pinned(name, raw, p) for p in problems]
    locales = {locale: finished(draft) for locale, draft in drafts.items()}
    return Catalogue(locales, str(default).lower(), contact, name), []


def shipped_drafts() -> dict[str, _Draft]:
    drafts: dict[str, _Draft] = {}
    reference: dict[str, frozenset[str]] | None = None  # English (first) defines the pg texts' placeholders
    for locale in SHIPPED:
        text = resources.files("broker.messages").joinpath("shipped", f"{locale}.toml").read_text("utf-8")
        draft = drafts[locale] = _Draft({}, {}, None, None)
        problems: list[TextProblem] = []
        _fill(locale, tomllib.loads(text), draft, problems, reference)
        reference = pg_fields(drafts[ENGLISH])
        if problems:  # a packaging mistake, caught by the unit tests before any release
            raise RuntimeError(f"shipped {locale}.toml: {problems[0]}")
    return drafts


def pg_fields(english: _Draft) -> dict[str, frozenset[str]]:
    """Each `pg` text's key and the placeholders the shipped English gives it."""
    return {key: template.fields for key, template in english.pg.items()}


def _read_locale(
    locale: str,
    table: Any,
    drafts: dict[str, _Draft],
    problems: list[TextProblem],
    reference: dict[str, frozenset[str]],
) -> None:
    if not LOCALE_TAG.match(locale):
        hint = "a lower-case language tag such as en, zh or zh-tw; the other top-level keys are default_locale, contact"
        problems.append(TextProblem(locale, "", f"[{locale}] is not a locale name", hint))
        return
    if not isinstance(table, dict):
        problems.append(TextProblem("", locale, f'{locale} must be a table of reasons ([{locale}."quota.exceeded"])'))
        return
    draft = drafts.setdefault(locale, _Draft({}, {}, None, None))
    _fill(locale, table, draft, problems, reference)


def _fill(
    locale: str,
    table: dict[str, Any],
    draft: _Draft,
    problems: list[TextProblem],
    reference: dict[str, frozenset[str]] | None,
) -> None:
    for key in ("help", "help_without_decision"):
        if key in table:
            allowed = frozenset(HELP_LINE) if key == "help" else frozenset({"contact"})
            found = _template(locale, key, table.pop(key), allowed, problems)
            if found is not None:
                setattr(draft, key, found)
    if "pg" in table:
        _fill_pg(locale, table.pop("pg"), draft, problems, reference)
    for code, entry in table.items():
        reason = _reason(locale, code, problems)
        if reason is None:
            continue
        where = f'{locale}."{code}"'
        if not isinstance(entry, dict):
            problems.append(TextProblem(where, "", f"{where} must be a table with title and/or message"))
            continue
        for key in sorted(set(entry) - set(ENTRY_KEYS)):
            problems.append(TextProblem(where, key, f"{where}: unknown key {key!r}", "known: " + ", ".join(ENTRY_KEYS)))
        if "title" in entry and (title := _title(where, entry["title"], problems)) is not None:
            draft.titles[reason] = title
        if "message" in entry:
            message = _template(where, "message", entry["message"], offered(reason), problems, reason)
            if message is not None:
                draft.messages[reason] = message
        if "explanation" in entry:
            explanation = _template(where, "explanation", entry["explanation"], _CONTACT_ONLY, problems)
            if explanation is not None:
                draft.explanations[reason] = explanation


def _fill_pg(
    locale: str,
    table: Any,
    draft: _Draft,
    problems: list[TextProblem],
    reference: dict[str, frozenset[str]] | None,
) -> None:
    """`[zh.pg]`: the door's sentences by key; placeholders as the shipped English has them
    (`reference`; None while the shipped English itself is read)."""
    where = f"{locale}.pg"
    if not isinstance(table, dict):
        problems.append(TextProblem("", "pg", f'[{where}] must be a table of texts (key = "...")'))
        return
    for key, value in table.items():
        if reference is not None and key not in reference:
            close = difflib.get_close_matches(key, list(reference), n=1)
            hint = f"did you mean {close[0]}?" if close else f"see the keys under [pg] in {SHIPPED_ENGLISH}"
            problems.append(TextProblem(where, key, f"[{where}] unknown text {key!r}", hint))
            continue
        allowed = reference[key] if reference is not None else _any_names(value)
        found = _template(where, key, value, allowed, problems)
        if found is not None:
            draft.pg[key] = found


def _any_names(value: Any) -> frozenset[str]:
    """The placeholders of a shipped English `pg` text: it defines them."""
    try:
        return compile_template(value).fields if isinstance(value, str) else frozenset()
    except TemplateError:
        return frozenset()  # _template reports it


def _reason(locale: str, code: str, problems: list[TextProblem]) -> Reason | None:
    try:
        reason = Reason(code)
    except ValueError:
        close = difflib.get_close_matches(code, [r.value for r in DENIALS], n=1)
        hint = f"did you mean {close[0]}?" if close else "see the reasons in the README's denial table"
        problems.append(TextProblem(f'{locale}."{code}"', "", f"unknown reason {code!r} in [{locale}]", hint))
        return None
    if reason is Reason.ALLOWED:
        problems.append(TextProblem(f'{locale}."{code}"', "", "allow is not a denial; it has no message"))
        return None
    return reason


def _title(where: str, value: Any, problems: list[TextProblem]) -> str | None:
    if not isinstance(value, str) or not value.strip() or len(value) > 200 or _CONTROL.search(value):
        problems.append(TextProblem(where, "title", f"{where}.title must be one line of text (at most 200 characters)"))
        return None
    if "{" in value or "}" in value:
        message = f"{where}.title takes no placeholders (a title is the same for every refusal)"
        problems.append(TextProblem(where, "title", message))
        return None
    return value


def _template(
    where: str,
    key: str,
    value: Any,
    allowed: frozenset[str],
    problems: list[TextProblem],
    reason: Reason | None = None,
) -> Template | None:
    label = f"{where}.{key}"
    if not isinstance(value, str) or not value.strip() or len(value) > MAX_TEXT_CHARS:
        problems.append(TextProblem(where, key, f"{label} must be text (at most {MAX_TEXT_CHARS} characters)"))
        return None
    if _CONTROL.search(value):
        problems.append(TextProblem(where, key, f"{label} holds a control character (a line break?); write one line"))
        return None
    try:
        template = compile_template(value)
    except TemplateError as exc:
        problems.append(TextProblem(where, key, f"{label}: {exc}"))
        return None
    unknown = sorted(template.fields - allowed)
    if unknown:
        names = ", ".join(f"{{{n}}}" for n in unknown)
        about = f"for {reason.value}" if reason is not None else f"in {key}"
        hint = "available: " + ", ".join(f"{{{n}}}" for n in sorted(allowed))
        problems.append(TextProblem(where, key, f"{label}: placeholder {names} is not available {about}", hint))
        return None
    return template


def _contact(table: Any, problems: list[TextProblem]) -> Contact:
    if not isinstance(table, dict):
        problems.append(TextProblem("", "contact", "contact must be a table ([contact] phone = ...)"))
        return Contact()
    values: dict[str, str] = {}
    for key, value in table.items():
        if key not in CONTACT_KEYS:
            known = "known: " + ", ".join(CONTACT_KEYS)
            problems.append(TextProblem("contact", key, f"[contact] unknown key {key!r}", known))
        elif not isinstance(value, str) or not value.strip() or len(value) > 200 or _CONTROL.search(value):
            message = f"[contact] {key} must be one line of text (at most 200 characters)"
            problems.append(TextProblem("contact", key, message))
        elif key == "url" and not value.startswith(("https://", "http://")):
            problems.append(TextProblem("contact", key, "[contact] url must start with https:// or http://"))
        elif key == "email" and "@" not in value:
            problems.append(TextProblem("contact", key, f"[contact] email {value!r} is not an e-mail address"))
        else:
            values[key] = value.strip()
    return Contact(**values)


def _incomplete(drafts: dict[str, _Draft], reference: dict[str, frozenset[str]]) -> list[TextProblem]:
    found = []
    for locale, draft in drafts.items():
        missing = [r.value for r in DENIALS if r not in draft.titles or r not in draft.messages]
        if missing:
            message = f"locale {locale} lacks the title or message of {len(missing)} reason(s): {_some(missing)}"
            found.append(TextProblem(locale, "", message, "a locale the broker does not ship must give every reason"))
        unexplained = [r.value for r in DENIALS if r not in draft.explanations]
        if unexplained:
            message = f"locale {locale} lacks the explanation of {len(unexplained)} reason(s): {_some(unexplained)}"
            hint = f'the /-/problems page\'s text: [{locale}."{unexplained[0]}"] explanation = "..."'
            found.append(TextProblem(locale, "", message, hint))
        unsaid = sorted(set(reference) - set(draft.pg))
        if unsaid:
            message = f"locale {locale} lacks {len(unsaid)} PostgreSQL text(s) of [{locale}.pg]: {_some(unsaid)}"
            hint = f"the door's hints and own refusals; the keys are those under [pg] in {SHIPPED_ENGLISH}"
            found.append(TextProblem(locale, "", message, hint))
        for key in ("help", "help_without_decision"):
            if getattr(draft, key) is None:
                found.append(TextProblem(locale, key, f"locale {locale} has no {key} line"))
    return found


def _some(names: list[str]) -> str:
    return ", ".join(names[:8]) + (f" and {len(names) - 8} more" if len(names) > 8 else "")


def finished(draft: _Draft) -> LocaleTexts:
    assert draft.help is not None and draft.help_without_decision is not None
    entries = {
        reason: Entry(draft.titles[reason], draft.messages[reason], draft.explanations[reason]) for reason in DENIALS
    }
    return LocaleTexts(entries, draft.help, draft.help_without_decision, dict(draft.pg))


def _pinned(name: str, raw: bytes, problem: TextProblem) -> PolicyProblem:
    line = key_line(raw, problem.table, problem.key) if problem.table else 0
    if line <= 1 and problem.table:  # a header written differently: the reason's first mention
        code = problem.table.split(".", 1)[-1]
        line = line_of(raw, code.encode(), line or 1)
    elif not problem.table and problem.key:
        line = line_of(raw, problem.key.encode(), 1)
    return PolicyProblem(name, line, str(problem), problem.hint)

"""The denial messages of every reason in every locale, compiled once per policy load.

A message is the reason's template in the chosen locale followed by the locale's help
line (the help desk's contact, and the decision id to quote), joined into one compiled
template per (reason, locale) when the catalogue is built: a request renders one
template, and one without per-request values is a string made once.

Besides the denials it holds each reason's explanation (the `/-/problems/<code>` page,
made whole once per locale) and the PostgreSQL door's own sentences (`pg` texts: hints,
refusals outside a decision), looked up by key (`Said`) in the session's locale.

Rendering never fails: a (reason, locale) the catalogue lacks falls back to English,
and a reason English lacks to the broker's own sentence (`cause`); a `pg` text to
English, then to its key.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import NamedTuple

from broker.core.decision import Decision
from broker.core.reason import Reason
from broker.messages.language import ENGLISH, best_locale, locale_of_pg_setting
from broker.messages.placeholder import values_of, values_without_decision
from broker.messages.said import Said
from broker.messages.template import Template

MAX_NEGOTIATED = 256
"""Accept-Language headers remembered with their answer (apps send the same few)."""


@dataclass(frozen=True, slots=True)
class Contact:
    """How employees reach the help desk: shown in every denial (`help` member, help line)."""

    phone: str = ""
    email: str = ""
    url: str = ""
    hours: str = ""

    def as_json(self) -> dict[str, str]:
        return {name: value for name in ("phone", "email", "url", "hours") if (value := getattr(self, name))}

    @property
    def text(self) -> str:
        """The contact as one line of text: what the help line's `{contact}` shows."""
        reach = ", ".join(v for v in (self.phone, self.email, self.url) if v)
        return f"{reach} ({self.hours})" if reach and self.hours else reach


@dataclass(frozen=True, slots=True)
class Entry:
    title: str
    message: Template
    explanation: Template
    """What the reason means and what the employee can do: the `/-/problems` page."""


@dataclass(frozen=True, slots=True)
class LocaleTexts:
    """One locale's titles and messages, and its help lines."""

    entries: dict[Reason, Entry]
    help: Template
    """Appended to a decision's message: may use {contact} and {decision_id}."""
    help_without_decision: Template
    """Appended to a refusal outside any decision: may use {contact}."""
    pg: dict[str, Template] = field(default_factory=dict)
    """The PostgreSQL door's own sentences (hints, refusals outside a decision), by key."""


class Explained(NamedTuple):
    """A reason's `/-/problems` page in one locale: made once per catalogue."""

    title: str
    explanation: str
    help: str
    """The help line with the contact in it ("" without a contact)."""
    locale: str


class Spoken(NamedTuple):
    """A denial in words: what the problem body (or the ErrorResponse) shows. (A tuple:
    one is made per refusal.)"""

    title: str
    detail: str
    locale: str


@dataclass(slots=True)
class _Phrase:
    title: str
    with_decision: Template
    without_decision: Template


@dataclass
class Catalogue:
    locales: dict[str, LocaleTexts]
    default_locale: str = ENGLISH
    contact: Contact = field(default_factory=Contact)
    file: str = ""
    """The policy file it was read from ("" for the shipped texts alone)."""
    help: dict[str, str] | None = field(default=None, init=False)
    """The body's `help` member: the contact's parts (None when none is configured)."""
    _phrases: dict[tuple[Reason, str], _Phrase] = field(default_factory=dict, repr=False)
    _negotiated: OrderedDict[str, str] = field(default_factory=OrderedDict, repr=False)
    _explained: dict[tuple[Reason, str], Explained] = field(default_factory=dict, repr=False)
    _pg: dict[tuple[str, str], Template] = field(default_factory=dict, repr=False)
    _pg_constant: dict[tuple[str, str], str] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self.help = self.contact.as_json() or None
        contact = {"contact": self.contact.text}
        for locale, texts in self.locales.items():
            tail = texts.help.fill(contact) if self.contact.text else Template(())
            bare_tail = texts.help_without_decision.fill(contact) if self.contact.text else Template(())
            help_line = bare_tail.constant or ""
            for reason, entry in texts.entries.items():
                message = entry.message.fill(contact)
                self._phrases[(reason, locale)] = _Phrase(
                    entry.title, _joined(message, tail), _joined(message, bare_tail)
                )
                explanation = entry.explanation.fill(contact).constant or ""
                self._explained[(reason, locale)] = Explained(entry.title, explanation, help_line, locale)
            for key, template in texts.pg.items():
                self._pg[(key, locale)] = template
                if template.constant is not None:
                    self._pg_constant[(key, locale)] = template.constant

    def negotiate(self, accept_language: str | None) -> str:
        """The locale to answer a request in (`Accept-Language`, else the default)."""
        if not accept_language:
            return self.default_locale
        found = self._negotiated.get(accept_language)
        if found is None:
            found = best_locale(accept_language, self.locales, self.default_locale)
            self._negotiated[accept_language] = found
            if len(self._negotiated) > MAX_NEGOTIATED:
                self._negotiated.popitem(last=False)
        return found

    def locale_for_pg(self, lc_messages: str) -> str:
        """The locale for a PostgreSQL session that asked for `lc_messages` at start-up."""
        return locale_of_pg_setting(lc_messages, self.locales, self.default_locale)

    def speak(self, decision: Decision, locale: str) -> Spoken:
        """The refusal `decision` in `locale` (falling back to English, then to the cause)."""
        phrase, locale = self._phrase(decision.reason, locale)
        if phrase is None:
            return Spoken("", decision.detail, locale)
        return Spoken(phrase.title, phrase.with_decision.render(values_of(decision)), locale)

    def speak_bare(self, reason: Reason, locale: str, cause: str, extra: dict[str, str] | None = None) -> Spoken:
        """A refusal outside any decision, in `locale`."""
        phrase, locale = self._phrase(reason, locale)
        if phrase is None:
            return Spoken("", cause, locale)
        return Spoken(phrase.title, phrase.without_decision.render(values_without_decision(cause, extra)), locale)

    def explain(self, reason: Reason, locale: str) -> Explained:
        """The `/-/problems/<reason>` page's texts in `locale` (else English)."""
        found = self._explained.get((reason, locale)) or self._explained.get((reason, ENGLISH))
        return found or Explained("", "", "", ENGLISH)

    def words(self, said: Said, locale: str) -> str:
        """The door's sentence `said` in `locale` (else English, else its key: never an error)."""
        constant = self._pg_constant.get((said.key, locale))
        if constant is not None:
            return constant
        template = self._pg.get((said.key, locale))
        if template is None:
            return self.words(said, ENGLISH) if locale != ENGLISH else said.key
        values = dict(said.values)
        return template.render(lambda name: values.get(name) or "-")

    def _phrase(self, reason: Reason, locale: str) -> tuple[_Phrase | None, str]:
        phrase = self._phrases.get((reason, locale))
        if phrase is None and locale != ENGLISH:
            return self._phrase(reason, ENGLISH)
        return phrase, locale


def _joined(message: Template, tail: Template) -> Template:
    if not tail.parts:
        return message
    return message + Template(((" ", ""),)) + tail

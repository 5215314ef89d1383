"""A message template compiled once: literal text with named placeholders between.

Templates use Python's `str.format` braces (`{remaining}`, `{{` for a literal brace),
read with `string.Formatter().parse`, but are never passed to `str.format`: only plain
names are accepted (no `{0}`, `{a.b}`, `{a[0]}`, `{a!r}`, `{a:>9}`), so a template an
operator wrote can reach nothing but the values the broker hands it.
"""

from __future__ import annotations

import string
from collections.abc import Callable, Mapping
from dataclasses import dataclass

_FORMATTER = string.Formatter()


class TemplateError(ValueError):
    """The text is not a template the broker accepts; the message says why."""


@dataclass(frozen=True, slots=True)
class Template:
    parts: tuple[tuple[str, str], ...]
    """(literal text, placeholder name or "") pairs, in order."""

    @property
    def fields(self) -> frozenset[str]:
        return frozenset(name for _, name in self.parts if name)

    @property
    def constant(self) -> str | None:
        """The whole text when the template has no placeholder left (rendered once)."""
        return None if self.fields else "".join(text for text, _ in self.parts)

    def render(self, value: Callable[[str], str]) -> str:
        return "".join(text + value(name) if name else text for text, name in self.parts)

    def fill(self, known: Mapping[str, str]) -> Template:
        """The template with the placeholders in `known` replaced by their text (the
        contact, fixed for a catalogue's life), the others left for each request."""
        parts: list[tuple[str, str]] = []
        pending = ""
        for text, name in self.parts:
            pending += text
            if name and name not in known:
                parts.append((pending, name))
                pending = ""
            elif name:
                pending += known[name]
        if pending:
            parts.append((pending, ""))
        return Template(tuple(parts))

    def __add__(self, other: Template) -> Template:
        return Template(self.parts + other.parts).fill({})


def compile_template(text: str) -> Template:
    """Compile `text`, or TemplateError naming what is wrong with it."""
    parts: list[tuple[str, str]] = []
    try:
        pieces = list(_FORMATTER.parse(text))
    except ValueError as exc:  # a lone { or }
        raise TemplateError(f"{exc} (write {{{{ or }}}} for a literal brace)") from None
    for literal, name, spec, conversion in pieces:
        if name is None:
            parts.append((literal, ""))
            continue
        if not name.isidentifier():
            raise TemplateError(f"placeholder {{{name}}} is not a plain name such as {{remaining}}")
        if spec or conversion:
            raise TemplateError(f"placeholder {{{name}}} may not carry a format (!{conversion or ''}:{spec or ''})")
        parts.append((literal, name))
    return Template(tuple(parts)).fill({})

"""A message template compiled once: literal text with named placeholders between.

Templates use Python's `str.format` braces (`{remaining}`, `{{` for a literal brace),
read with `string.Formatter().parse`, but are never passed to `str.format`: only plain
names are accepted (no `{0}`, `{a.b}`, `{a[0]}`, `{a!r}`, `{a:>9}`), so a template an
operator wrote can reach nothing but the values the broker hands it.
"""

from __future__ import annotations

import string
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

_FORMATTER = string.Formatter()


class TemplateError(ValueError):
    """The text is not a template the broker accepts; the message says why."""


@dataclass(frozen=True, slots=True)
class Template:
    parts: tuple[tuple[str, str], ...]
    """(literal text, placeholder name or "") pairs, in order."""
    pattern: str = field(init=False, compare=False, repr=False)
    """The parts as a `str.format` pattern the broker wrote itself (literal braces
    doubled, names checked plain): rendered by `format_map` in C."""
    names: tuple[str, ...] = field(init=False, compare=False, repr=False)
    """Each placeholder once, in order: the values a render looks up."""

    def __post_init__(self) -> None:
        text = "".join(_escaped(t) + (f"{{{name}}}" if name else "") for t, name in self.parts)
        object.__setattr__(self, "pattern", text)
        object.__setattr__(self, "names", tuple(dict.fromkeys(name for _, name in self.parts if name)))

    @property
    def fields(self) -> frozenset[str]:
        return frozenset(name for _, name in self.parts if name)

    @property
    def constant(self) -> str | None:
        """The whole text when the template has no placeholder left (rendered once)."""
        return None if self.fields else "".join(text for text, _ in self.parts)

    def render(self, value: Callable[[str], str]) -> str:
        return self.pattern.format_map({name: value(name) for name in self.names})

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


def _escaped(literal: str) -> str:
    return literal.replace("{", "{{").replace("}", "}}")


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

"""The texts that ship with the broker, and the catalogue a policy speaks with."""

from __future__ import annotations

from functools import cache
from typing import Protocol

from broker.messages.catalogue import Catalogue
from broker.messages.language import ENGLISH
from broker.messages.parse import finished, shipped_drafts
from broker.messages.said import Said


class WithMessages(Protocol):
    @property
    def messages(self) -> Catalogue: ...


@cache
def shipped_catalogue() -> Catalogue:
    """The English and Chinese texts that ship with the broker, no contact: what a policy
    without messages.toml speaks (a unit test proves them complete and valid)."""
    return Catalogue({locale: finished(draft) for locale, draft in shipped_drafts().items()})


def catalogue_of(snapshot: WithMessages | None) -> Catalogue:
    """The live policy's messages; the shipped ones while no policy is loaded."""
    return snapshot.messages if snapshot is not None else shipped_catalogue()


def english(said: Said | None) -> str:
    """A door's sentence in the shipped English: what logs, the audit and tests read."""
    return shipped_catalogue().words(said, ENGLISH) if said is not None else ""

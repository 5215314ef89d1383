"""The texts that ship with the broker, and the catalogue a policy speaks with."""

from __future__ import annotations

from functools import cache
from typing import Protocol

from broker.messages.catalogue import Catalogue
from broker.messages.parse import finished, shipped_drafts


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

"""`/-/problems/<code>`: what a denial means, for the employee who meets it.

The page is worded from the policy's message catalogue (each reason's title and
explanation, `policies/messages.toml` over the shipped English and Chinese) in the
language the request's Accept-Language picks, as the denial itself was; the texts are
made once per catalogue, so a page costs a negotiation (cached) and a lookup.
"""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from broker.core.reason import Reason
from broker.http.problem import STATUS_AND_TITLE, bare_problem, problem_type
from broker.messages.catalogue import Catalogue


def problem_page(code: str, catalogue: Catalogue, accept_language: str | None) -> web.Response:
    """The explanation of reason `code` in the caller's language; 404 (worded the same
    way) for a code that is no reason."""
    try:
        reason = Reason(code)
    except ValueError:
        reason = Reason.ALLOWED
    if reason is Reason.ALLOWED:
        detail = f"No such problem type: {code[:80]!r}."
        return bare_problem(Reason.ROUTE_UNKNOWN, 404, detail, catalogue=catalogue, accept_language=accept_language)
    status, _ = STATUS_AND_TITLE.get(reason, (403, "Denied"))
    explained = catalogue.explain(reason, catalogue.negotiate(accept_language))
    body: dict[str, Any] = {
        "type": problem_type(reason),
        "reason": reason.value,
        "status": status,
        "title": explained.title,
        "explanation": explained.explanation,
    }
    if catalogue.help is not None:
        body["help"] = catalogue.help
        body["help_text"] = explained.help
    headers = {"Content-Language": explained.locale, "Vary": "Accept-Language"}
    return web.Response(body=orjson.dumps(body), content_type="application/json", headers=headers)

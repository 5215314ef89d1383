"""The `broker helpdesk` side of `/-/helpdesk/`: one call to one broker, and what each
way of failing means to the person at the keyboard (a message and an exit code).

Which brokers to ask: a quota lives where the counters live. With `[meter] store =
"redis"` every replica shares them, so one replica's answer (`"shared": true`) ends
the action and the others are only tried when that one cannot be reached. With the
in-memory store each replica has counters of its own, so the action goes to every
broker named, and one that cannot be reached leaves the action partly done (said, and
a non-zero exit).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import aiohttp

EXIT_USAGE = 2
EXIT_UNREACHABLE = 3
EXIT_CREDENTIALS = 4
EXIT_UNKNOWN_EMPLOYEE = 5
EXIT_REFUSED = 6
TIMEOUT_SECONDS = 10.0
"""How long one call may take, connecting included."""


class HelpdeskFailure(Exception):
    """The action did not happen at one broker; `exit_code` says how (see EXIT_*)."""

    exit_code = EXIT_REFUSED


class BrokerUnreachable(HelpdeskFailure):
    exit_code = EXIT_UNREACHABLE


class CredentialsRefused(HelpdeskFailure):
    exit_code = EXIT_CREDENTIALS


class EmployeeUnknown(HelpdeskFailure):
    exit_code = EXIT_UNKNOWN_EMPLOYEE


class ActionRefused(HelpdeskFailure):
    exit_code = EXIT_REFUSED


@dataclass(frozen=True, slots=True)
class Reached:
    broker: str
    answer: dict[str, Any]


async def call(broker: str, method: str, path: str, credential: str, body: dict[str, Any] | None = None) -> Reached:
    """One call to the help-desk API of the broker at `broker` (its admin listener)."""
    headers = {"Authorization": f"Bearer {credential}", "Accept": "application/json"}
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=TIMEOUT_SECONDS)) as session,
            session.request(method, broker.rstrip("/") + path, json=body, headers=headers) as reply,
        ):
            status, text = reply.status, await reply.text()
            json_answer = reply.content_type == "application/json"
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        why = str(exc) or type(exc).__name__
        raise BrokerUnreachable(f"cannot reach the broker's admin listener at {broker}: {why}") from None
    answer = _json(text) if json_answer else None
    if status == 200 and answer is not None:
        return Reached(broker, answer)
    raise _failure(broker, status, answer)


def _json(text: str) -> dict[str, Any] | None:
    try:
        found = json.loads(text)
    except ValueError:
        return None
    return found if isinstance(found, dict) else None


def _failure(broker: str, status: int, answer: dict[str, Any] | None) -> HelpdeskFailure:
    detail = str(answer.get("detail", "")) if answer else ""
    code = str(answer.get("error", "")) if answer else ""
    if answer is None or not code:  # something else answers there (the proxy port, another service)
        return BrokerUnreachable(
            f"{broker} answers ({status}), but serves no help-desk API: give the broker's admin listener "
            "([server] admin_port, with [console] enabled = true)"
        )
    if code == "helpdesk.credentials":
        return CredentialsRefused(f"{broker} refused the credential: {detail}")
    if code == "helpdesk.unknown_employee":
        return EmployeeUnknown(f"{broker}: {detail}")
    if code == "helpdesk.partly_changed":
        changes = [change for change in answer.get("changes", []) if isinstance(change, dict)]
        done = ", ".join(str(change.get("resource")) for change in changes)
        return ActionRefused(f"{broker}: {detail}; already reset there: {done or 'nothing'}")
    return ActionRefused(f"{broker} refused: {detail}")

"""`/-/helpdesk/`: the help desk's actions over HTTP, for `broker helpdesk`.

Served on the admin listener beside the security console, never on the proxy port, and
let in by the console's own credentials: the console token or an admin's JWT whose
subject holds one of `[console] admin_roles` (checked again on every call, so an admin
taken off the roster or frozen cannot act). The credential travels as a bearer token
(`Authorization: Bearer ...`), never a cookie, so no other site's page can make a
browser act here. Failed credentials count against the console's per-address lock-out.

Every call, refused or done, is written to the audit trail through the console's
recorder (`"event": "console"`): the operator, their address, the employee, the action,
the values before and after, and the reason the operator gave.

    GET  /-/helpdesk/employees/{employee}/sessions
    POST /-/helpdesk/employees/{employee}/quota/reset   {"reason": ..., "resource": ...?}
    POST /-/helpdesk/employees/{employee}/quota/raise   {"reason": ..., "by": n, "seconds": s, "resource": ...?}
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiohttp import web

from broker.console.login import LoginRefused, Operator
from broker.console.routes import ConsoleRoutes
from broker.helpdesk.activity import EmployeeActivity
from broker.helpdesk.quota import NoSuchQuota, OwnQuota, PartlyChanged, QuotaDesk, UnknownEmployee
from broker.http.bearer import bearer_token
from broker.meter.store import StoreUnavailable

PREFIX = "/-/helpdesk/employees/{employee}"
SESSIONS, RESET, RAISE = "helpdesk.sessions", "helpdesk.quota_reset", "helpdesk.quota_raise"
"""The actions, as the audit names them."""
MAX_REASON_CHARS = 500
MAX_BODY_BYTES = 4096

Action = Callable[[web.Request, Operator, str], Awaitable[web.Response]]


class HelpdeskRoutes:
    def __init__(self, console: ConsoleRoutes, desk: QuotaDesk, activity: EmployeeActivity, shared: bool) -> None:
        self._console = console
        self._desk = desk
        self._activity = activity
        self._shared = shared
        """Whether the counters are shared by every replica (Redis): told in every answer,
        so the CLI knows whether one replica's action holds on all."""

    def register(self, app: web.Application) -> None:
        app.router.add_get(f"{PREFIX}/sessions", self._signed(SESSIONS, self.sessions))
        app.router.add_post(f"{PREFIX}/quota/reset", self._signed(RESET, self.reset))
        app.router.add_post(f"{PREFIX}/quota/raise", self._signed(RAISE, self.raise_quota))

    def _signed(self, name: str, action: Action) -> Callable[[web.Request], Awaitable[web.Response]]:
        """`action` for a caller the console would let in; every refusal is audited."""

        async def guarded(request: web.Request) -> web.Response:
            client = request.remote or ""
            employee = request.match_info["employee"]
            try:
                operator = await self._operator(request)
            except LoginRefused as exc:
                self._console.record(
                    "login_refused", Operator("", ""), client, employee=employee, detail=str(exc), attempted=name
                )
                return _problem(401, "helpdesk.credentials", str(exc))
            try:
                if name != SESSIONS and operator.name == employee:
                    raise OwnQuota(f"{operator.name} may not change their own quotas: ask another operator")
                return await action(request, operator, employee)
            except PartlyChanged as exc:
                found = [change.as_json() for change in exc.changes]
                detail = str(exc)
                partial = f"{name}_partial"
                self._console.record(partial, operator, client, employee=employee, detail=detail, changes=found)
                body = {"status": 503, "error": "helpdesk.partly_changed", "detail": detail, "changes": found}
                return web.json_response(body, status=503, dumps=_dumps, headers=NO_STORE)
            except (UnknownEmployee, NoSuchQuota, StoreUnavailable, OwnQuota, ValueError) as exc:
                status, code, detail = _refusal(exc)
                self._console.record(f"{name}_refused", operator, client, employee=employee, detail=detail)
                return _problem(status, code, detail)

        return guarded

    async def _operator(self, request: web.Request) -> Operator:
        credential = bearer_token(request.headers.getall("Authorization", []))
        if not credential:
            raise LoginRefused("Send the console token or an admin's token as 'Authorization: Bearer ...'.")
        operator = await self._console.login.sign_in(credential, request.remote or "")
        if problem := await self._console.refusal(operator):
            raise LoginRefused(problem)
        return operator

    async def sessions(self, request: web.Request, operator: Operator, employee: str) -> web.Response:
        view = await self._activity.of(employee)
        self._console.record(SESSIONS, operator, request.remote or "", employee=employee)
        return self._answer(view)

    async def reset(self, request: web.Request, operator: Operator, employee: str) -> web.Response:
        asked = await _body(request)
        changes = await self._desk.reset(employee, asked.get("resource"))
        found = [change.as_json() for change in changes]
        client = request.remote or ""
        self._console.record(RESET, operator, client, employee=employee, reason=asked["reason"], changes=found)
        return self._answer({"employee": employee, "action": "quota_reset", "changes": found})

    async def raise_quota(self, request: web.Request, operator: Operator, employee: str) -> web.Response:
        asked = await _body(request, "by", "seconds")
        change = await self._desk.raise_quota(employee, asked.get("resource"), asked["by"], asked["seconds"])
        found = change.as_json()
        client = request.remote or ""
        self._console.record(RAISE, operator, client, employee=employee, reason=asked["reason"], changes=[found])
        return self._answer({"employee": employee, "action": "quota_raise", "changes": [found]})

    def _answer(self, body: dict[str, Any]) -> web.Response:
        answer = {**body, "shared": self._shared}
        return web.Response(body=orjson.dumps(answer), content_type="application/json", headers=NO_STORE)


NO_STORE = {"Cache-Control": "no-store"}


async def _body(request: web.Request, *numbers: str) -> dict[str, Any]:
    """The action's JSON body with a reason (and the `numbers` it needs), or ValueError."""
    if (request.content_length or 0) > MAX_BODY_BYTES:
        raise ValueError(f"the body is over {MAX_BODY_BYTES} bytes")
    try:
        raw = await request.read()  # whole (a chunked one too), within the admin app's client_max_size
    except web.HTTPRequestEntityTooLarge:
        raise ValueError(f"the body is over {MAX_BODY_BYTES} bytes") from None
    if len(raw) > MAX_BODY_BYTES:
        raise ValueError(f"the body is over {MAX_BODY_BYTES} bytes")
    try:
        asked = orjson.loads(raw)
    except orjson.JSONDecodeError:
        asked = None
    if not isinstance(asked, dict):
        raise ValueError("the body must be a JSON object")
    reason = asked.get("reason")
    if not isinstance(reason, str) or not reason.strip() or len(reason) > MAX_REASON_CHARS or not reason.isprintable():
        raise ValueError(f"give a reason: one line of text, 1 to {MAX_REASON_CHARS} characters")
    resource = asked.get("resource")
    if resource is not None and (not isinstance(resource, str) or not resource):
        raise ValueError("resource must be a resource name")
    for name in numbers:
        value = asked.get(name)
        if not isinstance(value, int) or isinstance(value, bool):
            raise ValueError(f"{name} must be a whole number")
    return {**asked, "reason": reason.strip()}


def _refusal(exc: Exception) -> tuple[int, str, str]:
    """The status, error code and detail a refused action is answered with."""
    if isinstance(exc, UnknownEmployee):
        return 404, "helpdesk.unknown_employee", str(exc)
    if isinstance(exc, NoSuchQuota):
        return 400, "helpdesk.no_such_quota", str(exc)
    if isinstance(exc, OwnQuota):
        return 403, "helpdesk.own_quota", str(exc)
    if isinstance(exc, StoreUnavailable):
        return 503, "helpdesk.store_unavailable", f"the counter store did not answer, so nothing changed ({exc})"
    return 400, "helpdesk.bad_request", str(exc)


def _dumps(value: Any) -> str:
    return orjson.dumps(value).decode()


def _problem(status: int, code: str, detail: str) -> web.Response:
    body = {"status": status, "error": code, "detail": detail}
    return web.Response(status=status, body=orjson.dumps(body), content_type="application/json", headers=NO_STORE)

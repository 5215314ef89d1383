"""The per-request path: classify, decide, forward, count, settle, audit."""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Mapping
from typing import Protocol

import structlog
from aiohttp import web
from multidict import CIMultiDict

from broker.admin.metrics import Metrics
from broker.audit.event import decision_event
from broker.audit.log import AuditSink
from broker.core.access import Access, Refusal
from broker.core.decision import Decision, Verdict
from broker.core.guard import Guard
from broker.core.reason import Reason
from broker.core.shadow import Shadow
from broker.http.bearer import bearer_token
from broker.http.budget import AnswerBudget
from broker.http.classify import Refused, branch_from_body, classify, owner_target
from broker.http.head import UNSENT, WRITTEN, write_held_answer
from broker.http.inspect import holds_records, inspect_records, names_a_branch_field, record_branches
from broker.http.oidc_routes import login_redirect, made_elsewhere, wants_a_page
from broker.http.pool import Answer
from broker.http.problem import DECISION_HEADER, limit_headers, problem_response
from broker.http.redact import redacted_target
from broker.http.request_body import read_body, unframeable
from broker.http.upstream import Upstream, answer_headers
from broker.http.upstream_errors import UpstreamError
from broker.http.written import WrittenResponse
from broker.messages.shipped import catalogue_of
from broker.policy.holder import PolicyHolder
from broker.policy.route import Route
from broker.policy.snapshot import PolicySnapshot

_NO_FIELDS: dict[str, object] = {}
_SIGN_IN_AGAIN = frozenset({Reason.IDENTITY_MISSING, Reason.IDENTITY_NO_SESSION})
log = structlog.get_logger("broker.http")


def _too_large(limit: int) -> str:
    return f"The answer is larger than the {limit} bytes the broker can check; ask for fewer records."


_MEDIA = ("image/", "audio/", "video/", "font/")


def _answer_kind(answer: Answer) -> str:
    """How an answer on a route mapped as carrying no records can be checked for records
    anyway: "json" (any *json* type, `text/json` and vendor types included, or no label
    at all: the label is the upstream's, not ours), "media" (images, sound, video, fonts:
    passed on as they come) or "text" (everything else, JavaScript, octet-stream and
    msgpack included: held and searched for a branch field's name)."""
    kind = answer.headers.get("Content-Type", "").split(";", 1)[0].strip().lower()
    if not kind or "json" in kind:
        return "json"
    return "media" if kind.startswith(_MEDIA) else "text"


def device_fingerprint(request: web.Request) -> str:
    """SHA-256 (hex) of the certificate the client presented on this TLS connection, ""
    when it presented none. The TLS layer has already checked that the configured
    authority signed it; devices.toml says whose it is."""
    transport = request.transport
    ssl_object = transport.get_extra_info("ssl_object") if transport is not None else None
    der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
    return hashlib.sha256(der).hexdigest() if der else ""


class Lifecycle(Protocol):
    draining: bool
    """Set once the broker is shutting down: every answer then ends its connection."""


def _close_after(response: web.StreamResponse) -> None:
    """While draining, every answer ends its connection (aiohttp then says
    `Connection: close`): a kept-alive client opens a new one, to another replica once
    readiness is off, instead of sending its next request down a connection about to be
    closed under it."""
    response.force_close()


class Outcome:
    """What the door did after the decision: for the audit event and metrics. (Made for
    every request: a plain class, which a compiled build makes several times faster than
    a dataclass.)"""

    __slots__ = ("charged", "headers", "returned", "status")

    def __init__(self, status: int, returned: int = 0, headers: Mapping[str, str] | None = None) -> None:
        self.status = status
        self.returned = returned
        self.charged: int | None = None
        """Records charged for the answer when that differs from `returned` (an answer
        the client hung up before receiving); None: as returned."""
        self.headers = headers
        """The request's headers, read only by a refusal made after the decision (to word it
        in the language the request asked for): an allowed request looks nothing up."""


class ProxyHandler:
    def __init__(
        self,
        guard: Guard,
        policy: PolicyHolder,
        upstream: Upstream,
        metrics: Metrics,
        audit: AuditSink,
        shadow: Shadow | None = None,
        *,
        devices_required: bool = False,
        session_cookie: str = "",
        session_origin: str = "",
        lifecycle: Lifecycle | None = None,
    ) -> None:
        self._guard = guard
        self._lifecycle = lifecycle
        self._session_cookie = session_cookie
        """The browser sign-in cookie's name ("" without [oidc]): read only from requests
        that carry no Authorization header, so a token's request costs nothing more."""
        self._session_origin = session_origin
        """Where browsers reach the broker (`[oidc] public_url`'s origin): a session
        request another site made is refused (`made_elsewhere`)."""
        self._devices_required = devices_required
        self._policy = policy
        self._upstream = upstream
        self._metrics = metrics
        self._audit = audit
        self._shadow = shadow
        self._max_body = upstream.settings.max_request_body_bytes
        self._body_timeout = upstream.settings.request_body_timeout_seconds
        self._budget = AnswerBudget(upstream.settings.held_answers_budget_bytes)
        self._running_loop: asyncio.AbstractEventLoop | None = None

    @property
    def _loop(self) -> asyncio.AbstractEventLoop:
        """The running loop, looked up once: `asyncio.get_running_loop()` makes a getpid()
        system call each time (CPython checks for a fork)."""
        loop = self._running_loop
        if loop is None:
            loop = self._running_loop = asyncio.get_running_loop()
        return loop

    @property
    def _draining(self) -> bool:
        return self._lifecycle is not None and self._lifecycle.draining

    async def handle(self, request: web.Request) -> web.StreamResponse:
        started = time.perf_counter()
        snapshot = self._policy.current  # one revision for the route map and the rules
        access, route, body = await self._classify(request, snapshot)
        if self._devices_required:  # the connection's certificate, whatever the request said
            access = access.with_device(device_fingerprint(request))
        decision = await self._guard.decide(access, snapshot, in_flight=True)
        shadow = await self._shadow.decide(access) if self._shadow else None
        outcome = Outcome(0, headers=request.headers)
        try:
            if not decision.allowed or route is None:
                response: web.StreamResponse = self._denial(request, decision)
                outcome.status = response.status
            else:
                response = await self._forward(request, decision, route, body, outcome)
            if not response.prepared and self._draining:
                _close_after(response)
            return response
        finally:
            self._guard.finish(decision)
            if self._shadow is None:
                # Recorded right after aiohttp has written the answer (this task's next
                # step): the audit line and the metrics stay off the caller's wait.
                self._loop.call_soon(
                    self._record, request.method, redacted_target(request.raw_path), decision, outcome, started,
                    _NO_FIELDS,
                )  # fmt: skip
            else:
                extra = await self._shadowed(shadow, outcome)
                self._record(request.method, redacted_target(request.raw_path), decision, outcome, started, extra)

    async def _classify(
        self, request: web.Request, snapshot: PolicySnapshot | None
    ) -> tuple[Access, Route | None, bytes | None]:
        credential = bearer_token(request.headers.getall("Authorization", []))
        client = request.remote or ""
        session = request.cookies.get(self._session_cookie) if credential is None and self._session_cookie else None
        if snapshot is None:
            return Access(credential, client, f"{request.method} {request.raw_path}", session=session), None, None
        access, route = classify(snapshot.routes, request.method, request.raw_path, request.query, credential, client)
        if session is not None:
            access = access.with_session(session)
            if made_elsewhere(request, self._session_origin):
                detail = (
                    "Another site's page made this request, and your browser sent your sign-in with it; the broker "
                    "acts on your sign-in only for this site's own pages and for links you follow."
                )
                return access.with_refusal(Refusal(Reason.REQUEST_CROSS_SITE, detail)), None, None
        if route is None:
            return access, None, None
        refusal = unframeable(request, self._max_body)
        if refusal is not None:
            return access.with_refusal(refusal), None, None
        if route.branch_from != "body":
            return access, route, None
        return await self._branch_from_body(request, access, route)

    def _denial(self, request: web.Request, decision: Decision) -> web.Response:
        """The refusal as the caller can act on it: a browser's page load that brought
        neither a token nor a live session is sent to sign in; everything else gets
        the problem document (an API call decides itself what to do with a 401)."""
        if (
            self._session_cookie
            and decision.reason in _SIGN_IN_AGAIN
            and decision.access.credential is None
            and wants_a_page(request)
        ):
            return login_redirect(request.raw_path)
        catalogue = catalogue_of(self._policy.current)
        return problem_response(decision, catalogue=catalogue, accept_language=request.headers.get("Accept-Language"))

    async def _branch_from_body(
        self, request: web.Request, access: Access, route: Route
    ) -> tuple[Access, Route | None, bytes | None]:
        body = await read_body(request, self._max_body, self._body_timeout)
        if isinstance(body, Refusal):
            return access.with_refusal(body), None, None
        try:
            branch = branch_from_body(route, body, request.query.keys())
            return access.with_branch(branch), route, body
        except Refused as exc:
            return access.with_refusal(Refusal(exc.reason, exc.detail)), None, None

    async def _forward(
        self, request: web.Request, decision: Decision, route: Route, body: bytes | None, outcome: Outcome
    ) -> web.StreamResponse:
        """Send the request upstream framed by the broker: the body is read whole first
        (bounded in size and time) and goes with the broker's own Content-Length, so what
        the upstream parses is exactly what was decided on."""
        if body is None and request.body_exists:
            read = await read_body(request, self._max_body, self._body_timeout)
            if isinstance(read, Refusal):
                await self._guard.settle(decision, 0)
                return self._refuse(decision, outcome, read.reason, read.detail)
            body = read
        # every answer comes plain: those on routes without records are scanned too
        headers = self._upstream.request_headers(request, decision)
        try:
            if route.owner:
                refused = await self._check_owner(request, decision, route, outcome)
                if refused is not None:
                    return refused
            # HEAD on a record route goes upstream as GET: its answer is checked and charged
            # like a GET's (a HEAD would say "this record exists" for free), then sent bodiless
            method = "GET" if request.method == "HEAD" and route.records != "none" else request.method
            answer = await self._upstream.pool.send(method, request.raw_path, headers, body)
            try:
                return await self._answer(request, decision, route, answer, outcome)
            finally:
                answer.release()
        except TimeoutError:
            if outcome.status:  # headers already sent: nothing to do but drop the connection
                raise
            self._metrics.upstream_errors.labels("timeout").inc()
            await self._guard.settle(decision, 0)
            return self._refuse(decision, outcome, Reason.UPSTREAM_TIMEOUT, "The service did not answer in time.")
        except OSError as exc:
            if outcome.status:
                raise
            self._metrics.upstream_errors.labels("connection").inc()
            unreachable = f"The service is unreachable ({type(exc).__name__})."
            detail = str(exc) if isinstance(exc, UpstreamError) else unreachable
            await self._guard.settle(decision, 0)
            return self._refuse(decision, outcome, Reason.UPSTREAM_UNAVAILABLE, detail)

    async def _check_owner(
        self, request: web.Request, decision: Decision, route: Route, outcome: Outcome
    ) -> web.Response | None:
        """For a request that does not name its record's branch: read the record (a GET of
        `route.owner` as this employee) and decide on the branch it belongs to. The write's
        reservation is kept when it is refused here, so looking records up this way costs
        what reading them would."""
        target = owner_target(route, request.raw_path)
        headers = self._upstream.request_headers(request, decision)
        lookup = await self._upstream.pool.send("GET", target, headers, None)
        try:
            if not 200 <= lookup.status < 300:
                detail = f"The record this request changes could not be read (the service answered {lookup.status})."
                return await self._refuse_status(decision, outcome, lookup.status, detail, "owner_status")
            held = await self._hold(decision, lookup, outcome)
        finally:
            lookup.release()
        if not isinstance(held, bytes):
            return held
        try:
            branches = record_branches(held, route.branch_path)
        finally:
            self._budget.give(len(held))
        if branches is None or len(branches) != 1:
            self._metrics.upstream_errors.labels("owner_uninspectable").inc()
            await self._guard.settle(decision, 0)
            detail = "The record this request changes could not be read to learn whose it is."
            return self._refuse(decision, outcome, Reason.UPSTREAM_UNINSPECTABLE, detail)
        [branch] = branches
        decision.access = decision.access.with_branch(branch)
        allowed = decision.allowed_branches
        if allowed is not None and branch not in allowed:
            await self._guard.probed(decision)
            detail = f"This record is not one of your branch's; you may not {route.action} it."
            return self._refuse(decision, outcome, Reason.POLICY_OTHER_BRANCH, detail)
        return None

    async def _answer(
        self, request: web.Request, decision: Decision, route: Route, answer: Answer, outcome: Outcome
    ) -> web.StreamResponse:
        """Which way an answer goes: on a record route only a 2xx answer can carry records
        to the employee, and it is held and counted; any other status becomes a problem of
        the broker's own (the upstream's body never reaches the client). Refusals after the
        upstream answered keep their reservation when the employee's request caused them
        (another branch's records, too many, a 4xx such as not found): probing is metered
        like reading. The service's own failures (5xx, answers it cannot check) are not."""
        if route.records != "none":
            if 200 <= answer.status < 300 and answer.status != 206:
                # never a 304 or 206: the broker sends no conditional or range header, and
                # a partial body cannot be checked
                return await self._pass_inspected(request, decision, route, answer, outcome)
            detail = f"The service answered {answer.status} to this request; its own answer is not passed on."
            return await self._refuse_status(decision, outcome, answer.status, detail, "status")
        kind = _answer_kind(answer)
        if kind != "media" and request.method != "HEAD" and answer.status not in (204, 205, 304):
            return await self._pass_checked_unmapped(request, decision, answer, outcome, kind)
        await self._guard.settle(decision, 0)
        return await self._pass_streamed(request, decision, answer, outcome)

    async def _pass_inspected(
        self, request: web.Request, decision: Decision, route: Route, answer: Answer, outcome: Outcome
    ) -> web.StreamResponse:
        encoding = answer.headers.get("Content-Encoding", "identity").lower()
        if encoding not in ("", "identity"):
            self._metrics.upstream_errors.labels(Reason.UPSTREAM_UNINSPECTABLE.value).inc()
            await self._guard.settle(decision, 0)
            detail = "The service sent a compressed answer, which cannot be counted."
            return self._refuse(decision, outcome, Reason.UPSTREAM_UNINSPECTABLE, detail)
        if answer.status in (204, 205):  # answers HTTP gives no body
            await self._guard.settle(decision, 0)
            return await self._write_held(request, decision, answer, b"", outcome, 0)
        held = await self._hold(decision, answer, outcome)
        if not isinstance(held, bytes):
            return held
        try:
            verdict = inspect_records(route, held, decision.allowed_records, decision.allowed_branches)
            if verdict.misfit:  # loudly: every answer on this route will be refused
                self._metrics.upstream_errors.labels("route_map_misfit").inc()
                log.error("http.route_map_does_not_fit_the_answer", route=route.name, detail=verdict.detail)
            if verdict.violation is not None:
                self._metrics.upstream_errors.labels(verdict.violation.value).inc()
                if verdict.violation is Reason.UPSTREAM_UNINSPECTABLE:  # the service's fault
                    await self._guard.settle(decision, 0)
                else:  # the answer told the employee something: the request was a probe
                    await self._guard.probed(decision)
                return self._refuse(decision, outcome, verdict.violation, verdict.detail)
            count = verdict.records
            await self._guard.settle(decision, count)
            return await self._write_held(request, decision, answer, held, outcome, count)
        finally:
            self._budget.give(len(held))

    async def _hold(self, decision: Decision, answer: Answer, outcome: Outcome) -> bytes | web.Response:
        """The whole answer, read within the inspection limit and taken piece by piece from
        the held-answers budget; or the refusal when it does not fit. The caller gives the
        bytes back once the answer is written or refused."""
        limit = self._upstream.settings.max_response_inspect_bytes
        parts: list[bytes] = []
        held = 0
        try:
            if answer.content_length is not None:  # the common case: the size is known up front
                return await self._hold_sized(decision, answer, outcome, answer.content_length, limit)
            while (chunk := await answer.next_chunk()) is not None:
                if held + len(chunk) > limit:
                    return await self._refuse_unheld(
                        decision, outcome, Reason.UPSTREAM_UNINSPECTABLE, _too_large(limit), held
                    )
                if not self._budget.take(len(chunk)):
                    decision.retry_after = 1.0
                    detail = "The broker is holding as many answers as it may right now; retry in a moment."
                    return await self._refuse_unheld(decision, outcome, Reason.UPSTREAM_BUSY, detail, held)
                held += len(chunk)
                parts.append(chunk)
        except BaseException:
            self._budget.give(held)
            raise
        return parts[0] if len(parts) == 1 else b"".join(parts)

    async def _hold_sized(
        self, decision: Decision, answer: Answer, outcome: Outcome, size: int, limit: int
    ) -> bytes | web.Response:
        if size > limit:
            return await self._refuse_unheld(decision, outcome, Reason.UPSTREAM_UNINSPECTABLE, _too_large(limit))
        if not self._budget.take(size):
            decision.retry_after = 1.0
            detail = "The broker is holding as many answers as it may right now; retry in a moment."
            return await self._refuse_unheld(decision, outcome, Reason.UPSTREAM_BUSY, detail)
        try:
            body = await answer.read(size)
        except BaseException:
            self._budget.give(size)
            raise
        if body is None or len(body) != size:  # framing said otherwise: the pool refuses first
            return await self._refuse_unheld(decision, outcome, Reason.UPSTREAM_UNINSPECTABLE, _too_large(limit), size)
        return body

    async def _refuse_unheld(
        self, decision: Decision, outcome: Outcome, reason: Reason, detail: str, held: int = 0
    ) -> web.Response:
        """An answer that cannot be held is the service's or the broker's limit, not the
        employee's doing: nothing is charged."""
        self._budget.give(held)
        self._metrics.upstream_errors.labels(reason.value).inc()
        await self._guard.settle(decision, 0)
        return self._refuse(decision, outcome, reason, detail)

    async def _pass_checked_unmapped(
        self, request: web.Request, decision: Decision, answer: Answer, outcome: Outcome, kind: str
    ) -> web.StreamResponse:
        """A JSON or text answer on a route the map says carries no records is held and
        scanned for any branch field the map knows (JSON: an object carrying it; text: its
        name as a word, e.g. a CSV header): a mis-mapped route is caught the first time an
        answer with records comes through it, not after a shift of unmetered reads. One
        the broker cannot read (compressed) is refused: it cannot be checked."""
        encoding = answer.headers.get("Content-Encoding", "identity").lower()
        if encoding not in ("", "identity"):
            self._metrics.upstream_errors.labels(Reason.UPSTREAM_UNINSPECTABLE.value).inc()
            await self._guard.settle(decision, 0)
            detail = "The service sent a compressed answer, which cannot be checked."
            return self._refuse(decision, outcome, Reason.UPSTREAM_UNINSPECTABLE, detail)
        held = await self._hold(decision, answer, outcome)
        if not isinstance(held, bytes):
            return held
        try:
            snapshot = self._policy.current
            fields = snapshot.routes.branch_paths if snapshot is not None else ()
            found = holds_records(held, fields) if kind == "json" else None
            if found is None:  # not JSON whatever the label says (NDJSON, NaN, a BOM): read as text
                found = names_a_branch_field(held, fields)
            if held and found:
                self._metrics.upstream_errors.labels("records_on_unmapped_route").inc()
                target = redacted_target(decision.access.target)
                log.error("http.records_on_route_mapped_without_records", target=target)
                await self._guard.settle(decision, 0)
                detail = "The answer held records on a path mapped as carrying none; it was not passed on."
                return self._refuse(decision, outcome, Reason.UPSTREAM_UNINSPECTABLE, detail)
            await self._guard.settle(decision, 0)
            return await self._write_held(request, decision, answer, held, outcome, 0)
        finally:
            self._budget.give(len(held))

    async def _write_held(
        self, request: web.Request, decision: Decision, answer: Answer, body: bytes, outcome: Outcome, count: int
    ) -> web.StreamResponse:
        """Write a held answer and wait until the connection has taken it: until then it
        counts against the held-answers budget (a client that does not read holds it)."""
        own = limit_headers(decision, self._guard.clock.now())
        own[DECISION_HEADER] = decision.id
        headers = answer_headers(answer.headers, own, keep_length=False)
        pairs = headers.items() if isinstance(headers, CIMultiDict) else headers
        # decided once, before the write: the header said so, and aiohttp must do as it said
        # even if draining starts while the client reads
        keep_alive = request.keep_alive and not self._draining
        written = await write_held_answer(request, answer.status, pairs, body, keep_alive)
        if written is not None:
            # a client that hung up gets status 0 in the audit, which reads 499; the records
            # count as returned unless none of the answer reached its connection (they were
            # charged all the same, and a shadow policy is settled with what was charged)
            outcome.status = answer.status if written == WRITTEN else 0
            outcome.returned = 0 if written == UNSENT else count
            outcome.charged = count
            return WrittenResponse(answer.status, keep_alive=keep_alive and written == WRITTEN)
        outcome.status, outcome.returned = answer.status, count
        # web.Response, prepared and finished here rather than by aiohttp after the handler
        # returns: headers and body still go out in one write, and this handler (which
        # holds the budget) ends only once the connection has taken them
        response = web.Response(status=answer.status, body=body, headers=headers)
        if self._draining:
            _close_after(response)
        await response.prepare(request)
        await response.write_eof()
        return response

    async def _pass_streamed(
        self, request: web.Request, decision: Decision, answer: Answer, outcome: Outcome
    ) -> web.StreamResponse:
        own = limit_headers(decision, self._guard.clock.now())
        own[DECISION_HEADER] = decision.id
        headers = answer_headers(answer.headers, own, keep_length=True)
        response = web.StreamResponse(status=answer.status, reason=answer.reason, headers=headers)
        if self._draining:
            _close_after(response)
        await response.prepare(request)
        outcome.status = answer.status
        while (chunk := await answer.next_chunk()) is not None:
            await response.write(chunk)
        await response.write_eof()
        return response

    async def _refuse_status(
        self, decision: Decision, outcome: Outcome, upstream_status: int, detail: str, kind: str
    ) -> web.Response:
        """An upstream answer that is not a 2xx where records were expected: the broker's
        own problem with the same 4xx (charged: a not-found costs like a read, and counts
        as a probe), or 502 for anything else (the service's failure: nothing charged)."""
        self._metrics.upstream_errors.labels(kind).inc()
        status = upstream_status if 400 <= upstream_status < 500 else 502
        if status == 502:
            await self._guard.settle(decision, 0)
        else:
            await self._guard.probed(decision)
        return self._refuse(decision, outcome, Reason.UPSTREAM_REFUSED, detail, status)

    def _refuse(
        self, decision: Decision, outcome: Outcome, reason: Reason, detail: str, status: int | None = None
    ) -> web.Response:
        """Turn an allow into a denial after the fact: nothing is passed on. The caller
        settles the reservation (zero before the upstream answered; kept after)."""
        decision.verdict, decision.reason, decision.detail = Verdict.DENY, reason, detail
        catalogue = catalogue_of(self._policy.current)
        languages = outcome.headers.get("Accept-Language") if outcome.headers is not None else None
        response = problem_response(decision, status, catalogue=catalogue, accept_language=languages)
        outcome.status = response.status
        return response

    def _record(
        self, method: str, path: str, decision: Decision, outcome: Outcome, started: float, extra: dict[str, object]
    ) -> None:
        """The decision's metrics and audit event; `latency_ms` runs until the answer was
        handed to the connection (or the handler ended)."""
        elapsed = time.perf_counter() - started
        self._metrics.decided(decision.verdict._value_, decision.reason._value_, elapsed, decision.metered)
        if outcome.returned and decision.access.resource:
            self._metrics.returned(decision.access.resource, outcome.returned)
        self._audit.emit(
            decision_event(
                decision,
                door="http",
                status=outcome.status or 499,
                returned=outcome.returned,
                latency=elapsed,
                method=method,
                path=path,
                **extra,
            )
        )

    async def _shadowed(self, shadow: Decision | None, outcome: Outcome) -> dict[str, object]:
        """What the shadow policy would have done, for the audit event and metrics."""
        assert self._shadow is not None
        if shadow is None:
            return {"shadow_verdict": None}
        await self._shadow.settle(shadow, outcome.returned if outcome.charged is None else outcome.charged)
        self._metrics.shadow_decisions.labels(shadow.verdict.value, shadow.reason.value).inc()
        return {
            "shadow_verdict": shadow.verdict.value,
            "shadow_reason": shadow.reason.value,
            "shadow_rule": shadow.rule or None,
            "shadow_revision": shadow.revision,
        }

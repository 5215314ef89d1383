"""The per-request path: classify, decide, forward, count, settle, audit."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from dataclasses import dataclass

from aiohttp import web

from broker.admin.metrics import Metrics
from broker.audit.event import decision_event
from broker.audit.log import AuditSink
from broker.core.access import Access, Refusal
from broker.core.decision import Decision, Verdict
from broker.core.guard import Guard
from broker.core.reason import Reason
from broker.core.shadow import Shadow
from broker.http.bearer import bearer_token
from broker.http.classify import Refused, branch_from_body, classify
from broker.http.inspect import inspect_records
from broker.http.pool import Answer, UpstreamError
from broker.http.problem import DECISION_HEADER, limit_headers, problem_response
from broker.http.upstream import BodyTooLarge, Upstream, answer_headers, limited_body
from broker.policy.holder import PolicyHolder
from broker.policy.route import Route
from broker.policy.snapshot import PolicySnapshot

_NO_FIELDS: dict[str, object] = {}


@dataclass(slots=True)
class Outcome:
    """What the door did after the decision: for the audit event and metrics."""

    status: int
    returned: int = 0


class ProxyHandler:
    def __init__(
        self,
        guard: Guard,
        policy: PolicyHolder,
        upstream: Upstream,
        metrics: Metrics,
        audit: AuditSink,
        shadow: Shadow | None = None,
    ) -> None:
        self._guard = guard
        self._policy = policy
        self._upstream = upstream
        self._metrics = metrics
        self._audit = audit
        self._shadow = shadow
        self._max_body = upstream.settings.max_request_body_bytes
        self._running_loop: asyncio.AbstractEventLoop | None = None

    @property
    def _loop(self) -> asyncio.AbstractEventLoop:
        """The running loop, looked up once: `asyncio.get_running_loop()` makes a getpid()
        system call each time (CPython checks for a fork)."""
        loop = self._running_loop
        if loop is None:
            loop = self._running_loop = asyncio.get_running_loop()
        return loop

    async def handle(self, request: web.Request) -> web.StreamResponse:
        started = time.perf_counter()
        snapshot = self._policy.current  # one revision for the route map and the rules
        access, route, body = await self._classify(request, snapshot)
        decision = await self._guard.decide(access, snapshot)
        shadow = await self._shadow.decide(access) if self._shadow else None
        outcome = Outcome(0)
        try:
            if not decision.allowed or route is None:
                response: web.StreamResponse = problem_response(decision)
                outcome.status = response.status
                return response
            return await self._forward(request, decision, route, body, outcome)
        finally:
            if self._shadow is None:
                # Recorded right after aiohttp has written the answer (this task's next
                # step): the audit line and the metrics stay off the caller's wait.
                self._loop.call_soon(
                    self._record, request.method, request.raw_path, decision, outcome, started, _NO_FIELDS
                )
            else:
                extra = await self._shadowed(shadow, outcome)
                self._record(request.method, request.raw_path, decision, outcome, started, extra)

    async def _classify(
        self, request: web.Request, snapshot: PolicySnapshot | None
    ) -> tuple[Access, Route | None, bytes | None]:
        credential = bearer_token(request.headers.getall("Authorization", []))
        client = request.remote or ""
        if snapshot is None:
            return Access(credential, client, f"{request.method} {request.raw_path}"), None, None
        access, route = classify(snapshot.routes, request.method, request.raw_path, request.query, credential, client)
        if route is None:
            return access, None, None
        if request.content_length is not None and request.content_length > self._max_body:
            detail = f"The request body is {request.content_length} bytes; the limit is {self._max_body}."
            return dataclasses.replace(access, refusal=Refusal(Reason.REQUEST_TOO_LARGE, detail)), None, None
        if route.branch_from != "body":
            return access, route, None
        return await self._branch_from_body(request, access, route)

    async def _branch_from_body(
        self, request: web.Request, access: Access, route: Route
    ) -> tuple[Access, Route | None, bytes | None]:
        try:
            body = await request.read()
            return dataclasses.replace(access, branch=branch_from_body(route, body)), route, body
        except web.HTTPRequestEntityTooLarge:
            refusal = Refusal(Reason.REQUEST_TOO_LARGE, f"The request body is over {self._max_body} bytes.")
        except Refused as exc:
            refusal = Refusal(exc.reason, exc.detail)
        return dataclasses.replace(access, refusal=refusal), None, None

    async def _forward(
        self, request: web.Request, decision: Decision, route: Route, body: bytes | None, outcome: Outcome
    ) -> web.StreamResponse:
        inspect = route.records != "none"
        employee = decision.employee or ""
        headers = self._upstream.request_headers(request, employee, decision.id, inspect)
        data = (
            body
            if body is not None
            else (limited_body(request.content, self._max_body) if request.body_exists else None)
        )
        try:
            answer = await self._upstream.pool.send(
                request.method, request.raw_path, headers, data, body_length=request.content_length
            )
            try:
                if inspect and 200 <= answer.status < 300:
                    return await self._pass_inspected(decision, route, answer, outcome)
                await self._guard.settle(decision, 0)
                return await self._pass_streamed(request, decision, answer, outcome)
            finally:
                answer.release()
        except BodyTooLarge:
            return await self._fail(
                decision,
                outcome,
                Reason.REQUEST_TOO_LARGE,
                f"The request body is over {self._max_body} bytes.",
            )
        except TimeoutError:
            if outcome.status:  # headers already sent: nothing to do but drop the connection
                raise
            self._metrics.upstream_errors.labels("timeout").inc()
            return await self._fail(decision, outcome, Reason.UPSTREAM_TIMEOUT, "The service did not answer in time.")
        except OSError as exc:
            if outcome.status:
                raise
            self._metrics.upstream_errors.labels("connection").inc()
            unreachable = f"The service is unreachable ({type(exc).__name__})."
            detail = str(exc) if isinstance(exc, UpstreamError) else unreachable
            return await self._fail(decision, outcome, Reason.UPSTREAM_UNAVAILABLE, detail)

    async def _pass_inspected(
        self, decision: Decision, route: Route, answer: Answer, outcome: Outcome
    ) -> web.StreamResponse:
        encoding = answer.headers.get("Content-Encoding", "identity").lower()
        if encoding not in ("", "identity"):
            return await self._fail(
                decision,
                outcome,
                Reason.UPSTREAM_UNINSPECTABLE,
                f"The answer is {encoding}-encoded and cannot be counted.",
            )
        limit = self._upstream.settings.max_response_inspect_bytes
        body = await answer.read(limit)
        if body is None:
            return await self._fail(
                decision, outcome, Reason.UPSTREAM_UNINSPECTABLE, f"The answer is larger than {limit} bytes."
            )
        verdict = inspect_records(route, body, decision.allowed_records, decision.allowed_branches)
        if verdict.violation is not None:
            self._metrics.upstream_errors.labels(verdict.violation.value).inc()
            decision.facts["records_in_answer"] = verdict.count
            return await self._fail(decision, outcome, verdict.violation, verdict.detail)
        await self._guard.settle(decision, verdict.count)
        own = limit_headers(decision, self._guard.clock.now())
        own[DECISION_HEADER] = decision.id
        headers = answer_headers(answer.headers, own, keep_length=False)
        outcome.status, outcome.returned = answer.status, verdict.count
        return web.Response(status=answer.status, body=body, headers=headers)

    async def _pass_streamed(
        self, request: web.Request, decision: Decision, answer: Answer, outcome: Outcome
    ) -> web.StreamResponse:
        own = limit_headers(decision, self._guard.clock.now())
        own[DECISION_HEADER] = decision.id
        headers = answer_headers(answer.headers, own, keep_length=True)
        response = web.StreamResponse(status=answer.status, reason=answer.reason, headers=headers)
        await response.prepare(request)
        outcome.status = answer.status
        async for chunk in answer.iter_chunks():
            await response.write(chunk)
        await response.write_eof()
        return response

    async def _fail(self, decision: Decision, outcome: Outcome, reason: Reason, detail: str) -> web.Response:
        """Turn an allow into a denial after the fact: nothing was passed on, nothing charged."""
        await self._guard.settle(decision, 0)
        decision.verdict, decision.reason, decision.detail = Verdict.DENY, reason, detail
        response = problem_response(decision)
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
        await self._shadow.settle(shadow, outcome.returned)
        self._metrics.shadow_decisions.labels(shadow.verdict.value, shadow.reason.value).inc()
        return {
            "shadow_verdict": shadow.verdict.value,
            "shadow_reason": shadow.reason.value,
            "shadow_rule": shadow.rule or None,
            "shadow_revision": shadow.revision,
        }

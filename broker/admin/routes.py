"""`/-/` endpoints: liveness, readiness, metrics, the live policy, and `/-/me`."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiohttp import web

from broker.admin.metrics import Metrics
from broker.admin.problems import problem_page
from broker.audit.log import AuditSink
from broker.core.clock import iso
from broker.core.guard import Guard, employee_for
from broker.core.reason import Reason
from broker.core.window import current_shift, next_shift_start
from broker.http.bearer import bearer_token
from broker.http.problem import STATUS_AND_TITLE, bare_problem
from broker.http.proxy import device_fingerprint
from broker.identity.error import Identity, IdentityError
from broker.messages.shipped import catalogue_of
from broker.meter.breaker import BreakerState
from broker.meter.meter import Meter
from broker.policy.employee import Employee
from broker.policy.holder import PolicyHolder
from broker.policy.snapshot import PolicySnapshot

ADMIN_PREFIX = "/-/"


def _loopback_only(
    handler: Callable[[web.Request], Awaitable[web.Response]],
) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def guarded(request: web.Request) -> web.Response:
        if request.remote not in ("127.0.0.1", "::1"):
            detail = "Served to this machine only on the proxy port; operators set [server] admin_port."
            return _json({"status": 403, "title": "Operators only", "detail": detail}, 403)
        return await handler(request)

    return guarded


def _device_refusal(request: web.Request, snapshot: PolicySnapshot, employee: Employee) -> web.Response | None:
    """The refusal when this connection's certificate is not a device registered for
    `employee` (the Guard's device check, for an answer that is no decision)."""
    fingerprint = device_fingerprint(request)
    device = snapshot.devices.get(fingerprint) if fingerprint else None
    if not fingerprint:
        detail = "This connection presented no device certificate."
        return _refusal(request, snapshot, Reason.DEVICE_MISSING, 403, detail)
    if device is None:
        return _refusal(request, snapshot, Reason.DEVICE_UNKNOWN, 403, "This device's certificate is not registered.")
    if not device.carries(employee.id, employee.roles_by_branch.keys()):
        detail = f"Device {device.id} is not registered for you."
        return _refusal(request, snapshot, Reason.DEVICE_NOT_YOURS, 403, detail, {"device": device.id})
    return None


def _refusal(
    request: web.Request,
    snapshot: PolicySnapshot | None,
    reason: Reason,
    status: int,
    detail: str,
    values: dict[str, str] | None = None,
) -> web.Response:
    """A refusal of an employee-facing endpoint, worded like the proxy's (the caller's
    language, the help desk's contact)."""
    languages = request.headers.get("Accept-Language")
    catalogue = catalogue_of(snapshot)
    return bare_problem(reason, status, detail, catalogue=catalogue, accept_language=languages, values=values)


def _json(body: Any, status: int = 200) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(body), content_type="application/json")


class AdminRoutes:
    def __init__(
        self,
        guard: Guard,
        policy: PolicyHolder,
        metrics: Metrics,
        identify: Callable[[str | None], Awaitable[Identity]],
        meter: Meter,
        audit: AuditSink | None = None,
        shadow: PolicyHolder | None = None,
        *,
        devices_required: bool = False,
    ) -> None:
        self._devices_required = devices_required
        """`[server] client_ca_file`: /-/me answers only on a device registered for the
        caller, like the records (a rented password alone learns nothing of its owner)."""
        self._audit = audit
        self._shadow = shadow
        self._guard = guard
        self._policy = policy
        self._metrics = metrics
        self._identify = identify
        self._meter = meter
        self.draining = False

    def register(self, app: web.Application, *, operations: bool = True) -> None:
        """The employee-facing endpoints (`/-/me`, `/-/problems/...`) and, unless they
        have a listener of their own, the operators' ones."""
        if operations:
            self.register_operations(app, shared=True)
        app.router.add_get("/-/me", self.me)
        app.router.add_get("/-/problems/{code}", self.problem)

    def register_operations(self, app: web.Application, *, shared: bool = False) -> None:
        """Health, readiness, metrics and the policy state: for probes and operators. On
        the proxy port (`shared`), metrics and the policy state (who is flagged, which
        policy line was rejected and why) answer loopback clients only: employees reach
        that port too. Set `[server] admin_port` to serve them to a Prometheus elsewhere."""
        app.router.add_get("/-/healthz", self.healthz)
        app.router.add_get("/-/readyz", self.readyz)
        app.router.add_get("/-/metrics", _loopback_only(self.metrics) if shared else self.metrics)
        app.router.add_get("/-/policy", _loopback_only(self.policy) if shared else self.policy)

    async def healthz(self, _: web.Request) -> web.Response:
        return _json({"status": "ok"})

    async def readyz(self, _: web.Request) -> web.Response:
        snapshot = self._policy.current
        if self.draining:
            return _json({"ready": False, "why": "shutting down"}, 503)
        if snapshot is None:
            return _json({"ready": False, "why": "no valid policy loaded"}, 503)
        audit = self._audit_state()
        if audit is not None and not audit["accepting"]:
            why = "the audit log cannot be written; records are refused until it can"
            return _json({"ready": False, "why": why, "audit": audit}, 503)
        found = {"ready": True, "policy_revision": snapshot.revision, "counter_store": self._store_state()}
        if audit is not None:
            found["audit"] = audit
        return _json(found)

    def _audit_state(self) -> dict[str, Any] | None:
        backlog = getattr(self._audit, "backlog", None)
        if self._audit is None or backlog is None:
            return None
        return {
            "accepting": self._audit.accepting,
            "backlog_bytes": backlog.bytes,
            "backlog_events": backlog.events,
            "dropped": backlog.dropped,
            "last_error": backlog.last_error or None,
        }

    def _store_state(self) -> dict[str, str | bool | None]:
        """Readiness reports the shared store but does not fail on it: every replica shares
        it, so pulling them all would turn a Redis outage into a total one. Requests apply
        the configured failure mode instead."""
        if not self._meter.shared:
            return {"backend": "memory", "state": "ok"}
        state = "ok" if self._meter.state is BreakerState.CLOSED else "unavailable"
        found: dict[str, str | bool | None] = {"backend": "redis", "state": state, "breaker": self._meter.state.value}
        persistence = self._meter.persistence
        if persistence is not None:
            found["persistent"] = persistence.durable
            if persistence.durable is not True:
                found["warning"] = persistence.detail
        return found

    async def metrics(self, _: web.Request) -> web.Response:
        self._metrics.policy_loaded.set(1 if self._policy.current else 0)
        if self._meter.persistence is not None:
            self._metrics.store_persistent.set(1 if self._meter.persistence.durable else 0)
        return web.Response(body=self._metrics.render(), headers={"Content-Type": "text/plain; version=0.0.4"})

    async def policy(self, _: web.Request) -> web.Response:
        state = _policy_state(self._policy)
        if self._shadow is not None:  # the report-only policy: what it is, whether it loads
            state["shadow"] = _policy_state(self._shadow)
        return _json(state)

    async def me(self, request: web.Request) -> web.Response:
        """What the caller may do and how much: their permissions with the branches each
        covers, their per-request caps, request rate and probe budget, and their quota
        state (used, left, when it resets): what the help desk would otherwise read out
        of the policy files for them."""
        snapshot = self._policy.current
        try:
            identity = await self._identify(bearer_token(request.headers.getall("Authorization", [])))
            if snapshot is None:
                return _refusal(request, snapshot, Reason.POLICY_UNAVAILABLE, 503, "No valid policy is loaded.")
            employee = employee_for(snapshot, identity)
        except IdentityError as exc:
            status = STATUS_AND_TITLE[exc.reason][0]
            response = _refusal(request, snapshot, exc.reason, status, exc.detail)
            if status == 401:
                response.headers["WWW-Authenticate"] = 'Bearer realm="broker"'
            return response
        if self._devices_required:
            refused = _device_refusal(request, snapshot, employee)
            if refused is not None:
                return refused
        employee_id = employee.id
        now = self._guard.clock.now()
        shift = current_shift(employee.shifts, now)
        upcoming = next_shift_start(employee.shifts, now)
        quotas = await self._guard.quotas_of(employee)
        index = snapshot.index
        permissions = []
        for resource, action in sorted(index.grants):
            grant = index.grant(employee, resource, action)
            if grant.permitted:
                branches = "all" if grant.branches is None else sorted(grant.branches)
                permissions.append({"resource": resource, "action": action, "branches": branches})
        limits = []
        for resource in sorted({resource for resource, _action in index.grants}):
            limit = index.record_limit(employee, resource)
            if limit is not None:
                window = "shift" if limit.per_shift else limit.window
                limits.append(
                    {"resource": resource, "per_request": limit.cap, "quota": limit.quota, "quota_window": window}
                )
        rate, probes = index.rate_limit(employee), index.probe_limit(employee)
        return _json(
            {
                "employee": employee_id,
                "roles": sorted(employee.roles),
                "branches": sorted(employee.roles_by_branch),
                "shifts": [s.name for s in employee.shifts],
                "in_shift": shift is not None,
                "shift_ends_at": iso(shift.end, employee.zone) if shift else None,
                "next_shift_starts_at": iso(upcoming, employee.zone) if upcoming and shift is None else None,
                "permissions": permissions,
                "limits": limits,
                "request_rate": {"requests": rate.requests, "per_seconds": rate.period} if rate else None,
                "probe_budget": {
                    "refusals_after_answer": probes.probes,
                    "window": "shift" if probes.window == 0 else probes.window,
                }
                if probes
                else None,
                "quotas": [
                    {
                        "resource": q.name,
                        "limit": q.limit,
                        "used": q.used,
                        "remaining": q.remaining,
                        "resets_at": iso(q.reset_at, q.zone),
                    }
                    for q in quotas
                ],
            }
        )

    async def problem(self, request: web.Request) -> web.Response:
        catalogue = catalogue_of(self._policy.current)
        return problem_page(request.match_info["code"], catalogue, request.headers.get("Accept-Language"))


def _policy_state(holder: PolicyHolder) -> dict[str, Any]:
    """A policy holder's state for /-/policy: revision, files, reloads, last refusal."""
    snapshot = holder.current
    error = holder.last_error
    return {
        "revision": snapshot.revision if snapshot else None,
        "directory": str(holder.directory),
        "files": list(snapshot.files) if snapshot else [],
        "employees": len(snapshot.index.employees) if snapshot else 0,
        "routes": len(snapshot.routes.routes) if snapshot else 0,
        "loaded_at": iso(holder.loaded_at) if holder.loaded_at else None,
        "reloads": holder.reloads,
        "rejected": holder.rejected,
        "last_rejected": None
        if error is None
        else {
            "at": iso(holder.last_attempt_at) if holder.last_attempt_at else None,
            "problems": [str(p) for p in error.problems],
        },
    }

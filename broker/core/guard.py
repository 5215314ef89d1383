"""The one place the order of checks lives.

identity → roster → route refusal → permission → branch → shift → bulk cap → rate →
quota. Each step either passes or returns a denial with a stable reason code. An
unexpected exception becomes an ERROR verdict, which every door treats as a denial.
"""

from __future__ import annotations

import itertools
import secrets
from collections.abc import Callable
from typing import Protocol

import structlog

from broker.core.access import UNBOUNDED, Access, Principal
from broker.core.clock import Clock, iso
from broker.core.decision import Decision, QuotaState, RateState, Verdict
from broker.core.reason import Reason
from broker.core.window import (
    Window,
    current_shift,
    freeze_key,
    next_shift_start,
    probe_key,
    quota_key,
    quota_raise_key,
    quota_window,
)
from broker.identity.error import Identity, IdentityError
from broker.meter.meter import Meter, MeterUnavailable, Served
from broker.meter.store import Gate, QuotaAsk, RateAsk, RateOutcome, Reservation
from broker.policy.employee import Employee, Profile
from broker.policy.index import Grant
from broker.policy.limit import ProbeLimit, RateLimit, RecordLimit
from broker.policy.snapshot import PolicySnapshot

log = structlog.get_logger("broker.guard")


RECENT_PRINCIPALS = 10_000
"""Principals kept per employee id, then started afresh: a shift's active staff, bounded."""


class Authenticator(Protocol):
    async def identify(self, credential: str | None) -> Identity: ...


class AuditGate(Protocol):
    @property
    def accepting(self) -> bool: ...


class PolicySource(Protocol):
    @property
    def current(self) -> PolicySnapshot | None: ...


_PROCESS_ID = secrets.token_hex(6)
_SEQUENCE = itertools.count(1)


def new_decision_id() -> str:
    """Unique across replicas (a random per-process prefix) and cheap (a counter): a
    uuid4 cost ~9% of a whole decision."""
    return f"{_PROCESS_ID}{next(_SEQUENCE):010x}"


class Guard:
    def __init__(
        self,
        policy: PolicySource,
        authenticator: Authenticator,
        meter: Meter,
        clock: Clock,
        decision_id: Callable[[], str] = new_decision_id,
        audit: AuditGate | None = None,
        sessions: Authenticator | None = None,
    ) -> None:
        self._audit = audit
        self._sessions = sessions
        """The browser session identity source (OIDC sign-in), when configured."""
        self._freeze_gates: dict[str, tuple[Gate, ...]] = {}
        """employee -> the gate of their freeze key, built once (checked on every admission);
        bounded like the token cache: 100,000 of them held 18 MB."""
        self._in_flight: dict[str, int] = {}
        """employee -> their HTTP record requests admitted and not yet answered."""
        self._policy = policy
        self._auth = authenticator
        self._meter = meter
        self._clock = clock
        self._decision_id = decision_id
        self._principals: dict[Profile, Principal] = {}
        """Roster profile -> the principal of whoever holds it, less their id: one per
        profile, not per employee (100,000 employees hold a few thousand)."""
        self._principals_revision = ""
        self._by_employee: dict[str, Principal] = {}
        """Employee id -> principal, for those decided lately under this revision (a
        request's principal is otherwise a new object each time)."""
        self._names: dict[tuple[str, ...], tuple[str, ...]] = {}
        """One shared tuple per distinct sorted name list (roles, branches, shifts): a
        first decision for an employee then leaves one new object behind, not four, and
        the cyclic GC runs that much less often while a large roster warms up."""

    @property
    def clock(self) -> Clock:
        return self._clock

    async def decide(
        self, access: Access, snapshot: PolicySnapshot | None = None, *, meter: bool = True, in_flight: bool = False
    ) -> Decision:
        """Decide on `access`, under `snapshot` when the door classified with one (so the
        route map and the rules come from the same revision), else the live policy.

        `meter=False` checks everything but the rate and quota and charges nothing: a
        door that decides twice (PostgreSQL: at Parse, then at Bind) meters once."""
        now = self._clock.now()
        snapshot = snapshot or self._policy.current
        decision = Decision(
            self._decision_id(),
            Verdict.DENY,
            Reason.BROKER_ERROR,
            "",
            access,
            snapshot.revision if snapshot else "",
            now,
        )
        try:
            await self._decide(decision, snapshot, now, meter, in_flight)
        except Exception:
            log.exception("decision failed", decision_id=decision.id)
            decision.verdict, decision.reason = Verdict.ERROR, Reason.BROKER_ERROR
            decision.detail = "The broker could not reach a decision, so the request was refused. Please retry."
        return decision

    async def decide_login(self, access: Access, identity: Identity | None = None) -> Decision:
        """May this employee open a session now? Identity, roster and shift only: what a
        session may then touch is decided per statement by `decide`. `identity` is one
        the door has verified itself (a browser sign-in's ID token); the allow carries
        the end of the shift it was made in (`ends`)."""
        now = self._clock.now()
        snapshot = self._policy.current
        d = Decision(self._decision_id(), Verdict.DENY, Reason.BROKER_ERROR, "", access, "", now)
        try:
            employee = await self._identified(d, snapshot, identity)
            # an `if` statement, not a conditional expression: mypyc 2.4 compiles `x if a and
            # access.refusal is None else y` in an async def (refusal is Final) to code that
            # releases a reference it never took when `a` is false (a crash). gcc flags it
            # (-Wmaybe-uninitialized, an error under mypyc's -Werror): never silence that.
            shift = None
            if employee is not None and access.refusal is None:
                shift = self._in_shift(d, employee, now)
            if employee is not None and access.refusal is not None:
                _deny(d, access.refusal.reason, access.refusal.detail)
            elif shift is not None:
                d.verdict, d.reason, d.ends = Verdict.ALLOW, Reason.ALLOWED, shift.end
        except Exception:
            log.exception("login decision failed", decision_id=d.id)
            d.verdict, d.reason = Verdict.ERROR, Reason.BROKER_ERROR
            d.detail = "The broker could not check this login, so it was refused. Please retry."
        return d

    async def settle(self, decision: Decision, returned: int) -> None:
        """Charge what actually left: the reservation made at decision time is corrected
        to the records counted in the response (zero when nothing was passed on)."""
        quota = decision.quota
        delta = returned - decision.reserved
        if quota is None or not decision.quota_key or delta == 0:
            return
        served = Served(decision.metered) if decision.metered else Served.LOCAL
        used = await self._meter.settle(served, decision.quota_key, delta, quota.reset_at, self._clock.now())
        if used is not None:
            decision.reserved = returned
            decision.quota = quota.with_used(used)

    async def quotas_of(self, employee: Employee) -> list[QuotaState]:
        """The caller's own quota state per resource, for the self-service view."""
        snapshot = self._policy.current
        if snapshot is None:
            return []
        now = self._clock.now()
        shift = current_shift(employee.shifts, now)
        states = []
        for resource in sorted({res for (res, _act) in snapshot.index.grants}):
            limit = snapshot.index.record_limit(employee, resource)
            if limit is None or limit.quota is None:
                continue
            window = quota_window(limit, shift, employee.zone, now)
            used = await self._meter.used(quota_key(employee.id, resource, window.start), now)
            raised = await self._meter.used(quota_raise_key(employee.id, resource), now)
            states.append(QuotaState(resource, limit.quota + raised, used, window.seconds, window.end, employee.zone))
        return states

    async def _identified(
        self, d: Decision, snapshot: PolicySnapshot | None, identity: Identity | None = None
    ) -> Employee | None:
        """The roster entry of whoever the credential (or the browser session) vouches
        for, or None after denying. Every identity source ends here in an employee id:
        the roster, policy, quotas and audit after it are the same whatever the source."""
        access = d.access
        if identity is None:
            if access.credential == "":
                _deny(d, Reason.IDENTITY_MALFORMED, "The Authorization header must be exactly 'Bearer <token>'.")
                return None
            try:
                if access.session is not None and self._sessions is not None:
                    identity = await self._sessions.identify(access.session)
                else:
                    identity = await self._auth.identify(access.credential)
            except IdentityError as exc:
                _deny(d, exc.reason, exc.detail)
                return None
        d.facts["subject"] = identity.subject
        if snapshot is None:
            _deny(d, Reason.POLICY_UNAVAILABLE, "No valid policy is loaded yet; the broker refuses everything.")
            return None
        d.revision = snapshot.revision
        try:
            employee = employee_for(snapshot, identity)
        except IdentityError as exc:
            _deny(d, exc.reason, exc.detail)
            return None
        d.principal = self._principal(employee, snapshot.revision)
        return employee

    async def _decide(
        self, d: Decision, snapshot: PolicySnapshot | None, now: float, meter: bool = True, in_flight: bool = False
    ) -> None:
        access = d.access
        employee = await self._identified(d, snapshot)
        if employee is None or snapshot is None:
            return None
        if access.device is not None and not self._on_registered_device(d, employee, snapshot):
            return None
        if access.refusal is not None:
            return _deny(d, access.refusal.reason, access.refusal.detail)
        grant = snapshot.index.grant(employee, access.resource, access.action)
        if not self._permitted(d, employee, grant):
            return None
        shift = self._in_shift(d, employee, now)
        if shift is None:
            return None
        limit = snapshot.index.record_limit(employee, access.resource)
        if limit is None or not self._within_cap(d, limit):
            return None
        if limit.quota is not None and access.records >= UNBOUNDED:
            return _deny(
                d, Reason.BULK_UNBOUNDED, "This request has no record limit, so it cannot be metered; add one."
            )
        if self._audit is not None and not self._audit.accepting:
            d.retry_after = 5.0
            return _deny(
                d,
                Reason.AUDIT_UNAVAILABLE,
                "The broker cannot write its audit log right now, so it serves no records. Retry in a moment.",
            )
        try:
            index = snapshot.index
            probes = index.probe_limit(employee)
            if meter and not await self._admit(
                d, employee, limit, index.rate_limit(employee), probes, shift, now, in_flight
            ):
                return None
        except MeterUnavailable as exc:
            d.metered, d.retry_after = Served.REFUSED._value_, exc.retry_after
            return _deny(d, Reason.METER_UNAVAILABLE, exc.detail)
        d.verdict, d.reason, d.rule = Verdict.ALLOW, Reason.ALLOWED, grant.rule
        d.allowed_records, d.allowed_branches, d.cap = access.records, grant.branches, limit.cap
        return None

    def _principal(self, employee: Employee, revision: str) -> Principal:
        """The employee as the audit trail shows them; their profile's part built once per
        policy revision."""
        if employee.from_claims:
            return _principal_of(employee)
        if revision != self._principals_revision or len(self._principals) >= 100_000:
            self._principals, self._principals_revision, self._names = {}, revision, {}
            self._by_employee = {}
        principal = self._by_employee.get(employee.id)
        if principal is not None:  # decided before under this revision: the same roster entry
            return principal
        shared = self._principals.get(employee.profile)
        if shared is None:
            shared = self._principals[employee.profile] = _principal_of(employee, self._names)
        principal = Principal(employee.id, shared.roles, shared.branches, shared.global_roles, shared.shifts)
        if len(self._by_employee) >= RECENT_PRINCIPALS:
            self._by_employee.clear()
        self._by_employee[employee.id] = principal
        return principal

    def _on_registered_device(self, d: Decision, employee: Employee, snapshot: PolicySnapshot) -> bool:
        """With device certificates required: the connection's certificate must be one
        devices.toml registers, for this employee or their branch (a rented password
        is then useless without the branch's device too)."""
        fingerprint = d.access.device
        if not fingerprint:
            _deny(
                d,
                Reason.DEVICE_MISSING,
                "This service answers only registered devices, and this connection presented no device "
                "certificate. Use your branch's device.",
            )
            return False
        device = snapshot.devices.get(fingerprint)
        if device is None:
            d.facts["device_fingerprint"] = fingerprint
            _deny(
                d,
                Reason.DEVICE_UNKNOWN,
                f"This device's certificate (SHA-256 {fingerprint[:16]}...) is not registered; ask the help desk "
                "to register it, quoting the fingerprint.",
            )
            return False
        d.device = device.id
        if not device.carries(employee.id, employee.roles_by_branch.keys()):
            d.rule = f"{snapshot.devices.file}:{device.line}"
            _deny(
                d,
                Reason.DEVICE_NOT_YOURS,
                f"Device {device.id} is not registered for you ({employee.id}); use one of your branch's devices.",
            )
            return False
        return True

    def _permitted(self, d: Decision, employee: Employee, grant: Grant) -> bool:
        access = d.access
        closed = not grant.permitted or (access.branch is not None and grant.closes(access.branch))
        if grant.denial and closed:
            return self._closed_by_deny_line(d, grant)
        if not grant.permitted:
            roles = ", ".join(sorted(employee.roles))
            _deny(
                d,
                Reason.POLICY_NOT_PERMITTED,
                f"Your roles ({roles}) may not {access.action} {access.resource} records.",
            )
            return False
        if access.branch is not None and grant.branches is not None and access.branch not in grant.branches:
            mine = ", ".join(sorted(grant.branches))
            _deny(
                d,
                Reason.POLICY_OTHER_BRANCH,
                f"{access.resource} records of branch {access.branch} are not yours to {access.action}; "
                f"your branch: {mine}.",
            )
            d.rule = grant.rule
            d.facts["your_branches"] = sorted(grant.branches)
            return False
        return True

    def _closed_by_deny_line(self, d: Decision, grant: Grant) -> bool:
        access = d.access
        where = " of every branch" if grant.denied is None or access.branch is None else f" of branch {access.branch}"
        _deny(
            d,
            Reason.POLICY_DENIED,
            f"Your access to {access.action} {access.resource} records{where} is closed by a deny rule for now. "
            "Ask your supervisor or the help desk.",
        )
        d.rule = grant.denial
        return False

    def _in_shift(self, d: Decision, employee: Employee, now: float) -> Window | None:
        """The shift occurrence the employee is in now, or None after denying."""
        shift = current_shift(employee.shifts, now)
        if shift is not None:
            return shift
        upcoming = next_shift_start(employee.shifts, now)
        if not employee.shifts:
            detail = "You have no shift on the roster, so you cannot access records. Ask your supervisor."
        else:
            detail = f"You are outside your shift ({', '.join(s.name for s in employee.shifts)})."
            if upcoming is not None:
                detail += f" Your next shift starts at {iso(upcoming, employee.zone)}."
                d.facts["next_shift_start"] = iso(upcoming, employee.zone)
                d.retry_after = upcoming - now
        _deny(d, Reason.SHIFT_OUTSIDE, detail)
        return None

    def _within_cap(self, d: Decision, limit: RecordLimit) -> bool:
        asked = d.access.records
        if limit.cap is None or asked <= limit.cap:
            return True
        d.facts.update(cap=limit.cap, requested="unbounded" if asked >= UNBOUNDED else asked)
        d.rule = limit.rule
        if asked >= UNBOUNDED:
            _deny(
                d,
                Reason.BULK_UNBOUNDED,
                f"This request has no record limit; ask for at most {limit.cap} records.",
            )
        else:
            _deny(d, Reason.BULK_OVER_CAP, f"You asked for {asked} records; at most {limit.cap} per request.")
        return False

    async def _admit(
        self,
        d: Decision,
        employee: Employee,
        limit: RecordLimit,
        rate: RateLimit | None,
        probes: ProbeLimit | None,
        shift: Window,
        now: float,
        in_flight: bool = False,
    ) -> bool:
        """Probe budget, rate check and quota reservation in one meter call (one round
        trip to Redis).

        With `in_flight` (the HTTP door), each of the employee's requests still waiting
        for its answer counts against the probe budget as if it were a probe: the budget
        is checked at admission and a probe counted after the answer, so 20 requests sent
        at once would otherwise all pass a budget of 3 (shown in review). A request that
        turns out not to be a probe gives its place back (`finish`)."""
        access = d.access
        gates = self._freeze_gates.get(employee.id)
        if gates is None:
            if len(self._freeze_gates) >= 10_000:
                self._freeze_gates.clear()
            gates = self._freeze_gates[employee.id] = (Gate(freeze_key(employee.id), 1),)
        if probes is not None:
            probe_window = quota_window(probes, shift, employee.zone, now)
            d.probe_key, d.probe_window_end = probe_key(employee.id, probe_window.start), probe_window.end
            waiting = self._in_flight.get(employee.id, 0) if in_flight else 0
            if probes.probes - waiting <= 0:
                return self._probes_spent(d, employee, probes, waiting, Served.LOCAL, now, waiting=waiting)
            gates += (Gate(d.probe_key, probes.probes - waiting),)
        window = quota_window(limit, shift, employee.zone, now) if limit.quota is not None else None
        quota_ask = None
        if window is not None and limit.quota is not None:
            key = quota_key(employee.id, access.resource, window.start)
            raised = quota_raise_key(employee.id, access.resource)
            quota_ask = QuotaAsk(key, access.records, limit.quota, window.end, raised)
        rate_ask = RateAsk(f"r:{{{employee.id}}}", rate.requests, rate.period) if rate else None
        admitted = self._meter.admit_now(rate_ask, quota_ask, now, gates)
        if admitted is None:
            admitted = await self._meter.admit(access.resource, rate_ask, quota_ask, now, gates)
        admission, served = admitted
        d.metered = served._value_
        if admission.closed_gate == 0:
            d.facts["suspended"] = True
            _deny(
                d,
                Reason.IDENTITY_SUSPENDED,
                "Your access is suspended: this login was used in a way that looks like someone else is using it. "
                "Call the help desk to have it checked and restored.",
            )
            return False
        if admission.closed_gate == 1 and probes is not None:
            return self._probes_spent(d, employee, probes, admission.gate_used, served, now)
        if in_flight and probes is not None:
            self._in_flight[employee.id] = self._in_flight.get(employee.id, 0) + 1
            d.in_flight = True
        outcome, booked = admission.rate, admission.quota
        if rate is not None and outcome is not None and not self._within_rate(d, rate, outcome, served):
            return False
        if window is None or quota_ask is None or booked is None:
            return True
        return self._reserved(d, employee, limit, window, quota_ask, booked, served, now)

    def _probes_spent(
        self,
        d: Decision,
        employee: Employee,
        probes: ProbeLimit,
        used: int,
        served: Served,
        now: float,
        waiting: int = 0,
    ) -> bool:
        budget = self._meter.effective(probes.probes, served)
        d.rule, d.retry_after = probes.rule, d.probe_window_end - now
        d.facts.update(probes=budget)
        if waiting:
            d.retry_after = 1.0
            _deny(
                d,
                Reason.PROBE_EXCEEDED,
                f"{waiting} of your record requests are still waiting for their answers, and each could end in a "
                f"refusal, of which at most {budget} are allowed in this window; wait for them and retry.",
            )
            return False
        _deny(
            d,
            Reason.PROBE_EXCEEDED,
            f"{used} of your requests in this window were refused after the service answered (records of "
            f"other branches, more records than allowed, or records that do not exist); at most {budget} are "
            f"allowed, so record requests are refused until {iso(d.probe_window_end, employee.zone)}.",
        )
        return False

    def finish(self, decision: Decision) -> None:
        """The request's answer is in (or it ended): it no longer waits against the probe
        budget. Its probe, if it was one, was counted by `probed`."""
        if not decision.in_flight:
            return
        decision.in_flight = False
        employee = decision.employee or ""
        left = self._in_flight.get(employee, 1) - 1
        if left > 0:
            self._in_flight[employee] = left
        else:
            self._in_flight.pop(employee, None)

    async def probed(self, decision: Decision) -> None:
        """Count a refusal the employee caused after the service answered against their
        probe budget. Written where the admission was checked; if the store has gone away
        meanwhile the probe goes uncounted (logged by the meter), never the request."""
        decision.probed = True
        if not decision.probe_key:
            return
        served = Served(decision.metered) if decision.metered else Served.LOCAL
        await self._meter.settle(served, decision.probe_key, 1, decision.probe_window_end, self._clock.now())

    def _within_rate(self, d: Decision, rate: RateLimit, outcome: RateOutcome, served: Served) -> bool:
        requests = self._meter.effective(rate.requests, served)
        d.rate = RateState(requests, rate.period, outcome.remaining, outcome.reset_after, outcome.retry_after)
        if outcome.allowed:
            return True
        d.retry_after = outcome.retry_after
        _deny(d, Reason.RATE_EXCEEDED, f"Too many requests: at most {requests} per {rate.period} s.")
        return False

    def _reserved(
        self,
        d: Decision,
        employee: Employee,
        limit: RecordLimit,
        window: Window,
        ask: QuotaAsk,
        booked: Reservation,
        served: Served,
        now: float,
    ) -> bool:
        access = d.access
        quota = self._meter.effective(ask.limit + booked.raised, served)
        d.quota = QuotaState(access.resource, quota, booked.used, window.seconds, window.end, employee.zone)
        if booked.granted:
            d.quota_key, d.reserved = ask.key, ask.amount
            return True
        d.rule, d.retry_after = limit.rule, window.end - now
        d.facts.update(requested=access.records)
        _deny(
            d,
            Reason.QUOTA_EXCEEDED,
            f"Your {access.resource} quota has {d.quota.remaining} of {quota} records left until "
            f"{iso(window.end, employee.zone)}; this request asks for {access.records}.",
        )
        return False


def employee_for(snapshot: PolicySnapshot, identity: Identity) -> Employee:
    """The roster entry for a verified identity; with an authoritative identity provider,
    its branch and roles replace the roster's (shifts still come from the roster)."""
    roster = snapshot.index.employees.get(identity.subject)
    if identity.branch is None or identity.roles is None:
        if roster is None:
            raise IdentityError(Reason.IDENTITY_NOT_ON_ROSTER, f"Employee {identity.subject} is not on the roster.")
        return roster
    unknown = sorted(set(identity.roles) - snapshot.index.roles())
    if unknown:
        raise IdentityError(
            Reason.IDENTITY_BAD_CLAIMS,
            f"The token names roles the policy does not know: {', '.join(unknown)}.",
        )
    shifts = roster.shifts if roster else ()
    return Employee.holding(identity.subject, {identity.branch: frozenset(identity.roles)}, frozenset(), shifts, True)


def _principal_of(employee: Employee, names: dict[tuple[str, ...], tuple[str, ...]] | None = None) -> Principal:
    def shared(found: tuple[str, ...]) -> tuple[str, ...]:
        return names.setdefault(found, found) if names is not None and len(names) < 100_000 else found

    return Principal(
        employee.id,
        shared(tuple(sorted(employee.roles))),
        shared(tuple(sorted(employee.roles_by_branch))),
        shared(tuple(sorted(employee.global_roles))),
        shared(tuple(s.name for s in employee.shifts)),
    )


def _deny(d: Decision, reason: Reason, detail: str) -> None:
    d.verdict, d.reason, d.detail = Verdict.DENY, reason, detail

"""The help desk's quota actions: reset an employee's quota window, raise it for a while.

Both act on the counter store the Guard admits with, so with `[meter] store = "redis"`
one replica's action holds on every replica from their next request. A reset empties
the current window's counter; a raise writes the extra records under the quota's raise
key with the raise's lifetime as the key's time to live (a duration, never an instant:
Redis ends it by itself, whatever the replicas' clocks say). A second raise replaces
the first. Neither touches the policy: the quota line stays what review approved.
"""

from __future__ import annotations

from dataclasses import dataclass

from broker.core.clock import Clock, iso
from broker.core.guard import PolicySource
from broker.core.window import Window, current_shift, quota_key, quota_raise_key, quota_window
from broker.meter.meter import Meter
from broker.meter.store import StoreUnavailable
from broker.policy.employee import Employee
from broker.policy.limit import RecordLimit

MAX_RAISE = 1_000_000
"""Records one raise may add: a typo of three zeros more should not hand out millions."""
MAX_RAISE_SECONDS = 7 * 86400
"""A raise is temporary: at most a week; a lasting change belongs in the policy."""


class UnknownEmployee(LookupError):
    """No such employee on the live roster."""


class PartlyChanged(Exception):
    """The counter store stopped answering part-way through an action: `changes` were
    made (and must be audited), the rest were not."""

    def __init__(self, changes: list[QuotaChange], cause: Exception) -> None:
        super().__init__(f"the counter store stopped answering after {len(changes)} change(s): {cause}")
        self.changes = changes


class OwnQuota(PermissionError):
    """An operator may not change their own quotas: a rented admin login, or a help desk
    gone bad, would otherwise lift its own limits."""


class NoSuchQuota(LookupError):
    """The resource named has no records quota for this employee (or none was named and
    the choice is not obvious); the message lists the quotas they have."""


@dataclass(frozen=True, slots=True)
class QuotaChange:
    """One quota before and after a help-desk action: what the audit event records."""

    resource: str
    quota: int
    """The policy's quota for this employee and resource."""
    used_before: int
    used_after: int
    raise_before: int
    raise_after: int
    window_ends: str
    raise_seconds: int = 0

    def as_json(self) -> dict[str, object]:
        return {
            "resource": self.resource,
            "quota": self.quota,
            "used": {"old": self.used_before, "new": self.used_after},
            "raise": {"old": self.raise_before, "new": self.raise_after},
            "limit": {"old": self.quota + self.raise_before, "new": self.quota + self.raise_after},
            "window_ends": self.window_ends,
            **({"raise_seconds": self.raise_seconds} if self.raise_seconds else {}),
        }


class QuotaDesk:
    def __init__(self, policy: PolicySource, meter: Meter, clock: Clock) -> None:
        self._policy = policy
        self._meter = meter
        self._clock = clock

    def employee(self, employee_id: str) -> Employee:
        """The roster entry, or UnknownEmployee."""
        snapshot = self._policy.current
        found = snapshot.index.employees.get(employee_id) if snapshot is not None else None
        if found is None:
            raise UnknownEmployee(f"{employee_id} is not on the live roster")
        return found

    def quotas(self, employee: Employee) -> dict[str, RecordLimit]:
        """resource -> the limit carrying the employee's records quota."""
        snapshot = self._policy.current
        if snapshot is None:
            return {}
        index = snapshot.index
        found = {}
        for resource in sorted({resource for resource, _ in index.grants}):
            limit = index.record_limit(employee, resource)
            if limit is not None and limit.quota is not None:
                found[resource] = limit
        return found

    async def reset(self, employee_id: str, resource: str | None) -> list[QuotaChange]:
        """Empty the current window of one quota, or of all of them when `resource` is None."""
        employee = self.employee(employee_id)
        chosen = self._chosen(employee, resource, every=True)
        now, store = self._clock.now(), self._meter.store
        changes: list[QuotaChange] = []
        for name, limit in chosen.items():
            window = self._window(employee, limit, now)
            try:
                raised = await store.get(quota_raise_key(employee.id, name), now)
                used = await store.put(quota_key(employee.id, name, window.start), 0, window.end, now)
            except StoreUnavailable as exc:
                if changes:
                    raise PartlyChanged(changes, exc) from exc
                raise
            assert limit.quota is not None
            changes.append(QuotaChange(name, limit.quota, used, 0, raised, raised, iso(window.end, employee.zone)))
        return changes

    async def raise_quota(self, employee_id: str, resource: str | None, by: int, seconds: int) -> QuotaChange:
        """Add `by` records to one quota for `seconds`, replacing a raise still running."""
        if not 1 <= by <= MAX_RAISE:
            raise ValueError(f"the raise must be from 1 to {MAX_RAISE} records, not {by}")
        if not 1 <= seconds <= MAX_RAISE_SECONDS:
            raise ValueError(f"a raise lasts from 1 second to {MAX_RAISE_SECONDS // 86400} days, not {seconds} s")
        employee = self.employee(employee_id)
        [(name, limit)] = self._chosen(employee, resource, every=False).items()
        now, store = self._clock.now(), self._meter.store
        window = self._window(employee, limit, now)
        # read first: once the raise is written, nothing may fail before it is reported
        used = await store.get(quota_key(employee.id, name, window.start), now)
        before = await store.put(quota_raise_key(employee.id, name), by, now + seconds, now)
        assert limit.quota is not None
        ends = iso(window.end, employee.zone)
        return QuotaChange(name, limit.quota, used, used, before, by, ends, seconds)

    def _chosen(self, employee: Employee, resource: str | None, *, every: bool) -> dict[str, RecordLimit]:
        quotas = self.quotas(employee)
        have = ", ".join(quotas) or "none"
        if resource is not None:
            if resource not in quotas:
                raise NoSuchQuota(f"{employee.id} has no records quota on {resource!r} (quotas: {have})")
            return {resource: quotas[resource]}
        if not quotas:
            raise NoSuchQuota(f"{employee.id} has no records quota to change")
        if every or len(quotas) == 1:
            return quotas
        raise NoSuchQuota(f"{employee.id} has quotas on {have}: name one with --resource")

    def _window(self, employee: Employee, limit: RecordLimit, now: float) -> Window:
        """The window the Guard charges now: the current shift, or the fixed period."""
        return quota_window(limit, current_shift(employee.shifts, now), employee.zone, now)

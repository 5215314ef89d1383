"""Shadow mode: a second policy decides every request too, but only the audit trail hears it.

A platform team points `[policy] shadow_directory` at a changed copy of the policy (one
rule, one limit, or a whole rewrite) and watches what it would have denied before it
enforces anything. The shadow keeps its own in-memory counters, so its quotas track
what it would have charged without touching the real ones.
"""

from __future__ import annotations

from dataclasses import dataclass

from broker.core.access import Access
from broker.core.decision import Decision
from broker.core.guard import Guard, PolicySource


@dataclass(slots=True)
class Shadow:
    guard: Guard
    policy: PolicySource

    async def decide(self, access: Access) -> Decision | None:
        """The shadow policy's verdict on the same request (None when it has no policy)."""
        snapshot = self.policy.current
        if snapshot is None:
            return None
        return await self.guard.decide(access, snapshot)

    async def settle(self, decision: Decision | None, returned: int) -> None:
        if decision is not None and decision.allowed:
            await self.guard.settle(decision, min(returned, decision.allowed_records))

"""Quotas and rate limits, counted in a CounterStore (memory now; Redis for replicas)."""

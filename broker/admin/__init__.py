"""Operator and employee endpoints under `/-/`: health, readiness, metrics, policy, quota."""

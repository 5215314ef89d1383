"""Policy as code: Casbin model and rule files under `policies/`, validated and compiled."""

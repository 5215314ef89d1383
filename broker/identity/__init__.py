"""Who is asking: verifies bearer tokens (JWT) and names the employee behind them.

The only package that imports PyJWT, so key handling and algorithm pinning live in
one place that can be reviewed on its own.
"""

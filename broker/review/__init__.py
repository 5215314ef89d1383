"""Reviewing a policy before it serves: explain one decision, run the policy's own tests."""

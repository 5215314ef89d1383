"""broker: a policy-as-code access broker for logistics APIs."""

__version__ = "0.1.0"

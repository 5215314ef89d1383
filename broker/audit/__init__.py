"""The decision log: one JSON line per decision, written off the event loop."""

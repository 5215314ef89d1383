"""The decision core: knows employees, requests and verdicts, never HTTP or SQL."""

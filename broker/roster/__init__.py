"""The roster from where HR keeps it: sources (a CSV export, a PostgreSQL query), the
checks a pulled roster must pass, and `broker roster pull` writing it into the policy."""

"""The PostgreSQL front door: wire protocol, login, statement analysis, row counting."""

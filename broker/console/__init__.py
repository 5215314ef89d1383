"""The security console: who is being refused, which logins look rented, and the freeze button."""

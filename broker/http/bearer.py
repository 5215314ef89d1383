"""The credential an HTTP request carries."""


def bearer_token(values: list[str]) -> str | None:
    """The token of a single `Authorization: Bearer <token>` header.

    None when there is no header; "" (malformed) for another scheme, an empty token or
    several Authorization headers, which two servers could read differently.
    """
    if not values:
        return None
    if len(values) > 1:
        return ""
    scheme, _, token = values[0].strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token or " " in token:
        return ""
    return token

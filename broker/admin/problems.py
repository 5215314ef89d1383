"""What each denial means, for the employee who meets it: served at `/-/problems/<code>`."""

from broker.core.reason import Reason

EXPLANATIONS: dict[Reason, str] = {
    Reason.IDENTITY_MISSING: "Your app sent no access token. Sign in again; if it persists, call the help desk.",
    Reason.IDENTITY_MALFORMED: "The access token is damaged or not a token at all. Sign in again.",
    Reason.IDENTITY_EXPIRED: "Your sign-in has expired. Sign in again.",
    Reason.IDENTITY_NOT_YET_VALID: "Your token is not valid yet; check your device's clock.",
    Reason.IDENTITY_BAD_SIGNATURE: "The token was not issued by the company's sign-in service.",
    Reason.IDENTITY_WRONG_AUDIENCE: "The token was issued for another system.",
    Reason.IDENTITY_WRONG_ISSUER: "The token comes from a sign-in service this broker does not trust.",
    Reason.IDENTITY_UNKNOWN_KEY: "The token is signed with a key the broker does not know.",
    Reason.IDENTITY_BAD_ALGORITHM: "The token uses a signing method that is not allowed.",
    Reason.IDENTITY_KEYS_UNAVAILABLE: "The broker cannot reach the sign-in service's keys right now. Retry shortly.",
    Reason.IDENTITY_NOT_ON_ROSTER: "You are signed in, but not on the roster the broker uses. Ask your supervisor.",
    Reason.IDENTITY_BAD_CLAIMS: "Your sign-in names roles this broker's policy does not know. Ask your supervisor.",
    Reason.IDENTITY_WRONG_USER: "The database user name must be your own employee id, the one your token is for.",
    Reason.IDENTITY_NO_SESSION: (
        "Your browser's sign-in session is unknown or has ended: you signed out, it was revoked, it reached the end "
        "of your shift or of the sign-in service's approval. Sign in again."
    ),
    Reason.IDENTITY_SESSIONS_UNAVAILABLE: "The broker cannot check sign-in sessions right now. Retry shortly.",
    Reason.LOGIN_REFUSED: (
        "The sign-in could not be completed: it was begun in another browser or too long ago, the sign-in service "
        "refused it, or its answer did not verify. Start again from the page you wanted."
    ),
    Reason.SESSIONS_OVER_LIMIT: "You have as many database sessions open as you may; close one first.",
    Reason.DEVICE_MISSING: (
        "This service answers only the company's registered devices (a scanner, a branch PC), which present "
        "their certificate when they connect. Use your branch's device, or ask the help desk to set up yours."
    ),
    Reason.DEVICE_UNKNOWN: (
        "The device you used presented a certificate the broker has no record of (a new or renewed device). "
        "Ask the help desk to register it: they need the fingerprint given in the refusal."
    ),
    Reason.DEVICE_NOT_YOURS: (
        "The device you used is registered to other employees or another branch: your login works only on "
        "your own branch's devices. Use one of them, or ask the help desk to register this one for you."
    ),
    Reason.REQUEST_BAD_PATH: "The address could be read in more than one way, so it was refused.",
    Reason.REQUEST_AMBIGUOUS_QUERY: "A query parameter was given twice or empty; give it once.",
    Reason.REQUEST_BAD_LIMIT: "The number of records asked for is not a whole number from 1 up.",
    Reason.REQUEST_BAD_BODY: "The request body does not say, in the expected field, which branch it is for.",
    Reason.REQUEST_TOO_LARGE: "The request body is larger than the broker accepts.",
    Reason.REQUEST_ENCODED_BODY: "The request body was compressed (Content-Encoding) or sent with a transfer coding "
    "other than chunked. The broker checks and forwards only plain bodies; send it uncompressed.",
    Reason.REQUEST_METHOD_OVERRIDE: "The request asked the system to treat it as another method (_method). "
    "Send the real method instead: the broker decides on the method it sees.",
    Reason.REQUEST_CROSS_SITE: "Your browser sent your sign-in with a request another site's page made (an image, "
    "a frame, a form, a script). The broker acts on your sign-in only for this site's own pages and for links "
    "you follow; open the page here and do it from there.",
    Reason.REQUEST_SLOW_BODY: "The request body did not arrive in time. Check the network and send it again.",
    Reason.ROUTE_UNKNOWN: "This part of the system is not open through the broker.",
    Reason.STATEMENT_REFUSED: "The broker runs only SQL it can check: reads and writes of the mapped tables, "
    "with a LIMIT on reads. The error's hint says what is allowed.",
    Reason.STATEMENT_BAD_SYNTAX: "The SQL statement is not valid PostgreSQL; nothing was run.",
    Reason.STATEMENT_BAD_PARAMETER: "A parameter the broker needs to check (a LIMIT, a branch) could not be read.",
    Reason.PROTOCOL_UNSUPPORTED: "Your database driver used a protocol feature the broker refuses (e.g. FunctionCall).",
    Reason.POLICY_NOT_PERMITTED: "Your role does not include this kind of access.",
    Reason.POLICY_OTHER_BRANCH: "You can only see records of your own branch.",
    Reason.POLICY_DENIED: "Your security team has closed this access for now with a deny rule (a suspended login, "
    "a role closed in a branch, or a resource closed during an incident). The denial cites the rule; "
    "ask your supervisor or the help desk.",
    Reason.POLICY_UNAVAILABLE: "The broker has no valid policy loaded and refuses everything until it does.",
    Reason.SHIFT_OUTSIDE: "Records are available only during your shift; the denial says when it starts.",
    Reason.BULK_OVER_CAP: "One request may return only a limited number of records; ask for fewer.",
    Reason.BULK_UNBOUNDED: "The request did not say how many records it wants; add a limit.",
    Reason.RATE_EXCEEDED: "Too many requests in a short time; wait for the time in Retry-After.",
    Reason.METER_UNAVAILABLE: "The service that counts quotas is unreachable; access is paused. Retry shortly.",
    Reason.QUOTA_EXCEEDED: "You have used your records quota for this window; it resets at the time given.",
    Reason.IDENTITY_SUSPENDED: (
        "Your login is suspended everywhere (every door, every replica): the broker saw it used in a way that "
        "looks like someone else is using it (several places at once, walking record numbers, many refusals). "
        "Call the help desk: a person checks it and lifts the suspension (broker unfreeze)."
    ),
    Reason.AUDIT_UNAVAILABLE: (
        "The broker cannot write its audit log (a full or failing disk), so it serves no records until it can: "
        "every record that leaves must be on the record. Retry in a moment; operators see audit.backlog in "
        "/-/readyz and broker_audit_backlog_bytes."
    ),
    Reason.PROBE_EXCEEDED: (
        "Too many of your record requests in this window were refused after the service answered: records "
        "of another branch, more records than your cap, or record numbers that do not exist. Record requests "
        "are refused until the time given. If you were looking up numbers from a list, check the list with "
        "your supervisor."
    ),
    Reason.UPSTREAM_UNAVAILABLE: "The system behind the broker is down. Retry later.",
    Reason.UPSTREAM_TIMEOUT: "The system behind the broker is too slow to answer. Retry later.",
    Reason.UPSTREAM_TOO_MANY_RECORDS: "The system answered with more records than allowed, so nothing was passed on.",
    Reason.UPSTREAM_OTHER_BRANCH: "The system's answer held records you may not see, so nothing was passed on. "
    "Ask only for your own branch's records.",
    Reason.UPSTREAM_REFUSED: "The system behind the broker did not answer this request with records (for example, "
    "not found or an error). Its own message is not passed on; the status code says what kind of answer it was. "
    "Refusals like this count towards your records quota.",
    Reason.UPSTREAM_BUSY: "The broker is holding as many answers as its memory budget allows. Retry shortly.",
    Reason.UPSTREAM_UNINSPECTABLE: "The answer could not be checked, so it was not passed on.",
    Reason.BROKER_ERROR: "The broker failed to decide and refused to be safe. Retry; report the decision id.",
}

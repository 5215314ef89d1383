"""The console's HTML, rendered on the server: plain strings, every value escaped.

No template engine and no build step: the pages are small, and a reviewer reads the
markup where it is made. Scripts and styles are files of the package served by the
console itself (`static/`), so the console works without internet and under a strict
Content-Security-Policy (no inline script or style).
"""

from __future__ import annotations

import html
from collections.abc import Iterable
from typing import Any

from broker.console.digest import Standing, Timeline
from broker.console.login import Session
from broker.console.lookup import Lookup

BASE = "/-/console"
LIVE_COLUMNS = ("time", "employee", "client", "request", "verdict", "reason", "records")


def h(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def layout(title: str, body: str, session: Session | None, page: str) -> str:
    nav = ""
    if session is not None:
        nav = (
            f'<nav><a href="{BASE}/">Overview</a> <a href="{BASE}/lookup">Decision look-up</a>'
            f'<form method="post" action="{BASE}/logout" class="inline">{csrf_field(session)}'
            f'<button type="submit" id="logout">Sign out {h(session.operator.name)}</button></form></nav>'
        )
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f"<title>{h(title)} · broker security console</title>"
        f'<link rel="stylesheet" href="{BASE}/static/console.css">'
        f'<script src="{BASE}/static/console.js" defer></script></head>'
        f'<body data-page="{h(page)}"><header><h1>broker security console</h1>{nav}</header>'
        f"<main>{body}</main></body></html>"
    )


def csrf_field(session: Session) -> str:
    return f'<input type="hidden" name="csrf" value="{h(session.csrf)}">'


def login_page(message: str = "") -> str:
    note = f'<p class="problem" id="login-problem">{h(message)}</p>' if message else ""
    body = (
        '<section class="login"><h2>Sign in</h2>'
        "<p>Paste the console token, or your own access token from the identity provider "
        "(your role must be one of <code>[console] admin_roles</code>).</p>"
        f'{note}<form method="post" action="{BASE}/login">'
        '<label for="credential">Token</label> <input type="password" id="credential" name="credential" '
        'autocomplete="off" required> <button type="submit" id="sign-in">Sign in</button></form></section>'
    )
    return layout("Sign in", body, None, "login")


def freeze_form(employee: str, frozen: bool, session: Session, back: str) -> str:
    action = "unfreeze" if frozen else "freeze"
    return (
        f'<form method="post" action="{BASE}/employee/{h(employee)}/{action}" class="inline">'
        f'{csrf_field(session)}<input type="hidden" name="back" value="{h(back)}">'
        f'<button type="submit" class="{action}" data-employee="{h(employee)}" data-action="{action}">'
        f"{'Unfreeze' if frozen else 'Freeze'} {h(employee)}</button></form>"
    )


def dismiss_form(employee: str, session: Session) -> str:
    return (
        f'<form method="post" action="{BASE}/employee/{h(employee)}/dismiss" class="inline">'
        f'{csrf_field(session)}<input type="hidden" name="back" value="{BASE}/">'
        f'<button type="submit" class="dismiss">Dismiss</button></form>'
    )


def flags_fragment(flags: list[dict[str, Any]], frozen: set[str], session: Session) -> str:
    if not flags:
        return '<p class="quiet" id="no-flags">No open flags.</p>'
    cards = []
    for flag in flags:
        employee = str(flag.get("employee", ""))
        state = "frozen" if employee in frozen else "not frozen"
        cards.append(
            f'<article class="flag {h(flag.get("action"))}" data-employee="{h(employee)}" '
            f'data-signal="{h(flag.get("signal"))}">'
            f'<h3><span class="signal-name">{h(flag.get("signal"))}</span> '
            f'<a href="{BASE}/employee/{h(employee)}">{h(employee)}</a> '
            f'<span class="state {"frozen" if employee in frozen else "open"}">{state}</span></h3>'
            f'<p>{h(flag.get("detail"))}</p><p class="when">{h(flag.get("time"))} · action {h(flag.get("action"))}'
            f" · severity {h(flag.get('severity') or 'medium')}</p>"
            f"{evidence_list(flag.get('evidence') or {})}"
            f"<p>{freeze_form(employee, employee in frozen, session, BASE + '/')} {dismiss_form(employee, session)}</p>"
            "</article>"
        )
    return "".join(cards)


def evidence_list(evidence: dict[str, Any]) -> str:
    items = []
    for key, value in evidence.items():
        shown = ", ".join(str(v) for v in value) if isinstance(value, list) else str(value)
        if isinstance(value, dict):
            shown = ", ".join(f"{k}: {v}" for k, v in value.items())
        items.append(f"<dt>{h(key.replace('_', ' '))}</dt><dd>{h(shown)}</dd>")
    return f'<dl class="evidence">{"".join(items)}</dl>'


def live_row(event: dict[str, Any]) -> str:
    cells = [h(cell) for cell in live_cells(event)]
    cells[1] = f'<a href="{BASE}/employee/{cells[1]}">{cells[1]}</a>' if cells[1] else ""
    verdict = "allow" if event.get("verdict") == "allow" else "deny"
    return f'<tr class="{verdict}">' + "".join(f"<td>{c}</td>" for c in cells) + "</tr>"


def live_cells(event: dict[str, Any]) -> list[str]:
    request = f"{event.get('method', '')} {event.get('path', '')}".strip()
    if event.get("door") == "pg":
        request = f"SQL {event.get('statement_kind') or ''} {','.join(event.get('tables') or [])}".strip()
    return [
        str(event.get("time", ""))[11:23],
        str(event.get("employee") or ""),
        str(event.get("client") or ""),
        request,
        str(event.get("verdict", "")),
        str(event.get("reason", "")),
        str(event.get("records_returned", "")),
    ]


def table(headings: Iterable[str], rows: Iterable[str], table_id: str) -> str:
    head = "".join(f"<th>{h(x)}</th>" for x in headings)
    return f'<table id="{table_id}"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'


def denials_fragment(series: dict[str, list[int]]) -> str:
    """One small bar chart per reason (inline SVG, no script): denials per minute."""
    if not series:
        return '<p class="quiet">No denials in the last 30 minutes.</p>'
    peak = max(max(counts) for counts in series.values()) or 1
    rows = []
    for reason, counts in series.items():
        bars = "".join(
            f'<rect x="{i * 6}" y="{30 - round(28 * c / peak)}" width="5" height="{round(28 * c / peak)}"></rect>'
            for i, c in enumerate(counts)
            if c
        )
        width = len(counts) * 6
        chart = f'<svg class="bars" viewBox="0 0 {width} 30" width="{width}" height="30">{bars}</svg>'
        rows.append(f"<tr><td>{h(reason)}</td><td class='n'>{sum(counts)}</td><td>{chart}</td></tr>")
    return table(("reason", "last 30 min", "per minute"), rows, "denials-table")


def top_fragment(standings: list[Standing]) -> str:
    rows = [
        f'<tr><td><a href="{BASE}/employee/{h(s.employee)}">{h(s.employee)}</a></td>'
        f"<td class='n'>{s.records}</td><td class='n'>{s.requests}</td><td class='n'>{s.denials}</td></tr>"
        for s in standings
    ]
    return table(("employee", "records", "requests", "denials"), rows, "top-table")


def overview_page(
    recent: list[dict[str, Any]], flags: str, denials: str, top: str, missed: int, session: Session
) -> str:
    warning = f'<p class="problem">The console fell behind and missed {missed} events.</p>' if missed else ""
    live = table(LIVE_COLUMNS, (live_row(e) for e in reversed(recent)), "live-table")
    body = (
        f'{warning}<div class="grid"><section><h2>Open flags</h2><div id="flags">{flags}</div></section>'
        f'<section><h2>Denials by reason</h2><div id="denials">{denials}</div>'
        f'<h2>Top employees by records (24 h)</h2><div id="top">{top}</div></section></div>'
        f'<section><h2>Live decisions <span id="live-state" class="quiet">connecting…</span></h2>{live}</section>'
    )
    return layout("Overview", body, session, "overview")


def employee_page(
    employee: str,
    known: bool,
    frozen: bool,
    timeline: Timeline | None,
    quotas: list[dict[str, Any]],
    session: Session,
) -> str:
    state = '<span class="state frozen">frozen</span>' if frozen else '<span class="state open">not frozen</span>'
    roster = "" if known else '<p class="problem">Not on the roster of the live policy.</p>'
    quota_rows = [
        f"<tr><td>{h(q['resource'])}</td><td class='n'>{h(q['used'])}</td><td class='n'>{h(q['limit'])}</td>"
        f"<td>{h(q['resets_at'])}</td></tr>"
        for q in quotas
    ]
    addresses = timeline.addresses.items() if timeline else []
    address_rows = [
        f"<tr><td>{h(a)}</td><td>{h(s.first)}</td><td>{h(s.last)}</td><td class='n'>{s.requests}</td></tr>"
        for a, s in reversed(list(addresses))
    ]
    events = list(reversed(timeline.events)) if timeline else []
    body = (
        f'<h2>Employee <span id="employee-id">{h(employee)}</span> {state}</h2>{roster}'
        f"<p>{freeze_form(employee, frozen, session, f'{BASE}/employee/{employee}')}</p>"
        f"<section><h3>Quota use</h3>{table(('resource', 'used', 'limit', 'resets'), quota_rows, 'quota-table')}"
        f"</section><section><h3>Addresses</h3>"
        f"{table(('address', 'first seen', 'last seen', 'requests'), address_rows, 'address-table')}</section>"
        f"<section><h3>Timeline</h3>{table(('time', 'what', 'detail'), map(timeline_row, events), 'timeline')}"
        "</section>"
    )
    return layout(employee, body, session, "employee")


def timeline_row(event: dict[str, Any]) -> str:
    kind = event.get("event") or "decision"
    when = h(event.get("time"))
    if kind == "signal":
        what, detail = f"flag: {event.get('signal')}", event.get("detail")
    elif kind == "console":
        what, detail = f"console: {event.get('action')}", f"by {event.get('operator')} from {event.get('client')}"
    else:
        cells = live_cells(event)
        what = f"{cells[4]} {cells[5]}"
        decision = event.get("decision_id")
        link = f' <a href="{BASE}/lookup?id={h(decision)}">why?</a>' if decision else ""
        detail = f"{h(cells[3])} from {h(cells[2])}, {h(cells[6])} records{link}"
        return f'<tr class="{h(cells[4])}"><td>{when}</td><td>{h(what)}</td><td>{detail}</td></tr>'
    return f'<tr class="{h(kind)}"><td>{when}</td><td>{h(what)}</td><td>{h(detail)}</td></tr>'


def lookup_page(decision_id: str, found: Lookup | None, session: Session) -> str:
    form = (
        f'<form method="get" action="{BASE}/lookup"><label for="decision-id">Decision id</label> '
        f'<input id="decision-id" name="id" value="{h(decision_id)}" size="30"> '
        '<button type="submit" id="look-up">Look up</button></form>'
    )
    result = ""
    if found is not None:
        result = f'<p class="problem">{h(found.problem)}</p>' if found.problem else ""
        if found.event is not None:
            result += f"<h3>Recorded</h3>{table(LIVE_COLUMNS, [live_row(found.event)], 'recorded')}"
            detail = found.event.get("detail")
            result += f'<p class="detail">{h(detail)}</p>' if detail else ""
        if found.explanation is not None:
            trace = h(found.explanation.as_text())
            result += f'<h3>Explained again under the live policy</h3><pre id="explanation">{trace}</pre>'
            note = found.recorded.get("note")
            result += f'<p class="problem">{h(note)}</p>' if note else ""
    body = f"<h2>Why was I refused?</h2>{form}{result}"
    return layout("Decision look-up", body, session, "lookup")

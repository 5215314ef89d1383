"""The bundled sample logistics API that the broker demo (and its tests) sits in front of.

It is deliberately a trusting legacy service: no authentication, no branch scoping, and no
cap on `limit`, so `?limit=100000` dumps every waybill with names, phones and addresses.
Guarding exactly that is the broker's job; this app must not grow its own checks.

It doubles as the benchmark upstream, so request handling is kept to slicing precomputed
lists: every record is serialised to JSON once, when the app is built, and a page is the
join of those byte strings. Broker overhead then dominates any measurement, not this app.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Final

import orjson
from aiohttp import web

from broker.demo.data import (
    BRANCHES,
    SERVICES,
    STATUSES,
    WAYBILL_PREFIX,
    WAYBILL_SERIAL_HIGH,
    generate_customers,
    generate_waybills,
)

DEFAULT_LIMIT: Final = 20
"""Page size when the caller gives none. There is no maximum, on purpose."""

_JSON: Final = "application/json"
_PARTY_FIELDS: Final = ("name", "phone", "address")

_Record = dict[str, object]
_ListKey = tuple[str | None, str | None]
"""(branch_code, status); None means "any"."""


class UpstreamStore:
    """The app's data: JSON bytes per record plus every listing precomputed.

    Listings are kept for each (branch or any, status or any) pair, so a filtered page
    with its total is a dictionary lookup and a slice, whatever the filter.
    """

    def __init__(self, waybills: Iterable[_Record], customers: Iterable[_Record]) -> None:
        self.branch_codes: Final = frozenset(branch.code for branch in BRANCHES)
        self.waybills: dict[str, bytes] = {}
        self.waybill_lists: dict[_ListKey, list[bytes]] = {
            (branch, status): [] for branch in (None, *sorted(self.branch_codes)) for status in (None, *STATUSES)
        }
        self.customers: dict[str, bytes] = {}
        self.customer_lists: dict[str, list[bytes]] = {code: [] for code in self.branch_codes}
        self._next_serial = WAYBILL_SERIAL_HIGH
        self.scans: dict[str, list[str]] = {}
        for waybill in waybills:
            self.add_waybill(waybill)
        for customer in customers:
            self._add_customer(customer)

    def add_waybill(self, record: _Record) -> None:
        """Store a waybill and append it to the four listings it belongs to."""
        encoded = orjson.dumps(record)
        branch, status = str(record["branch_code"]), str(record["status"])
        self.waybills[str(record["waybill_no"])] = encoded
        for key in ((None, None), (branch, None), (None, status), (branch, status)):
            self.waybill_lists[key].append(encoded)

    def scan(self, waybill_no: str, status: str) -> _Record | None:
        """Record a depot scan; the waybill with its scans so far, or None if unknown."""
        encoded = self.waybills.get(waybill_no)
        if encoded is None:
            return None
        scans = self.scans.setdefault(waybill_no, [])
        scans.append(status)
        record: _Record = orjson.loads(encoded)
        record["scans"] = list(scans)
        return record

    def mint_waybill_no(self) -> str:
        """A fresh number above every generated one, so it can never collide."""
        serial = self._next_serial
        self._next_serial += 1
        return f"{WAYBILL_PREFIX}{serial}"

    def _add_customer(self, record: _Record) -> None:
        encoded = orjson.dumps(record)
        self.customers[str(record["customer_id"])] = encoded
        self.customer_lists[str(record["branch_code"])].append(encoded)


UPSTREAM_STORE: Final = web.AppKey("upstream_store", UpstreamStore)


def build_upstream_app(waybill_count: int = 36_000, seed: int = 7) -> web.Application:
    """The sample API with `waybill_count` waybills (from `seed`) and 6,000 customers."""
    app = web.Application()
    app[UPSTREAM_STORE] = UpstreamStore(generate_waybills(waybill_count, seed), generate_customers())
    app.router.add_get("/api/health", _health)
    app.router.add_get("/api/waybills", _list_waybills)
    app.router.add_post("/api/waybills", _create_waybill)
    app.router.add_get("/api/waybills/{waybill_no}", _get_waybill)
    app.router.add_post("/api/waybills/{waybill_no}/scans", _scan_waybill)
    app.router.add_get("/api/branches/{branch}/waybills", _list_branch_waybills)
    app.router.add_get("/api/branches/{branch}/customers", _list_branch_customers)
    app.router.add_get("/api/customers/{customer_id}", _get_customer)
    return app


async def _health(request: web.Request) -> web.Response:
    return _json_bytes(b'{"ok":true}')


async def _list_waybills(request: web.Request) -> web.Response:
    """All branches unless `branch` is given; an unknown branch or status just matches nothing.

    An empty `branch=` or `status=` counts as absent, as in the legacy API being imitated.
    """
    store = request.app[UPSTREAM_STORE]
    key = (request.query.get("branch") or None, request.query.get("status") or None)
    return _page(store.waybill_lists.get(key, ()), request.query)


async def _list_branch_waybills(request: web.Request) -> web.Response:
    store = request.app[UPSTREAM_STORE]
    branch = _known_branch(store, request.match_info["branch"])
    key = (branch, request.query.get("status") or None)
    return _page(store.waybill_lists.get(key, ()), request.query)


async def _list_branch_customers(request: web.Request) -> web.Response:
    store = request.app[UPSTREAM_STORE]
    branch = _known_branch(store, request.match_info["branch"])
    return _page(store.customer_lists[branch], request.query)


async def _get_waybill(request: web.Request) -> web.Response:
    waybill_no = request.match_info["waybill_no"]
    return _json_bytes(_lookup(request.app[UPSTREAM_STORE].waybills, waybill_no, "waybill"))


async def _get_customer(request: web.Request) -> web.Response:
    customer_id = request.match_info["customer_id"]
    return _json_bytes(_lookup(request.app[UPSTREAM_STORE].customers, customer_id, "customer"))


async def _create_waybill(request: web.Request) -> web.Response:
    """Accept a new shipment; the server assigns its number, status and timestamp."""
    store = request.app[UPSTREAM_STORE]
    try:
        body = orjson.loads(await request.read())
    except orjson.JSONDecodeError as exc:
        raise _error(web.HTTPBadRequest, "invalid_json", str(exc)) from None
    record = _new_waybill(body, store)
    store.add_waybill(record)
    return _json_bytes(orjson.dumps(record), status=201)


SCAN_STATUSES = ("arrived", "sorted", "out_for_delivery", "delivered")


async def _scan_waybill(request: web.Request) -> web.Response:
    """A scan at a depot: the waybill's status changes. The body names no branch (as in
    the legacy API): the broker looks the waybill up to learn whose it is."""
    store = request.app[UPSTREAM_STORE]
    try:
        body = orjson.loads(await request.read())
    except orjson.JSONDecodeError as exc:
        raise _error(web.HTTPBadRequest, "invalid_json", str(exc)) from None
    status = body.get("status") if isinstance(body, dict) else None
    if status not in SCAN_STATUSES:
        raise _invalid(f"status must be one of {', '.join(SCAN_STATUSES)}")
    record = store.scan(request.match_info["waybill_no"], status)
    if record is None:
        raise _error(web.HTTPNotFound, "not_found", "no such waybill")
    return _json_bytes(orjson.dumps(record), status=201)


def _new_waybill(body: object, store: UpstreamStore) -> _Record:
    """The stored record for a POST body: minimal checks, server-owned fields filled in."""
    if not isinstance(body, dict):
        raise _invalid("body must be a JSON object")
    branch = body.get("branch_code")
    if not isinstance(branch, str) or branch not in store.branch_codes:
        raise _invalid("branch_code must be one of the known branch codes")
    service = body.get("service", "standard")
    if service not in SERVICES:
        raise _invalid(f"service must be one of {', '.join(SERVICES)}")
    return {
        "waybill_no": store.mint_waybill_no(),
        "branch_code": branch,
        "status": "created",
        "service": service,
        "created_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "weight_kg": _optional_number(body, "weight_kg"),
        "pieces": _optional_number(body, "pieces", default=1, integral=True),
        "sender": _party(body, "sender", required=False),
        "recipient": _party(body, "recipient", required=True),
        "items": _optional_text(body, "items"),
        "declared_value_cny": _optional_number(body, "declared_value_cny", default=0),
        "payment": _optional_text(body, "payment", default="sender_pays"),
        "channel": _optional_text(body, "channel", default="merchant_api"),
    }


def _party(body: Mapping[str, object], field: str, *, required: bool) -> dict[str, str] | None:
    """A sender/recipient object with non-empty string name, phone and address."""
    value = body.get(field)
    if value is None and not required:
        return None
    if not isinstance(value, dict):
        raise _invalid(f"{field} must be an object with {', '.join(_PARTY_FIELDS)}")
    party: dict[str, str] = {}
    for name in _PARTY_FIELDS:
        text = value.get(name)
        if not isinstance(text, str) or not text:
            raise _invalid(f"{field}.{name} must be a non-empty string")
        party[name] = text
    return party


def _optional_number(
    body: Mapping[str, object],
    field: str,
    *,
    default: float | None = None,
    integral: bool = False,
) -> float | None:
    """A non-negative number (an integer if `integral`), or `default` when absent."""
    value = body.get(field)
    if value is None:
        return default
    kind = "integer" if integral else "number"
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise _invalid(f"{field} must be a non-negative {kind}")
    if integral and not isinstance(value, int):
        raise _invalid(f"{field} must be a non-negative {kind}")
    return value


def _optional_text(body: Mapping[str, object], field: str, *, default: str = "") -> str:
    value = body.get(field, default)
    if not isinstance(value, str):
        raise _invalid(f"{field} must be a string")
    return value


def _known_branch(store: UpstreamStore, branch: str) -> str:
    if branch not in store.branch_codes:
        raise _error(web.HTTPNotFound, "not_found", f"unknown branch {branch}")
    return branch


def _lookup(table: Mapping[str, bytes], key: str, kind: str) -> bytes:
    try:
        return table[key]
    except KeyError:
        raise _error(web.HTTPNotFound, "not_found", f"unknown {kind} {key}") from None


def _page(rows: Sequence[bytes], query: Mapping[str, str]) -> web.Response:
    """`{"items": [...], "total", "limit", "offset"}` spliced from pre-encoded rows."""
    limit = _non_negative(query, "limit", DEFAULT_LIMIT)
    offset = _non_negative(query, "offset", 0)
    items = b",".join(rows[offset : offset + limit])
    tail = b'],"total":%d,"limit":%d,"offset":%d}' % (len(rows), limit, offset)
    return _json_bytes(b'{"items":[' + items + tail)


def _non_negative(query: Mapping[str, str], name: str, default: int) -> int:
    """A query integer, digits only: no sign, no spaces, no underscores (which int() allows)."""
    raw = query.get(name)
    if raw is None:
        return default
    if raw.isascii() and raw.isdigit():
        try:
            return int(raw)
        except ValueError:  # longer than int()'s digit limit
            pass
    raise _error(web.HTTPBadRequest, "invalid_query", f"{name} must be a non-negative integer")


def _invalid(detail: str) -> web.HTTPException:
    return _error(web.HTTPBadRequest, "invalid_waybill", detail)


def _error(kind: type[web.HTTPException], code: str, detail: str) -> web.HTTPException:
    """An aiohttp HTTP exception carrying a JSON body, raised by the handlers.

    `text=`, not `body=`: aiohttp deprecates bodies on its HTTP exceptions.
    """
    text = orjson.dumps({"error": code, "detail": detail}).decode()
    return kind(text=text, content_type=_JSON)


def _json_bytes(body: bytes, status: int = 200) -> web.Response:
    return web.Response(body=body, status=status, content_type=_JSON)


def main() -> None:
    """The sample API alone (deploy/compose.yaml runs it as its own service)."""
    import argparse  # noqa: PLC0415 - only when run as a program

    parser = argparse.ArgumentParser(description="the sample logistics API behind the broker in the demo")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8081)
    args = parser.parse_args()
    web.run_app(build_upstream_app(), host=args.host, port=args.port, access_log=None)


if __name__ == "__main__":
    main()

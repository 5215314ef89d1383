"""The demo's fake data and the trusting sample API the broker is demonstrated against."""

from __future__ import annotations

import re
import time
from collections import Counter
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from broker.demo.data import (
    BRANCHES,
    STATUSES,
    TIERS,
    generate_customers,
    generate_waybills,
)
from broker.demo.upstream import DEFAULT_LIMIT, build_upstream_app

Client = TestClient[web.Request, web.Application]

SMALL_COUNT = 600
"""Waybills in the app under test: enough for every branch and status, cheap to build."""

WAYBILL_NO = re.compile(r"SF\d{10}")
MOBILE = re.compile(r"1[3-9]\d{9}")
ISO_UTC = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z")
CITY_OF = {branch.code: branch.city for branch in BRANCHES}


@pytest.fixture(scope="module")
def full_waybills() -> list[dict[str, object]]:
    return generate_waybills()


@pytest.fixture(scope="module")
def small_waybills() -> list[dict[str, object]]:
    return generate_waybills(SMALL_COUNT)


@pytest.fixture(scope="module")
def customers() -> list[dict[str, object]]:
    return generate_customers()


@pytest.fixture
async def client() -> AsyncIterator[Client]:
    async with TestClient(TestServer(build_upstream_app(waybill_count=SMALL_COUNT))) as client:
        yield client


async def get_json(client: Client, path: str, status: int = 200) -> dict[str, object]:
    response = await client.get(path)
    assert response.status == status, await response.text()
    assert response.content_type == "application/json"
    body = orjson.loads(await response.read())
    assert isinstance(body, dict)
    return body


def items_of(body: dict[str, object]) -> list[dict[str, object]]:
    items = body["items"]
    assert isinstance(items, list)
    return items


def new_waybill(**overrides: object) -> dict[str, object]:
    body: dict[str, object] = {
        "branch_code": "BR004",
        "recipient": {"name": "Li Na", "phone": "13800138000", "address": "No. 1 Tiyu Road"},
        "weight_kg": 2.5,
        "items": "1 x rice cooker",
    }
    body.update(overrides)
    return body


# --- data -------------------------------------------------------------------------------


def test_branches_are_the_twelve_depots() -> None:
    assert [branch.code for branch in BRANCHES] == [f"BR{n:03d}" for n in range(1, 13)]
    assert len({branch.city for branch in BRANCHES}) == 12
    zones = {branch.city: branch.time_zone for branch in BRANCHES}
    assert zones.pop("Urumqi") == "Asia/Urumqi"
    assert set(zones.values()) == {"Asia/Shanghai"}


def test_same_seed_gives_same_data() -> None:
    assert generate_waybills(200, seed=3) == generate_waybills(200, seed=3)
    assert generate_customers(200, seed=3) == generate_customers(200, seed=3)


def test_different_seed_gives_different_data() -> None:
    first, second = generate_waybills(50, seed=1), generate_waybills(50, seed=2)
    assert first[0] != second[0]
    assert generate_customers(50, seed=1)[0] != generate_customers(50, seed=2)[0]


def test_default_seed_is_stable(small_waybills: list[dict[str, object]]) -> None:
    assert small_waybills == generate_waybills(SMALL_COUNT, seed=7)


def test_counts_are_honoured() -> None:
    assert generate_waybills(0) == []
    assert len(generate_waybills(1)) == 1
    assert len(generate_customers(17)) == 17
    with pytest.raises(ValueError, match="count"):
        generate_waybills(-1)


def test_all_branches_roughly_even(full_waybills: list[dict[str, object]]) -> None:
    per_branch = Counter(record["branch_code"] for record in full_waybills)
    assert set(per_branch) == set(CITY_OF)
    fair_share = len(full_waybills) / len(BRANCHES)
    assert all(0.9 * fair_share < n < 1.1 * fair_share for n in per_branch.values())


def test_every_status_occurs(full_waybills: list[dict[str, object]]) -> None:
    assert set(Counter(record["status"] for record in full_waybills)) == set(STATUSES)


def test_record_size_in_range(full_waybills: list[dict[str, object]]) -> None:
    sizes = [len(orjson.dumps(record)) for record in full_waybills]
    assert min(sizes) >= 450
    assert max(sizes) <= 650


def test_waybill_numbers_unique_and_well_formed(full_waybills: list[dict[str, object]]) -> None:
    numbers = [record["waybill_no"] for record in full_waybills]
    assert len(set(numbers)) == len(numbers)
    assert all(isinstance(n, str) and WAYBILL_NO.fullmatch(n) for n in numbers)


def test_waybill_fields(small_waybills: list[dict[str, object]]) -> None:
    for record in small_waybills:
        assert record["status"] in STATUSES
        created = record["created_at"]
        assert isinstance(created, str)
        assert ISO_UTC.fullmatch(created)
        assert datetime.fromisoformat(created).astimezone(UTC).year == 2026
        weight = record["weight_kg"]
        assert isinstance(weight, float)
        assert 0 < weight <= 30
        assert round(weight, 1) == weight
        assert isinstance(record["items"], str)
        assert record["items"]
        for party in (record["sender"], record["recipient"]):
            assert isinstance(party, dict)
            assert set(party) == {"name", "phone", "address"}
            assert MOBILE.fullmatch(party["phone"])
            assert party["name"].count(" ") == 1


def test_sender_is_in_branch_city(small_waybills: list[dict[str, object]]) -> None:
    for record in small_waybills:
        sender = record["sender"]
        assert isinstance(sender, dict)
        assert f", {CITY_OF[str(record['branch_code'])]} " in sender["address"]


def test_listing_order_is_oldest_first(small_waybills: list[dict[str, object]]) -> None:
    stamps = [str(record["created_at"]) for record in small_waybills]
    assert stamps == sorted(stamps)


def test_customers(customers: list[dict[str, object]]) -> None:
    assert len(customers) == 6000
    assert customers[0]["customer_id"] == "CU000001"
    assert len({c["customer_id"] for c in customers}) == len(customers)
    assert {c["branch_code"] for c in customers} == set(CITY_OF)
    for customer in customers[:200]:
        assert set(customer) == {"customer_id", "branch_code", "name", "phone", "address", "tier"}
        assert customer["tier"] in TIERS
        assert MOBILE.fullmatch(str(customer["phone"]))
        assert f", {CITY_OF[str(customer['branch_code'])]} " in str(customer["address"])


def test_full_generation_is_cheap() -> None:
    """A regression guard only (about 0.2 s when measured): catches per-record heavy work."""
    started = time.perf_counter()
    generate_waybills()
    assert time.perf_counter() - started < 2.0


# --- API: listings ----------------------------------------------------------------------


async def test_health(client: Client) -> None:
    assert await get_json(client, "/api/health") == {"ok": True}


async def test_list_defaults(client: Client, small_waybills: list[dict[str, object]]) -> None:
    body = await get_json(client, "/api/waybills")
    assert (body["total"], body["limit"], body["offset"]) == (SMALL_COUNT, DEFAULT_LIMIT, 0)
    assert items_of(body) == small_waybills[:DEFAULT_LIMIT]


async def test_limit_and_offset(client: Client, small_waybills: list[dict[str, object]]) -> None:
    body = await get_json(client, "/api/waybills?limit=5&offset=10")
    assert (body["total"], body["limit"], body["offset"]) == (SMALL_COUNT, 5, 10)
    assert items_of(body) == small_waybills[10:15]


async def test_limit_has_no_maximum(client: Client) -> None:
    body = await get_json(client, "/api/waybills?limit=100000")
    assert len(items_of(body)) == SMALL_COUNT
    assert body["limit"] == 100_000


async def test_offset_past_the_end(client: Client) -> None:
    body = await get_json(client, f"/api/waybills?offset={SMALL_COUNT + 5}")
    assert items_of(body) == []
    assert body["total"] == SMALL_COUNT


async def test_limit_zero_counts_only(client: Client) -> None:
    body = await get_json(client, "/api/waybills?limit=0&status=delivered")
    assert items_of(body) == []
    assert isinstance(body["total"], int)
    assert body["total"] > 0


async def test_branch_filter(client: Client, small_waybills: list[dict[str, object]]) -> None:
    expected = [r for r in small_waybills if r["branch_code"] == "BR003"]
    body = await get_json(client, "/api/waybills?branch=BR003&limit=100000")
    assert body["total"] == len(expected)
    assert items_of(body) == expected


async def test_branch_and_status_filter(client: Client, small_waybills: list[dict[str, object]]) -> None:
    expected = [r for r in small_waybills if r["branch_code"] == "BR005" and r["status"] == "delivered"]
    body = await get_json(client, "/api/waybills?branch=BR005&status=delivered&limit=3")
    assert body["total"] == len(expected)
    assert items_of(body) == expected[:3]


async def test_unknown_filters_match_nothing(client: Client) -> None:
    for query in ("branch=BR999", "status=lost"):
        body = await get_json(client, f"/api/waybills?{query}")
        assert (body["total"], items_of(body)) == (0, [])


async def test_repeated_parameter_uses_first_value(client: Client) -> None:
    body = await get_json(client, "/api/waybills?branch=BR001&branch=BR002&limit=100000")
    assert {item["branch_code"] for item in items_of(body)} == {"BR001"}
    body = await get_json(client, "/api/waybills?limit=2&limit=50")
    assert len(items_of(body)) == 2


@pytest.mark.parametrize(
    "query",
    ["limit=-1", "limit=abc", "limit=1.5", "limit=", "limit=+5", "limit=1_0", "offset=-3"],
)
async def test_bad_window_is_400(client: Client, query: str) -> None:
    body = await get_json(client, f"/api/waybills?{query}", status=400)
    assert body["error"] == "invalid_query"


async def test_branch_path_listing(client: Client, small_waybills: list[dict[str, object]]) -> None:
    expected = [r for r in small_waybills if r["branch_code"] == "BR002" and r["status"] == "in_transit"]
    body = await get_json(client, "/api/branches/BR002/waybills?status=in_transit&limit=100000")
    assert body["total"] == len(expected)
    assert items_of(body) == expected


async def test_branch_path_rejects_bad_window(client: Client) -> None:
    await get_json(client, "/api/branches/BR002/waybills?offset=x", status=400)


async def test_unknown_branch_path_is_404(client: Client) -> None:
    for path in ("/api/branches/BR999/waybills", "/api/branches/BR999/customers"):
        body = await get_json(client, path, status=404)
        assert body["error"] == "not_found"


# --- API: single records and customers --------------------------------------------------


async def test_get_waybill(client: Client, small_waybills: list[dict[str, object]]) -> None:
    record = small_waybills[123]
    assert await get_json(client, f"/api/waybills/{record['waybill_no']}") == record


async def test_unknown_waybill_is_404(client: Client) -> None:
    body = await get_json(client, "/api/waybills/SF0000000000", status=404)
    assert body["error"] == "not_found"


async def test_branch_customers(client: Client, customers: list[dict[str, object]]) -> None:
    expected = [c for c in customers if c["branch_code"] == "BR001"]
    body = await get_json(client, "/api/branches/BR001/customers?limit=3&offset=1")
    assert body["total"] == len(expected)
    assert items_of(body) == expected[1:4]


async def test_get_customer(client: Client, customers: list[dict[str, object]]) -> None:
    assert await get_json(client, "/api/customers/CU000042") == customers[41]
    await get_json(client, "/api/customers/CU999999", status=404)


# --- API: creating waybills -------------------------------------------------------------


async def test_create_waybill(client: Client) -> None:
    before = await get_json(client, "/api/branches/BR004/waybills?status=created&limit=0")
    response = await client.post("/api/waybills", json=new_waybill())
    assert response.status == 201
    assert response.content_type == "application/json"
    created = orjson.loads(await response.read())
    assert WAYBILL_NO.fullmatch(created["waybill_no"])
    assert created["status"] == "created"
    assert created["branch_code"] == "BR004"
    assert created["sender"] is None
    assert created["weight_kg"] == 2.5
    assert ISO_UTC.fullmatch(created["created_at"])

    assert await get_json(client, f"/api/waybills/{created['waybill_no']}") == created
    after = await get_json(client, "/api/branches/BR004/waybills?status=created&limit=0")
    assert isinstance(before["total"], int)
    assert after["total"] == before["total"] + 1
    everything = await get_json(client, "/api/waybills?limit=0")
    assert everything["total"] == SMALL_COUNT + 1


async def test_created_numbers_are_fresh(client: Client) -> None:
    numbers = []
    for _ in range(3):
        response = await client.post("/api/waybills", json=new_waybill())
        numbers.append(orjson.loads(await response.read())["waybill_no"])
    assert len(set(numbers)) == 3


async def test_create_ignores_client_chosen_identity(client: Client) -> None:
    body = new_waybill(waybill_no="SF1234567890", status="delivered")
    response = await client.post("/api/waybills", json=body)
    created = orjson.loads(await response.read())
    assert created["waybill_no"] != "SF1234567890"
    assert created["status"] == "created"


@pytest.mark.parametrize(
    "body",
    [
        [],
        {"recipient": new_waybill()["recipient"]},
        new_waybill(branch_code="BR999"),
        new_waybill(recipient=None),
        new_waybill(recipient={"name": "Li Na", "phone": "13800138000"}),
        new_waybill(sender="somebody"),
        new_waybill(weight_kg=-1),
        new_waybill(weight_kg="heavy"),
        new_waybill(pieces=True),
        new_waybill(pieces=1.5),
        new_waybill(service="teleport"),
    ],
)
async def test_create_rejects_bad_body(client: Client, body: object) -> None:
    response = await client.post("/api/waybills", json=body)
    assert response.status == 400
    assert orjson.loads(await response.read())["error"] == "invalid_waybill"


async def test_create_rejects_non_json(client: Client) -> None:
    response = await client.post("/api/waybills", data=b"{not json")
    assert response.status == 400
    assert orjson.loads(await response.read())["error"] == "invalid_json"

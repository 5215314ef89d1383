"""The byte-count proof (`scan_listed`) must never disagree with the walk (`scan_records`):
wherever the bytes could hide a record the walk would find, the proof steps aside."""

from __future__ import annotations

import orjson
import pytest

from broker.core.reason import Reason
from broker.http.inspect import inspect_records
from broker.policy.record_scan import in_expected_place, scan_listed, scan_records
from broker.policy.route import Route


def route(records: str = "list", items: str = "items", field: str = "branch_code") -> Route:
    return Route(
        name="r",
        methods=frozenset({"GET"}),
        segments=("api", "waybills"),
        resource="waybill",
        action="read",
        branch_from="record",  # type: ignore[arg-type]
        branch_name="",
        records=records,  # type: ignore[arg-type]
        limit_param="limit",
        default_limit=None,
        response_items=tuple(items.split(".")) if items else (),
        branch_field=field,
        branch_path=tuple(field.split(".")),
        line=1,
    )


MINE = frozenset({"BR001"})

LISTS = [
    b'{"items":[{"branch_code":"BR001","id":1},{"branch_code":"BR001","id":2}]}',
    b'{"items":[]}',
    b'{"items":[{"branch_code":"BR002","id":1}]}',
    b'{"items":[{"branch_code":"","id":1}]}',
    b'{"items":[{"branch_code":7}]}',
    # records the list does not show, each of which the proof must leave to the walk
    b'{"items":[{"branch_code":"BR001","related":[{"branch_code":"BR002"}]}]}',
    b'{"items":[{"branch_code":"BR001"}],"more":[{"branch_code":"BR002"}]}',
    b'{"branch_code":"BR002","items":[{"branch_code":"BR001"}]}',
    b'{"items":[{"branch_code":"BR001","r":{"\\u0062ranch_code":"BR002"}}]}',
    b'{"items":[{"branch_code":"BR001","r":{"branch_\\u0063ode":"BR002"}}]}',
    b'{"items":[{"branch_code":"BR001","branch_code":"BR002"}]}',
    b'{"items":[{"branch_code":"BR001","note":"branch_code"}]}',
    b'{"items":[{"branch_code":"BR001","note":"say \\"branch_code\\""}]}',
]


@pytest.mark.parametrize("body", LISTS)
def test_the_proof_agrees_with_the_walk_on_list_answers(body: bytes) -> None:
    r = route()
    document = orjson.loads(body)
    assert in_expected_place(r, document)
    walked = scan_records(document, r.branch_path, MINE)
    proven = scan_listed(r, document, body, MINE)
    assert proven is None or proven == walked


@pytest.mark.parametrize(
    "body",
    [
        b'{"branch_code":"BR001","id":1}',
        b'{"branch_code":"BR001","copy":{"branch_code":"BR002"}}',
        b'{"branch_code":"BR001","copy":{"\\u0062ranch_code":"BR002"}}',
    ],
)
def test_the_proof_agrees_with_the_walk_on_one_record_answers(body: bytes) -> None:
    r = route("one", items="")
    document = orjson.loads(body)
    walked = scan_records(document, r.branch_path, MINE)
    proven = scan_listed(r, document, body, MINE)
    assert proven is None or proven == walked


def test_the_proof_agrees_with_the_walk_for_a_dotted_branch_field() -> None:
    r = route(field="org.branch")
    for body in (
        b'{"items":[{"org":{"branch":"BR001"}}]}',
        b'{"items":[{"org":{"branch":"BR001"},"x":{"org":{"branch":"BR002"}}}]}',
    ):
        document = orjson.loads(body)
        walked = scan_records(document, r.branch_path, MINE)
        proven = scan_listed(r, document, body, MINE)
        assert proven is None or proven == walked


def test_the_proof_decides_a_plain_answer_without_the_walk() -> None:
    """The point of the proof: the common answer is counted from the bytes."""
    body = LISTS[0]
    assert scan_listed(route(), orjson.loads(body), body, MINE) is not None


def test_an_escaped_key_hiding_another_branchs_record_is_still_refused() -> None:
    body = b'{"items":[{"branch_code":"BR001","r":{"\\u0062ranch_code":"BR002","phone":"1"}}]}'
    counted = inspect_records(route(), body, 10, MINE)
    assert counted.violation is Reason.UPSTREAM_OTHER_BRANCH


def test_a_record_written_twice_under_one_key_is_counted_as_the_walk_counts_it() -> None:
    body = b'{"items":[{"branch_code":"BR001"}],"also":{"branch_code":"BR001"}}'
    counted = inspect_records(route(), body, 1, MINE)
    assert counted.violation is Reason.UPSTREAM_TOO_MANY_RECORDS


@pytest.mark.parametrize(
    "body",
    [
        b'{"items":{"branch_code":"BR001"}}',  # one record where a list was promised
        b'{"items":[{"branch_code":"BR001"},"BR001"]}',  # an element that is no record
        b'{"items":[{"branch_code":"BR001"},{"branch":"BR002"}]}',  # a record under another field name
        b'{"result":[{"branch_code":"BR001"}]}',  # the list somewhere else
        b'[{"branch_code":"BR001"}]',
    ],
)
def test_an_answer_not_shaped_as_the_route_says_is_left_to_the_place_check_and_refused(body: bytes) -> None:
    """The proof also checks the place in its one pass: it must never vouch for an answer
    whose records are not where the route map says (the map would be wrong, and records
    under another field name would pass uncounted)."""
    assert scan_listed(route(), orjson.loads(body), body, MINE) is None
    counted = inspect_records(route(), body, 10, MINE)
    assert counted.violation is Reason.UPSTREAM_UNINSPECTABLE and counted.misfit


def test_a_one_record_answer_that_is_a_list_is_refused_as_a_misfit() -> None:
    body = b'[{"branch_code":"BR001"}]'
    assert scan_listed(route("one", items=""), orjson.loads(body), body, MINE) is None
    assert inspect_records(route("one", items=""), body, 10, MINE).misfit


@pytest.mark.parametrize(
    "body",
    [
        b'{"items":[{"branch_code":"BR001","id":1}],"items":[{"branch_code":"BR001"}]}',
        b'{"items":[{"id":1}],"items":[{"branch_code":"BR001"}]}',
        b'{"items":[{"branch_code":"BR002","branch_code":"BR001"}]}',
    ],
)
def test_the_byte_proof_never_vouches_for_an_answer_naming_a_key_twice(body: bytes) -> None:
    assert scan_listed(route(), orjson.loads(body), body, MINE) is None
    assert inspect_records(route(), body, 10, MINE).violation is Reason.UPSTREAM_UNINSPECTABLE


def test_a_dotted_branch_field_named_twice_is_not_vouched_for() -> None:
    r = route(field="org.branch")
    body = b'{"items":[{"org":{"branch":"BR002","branch":"BR001"}}]}'
    assert scan_listed(r, orjson.loads(body), body, MINE) is None
    assert inspect_records(r, body, 10, MINE).violation is Reason.UPSTREAM_UNINSPECTABLE


def test_a_repeated_key_that_hides_nothing_of_the_route_is_not_refused() -> None:
    """The strict parse is for what a repeat could hide: a walked answer whose every
    branch key and path key is accounted for by the bytes is counted as before."""
    body = b'{"items":[{"branch_code":"BR001","related":[{"branch_code":"BR001"}],"note":1,"note":2}]}'
    assert inspect_records(route(), body, 10, MINE) == (2, None, "", False)


def test_records_with_a_field_named_like_the_list_are_still_proven_from_the_bytes() -> None:
    """The sample API's waybills carry an `items` field of their own (what is in the
    parcel), beside the `items` list: the proof counts one occurrence per record naming it."""
    body = b'{"items":[{"branch_code":"BR001","items":"2 x lamp"},{"branch_code":"BR001","items":"a book"}]}'
    assert scan_listed(route(), orjson.loads(body), body, MINE) == (2, False, False, False)
    hidden = b'{"items":[{"id":1,"items":"x"}],"items":[{"branch_code":"BR001","items":"a book"}]}'
    assert scan_listed(route(), orjson.loads(hidden), hidden, MINE) is None
    assert inspect_records(route(), hidden, 10, MINE).violation is Reason.UPSTREAM_UNINSPECTABLE

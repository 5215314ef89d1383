"""A session's statements and portals under the broker's names, without sockets: the
messages the server gets, and what changes when it answers."""

from __future__ import annotations

from broker.pg.relay import Metered, Pending
from broker.pg.server_objects import Portal, Prepared, ServerObjects
from broker.pg.wire import Cursor

SELECT_1 = Prepared("SELECT 1", None, None, "SELECT 1", "rev")


def names_sent(forward: list[tuple[bytes, Pending]]) -> list[tuple[bytes, str]]:
    """(message type, the first name in it) of each message."""
    found = []
    for data, _ in forward:
        fields = Cursor(data[5:])
        if data[:1] in (b"C", b"D"):
            fields.byte()
        found.append((data[:1], fields.cstring()))
    return found


def confirm(forward: list[tuple[bytes, Pending]]) -> None:
    for _, pending in forward:
        if pending.effect is not None:
            pending.effect.confirmed()


def portal() -> Portal:
    return Portal(Metered(None, [], 10, 0.0), SELECT_1, 10, "rev", 1)


def test_no_client_name_reaches_the_server() -> None:
    objects = ServerObjects(lambda execution, sqlstate: None)
    for client in ("", "mine", "bk_s1", "\x01broker refused"):
        sent = names_sent(objects.parse(client, SELECT_1, b"\x00\x00"))
        assert sent[-1][0] == b"P" and sent[-1][1] != client and sent[-1][1].startswith("bk_s")


def test_a_new_unnamed_statement_closes_the_old_one_unseen() -> None:
    objects = ServerObjects(lambda execution, sqlstate: None)
    first = objects.parse("", SELECT_1, b"\x00\x00")
    confirm(first)
    second = objects.parse("", SELECT_1, b"\x00\x00")
    assert names_sent(second) == [(b"C", names_sent(first)[0][1]), (b"P", "bk_s2")]
    assert second[0][1].silent
    confirm(second)
    found = objects.statement("")
    assert found is not None and found[0] == "bk_s2"


def test_a_statement_whose_parse_failed_is_gone() -> None:
    objects = ServerObjects(lambda execution, sqlstate: None)
    ((_, pending),) = objects.parse("d1", SELECT_1, b"\x00\x00")
    assert objects.statement("d1") is not None  # for a Bind pipelined behind it
    assert pending.effect is not None
    pending.effect.failed()
    assert objects.statement("d1") is None and not objects.statement_taken("d1")


def test_portals_end_with_the_transaction_and_their_executions_are_finished() -> None:
    finished: list[tuple[Metered, str]] = []
    objects = ServerObjects(lambda execution, sqlstate: finished.append((execution, sqlstate)))
    bound, unused = portal(), portal()
    confirm(objects.bind("p", ("bk_s1", "s"), bound, b""))
    confirm(objects.bind("q", ("bk_s1", "s"), unused, b""))
    found = objects.portal("p")
    assert found is not None
    objects.execute("p", found[0], bound, 5)
    objects.on_ready(b"T")  # inside a transaction: still there
    assert objects.portal_taken("p")
    objects.on_ready(b"I")
    assert not objects.portal_taken("p") and not objects.portal_taken("q")
    assert finished == [(bound.execution, "00000"), (unused.execution, "skipped")]


def test_a_close_changes_nothing_until_the_server_confirms_it() -> None:
    objects = ServerObjects(lambda execution, sqlstate: None)
    confirm(objects.parse("d1", SELECT_1, b"\x00\x00"))
    ((_, pending),) = objects.close(b"S", "d1")
    assert not objects.statement_taken("d1")  # ahead: free for a Parse pipelined behind it
    assert pending.effect is not None
    pending.effect.failed()  # skipped by the server
    assert objects.statement("d1") is not None

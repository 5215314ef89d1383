"""The relay without sockets: which server answer belongs to which request, where the
broker's own errors go, and what is counted and cut."""

from __future__ import annotations

from broker.pg.relay import Effect, Expect, Metered, Pending, Relay
from broker.pg.wire import MessageBuffer, cstring, error_response, message, ready_for_query

OUR_ERROR = error_response("ERROR", "42501", "refused by the broker")
SERVER_ERROR = error_response("ERROR", "34000", 'portal "x" does not exist')
ROW = message(b"D", b"\x00\x01\x00\x00\x00\x01x")
COMPLETE = message(b"C", cstring("SELECT 1"))
DESCRIPTION = message(b"T", b"\x00\x00")


def feed(relay: Relay, *messages: bytes) -> bytes:
    for raw in messages:
        relay.feed(raw[:1], raw)
    return relay.take()


def execution(limit: int = 10, max_bytes: int = 1 << 62) -> Metered:
    return Metered(None, [], limit, 0.0, max_bytes=max_bytes)


def test_the_brokers_error_replaces_the_servers_answer_to_the_poison() -> None:
    relay = Relay()
    relay.expect(Pending(Expect.EXECUTE, replacement=OUR_ERROR))
    relay.expect(Pending(Expect.SYNC))
    out = feed(relay, SERVER_ERROR, ready_for_query(b"I"))
    assert out == OUR_ERROR + ready_for_query(b"I")
    assert relay.idle


def test_after_a_server_error_the_rest_until_sync_is_skipped_like_the_server_does() -> None:
    relay = Relay()
    parse_error = error_response("ERROR", "42P01", "no such table")
    relay.expect(Pending(Expect.REPLY))  # Parse: fails at the server
    relay.expect(Pending(Expect.REPLY))  # Bind: skipped by the server
    relay.expect(Pending(Expect.EXECUTE, replacement=OUR_ERROR))  # a later refusal: skipped too
    relay.expect(Pending(Expect.SYNC))
    out = feed(relay, parse_error, ready_for_query(b"I"))
    assert out == parse_error + ready_for_query(b"I")
    assert relay.idle


def test_answers_pass_in_order_and_a_silent_abort_shows_nothing() -> None:
    relay = Relay()
    relay.expect(Pending(Expect.EXECUTE, replacement=b"", silent=True))
    relay.expect(Pending(Expect.SYNC, silent=True))
    relay.expect(Pending(Expect.QUERY, [execution()]))
    out = feed(relay, SERVER_ERROR, ready_for_query(b"E"), DESCRIPTION, ROW, COMPLETE, ready_for_query(b"E"))
    assert out == DESCRIPTION + ROW + COMPLETE + ready_for_query(b"E")


def test_rows_over_the_limit_are_cut_and_the_error_goes_where_the_completion_was() -> None:
    relay = Relay()
    counted = execution(limit=2)
    relay.expect(Pending(Expect.QUERY, [counted]))
    out = feed(relay, DESCRIPTION, ROW, ROW)
    assert out == DESCRIPTION + ROW + ROW and relay.cut is None
    relay.feed(b"D", ROW)
    assert relay.cut is counted and counted.cut and counted.rows == 2
    relay.cut_error = error_response("ERROR", "53400", "too many rows")
    out = feed(relay, ROW, COMPLETE, ready_for_query(b"I"))
    assert out == relay_error("too many rows") + ready_for_query(b"I")
    assert counted.done and counted.sqlstate == "53400"
    assert [f.rows for f in relay.finished] == [2]


def test_a_cut_inside_a_transaction_shows_it_aborted_and_asks_to_abort_the_server() -> None:
    relay = Relay()
    relay.expect(Pending(Expect.QUERY, [execution(limit=0)]))
    relay.feed(b"T", DESCRIPTION)
    relay.feed(b"D", ROW)
    relay.cut_error = error_response("ERROR", "53400", "too many rows")
    canceled = error_response("ERROR", "57014", "canceling statement due to user request")
    out = feed(relay, canceled, ready_for_query(b"T"))
    assert out.endswith(ready_for_query(b"E"))
    assert b"57014" not in out and b"53400" in out
    assert relay.needs_abort


def test_bytes_are_counted_as_well_as_rows() -> None:
    relay = Relay()
    heavy = execution(limit=100, max_bytes=len(ROW) * 3)
    relay.expect(Pending(Expect.EXECUTE, [heavy]))
    feed(relay, ROW, ROW, ROW)
    assert relay.cut is None
    relay.feed(b"D", ROW)
    assert relay.cut is heavy and heavy.rows == 3


def test_each_statement_of_a_simple_query_is_counted_apart() -> None:
    relay = Relay()
    first, second = execution(), execution()
    relay.expect(Pending(Expect.QUERY, [first, second]))
    feed(relay, DESCRIPTION, ROW, COMPLETE, DESCRIPTION, ROW, ROW, COMPLETE, ready_for_query(b"I"))
    assert (first.rows, second.rows) == (1, 2)
    assert first.done and second.done


def test_a_suspended_portal_keeps_counting_across_executes() -> None:
    relay = Relay()
    portal = execution(limit=3)
    relay.expect(Pending(Expect.EXECUTE, [portal]))
    relay.expect(Pending(Expect.EXECUTE, [portal]))
    feed(relay, ROW, ROW, message(b"s"))
    assert not portal.done and portal.rows == 2
    feed(relay, ROW, COMPLETE)
    assert portal.done and portal.rows == 3


def test_notices_and_parameter_changes_pass_at_any_time_in_the_brokers_words() -> None:
    relay = Relay()
    notice = message(b"N", b"SNOTICE\x00VNOTICE\x00C25P01\x00Mthere is no transaction in progress\x00\x00")
    quoting = message(b"N", b"SWARNING\x00VWARNING\x00C01000\x00Mvalue 13800000001 is odd\x00\x00")
    plan = message(b"N", b"SLOG\x00VLOG\x00C00000\x00Mplan: {SEQSCAN :rows 80}\x00\x00")
    status = message(b"S", cstring("TimeZone") + cstring("UTC"))
    out = feed(relay, notice, quoting, plan, status)
    assert out.startswith(notice) and out.endswith(status)  # a transaction-state notice keeps its words
    assert b"13800000001" not in out and b"SEQSCAN" not in out  # a quoting notice does not; a LOG is dropped
    assert b"SQLSTATE 01000" in out


def test_the_message_buffer_splits_a_stream_at_any_byte() -> None:
    stream = DESCRIPTION + ROW + COMPLETE + ready_for_query(b"I")
    for cut in range(len(stream)):
        buffer = MessageBuffer(1 << 20)
        found = buffer.feed(stream[:cut]) + buffer.feed(stream[cut:])
        assert b"".join(raw for _, raw in found) == stream
        assert [kind for kind, _ in found] == [b"T", b"D", b"C", b"Z"]


def relay_error(text: str) -> bytes:
    return error_response("ERROR", "53400", text)


def test_server_errors_that_quote_values_reach_the_client_without_them() -> None:
    """A failing cast quotes the value it could not convert: a way around the row count."""
    relay = Relay()
    relay.expect(Pending(Expect.QUERY, [execution()]))
    leaky = error_response(
        "ERROR", "22P02", 'invalid input syntax for type integer: "13800000042"', detail="row of another branch"
    )
    out = feed(relay, leaky, ready_for_query(b"I"))
    assert b"13800000042" not in out and b"another branch" not in out
    assert b"22P02" in out
    harmless = error_response("ERROR", "42703", 'column "nope" does not exist')
    relay.expect(Pending(Expect.QUERY, [execution()]))
    assert feed(relay, harmless, ready_for_query(b"I")) == harmless + ready_for_query(b"I")


def test_statements_the_server_skipped_are_not_audited_as_successes() -> None:
    relay = Relay()
    first, second = execution(), execution()
    relay.expect(Pending(Expect.QUERY, [first, second]))
    failed = error_response("ERROR", "42703", 'column "nope" does not exist')
    feed(relay, failed, ready_for_query(b"I"))
    assert (first.sqlstate, second.sqlstate) == ("42703", "skipped")
    portal = execution()
    relay.expect(Pending(Expect.REPLY))  # a Bind the server refuses
    relay.expect(Pending(Expect.EXECUTE, [portal]))  # skipped to Sync
    relay.expect(Pending(Expect.SYNC))
    feed(relay, failed, ready_for_query(b"I"))
    assert portal.done and portal.sqlstate == "skipped"


# --- every answer attributed (issue #13) ------------------------------------------------


def test_a_row_with_no_decided_statement_waiting_ends_the_session() -> None:
    relay = Relay()
    relay.expect(Pending(Expect.REPLY, reply=b"1"))  # a Parse: it never has rows
    out = feed(relay, ROW, ROW)
    assert ROW not in out and b"08P01" in out and b"FATAL" in out
    assert relay.close and relay.desynchronised
    assert feed(relay, COMPLETE, ready_for_query(b"I")) == b""  # nothing more reaches the client


def test_a_row_when_nothing_is_awaited_ends_the_session() -> None:
    relay = Relay()
    out = feed(relay, ROW)
    assert ROW not in out and relay.close


def test_a_row_answering_the_brokers_refusal_ends_the_session() -> None:
    """The refusal portal cannot exist; were it to answer with rows, they go nowhere."""
    relay = Relay()
    relay.expect(Pending(Expect.EXECUTE, replacement=OUR_ERROR))
    out = feed(relay, ROW)
    assert ROW not in out and relay.close


def test_an_answer_of_the_wrong_kind_ends_the_session() -> None:
    relay = Relay()
    relay.expect(Pending(Expect.REPLY, reply=b"2"))  # a Bind
    out = feed(relay, message(b"1"))  # a ParseComplete
    assert relay.close and b"08P01" in out


def test_a_query_after_an_extended_error_is_skipped_like_the_server_skips_it() -> None:
    """The server ignores a simple Query sent after an extended-protocol error and before
    Sync; expecting its answer shifted every later answer onto the wrong statement."""
    relay = Relay()
    skipped, later = execution(), execution(limit=1)
    relay.expect(Pending(Expect.EXECUTE, [execution()]))  # fails at the server
    relay.expect(Pending(Expect.QUERY, [skipped]))  # ignored by the server
    relay.expect(Pending(Expect.SYNC))
    relay.expect(Pending(Expect.QUERY, [later]))
    failed = error_response("ERROR", "42703", 'column "nope" does not exist')
    out = feed(relay, failed, ready_for_query(b"I"))
    assert out == failed + ready_for_query(b"I") and skipped.sqlstate == "skipped"
    feed(relay, DESCRIPTION, ROW)
    assert later.rows == 1
    feed(relay, ROW)
    assert relay.cut is later  # the second row is over ITS limit, counted where it belongs


def test_effects_apply_on_confirmation_and_are_dropped_when_skipped() -> None:
    seen: list[str] = []

    def effect(name: str) -> Effect:
        return Effect(lambda: seen.append(f"{name} done"), lambda: seen.append(f"{name} failed"))

    relay = Relay()
    relay.expect(Pending(Expect.REPLY, reply=b"1", effect=effect("parse")))
    relay.expect(Pending(Expect.EXECUTE, [execution()]))
    relay.expect(Pending(Expect.REPLY, reply=b"3", effect=effect("close")))  # skipped
    relay.expect(Pending(Expect.SYNC))
    query = Pending(Expect.QUERY, [execution(), execution()], effects={1: effect("deallocate")})
    relay.expect(query)
    feed(relay, message(b"1"), error_response("ERROR", "22012", "division by zero"), ready_for_query(b"I"))
    assert seen == ["parse done", "close failed"]
    feed(relay, error_response("ERROR", "22012", "division by zero"), ready_for_query(b"I"))
    assert seen[-1] == "deallocate failed"


def test_a_server_error_shows_the_clients_name() -> None:
    relay = Relay()
    relay.expect(Pending(Expect.REPLY, reply=b"2", names=(("bk_s7", "mine"),)))
    relay.expect(Pending(Expect.SYNC))
    error = error_response("ERROR", "26000", 'prepared statement "bk_s7" does not exist')
    out = feed(relay, error, ready_for_query(b"I"))
    assert b'"mine"' in out and b"bk_s7" not in out


def test_a_server_error_about_the_unnamed_statement_says_so() -> None:
    relay = Relay()
    relay.expect(Pending(Expect.REPLY, reply=b"2", names=(("bk_p3", ""), ("bk_s9", ""))))
    relay.expect(Pending(Expect.SYNC))
    error = error_response("ERROR", "26000", 'prepared statement "bk_s9" does not exist')
    out = feed(relay, error, ready_for_query(b"I"))
    assert b"unnamed prepared statement does not exist" in out and b"bk_" not in out

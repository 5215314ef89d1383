"""Client names and the broker's server names, without sockets: what a name denotes ahead
(for pipelined messages) and what the server has confirmed."""

from __future__ import annotations

from broker.pg.names import NameBook


def test_a_name_is_confirmed_only_when_the_server_says_so() -> None:
    book = NameBook("s")
    server = book.fresh()
    change = book.bind("d1", server)
    assert book.ahead("d1") == server and book.confirmed("d1") is None
    assert book.confirm(change) == []
    assert book.confirmed("d1") == server and book.ahead("d1") == server


def test_a_refused_change_is_forgotten_and_what_is_ahead_recomputed() -> None:
    book = NameBook("s")
    first = book.bind("d1", book.fresh())
    book.confirm(first)
    closing = book.free("d1", "s1")
    again = book.bind("d1", book.fresh())
    assert book.ahead("d1") == "s2"
    book.fail(closing)  # the server skipped the Close...
    book.fail(again)  # ...and the Parse after it
    assert book.ahead("d1") == "s1" and book.confirmed("d1") == "s1"


def test_server_names_are_never_reused() -> None:
    book = NameBook("bk_s")
    names = {book.fresh() for _ in range(1000)}
    assert len(names) == 1000 and all(name.startswith("bk_s") for name in names)


def test_a_free_removes_only_the_server_name_it_was_sent_for() -> None:
    book = NameBook("s")
    book.confirm(book.bind("", "s1"))
    stale = book.free("", "s0")  # sent for an older unnamed statement
    assert book.confirm(stale) == [] and book.confirmed("") == "s1"
    assert book.confirm(book.free("", "s1")) == ["s1"] and book.confirmed("") is None


def test_free_all_clears_ahead_at_once_and_confirmed_on_confirmation() -> None:
    book = NameBook("s")
    book.confirm(book.bind("a", "s1"))
    book.confirm(book.bind("b", "s2"))
    everything = book.free_all()
    later = book.bind("c", "s3")
    assert book.ahead("a") is None and book.ahead("c") == "s3" and book.confirmed("a") == "s1"
    assert sorted(book.confirm(everything)) == ["s1", "s2"]
    book.confirm(later)
    assert book.ahead("a") is None and book.confirmed("c") == "s3"


def test_a_failed_free_all_leaves_every_name() -> None:
    book = NameBook("s")
    book.confirm(book.bind("a", "s1"))
    everything = book.free_all()
    book.fail(everything)  # DEALLOCATE ALL in an aborted transaction
    assert book.ahead("a") == "s1"


def test_rebinding_a_confirmed_name_reports_the_old_server_name_as_gone() -> None:
    book = NameBook("s")
    book.confirm(book.bind("", "s1"))
    assert book.confirm(book.bind("", "s2")) == ["s1"]


def test_forgetting_confirmed_names_keeps_changes_in_flight() -> None:
    book = NameBook("p")
    book.confirm(book.bind("p", "p1"))
    later = book.bind("q", "p2")
    assert book.forget_confirmed() == ["p1"]
    assert book.ahead("p") is None and book.ahead("q") == "p2"
    book.confirm(later)
    assert book.confirmed("q") == "p2"

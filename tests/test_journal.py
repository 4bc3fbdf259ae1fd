"""The SQLite event journal: durable, ordered, bounded without ever dropping undelivered rows."""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge.events import Event, new_event
from edge.journal import EventJournal, JournalError
from tests.fakes import FakeClock

DAY = 86400.0


def _events(n: int) -> list[Event]:
    return [new_event("command", n=i) for i in range(n)]


def test_wal_mode_and_full_sync(tmp_path: Path) -> None:
    journal = EventJournal(tmp_path / "events.sqlite3")
    conn = journal._db()
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    journal.close()


def test_append_returns_increasing_seq_and_pending_keeps_order(tmp_path: Path) -> None:
    journal = EventJournal(tmp_path / "events.sqlite3")
    events = _events(5)
    seqs = [journal.append(event) for event in events]
    assert seqs == sorted(seqs) and len(set(seqs)) == 5
    assert journal.pending() == list(zip(seqs, events, strict=True))
    later = journal.pending(limit=2, after_seq=seqs[1])
    assert later == list(zip(seqs[2:4], events[2:4], strict=True))
    journal.close()


def test_appending_the_same_event_twice_keeps_one_row(tmp_path: Path) -> None:
    journal = EventJournal(tmp_path / "events.sqlite3")
    event = new_event("granted")
    first = journal.append(event)
    assert journal.append(event) == first
    assert journal.count() == 1
    journal.close()


def test_rows_survive_reopen_and_delivered_rows_leave_pending(tmp_path: Path) -> None:
    path = tmp_path / "state" / "events.sqlite3"
    journal = EventJournal(path)
    events = _events(3)
    seqs = [journal.append(event) for event in events]
    journal.mark_delivered(seqs[0])
    journal.close()
    journal.close()  # idempotent

    again = EventJournal(path)
    assert [event for _, event in again.pending()] == events[1:]
    assert again.latest() == (seqs[2], events[2])
    later = again.append(new_event("command", n=3))
    assert later > seqs[2]
    again.close()


def test_a_closed_journal_refuses_appends(tmp_path: Path) -> None:
    journal = EventJournal(tmp_path / "events.sqlite3")
    journal.close()
    with pytest.raises(JournalError, match="closed"):
        journal.append(new_event("granted"))


def test_a_corrupt_file_is_refused_with_what_to_do(tmp_path: Path) -> None:
    path = tmp_path / "events.sqlite3"
    path.write_bytes(b"this is not a database" * 100)
    with pytest.raises(JournalError, match="move"):
        EventJournal(path)


def test_prune_drops_delivered_rows_beyond_max_rows_and_says_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    journal = EventJournal(tmp_path / "events.sqlite3", max_rows=3)
    seqs = [journal.append(event) for event in _events(10)]
    for seq in seqs[:8]:
        journal.mark_delivered(seq)
    with caplog.at_level(logging.WARNING, logger="edge.journal"):
        assert journal.prune() == 5
    assert "dropped 5 delivered" in caplog.text
    # The 3 newest delivered rows stay, and both undelivered ones.
    remaining = journal._db().execute("SELECT seq FROM events ORDER BY seq").fetchall()
    assert [row[0] for row in remaining] == seqs[5:]
    assert [seq for seq, _ in journal.pending()] == seqs[8:]
    journal.close()


def test_prune_by_age_keeps_undelivered_rows_however_old(tmp_path: Path) -> None:
    clock = FakeClock(start=1_000_000.0)
    journal = EventJournal(tmp_path / "events.sqlite3", max_age_days=1.0, wall_clock=clock)
    old = [journal.append(event) for event in _events(4)]
    journal.mark_delivered(old[0])
    journal.mark_delivered(old[1])
    clock.advance(2 * DAY)
    fresh = journal.append(new_event("command", n=99))
    journal.mark_delivered(fresh)
    assert journal.prune() == 2
    assert [seq for seq, _ in journal.pending()] == old[2:]
    assert journal.count() == 3
    journal.close()


def test_undelivered_rows_beyond_max_rows_are_kept_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    journal = EventJournal(tmp_path / "events.sqlite3", max_rows=2)
    for event in _events(5):
        journal.append(event)
    with caplog.at_level(logging.WARNING, logger="edge.journal"):
        assert journal.prune() == 0
    assert journal.pending_count() == 5
    assert "5 undelivered" in caplog.text
    journal.close()


def test_without_delivery_the_journal_is_a_bounded_local_record(tmp_path: Path) -> None:
    # MQTT disabled: nothing drains the journal, so rows must not wait for a delivery.
    journal = EventJournal(
        tmp_path / "events.sqlite3", max_rows=3, awaits_delivery=False, prune_every_appends=5
    )
    events = _events(10)
    for event in events:
        journal.append(event)
    assert journal.pending_count() == 0
    assert journal.count() == 3
    assert journal.latest() is not None and journal.latest()[1] == events[-1]
    journal.close()


def test_reopening_prunes(tmp_path: Path) -> None:
    path = tmp_path / "events.sqlite3"
    journal = EventJournal(path, max_rows=100)
    for seq in [journal.append(event) for event in _events(6)]:
        journal.mark_delivered(seq)
    journal.close()
    again = EventJournal(path, max_rows=2)
    assert again.count() == 2
    again.close()


def test_seq_is_never_reused_after_pruning(tmp_path: Path) -> None:
    journal = EventJournal(tmp_path / "events.sqlite3", max_rows=1)
    seqs = [journal.append(event) for event in _events(3)]
    for seq in seqs:
        journal.mark_delivered(seq)
    journal.prune()
    journal._db().execute("DELETE FROM events")  # even an emptied table keeps counting
    assert journal.append(new_event("command")) > seqs[-1]
    journal.close()


def test_a_second_connection_sees_committed_rows(tmp_path: Path) -> None:
    # Committed means visible to another process (the crash test relies on it too).
    path = tmp_path / "events.sqlite3"
    journal = EventJournal(path)
    event = new_event("granted", score=0.9)
    journal.append(event)
    other = sqlite3.connect(path)
    (body,) = other.execute("SELECT body FROM events").fetchone()
    other.close()
    assert Event.from_json(body) == event
    journal.close()


@settings(max_examples=40, deadline=None)
@given(
    ops=st.lists(
        st.one_of(
            st.tuples(st.just("append"), st.integers(0, 0)),
            st.tuples(st.just("deliver"), st.integers(0, 50)),
            st.tuples(st.just("age"), st.integers(0, 3)),
            st.tuples(st.just("prune"), st.integers(0, 0)),
        ),
        max_size=60,
    ),
    max_rows=st.integers(1, 5),
)
def test_prune_never_drops_an_undelivered_row(
    tmp_path_factory: pytest.TempPathFactory, ops: list[tuple[str, int]], max_rows: int
) -> None:
    clock = FakeClock(start=1_000_000.0)
    path = tmp_path_factory.mktemp("journal") / "events.sqlite3"
    journal = EventJournal(path, max_rows=max_rows, max_age_days=1.0, wall_clock=clock)
    undelivered: list[int] = []
    for op, arg in ops:
        if op == "append":
            undelivered.append(journal.append(new_event("command")))
        elif op == "deliver" and undelivered:
            journal.mark_delivered(undelivered.pop(arg % len(undelivered)))
        elif op == "age":
            clock.advance(arg * DAY)
        elif op == "prune":
            journal.prune()
        assert [seq for seq, _ in journal.pending(limit=1000)] == sorted(undelivered)
    journal.close()


def test_rows_of_a_kind_this_version_does_not_know_are_still_delivered(tmp_path: Path) -> None:
    # Written by a newer LiveGate before a downgrade: delivery must not stall on it.
    journal = EventJournal(tmp_path / "events.sqlite3")
    body = '{"id":"f00d","kind":"tamper","ts":"2030-01-01T00:00:00.000Z","zone":"front"}'
    journal._db().execute(
        "INSERT INTO events (id, kind, body, created_s) VALUES ('f00d', 'tamper', ?, 0)", (body,)
    )
    after = journal.append(new_event("granted"))
    pending = journal.pending()
    assert [event.kind for _, event in pending] == ["tamper", "granted"]
    assert pending[0][1].to_json() == body and pending[1][0] == after
    journal.close()

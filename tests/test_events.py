"""Event records, the bus (journal first, guarded listeners) and the JSON lines sink."""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edge.events import EVENT_KINDS, Event, EventBus, JsonLinesSink, new_event
from edge.journal import EventJournal, JournalError


def test_new_event_has_id_kind_utc_millisecond_timestamp_and_data() -> None:
    event = new_event("granted", wall_clock=lambda: 1_700_000_000.25, score=0.91, person="ada")
    assert event.kind == "granted"
    assert event.ts == "2023-11-14T22:13:20.250Z"
    assert len(event.id) == 32 and int(event.id, 16) >= 0
    assert event.to_dict() == {
        "id": event.id,
        "kind": "granted",
        "ts": "2023-11-14T22:13:20.250Z",
        "score": 0.91,
        "person": "ada",
    }


def test_every_event_gets_its_own_id() -> None:
    ids = {new_event("command").id for _ in range(200)}
    assert len(ids) == 200


def test_json_is_compact_sorted_and_round_trips() -> None:
    event = new_event("denied_spoof", box=(10, 20, 110, 140), score=0.12, frames_voted=5)
    text = event.to_json()
    assert " " not in text
    assert list(json.loads(text)) == sorted(json.loads(text))
    again = Event.from_json(text)
    assert again == event
    assert again.data["box"] == [10, 20, 110, 140]


def test_numpy_scalars_become_plain_numbers() -> None:
    event = new_event(
        "granted", score=np.float32(0.5), frames_voted=np.int64(4), live=np.bool_(True)
    )
    assert event.data == {"score": 0.5, "frames_voted": 4, "live": True}
    assert type(event.data["frames_voted"]) is int
    assert json.loads(event.to_json())["live"] is True


@pytest.mark.parametrize("kind", ["unlocked", "", "GRANTED"])
def test_unknown_kind_is_refused(kind: str) -> None:
    with pytest.raises(ValueError, match="unknown event kind"):
        new_event(kind)


@pytest.mark.parametrize(
    "data",
    [
        {"crop": np.zeros((2, 2), dtype=np.uint8)},
        {"blob": b"\x00\x01"},
        {"score": float("nan")},
        {"nested": {"deep": [1, object()]}},
        {"mapping": {1: "non-string key"}},
    ],
)
def test_non_json_safe_data_is_refused(data: dict[str, Any]) -> None:
    with pytest.raises((TypeError, ValueError)):
        new_event("granted", **data)


@pytest.mark.parametrize("key", ["id", "kind", "ts"])
def test_data_cannot_overwrite_the_envelope(key: str) -> None:
    with pytest.raises(ValueError, match="reserved"):
        fields: dict[str, Any] = {key: "x"}
        new_event("granted", **fields)


@pytest.mark.parametrize(
    "text",
    [
        "[]",
        '{"kind": "granted", "ts": "2024-01-01T00:00:00.000Z"}',
        '{"id": "a", "kind": "teleport", "ts": "2024-01-01T00:00:00.000Z"}',
        "not json",
    ],
)
def test_from_json_refuses_what_is_not_an_event(text: str) -> None:
    with pytest.raises(ValueError):
        Event.from_json(text)


def test_kinds_cover_the_daemon_events() -> None:
    required = {"granted", "denied_spoof", "lockout", "camera_lost", "camera_ok", "started"}
    assert required | {"stopped"} <= EVENT_KINDS


def test_bus_journals_before_listeners_see_the_event(tmp_path: Path) -> None:
    journal = EventJournal(tmp_path / "events.sqlite3")
    seen_in_journal: list[bool] = []

    def listener(event: Event) -> None:
        seen_in_journal.append(any(e.id == event.id for _, e in journal.pending()))

    bus = EventBus(journal, [listener])
    bus.emit(new_event("started"))
    assert seen_in_journal == [True]
    journal.close()


def test_failing_listener_is_logged_and_others_still_run(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    journal = EventJournal(tmp_path / "events.sqlite3")
    received: list[str] = []

    def broken(event: Event) -> None:
        raise RuntimeError("listener bug")

    bus = EventBus(journal, [broken, lambda e: received.append(e.kind)])
    with caplog.at_level(logging.ERROR, logger="edge.events"):
        bus.emit(new_event("lockout", reason="3 spoofs"))  # must not raise
    assert received == ["lockout"]
    assert "listener" in caplog.text and "lockout" in caplog.text
    assert journal.pending_count() == 1
    journal.close()


def test_journal_failure_propagates_and_listeners_do_not_see_a_lost_event(
    tmp_path: Path,
) -> None:
    journal = EventJournal(tmp_path / "events.sqlite3")
    received: list[Event] = []
    bus = EventBus(journal, [received.append])
    journal.close()
    with pytest.raises(JournalError):
        bus.emit(new_event("granted"))
    assert received == []


def test_bus_without_journal_only_calls_listeners() -> None:
    received: list[Event] = []
    bus = EventBus(None)
    bus.add_listener(received.append)
    event = new_event("camera_lost", reason="no frames for 3.0 s")
    bus.emit(event)
    assert received == [event]


def test_listener_may_emit_a_follow_up_event() -> None:
    received: list[str] = []
    bus = EventBus(None)

    def follow_up(event: Event) -> None:
        received.append(event.kind)
        if event.kind == "denied_spoof":
            bus.emit(new_event("lockout"))

    bus.add_listener(follow_up)
    bus.emit(new_event("denied_spoof"))
    assert received == ["denied_spoof", "lockout"]


def test_json_lines_sink_writes_one_line_per_event_to_a_file(tmp_path: Path) -> None:
    path = tmp_path / "out" / "events.jsonl"
    sink = JsonLinesSink(path)
    events = [new_event("started"), new_event("granted", score=0.9)]
    for event in events:
        sink(event)
    # Flushed per line: readable before close.
    assert [Event.from_json(line) for line in path.read_text().splitlines()] == events
    sink.close()
    sink.close()
    sink(new_event("stopped"))  # after close: ignored, not an error
    assert len(path.read_text().splitlines()) == 2


def test_json_lines_sink_on_a_stream_leaves_it_open() -> None:
    stream = io.StringIO()
    sink = JsonLinesSink(stream)
    sink(new_event("camera_ok"))
    sink.close()
    assert not stream.closed
    assert Event.from_json(stream.getvalue().strip()).kind == "camera_ok"

"""Events: what the door did and why, as small JSON-safe records.

An event is written to the local journal first (durable, see ``edge.journal``) and only then handed
to listeners (the JSON lines sink, Home Assistant, the MQTT delivery's wake-up). Delivery to MQTT
happens later from the journal on its own thread (``edge.delivery``), so a broker that is down
never slows ``emit``.
Events carry no face pixels and no embeddings: numbers, boxes, names and reasons only.
"""

from __future__ import annotations

import io
import json
import logging
import math
import numbers
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:
    from edge.journal import EventJournal

logger = logging.getLogger(__name__)

EVENT_KINDS = frozenset(
    {
        "started",
        "stopped",
        "granted",
        "denied_spoof",
        "denied_unknown",
        "denied_disabled",
        "lockout",
        "camera_lost",
        "camera_ok",
        "command",
        "unclosed_pulse",
    }
)

# Keys of the envelope; data may not overwrite them.
_RESERVED = frozenset({"id", "kind", "ts"})


def utc_timestamp(seconds: float) -> str:
    """UTC ISO 8601 with milliseconds and a ``Z``: ``2024-05-01T12:00:00.123Z``."""
    text = datetime.fromtimestamp(seconds, tz=UTC).isoformat(timespec="milliseconds")
    return text.replace("+00:00", "Z")


def json_safe(value: Any, path: str = "data") -> Any:
    """A plain-JSON copy of ``value`` (tuples become lists, numpy scalars plain numbers).

    Anything else (arrays, bytes, objects, NaN) is refused here, at the call site that made it,
    instead of failing later inside the journal or on paho's thread.
    """
    if value is None or isinstance(value, (str, bool)):
        return value
    if getattr(value, "shape", None) == () and callable(getattr(value, "item", None)):
        # A numpy scalar (np.float32 score, np.bool_ flag): its plain Python value.
        return json_safe(value.item(), path)
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        number = float(value)
        if not math.isfinite(number):
            raise ValueError(f"event data {path} = {number!r}: not a finite number")
        return number
    if isinstance(value, Mapping):
        out = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(f"event data {path}: key {key!r} is not a string")
            out[key] = json_safe(item, f"{path}.{key}")
        return out
    if isinstance(value, (list, tuple)):
        return [json_safe(item, f"{path}[{i}]") for i, item in enumerate(value)]
    raise TypeError(
        f"event data {path}: {type(value).__name__} is not JSON-safe"
        " (use plain numbers, strings, lists, dicts; e.g. array.tolist())"
    )


@dataclass(frozen=True)
class Event:
    """One event. ``id`` stays the same through the journal and every redelivery."""

    id: str
    kind: str
    ts: str
    data: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "kind": self.kind, "ts": self.ts, **self.data}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"), allow_nan=False)

    @classmethod
    def from_json(cls, text: str | bytes, known_kind: bool = True) -> Event:
        """Parse an event's JSON; ValueError when it is not an event (of a known kind, unless
        ``known_kind`` is False: the journal still delivers rows a newer version wrote)."""
        obj = json.loads(text)
        if not isinstance(obj, dict):
            raise ValueError("an event must be a JSON object")
        missing = [key for key in ("id", "kind", "ts") if not isinstance(obj.get(key), str)]
        if missing:
            raise ValueError(f"event without string field(s): {', '.join(missing)}")
        if known_kind and obj["kind"] not in EVENT_KINDS:
            raise ValueError(f"unknown event kind {obj['kind']!r}")
        data = {key: value for key, value in obj.items() if key not in _RESERVED}
        return cls(id=obj["id"], kind=obj["kind"], ts=obj["ts"], data=data)


def new_event(kind: str, /, wall_clock: Callable[[], float] = time.time, **data: Any) -> Event:
    """A new event with a fresh uuid4 id and the wall-clock time in UTC.

    Raises ValueError for an unknown kind or a reserved key, TypeError for non-JSON-safe data.
    """
    if kind not in EVENT_KINDS:
        raise ValueError(f"unknown event kind {kind!r}; known: {', '.join(sorted(EVENT_KINDS))}")
    clash = _RESERVED.intersection(data)
    if clash:
        raise ValueError(f"event data may not use reserved key(s): {', '.join(sorted(clash))}")
    safe = json_safe(data, kind)
    return Event(id=uuid.uuid4().hex, kind=kind, ts=utc_timestamp(wall_clock()), data=safe)


EventListener = Callable[[Event], None]


class EventBus:
    """Journal first, then listeners; ``emit`` never touches the network.

    A journal failure (disk full, I/O error) propagates: an event that cannot be recorded must not
    be lost silently, and the daemon's error path locks the door. A failing listener is logged and
    skipped, never raised into the frame loop. Listeners run on the emitting thread under the bus
    lock, so they see events in journal order; they must be quick and must not block on the network
    (paho's ``publish`` only queues).
    """

    def __init__(
        self, journal: EventJournal | None, listeners: Sequence[EventListener] = ()
    ) -> None:
        self.journal = journal
        self._listeners: list[EventListener] = list(listeners)
        # Re-entrant: a listener may emit a follow-up event from inside emit.
        self._lock = threading.RLock()

    def add_listener(self, fn: EventListener) -> None:
        with self._lock:
            self._listeners.append(fn)

    def emit(self, event: Event) -> None:
        with self._lock:
            if self.journal is not None:
                self.journal.append(event)
            for listener in list(self._listeners):
                try:
                    listener(event)
                except Exception:
                    logger.exception(
                        "event listener %r failed on %s %s", listener, event.kind, event.id
                    )


class JsonLinesSink:
    """A listener writing one compact JSON line per event, flushed at once.

    ``target`` is a path (opened for appending, created with its folder) or an open text stream
    such as ``sys.stdout`` (not closed by ``close``).
    """

    def __init__(self, target: Path | str | TextIO) -> None:
        self._lock = threading.Lock()
        if isinstance(target, (str, Path)):
            path = Path(target)
            path.parent.mkdir(parents=True, exist_ok=True)
            self._stream: TextIO = path.open("a", encoding="utf-8")
            self._owned = True
        else:
            self._stream = target
            self._owned = False
        self._closed = False

    def __call__(self, event: Event) -> None:
        line = event.to_json() + "\n"
        with self._lock:
            if self._closed:
                return
            self._stream.write(line)
            self._stream.flush()

    def close(self) -> None:
        """Idempotent; closes the file only if this sink opened it."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if self._owned:
                try:
                    self._stream.close()
                except (OSError, io.UnsupportedOperation):
                    logger.warning("could not close the events file cleanly")

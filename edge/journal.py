"""The durable event journal (SQLite, WAL) and its delivery to MQTT.

Every event is committed here before anything else sees it, so a broker that is down, a crash or
a power cut loses nothing that ``EventBus.emit`` returned from. ``EventDelivery`` drains the
journal to MQTT in ``seq`` order at QoS 1 on its own thread and marks a row delivered only once
the broker acknowledged it (PUBACK); after a reconnect it publishes again, from the journal, every
row not yet acknowledged. Consumers may therefore see an event twice (same ``id``); once they
drop the repeats, events arrive in order and without gaps.

Durability choice: WAL with ``synchronous=FULL``. In WAL mode ``NORMAL`` survives a crash of the
process (kill -9) but a power cut can roll back the last commits, and a door loses power; ``FULL``
fsyncs the WAL on every commit, so a committed event survives the cut (as far as the storage
honours fsync: prefer an SD card or SSD with power-loss protection). Events are rare (a few per
minute at a busy door), so one fsync each is cheap; it runs on the emitting thread and never waits
for the network.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from paho.mqtt.enums import MQTTErrorCode

from edge.errors import LiveGateError
from edge.events import Event

logger = logging.getLogger(__name__)

_SCHEMA_VERSION = 1
_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,  -- AUTOINCREMENT: a pruned seq is never reused
    id TEXT NOT NULL UNIQUE,
    kind TEXT NOT NULL,
    body TEXT NOT NULL,                     -- Event.to_json()
    created_s REAL NOT NULL,                -- wall clock at append, for pruning by age
    delivered_s REAL                        -- NULL until the broker acknowledged it
);
CREATE INDEX IF NOT EXISTS events_undelivered ON events(seq) WHERE delivered_s IS NULL;
"""


class JournalError(LiveGateError):
    """The event journal cannot be opened or written (disk full, corrupt file, permissions)."""


def _owner_only(path: Path) -> None:
    """Create the journal file 0600 whatever the umask (SQLite would make it 0644 & ~umask) and
    tighten an older one; SQLite gives its -wal and -shm files the mode of the database file."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        if os.fstat(fd).st_mode & 0o077:
            os.fchmod(fd, 0o600)
    finally:
        os.close(fd)
    for suffix in ("-wal", "-shm"):
        side = path.with_name(path.name + suffix)
        if side.exists() and side.stat().st_mode & 0o077:
            side.chmod(0o600)


class EventJournal:
    """Append-only event store: ``append`` commits durably, ``pending`` lists undelivered rows.

    Thread-safe: one connection guarded by a lock (the frame loop appends, the delivery thread
    reads and marks). Safe to open again after a crash: SQLite replays the WAL.
    """

    def __init__(
        self,
        path: Path,
        max_rows: int = 100_000,
        max_age_days: float = 30.0,
        wall_clock: Callable[[], float] = time.time,
        awaits_delivery: bool = True,
        prune_every_appends: int = 1000,
    ) -> None:
        """``awaits_delivery=False`` when nothing drains the journal (MQTT disabled): rows are
        then stored as delivered, a local record that pruning keeps bounded. The journal also
        prunes itself on open and every ``prune_every_appends`` appends, so it stays bounded
        even without a delivery thread."""
        self.path = Path(path)
        self.max_rows = max_rows
        self.max_age_s = max_age_days * 86400.0
        self.awaits_delivery = awaits_delivery
        self.prune_every_appends = prune_every_appends
        self._appends = 0
        self._clock = wall_clock
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        try:
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            _owner_only(self.path)
            # isolation_level=None: each statement commits on its own; no hidden open transaction.
            conn = sqlite3.connect(
                str(self.path), check_same_thread=False, isolation_level=None, timeout=10.0
            )
            self._conn = conn
            mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise JournalError(f"{self.path}: SQLite refused WAL mode (got {mode!r})")
            conn.execute("PRAGMA synchronous=FULL")
            check = conn.execute("PRAGMA quick_check").fetchone()[0]
            if check != "ok":
                raise JournalError(
                    f"{self.path} is corrupt ({check}); stop the service, move the file aside"
                    " (keep it for the events it holds) and start again"
                )
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version not in (0, _SCHEMA_VERSION):
                raise JournalError(
                    f"{self.path} has journal schema {version}, this version reads"
                    f" {_SCHEMA_VERSION}; use a matching LiveGate or move the file aside"
                )
            conn.executescript(_SCHEMA)
            conn.execute(f"PRAGMA user_version={_SCHEMA_VERSION}")
        except sqlite3.Error as exc:
            self.close()
            raise JournalError(
                f"cannot open the event journal {self.path}: {exc}; check the state directory"
                " is writable, or move a damaged file aside"
            ) from exc
        except JournalError:
            self.close()
            raise
        self.prune()

    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            raise JournalError(f"the event journal {self.path} is closed")
        return self._conn

    def append(self, event: Event) -> int:
        """Commit ``event`` (fsynced) and return its ``seq``; appending the same id again is a
        no-op that returns the first ``seq``."""
        body = event.to_json()
        now = self._clock()
        with self._lock:
            db = self._db()
            try:
                cursor = db.execute(
                    "INSERT OR IGNORE INTO events (id, kind, body, created_s, delivered_s)"
                    " VALUES (?, ?, ?, ?, ?)",
                    (event.id, event.kind, body, now, None if self.awaits_delivery else now),
                )
                if cursor.rowcount == 1 and cursor.lastrowid is not None:
                    seq = int(cursor.lastrowid)
                else:
                    seq = int(
                        db.execute("SELECT seq FROM events WHERE id = ?", (event.id,)).fetchone()[0]
                    )
            except sqlite3.Error as exc:
                raise JournalError(
                    f"cannot write event {event.kind} {event.id} to {self.path}: {exc}"
                    " (disk full or read-only?)"
                ) from exc
            self._appends += 1
            due = self._appends % self.prune_every_appends == 0
        if due:
            self.prune()
        return seq

    def pending(self, limit: int = 100, after_seq: int = 0) -> list[tuple[int, Event]]:
        """Undelivered events with ``seq > after_seq``, oldest first, at most ``limit``."""
        with self._lock:
            rows = (
                self._db()
                .execute(
                    "SELECT seq, body FROM events WHERE delivered_s IS NULL AND seq > ?"
                    " ORDER BY seq LIMIT ?",
                    (after_seq, limit),
                )
                .fetchall()
            )
        return [(int(seq), Event.from_json(body, known_kind=False)) for seq, body in rows]

    def pending_count(self) -> int:
        with self._lock:
            row = (
                self._db()
                .execute("SELECT COUNT(*) FROM events WHERE delivered_s IS NULL")
                .fetchone()
            )
        return int(row[0])

    def count(self) -> int:
        """Rows held, delivered or not."""
        with self._lock:
            return int(self._db().execute("SELECT COUNT(*) FROM events").fetchone()[0])

    def latest(self) -> tuple[int, Event] | None:
        """The last appended event (e.g. to resume numbering after a restart)."""
        with self._lock:
            row = (
                self._db()
                .execute("SELECT seq, body FROM events ORDER BY seq DESC LIMIT 1")
                .fetchone()
            )
        return None if row is None else (int(row[0]), Event.from_json(row[1], known_kind=False))

    def mark_delivered(self, seq: int) -> None:
        with self._lock:
            self._db().execute(
                "UPDATE events SET delivered_s = ? WHERE seq = ? AND delivered_s IS NULL",
                (self._clock(), seq),
            )

    def prune(self) -> int:
        """Drop delivered rows older than ``max_age_days`` or beyond the newest ``max_rows``.

        Undelivered rows are never dropped, whatever their age or number; a warning says when
        they alone exceed ``max_rows`` (the broker has been unreachable for a long time).
        """
        cutoff = self._clock() - self.max_age_s
        with self._lock:
            db = self._db()
            by_age = db.execute(
                "DELETE FROM events WHERE delivered_s IS NOT NULL AND created_s < ?", (cutoff,)
            ).rowcount
            # The newest delivered row beyond the max_rows kept: it and older delivered rows go.
            edge = db.execute(
                "SELECT seq FROM events WHERE delivered_s IS NOT NULL"
                " ORDER BY seq DESC LIMIT 1 OFFSET ?",
                (self.max_rows,),
            ).fetchone()
            by_rows = 0
            if edge is not None:
                by_rows = db.execute(
                    "DELETE FROM events WHERE delivered_s IS NOT NULL AND seq <= ?", (edge[0],)
                ).rowcount
            undelivered = int(
                db.execute("SELECT COUNT(*) FROM events WHERE delivered_s IS NULL").fetchone()[0]
            )
        dropped = max(by_age, 0) + max(by_rows, 0)
        if dropped:
            logger.warning(
                "event journal: dropped %d delivered event(s) (%d older than %.1f days, %d beyond"
                " events.max_rows=%d)",
                dropped,
                by_age,
                self.max_age_s / 86400.0,
                by_rows,
                self.max_rows,
            )
        if undelivered > self.max_rows:
            logger.warning(
                "event journal holds %d undelivered events (more than events.max_rows=%d);"
                " they are kept until the broker takes them",
                undelivered,
                self.max_rows,
            )
        return dropped

    def close(self) -> None:
        """Idempotent. Checkpoints the WAL so the file stands alone."""
        with self._lock:
            conn, self._conn = self._conn, None
        if conn is None:
            return
        try:
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except sqlite3.Error:
            logger.warning("event journal: WAL checkpoint at close failed; replayed on next open")
        conn.close()


class PublishInfo(Protocol):
    """What delivery reads of paho's ``MQTTMessageInfo``."""

    @property
    def rc(self) -> int: ...

    def is_published(self) -> bool: ...


class DeliveryLink(Protocol):
    """The part of ``edge.mqtt.MqttLink`` that delivery uses (tests pass a fake)."""

    @property
    def connected(self) -> bool: ...

    @property
    def connections(self) -> int:
        """Successful connects so far; counted before ``connected`` turns true."""
        ...

    def publish(
        self, topic: str, payload: str | bytes, qos: int = 1, retain: bool = False
    ) -> PublishInfo: ...

    def add_connect_handler(self, handler: Callable[[], None]) -> None: ...

    def add_publish_ack_handler(self, handler: Callable[[int], None]) -> None: ...


class EventDelivery:
    """Drains the journal to ``topic`` in order at QoS 1; marks rows delivered on PUBACK only.

    Runs on its own thread: ``wake()`` (or the ``on_event`` listener) after appends, the MQTT
    link's connect handler after every (re)connect. At most ``window`` events are handed to paho
    at once (MqttLink keeps one in flight), so a long outage never piles events up in memory:
    they wait in the journal. After a reconnect everything not acknowledged that went out on an
    earlier connection is published again from the journal, in order, whatever paho or the broker
    remembered of the old session.
    """

    def __init__(
        self,
        journal: EventJournal,
        link: DeliveryLink,
        topic: str,
        window: int = 16,
        ack_timeout_s: float = 30.0,
        prune_every_s: float = 3600.0,
        poll_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        # ``clock`` times the ack timeout and pruning (tests move it); waits use real time.
        self.journal = journal
        self.link = link
        self.topic = topic
        self.window = window
        self.ack_timeout_s = ack_timeout_s
        self.prune_every_s = prune_every_s
        self.poll_s = poll_s
        self._clock = clock
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._reconnected = threading.Event()
        self._thread: threading.Thread | None = None
        # Owned by the delivery thread only: (seq, paho message info, connection it was published
        # on) handed to paho, in order.
        self._outstanding: list[tuple[int, PublishInfo, int]] = []
        self._last_progress = clock()
        self._next_prune = clock()
        self.delivered = 0
        self.republished = 0
        link.add_connect_handler(self._on_connect)
        link.add_publish_ack_handler(self._on_ack)

    @property
    def in_flight(self) -> int:
        """Events handed to paho and not yet acknowledged (for stats and tests)."""
        return len(self._outstanding)

    # -- called from other threads; never block ---------------------------------------------------
    def wake(self) -> None:
        self._wake.set()

    def on_event(self, event: Event) -> None:
        """An EventBus listener: the journal has a new row to deliver."""
        self._wake.set()

    def _on_connect(self) -> None:
        # paho's thread: only flag it; the delivery thread re-publishes from the journal.
        self._reconnected.set()
        self._wake.set()

    def _on_ack(self, mid: int) -> None:
        # paho's thread, inside paho's message lock: do no I/O here. The delivery thread reads
        # the acknowledgement from the MQTTMessageInfo it holds (no mid reuse ambiguity).
        self._wake.set()

    # -- lifecycle --------------------------------------------------------------------------------
    def start(self) -> None:
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="event-delivery", daemon=True)
        self._thread.start()
        self._wake.set()

    def stop(self, timeout: float = 2.0) -> None:
        """Deliver what the journal holds for up to ``timeout`` s while connected (so that the
        ``stopped`` event gets out), then stop the thread. Idempotent. Whatever is still
        undelivered stays in the journal for the next start."""
        if self._thread is None:
            return
        deadline = time.monotonic() + timeout
        if self.link.connected and not self.drain(timeout):
            logger.warning(
                "event delivery: %d event(s) not acknowledged at stop; kept in the journal",
                self.journal.pending_count(),
            )
        thread, self._thread = self._thread, None
        self._stop.set()
        self._wake.set()
        thread.join(max(0.5, deadline - time.monotonic()))
        if thread.is_alive():
            logger.warning("event delivery thread did not stop within %.1f s", timeout)

    # -- the delivery thread ----------------------------------------------------------------------
    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.poll_s)
            self._wake.clear()
            if self._stop.is_set():
                break
            try:
                self._step()
            except Exception:
                # A journal error must not kill delivery for good; rows stay pending.
                logger.exception("event delivery failed; retrying")
                self._stop.wait(self.poll_s)

    def _step(self) -> None:
        self._collect_acks()
        if self._reconnected.is_set():
            self._reconnected.clear()
            # Only what went out on an earlier connection can have been lost with it. The link
            # reports "connected" before the connect handlers run, so events published in that
            # gap are on the new connection already: publishing them again would duplicate them.
            if any(on < self.link.connections for _, _, on in self._outstanding):
                self._restart_from_journal("reconnected")
        elif self._outstanding and self._clock() - self._last_progress > self.ack_timeout_s:
            self._restart_from_journal(f"no PUBACK for {self.ack_timeout_s:.0f} s")
        if self.link.connected:
            self._publish_more()
        if self._clock() >= self._next_prune:
            self._next_prune = self._clock() + self.prune_every_s
            self.journal.prune()

    def _collect_acks(self) -> None:
        # PUBACKs come back in publish order; stop at the first one still waiting so that rows
        # are only ever marked delivered in seq order.
        while self._outstanding and self._outstanding[0][1].is_published():
            seq, _, _ = self._outstanding.pop(0)
            self.journal.mark_delivered(seq)
            self.delivered += 1
            self._last_progress = self._clock()

    def _restart_from_journal(self, why: str) -> None:
        if self._outstanding:
            logger.info(
                "event delivery: %s; publishing %d unacknowledged event(s) again from the journal",
                why,
                len(self._outstanding),
            )
            self.republished += len(self._outstanding)
        # Forget paho's copies: they may still go out (duplicates, same id), but correctness
        # rests on the journal, which still holds every unacknowledged row.
        self._outstanding.clear()
        self._last_progress = self._clock()

    def _publish_more(self) -> None:
        room = self.window - len(self._outstanding)
        if room <= 0:
            return
        if not self._outstanding:
            self._last_progress = self._clock()
        after = self._outstanding[-1][0] if self._outstanding else 0
        connection = self.link.connections  # read after `connected`: it is the current one
        for seq, event in self.journal.pending(room, after_seq=after):
            info = self.link.publish(self.topic, event.to_json(), qos=1, retain=False)
            # NO_CONN: paho keeps the message and sends it after reconnecting (we publish it
            # again then anyway). Any other error: paho dropped it; try again on the next step.
            if info.rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
                logger.warning("event delivery: paho refused event seq %d: rc=%s", seq, info.rc)
                break
            self._outstanding.append((seq, info, connection))

    def drain(self, timeout: float) -> bool:
        """Wait until the journal has nothing undelivered (e.g. before a clean stop).

        True when everything was acknowledged; False at the deadline (rows stay journaled).
        """
        deadline = time.monotonic() + timeout
        while True:
            if self.journal.pending_count() == 0:
                return True
            if time.monotonic() >= deadline or self._thread is None:
                return False
            self._wake.set()
            self._stop.wait(0.02)

"""The durable event journal (SQLite, WAL): where every event is kept until the broker has it.

Every event is committed here before anything else sees it, so a broker that is down, a crash or
a power cut loses nothing that ``EventBus.emit`` returned from. Rows stay undelivered until
``mark_delivered`` (``edge.delivery`` calls it once the broker acknowledged the row), and pruning
never drops an undelivered row.

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

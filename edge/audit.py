"""The audit log: an append-only, hash-chained record of every decision and relay action.

One JSON object per line::

    {"action":"decision","decision":"granted","hash":"…","prev":"…","score":0.97,"seq":12,"ts":"…Z",…}

``hash`` is the sha256 of the canonical JSON (sorted keys, no spaces) of the entry without
``hash``; ``prev`` is the ``hash`` of the entry before (64 zeros for the first), and ``seq`` counts
from 1. Editing an entry breaks its hash, removing or reordering entries breaks ``seq`` and
``prev``. A plain chain cannot show that entries were cut from the *end*, so each append also
rewrites a small head file (``<log>.head``: last seq and hash) that ``verify_audit`` compares
with the log's last entry. Both are fsynced per entry: an entry the door acted on survives a power
cut.

What this does not do: someone who can rewrite the whole file can recompute every hash. Anchor the
chain off the box (for example, publish each entry's ``hash`` in the matching MQTT event) when
that threat matters.

Damage found when the log is reopened (a torn last line after a power cut, a head file ahead of
the log) is never repaired silently: the torn bytes stay in place, and an ``audit_recovered``
entry records what was found; ``verify_audit`` keeps reporting both.
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edge.config import Config, load_config
from edge.errors import EXIT_FAILURE, EXIT_OK, EXIT_REFUSED, ConfigError, LiveGateError
from edge.events import json_safe, utc_timestamp

logger = logging.getLogger(__name__)

GENESIS = "0" * 64
RECOVERED = "audit_recovered"
_RESERVED = frozenset({"seq", "ts", "action", "prev", "hash"})
_TAIL_CHUNK = 64 * 1024


class AuditError(LiveGateError):
    """The audit log cannot be opened or written (permissions, disk full, already in use)."""


def canonical_json(obj: dict[str, Any]) -> str:
    return json.dumps(
        obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
    )


def entry_hash(entry: dict[str, Any]) -> str:
    """sha256 (hex) of the canonical JSON of ``entry`` without its ``hash`` field."""
    body = {key: value for key, value in entry.items() if key != "hash"}
    return hashlib.sha256(canonical_json(body).encode("ascii")).hexdigest()


def head_path(path: Path) -> Path:
    return path.with_name(path.name + ".head")


def _head_text(path: Path) -> str | None:
    """The head file's text; None when there is none, "" when it cannot be read."""
    try:
        return head_path(path).read_text()
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError):
        return ""


def _parse_head(text: str | None) -> tuple[int, str] | None:
    if text is None:
        return None
    try:
        data = json.loads(text)
        return int(data["seq"]), str(data["hash"])
    except (ValueError, KeyError, TypeError, RecursionError):
        return None


def _read_head(path: Path) -> tuple[int, str] | None:
    # An unreadable head is reported by verify_audit; for resuming, treat it as absent.
    return _parse_head(_head_text(path))


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _parse_entry(line: bytes) -> dict[str, Any] | None:
    """The entry on ``line`` if it has the envelope fields with the right types, else None."""
    try:
        entry = json.loads(line)
    except (ValueError, RecursionError):  # deep nesting raises RecursionError, not ValueError
        return None
    if not isinstance(entry, dict):
        return None
    envelope_ok = (
        isinstance(entry.get("seq"), int)
        and not isinstance(entry.get("seq"), bool)
        and all(isinstance(entry.get(key), str) for key in ("ts", "action", "prev", "hash"))
    )
    return entry if envelope_ok else None


def _last_lines(path: Path) -> tuple[bytes | None, bytes]:
    """(last complete line or None, bytes after the last newline) without reading the whole log."""
    with path.open("rb") as handle:
        size = handle.seek(0, os.SEEK_END)
        chunk = _TAIL_CHUNK
        while True:
            start = max(0, size - chunk)
            handle.seek(start)
            data = handle.read(size - start)
            cut = data.rfind(b"\n")
            torn = data[cut + 1 :] if cut >= 0 else data
            before = data[:cut] if cut >= 0 else b""
            prev_cut = before.rfind(b"\n")
            if prev_cut >= 0 or start == 0:
                if cut < 0:
                    return None, torn
                return before[prev_cut + 1 :], torn
            chunk *= 4


class AuditLog:
    """Appends hash-chained entries; resumes the chain when reopened.

    One writer at a time: the file is locked (``flock``) while open, so a second daemon on the
    same state directory fails at start instead of forking the chain.
    """

    def __init__(self, path: Path, wall_clock: Callable[[], float] = time.time) -> None:
        self.path = Path(path)
        self._clock = wall_clock
        self._lock = threading.Lock()
        self._fd: int | None = None
        try:
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            created = not self.path.exists()
            # Owner-only whatever the umask; an older, wider file is tightened.
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            if os.fstat(fd).st_mode & 0o077:
                os.fchmod(fd, 0o600)
        except OSError as exc:
            raise AuditError(f"cannot open the audit log {self.path}: {exc.strerror}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            raise AuditError(
                f"the audit log {self.path} is in use by another process; stop it first"
            ) from exc
        self._fd = fd
        if created:
            _fsync_dir(self.path.parent)
        self._seq, self._prev, problems = self._resume()
        for problem in problems:
            logger.error("audit log %s: %s", self.path, problem)
            self.append(RECOVERED, reason=problem)

    @property
    def seq(self) -> int:
        """Seq of the last entry (0 when empty)."""
        return self._seq

    @property
    def head(self) -> str:
        """Hash of the last entry (64 zeros when empty)."""
        return self._prev

    def _resume(self) -> tuple[int, str, list[str]]:
        problems: list[str] = []
        line, torn = _last_lines(self.path)
        if torn:
            problems.append(
                f"the last line was cut short ({len(torn)} bytes without end of line, a torn"
                " write?); kept as it is"
            )
            self._write(b"\n")  # the torn bytes stay on their own line, as evidence
        seq, prev = 0, GENESIS
        entry = _parse_entry(line) if line is not None else None
        if line is not None and entry is None:
            problems.append("the last complete line is not a valid entry")
            seq, prev = self._last_valid()
        elif entry is not None:
            seq, prev = int(entry["seq"]), str(entry["hash"])
        head = _read_head(self.path)
        if head is not None and (head[0] > seq or (head[0] == seq and head[1] != prev)):
            problems.append(
                f"the log ends at seq {seq} but its head file records seq {head[0]}"
                f" (hash {head[1][:12]}…): entries were lost or edited"
            )
        return seq, prev, problems

    def _last_valid(self) -> tuple[int, str]:
        seq, prev = 0, GENESIS
        with self.path.open("rb") as handle:
            for line in handle:
                entry = _parse_entry(line)
                if entry is not None:
                    seq, prev = int(entry["seq"]), str(entry["hash"])
        return seq, prev

    def _write(self, data: bytes) -> None:
        if self._fd is None:
            raise AuditError(f"the audit log {self.path} is closed")
        view = memoryview(data)
        while view:
            written = os.write(self._fd, view)
            view = view[written:]
        os.fsync(self._fd)

    def _write_head(self, seq: int, digest: str) -> None:
        head = head_path(self.path)
        tmp = head.with_name(head.name + ".tmp")
        # 0600 whatever the umask (a plain open would give 0644 under the usual 022).
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        if os.fstat(fd).st_mode & 0o077:
            os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(canonical_json({"seq": seq, "hash": digest}) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        # No fsync of the folder: if a power cut loses this rename the head merely lags the log
        # by an entry, which verify_audit accepts (the log itself was fsynced first).
        os.replace(tmp, head)

    def append(self, action: str, **fields: Any) -> dict[str, Any]:
        """Append one entry (fsynced) and return it, with its ``seq``, ``ts``, ``prev``, ``hash``.

        ``fields`` must be JSON-safe (numbers, strings, lists, dicts) and may not use the
        envelope names; AuditError when the disk refuses the write.
        """
        if not isinstance(action, str) or not action:
            raise ValueError("audit action must be a non-empty string")
        clash = _RESERVED.intersection(fields)
        if clash:
            names = ", ".join(sorted(clash))
            raise ValueError(f"audit fields may not use reserved key(s): {names}")
        safe = json_safe(fields, action)
        with self._lock:
            entry: dict[str, Any] = {
                **safe,
                "seq": self._seq + 1,
                "ts": utc_timestamp(self._clock()),
                "action": action,
                "prev": self._prev,
            }
            entry["hash"] = entry_hash(entry)
            try:
                self._write((canonical_json(entry) + "\n").encode("ascii"))
                # The entry is on disk: the chain continues from it even if the head write fails.
                self._seq, self._prev = entry["seq"], entry["hash"]
                self._write_head(entry["seq"], entry["hash"])
            except OSError as exc:
                raise AuditError(
                    f"cannot write to the audit log {self.path}: {exc.strerror} (disk full?)"
                ) from exc
        return entry

    def close(self) -> None:
        """Idempotent; releases the lock."""
        with self._lock:
            fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)


# What the daemon writes at start and stop, so that a run's entries can be told apart.
START = "start"
STOP = "stop"
_PREVIOUS_RUN_MAX_BYTES = 8 * 1024 * 1024


def entries_of_last_run(
    path: Path, max_bytes: int = _PREVIOUS_RUN_MAX_BYTES
) -> list[dict[str, Any]]:
    """The valid entries from the last ``start`` entry to the end of the log (oldest first).

    Read backwards, so a long log costs only its last run; without a ``start`` entry (a log of an
    older version) at most the last ``max_bytes`` are read.
    """
    path = Path(path)
    marker = b'"action":"' + START.encode() + b'"'
    try:
        with path.open("rb") as handle:
            size = handle.seek(0, os.SEEK_END)
            chunk = _TAIL_CHUNK
            while True:
                begin = max(0, size - chunk)
                handle.seek(begin)
                data = handle.read(size - begin)
                if marker in data or begin == 0 or chunk >= max_bytes:
                    break
                chunk *= 4
    except FileNotFoundError:
        return []
    lines = data.split(b"\n")
    if begin > 0:
        lines = lines[1:]  # the first line may be cut by the chunk boundary
    entries = [entry for entry in map(_parse_entry, lines) if entry is not None]
    starts = [i for i, entry in enumerate(entries) if entry["action"] == START]
    return entries[starts[-1] :] if starts else entries


def unclosed_pulse(entries: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The grant of ``entries`` whose pulse has no ``relay_off`` after it, else None.

    A grant is audited before the relay is driven, then ``relay_on`` when the pin went high and
    ``relay_off`` when it went low. A process killed in between leaves a grant (or a ``relay_on``)
    that nothing closed: the strike may have been left open until the stop hook locked it.
    """
    pending: dict[str, Any] | None = None  # audited grant, relay not (yet) driven
    open_pulse: dict[str, Any] | None = None  # relay_on without relay_off
    for entry in entries:
        action = entry["action"]
        if action == "decision" and entry.get("decision") == "granted":
            if entry.get("pulse", True):
                pending = entry
        elif action == "remote_unlock":
            pending = entry
        elif action == "relay_on":
            open_pulse, pending = pending or entry, None
        elif action == "relay_refused":
            pending = None
        elif action == "relay_off":
            open_pulse = None
    return open_pulse or pending


def verify_audit(path: Path) -> list[str]:
    """Check the whole chain. An empty list means intact; else one line per problem."""
    path = Path(path)
    # The head before the log: a running daemon writes an entry, then the head, so a head read
    # first can lag the log read after it, never run ahead of it (a false "truncated").
    head_text = _head_text(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        return [f"{path}: cannot read the audit log: {exc.strerror}"]
    lines = data.split(b"\n")
    torn = lines.pop()  # b"" when the file ends with a newline, as it should
    problems: list[str] = []
    parsed: list[tuple[int, dict[str, Any] | None]] = [
        (number, _parse_entry(line)) for number, line in enumerate(lines, start=1)
    ]
    seen: dict[int, int] = {}
    for _, entry in parsed:
        if entry is not None:
            seen[entry["seq"]] = seen.get(entry["seq"], 0) + 1
    last_seq, last_hash = 0, GENESIS
    count = 0
    for number, entry in parsed:
        where = f"line {number}"
        if entry is None:
            problems.append(f"{where}: not a valid audit entry (edited, or a torn write)")
            continue
        count += 1
        seq = entry["seq"]
        where = f"line {number} (seq {seq})"
        if entry_hash(entry) != entry["hash"]:
            problems.append(f"{where}: hash does not match its content: the entry was edited")
        expected = last_seq + 1
        if seq != expected or entry["prev"] != last_hash:
            if seen[seq] > 1:
                problems.append(f"{where}: seq {seq} appears {seen[seq]} times: entries duplicated")
            elif seq > expected:
                missing = _missing_span(expected, seq, seen)
                if missing:
                    problems.append(f"{where}: seq {missing} missing before it: entries removed")
                else:
                    problems.append(f"{where}: comes after seq {last_seq}: entries reordered")
            elif seq < expected:
                problems.append(f"{where}: comes after seq {last_seq}: entries reordered")
            else:
                problems.append(
                    f"{where}: prev does not match the entry before: an entry was replaced"
                )
        if entry["action"] == RECOVERED:
            reason = entry.get("reason")
            problems.append(f"{where}: the log was damaged before this point: {reason}")
        last_seq, last_hash = seq, entry["hash"]
    if torn:
        problems.append(
            f"line {len(lines) + 1}: truncated entry ({len(torn)} bytes without end of line)"
        )
    problems.extend(_check_head(path, head_text, parsed, last_seq, count))
    return problems


def _check_head(
    path: Path,
    head_text: str | None,
    parsed: list[tuple[int, dict[str, Any] | None]],
    last_seq: int,
    count: int,
) -> list[str]:
    head_file = head_path(path)
    if head_text is None:
        if count:
            return [f"{head_file} is missing: cannot tell whether entries were cut from the end"]
        return []
    head = _parse_head(head_text)
    if head is None:
        return [f"{head_file} is unreadable: cannot tell whether entries were cut from the end"]
    head_seq, head_hash = head
    if head_seq > last_seq:
        return [
            f"the log ends at seq {last_seq} but {head_file.name} records seq {head_seq}:"
            " entries truncated from the end"
        ]
    # The head may lag the log by an entry written just before a crash; it must still match.
    for _, entry in parsed:
        if entry is not None and entry["seq"] == head_seq:
            if entry["hash"] != head_hash:
                return [f"seq {head_seq} differs from {head_file.name}: the entry was replaced"]
            return []
    if head_seq == 0:
        return []
    return [f"seq {head_seq} recorded in {head_file.name} is not in the log: entries removed"]


def _missing_span(first: int, end: int, seen: dict[int, int]) -> str:
    """ "a-b": the lowest and highest seq in [first, end) not in ``seen``; "" if none is missing.
    Walks in from both ends over seqs that are present (at most len(seen) steps), never over
    the whole range: an edited seq of 10**15 must not take hours and all memory."""
    low = first
    while low < end and low in seen:
        low += 1
    if low == end:
        return ""
    high = end - 1
    while high in seen:
        high -= 1
    return str(low) if low == high else f"{low}-{high}"


def verify_audit_main(argv: list[str] | None = None) -> int:
    """``python -m edge verify-audit [--path P | --config FILE]``: 0 intact, 1 damaged, 2 usage."""
    parser = argparse.ArgumentParser(
        prog="python -m edge verify-audit",
        description="Check the hash chain of the LiveGate audit log.",
    )
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--path", type=Path, help="audit log file")
    source.add_argument("--config", type=Path, help="config file naming the audit log")
    args = parser.parse_args(argv)
    path: Path = args.path
    if path is None:
        try:
            config = load_config(args.config) if args.config else Config()
        except ConfigError as exc:
            print(f"config error:\n{exc}", file=sys.stderr)
            return EXIT_REFUSED
        path = config.audit_path
    problems = verify_audit(path)
    if problems:
        for problem in problems:
            print(f"{path}: {problem}")
        print(f"FAILED: {len(problems)} problem(s) in {path}")
        return EXIT_FAILURE
    line, _ = _last_lines(path)
    last = _parse_entry(line) if line is not None else None
    seq, digest = (last["seq"], last["hash"]) if last is not None else (0, GENESIS)
    noun = "entry" if seq == 1 else "entries"
    print(f"OK: {path} intact, {seq} {noun}, last hash {digest}")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(verify_audit_main())

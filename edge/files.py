"""Durable, owner-only file writes for the state (enrolment store, fleet keys and state)."""

from __future__ import annotations

import fcntl
import os
import stat
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

OWNER_ONLY = stat.S_IRUSR | stat.S_IWUSR


def write_private(
    path: Path, data: bytes, mode: int = OWNER_ONLY, hand_to_folder_owner: bool = False
) -> None:
    """Write ``data`` atomically: a temporary file in the same folder with ``mode`` from the
    start, fsync, rename, then fsync the folder so the rename survives a power cut too. A reader
    sees the old file or the new one, never half of one.

    ``hand_to_folder_owner``: run as root (``sudo python -m edge enroll``), give the file to the
    owner of its folder, the service user, so that the daemon can still read it.
    """
    folder = path.parent
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=folder, prefix=f".{path.name}.", suffix=".tmp")
    tmp = Path(tmp_name)
    try:
        # The file object owns the descriptor from the start, so a failing fchmod or fchown
        # (a read-only or foreign file system) closes it too instead of leaking it.
        with os.fdopen(fd, "wb") as handle:
            os.fchmod(fd, mode)
            if hand_to_folder_owner and os.geteuid() == 0:
                owner = folder.stat()
                os.fchown(fd, owner.st_uid, owner.st_gid)
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    dir_fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def lock_path(path: Path) -> Path:
    """The lock file that guards writers of ``path``: ``<name>.lock`` next to it."""
    return path.with_name(f"{path.name}.lock")


def _open_lock_file(lock: Path) -> int:
    flags = os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        # O_EXCL: only a file this call made itself is chmod-ed and chown-ed, never one planted
        # in the folder (a hard link to another file would be handed to the service user).
        fd = os.open(lock, flags | os.O_CREAT | os.O_EXCL, OWNER_ONLY)
    except FileExistsError:
        return os.open(lock, flags)
    try:
        os.fchmod(fd, OWNER_ONLY)  # whatever the umask
        if os.geteuid() == 0:
            # Made by `sudo ... enroll`: the service user must still be able to open it, or
            # every later fleet update at the door would fail.
            owner = lock.parent.stat()
            os.fchown(fd, owner.st_uid, owner.st_gid)
    except BaseException:
        os.close(fd)
        raise
    return fd


@contextmanager
def exclusive_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive advisory lock (``flock``) guarding ``path`` until the block ends.

    Every writer that loads ``path``, changes it and saves it holds this lock from load to save,
    so that two writers (in two processes, or two threads) cannot undo each other's change.
    Readers need no lock: ``write_private`` renames whole files into place. The lock is on a
    separate file, ``lock_path(path)`` (0600, owned like the folder), because ``path`` itself is
    replaced by every save. It waits as long as another writer holds the lock: keep the block
    short and free of network I/O.
    """
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = _open_lock_file(lock_path(path))
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing the last descriptor releases the lock

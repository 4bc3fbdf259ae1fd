"""Durable, owner-only file writes for the state (enrolment store, fleet keys and state)."""

from __future__ import annotations

import os
import stat
import tempfile
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

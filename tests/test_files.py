"""Owner-only atomic writes (edge/files.py): nothing is left behind when a step fails."""

from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path

import pytest

from edge.files import write_private


def test_writes_owner_only_and_leaves_no_temporary_file(tmp_path: Path) -> None:
    path = tmp_path / "state" / "keys.json"
    write_private(path, b"secret")
    assert path.read_bytes() == b"secret"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in path.parent.iterdir()] == ["keys.json"]


@pytest.mark.parametrize("failing", ["fchmod", "fchown"])
def test_a_failing_permission_call_closes_the_file_and_removes_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failing: str
) -> None:
    opened: list[int] = []
    real_mkstemp = tempfile.mkstemp

    def recording_mkstemp(**kwargs: str | Path) -> tuple[int, str]:
        fd, name = real_mkstemp(**kwargs)  # type: ignore[call-overload]
        opened.append(fd)
        return fd, name

    def refuse(*_args: int) -> None:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(tempfile, "mkstemp", recording_mkstemp)
    monkeypatch.setattr(os, failing, refuse)
    monkeypatch.setattr(os, "geteuid", lambda: 0)  # as under `sudo ... enroll`
    with pytest.raises(PermissionError):
        write_private(tmp_path / "enrolled.json", b"{}", hand_to_folder_owner=True)
    assert list(tmp_path.iterdir()) == []
    # A daemon that retries such a write must not run out of descriptors.
    with pytest.raises(OSError):
        os.fstat(opened[0])

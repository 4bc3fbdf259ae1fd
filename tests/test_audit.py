"""The hash-chained audit log and ``verify-audit``: intact passes, every kind of tampering fails."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest

from edge.audit import (
    GENESIS,
    AuditError,
    AuditLog,
    entry_hash,
    head_path,
    verify_audit,
    verify_audit_main,
)

SHA = "5f" * 32


def _write_log(path: Path, n: int = 5) -> list[dict[str, object]]:
    log = AuditLog(path)
    entries = []
    for i in range(n):
        if i % 2 == 0:
            entries.append(
                log.append(
                    "decision",
                    decision="granted",
                    score=0.9 + i / 100,
                    threshold=0.62,
                    model_sha256=SHA,
                    source="face",
                    person="ada",
                )
            )
        else:
            entries.append(log.append("relay_on", source="face", pulse_s=3.0))
    log.close()
    return entries


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines(keepends=True)


@pytest.fixture
def audit_path(tmp_path: Path) -> Path:
    path = tmp_path / "audit.log"
    _write_log(path)
    return path


def test_entries_are_chained_and_hashed(tmp_path: Path) -> None:
    entries = _write_log(tmp_path / "audit.log", 3)
    assert [e["seq"] for e in entries] == [1, 2, 3]
    assert entries[0]["prev"] == GENESIS
    assert entries[1]["prev"] == entries[0]["hash"] and entries[2]["prev"] == entries[1]["hash"]
    for entry in entries:
        assert entry["hash"] == entry_hash(entry)
        assert str(entry["ts"]).endswith("Z")
    on_disk = [json.loads(line) for line in _lines(tmp_path / "audit.log")]
    assert on_disk == entries
    assert on_disk[0]["model_sha256"] == SHA and on_disk[0]["decision"] == "granted"


def test_untouched_log_verifies(audit_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert verify_audit(audit_path) == []
    assert verify_audit_main(["--path", str(audit_path)]) == 0
    assert "OK" in capsys.readouterr().out


def test_reopening_resumes_the_chain(audit_path: Path) -> None:
    log = AuditLog(audit_path)
    assert log.seq == 5
    entry = log.append("relay_off", reason="pulse ended")
    log.close()
    assert entry["seq"] == 6
    assert entry["prev"] == json.loads(_lines(audit_path)[4])["hash"]
    assert verify_audit(audit_path) == []


def test_edited_entry_fails(audit_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    lines = _lines(audit_path)
    lines[2] = lines[2].replace('"decision":"granted"', '"decision":"denied_spoof"')
    audit_path.write_text("".join(lines))
    problems = verify_audit(audit_path)
    assert any("line 3" in p and "edited" in p for p in problems), problems
    assert verify_audit_main(["--path", str(audit_path)]) == 1
    assert "FAILED" in capsys.readouterr().out


def test_edited_entry_with_recomputed_hash_still_fails(audit_path: Path) -> None:
    lines = _lines(audit_path)
    entry = json.loads(lines[1])
    entry["source"] = "mqtt"
    entry["hash"] = entry_hash(entry)
    lines[1] = json.dumps(entry, sort_keys=True, separators=(",", ":")) + "\n"
    audit_path.write_text("".join(lines))
    problems = verify_audit(audit_path)
    assert any("line 3" in p and "replaced" in p for p in problems), problems


def test_removed_entry_fails(audit_path: Path) -> None:
    lines = _lines(audit_path)
    del lines[1]
    audit_path.write_text("".join(lines))
    problems = verify_audit(audit_path)
    assert any("seq 2 missing" in p and "removed" in p for p in problems), problems


def test_reordered_entries_fail(audit_path: Path) -> None:
    lines = _lines(audit_path)
    lines[1], lines[2] = lines[2], lines[1]
    audit_path.write_text("".join(lines))
    problems = verify_audit(audit_path)
    assert problems and all("reordered" in p for p in problems), problems


def test_entry_cut_mid_line_fails(audit_path: Path) -> None:
    data = audit_path.read_bytes()
    audit_path.write_bytes(data[: len(data) - 40])
    problems = verify_audit(audit_path)
    assert any("truncated" in p for p in problems), problems


def test_entries_removed_from_the_end_fail(audit_path: Path) -> None:
    lines = _lines(audit_path)
    audit_path.write_text("".join(lines[:3]))
    problems = verify_audit(audit_path)
    assert any("truncated from the end" in p for p in problems), problems


def test_missing_head_file_fails(audit_path: Path) -> None:
    head_path(audit_path).unlink()
    problems = verify_audit(audit_path)
    assert any("missing" in p for p in problems), problems


def test_missing_log_fails(tmp_path: Path) -> None:
    assert verify_audit(tmp_path / "nope.log")
    assert verify_audit_main(["--path", str(tmp_path / "nope.log")]) == 1


def test_a_torn_last_line_is_kept_and_recorded_on_reopen(
    audit_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # A power cut in the middle of a write: the bytes stay, the chain continues after them.
    with audit_path.open("ab") as handle:
        handle.write(b'{"action":"decision","decision":"gra')
    with caplog.at_level(logging.ERROR, logger="edge.audit"):
        log = AuditLog(audit_path)
    assert "cut short" in caplog.text
    entry = log.append("relay_off")
    log.close()
    lines = _lines(audit_path)
    assert lines[5].startswith('{"action":"decision","decision":"gra')
    recovered = json.loads(lines[6])
    assert recovered["action"] == "audit_recovered" and recovered["seq"] == 6
    assert recovered["prev"] == json.loads(lines[4])["hash"]
    assert entry["seq"] == 7
    problems = verify_audit(audit_path)
    assert any("line 6" in p for p in problems)
    assert any("damaged" in p for p in problems)
    assert not any("line 8" in p for p in problems)


def test_reopening_a_log_cut_at_the_end_records_the_loss(audit_path: Path) -> None:
    lines = _lines(audit_path)
    audit_path.write_text("".join(lines[:3]))
    log = AuditLog(audit_path)
    log.close()
    recovered = json.loads(_lines(audit_path)[3])
    assert recovered["action"] == "audit_recovered"
    assert "head file records seq 5" in recovered["reason"]
    assert verify_audit(audit_path), "the loss must stay visible"


def test_only_one_writer_at_a_time(audit_path: Path) -> None:
    log = AuditLog(audit_path)
    with pytest.raises(AuditError, match="in use"):
        AuditLog(audit_path)
    log.close()
    AuditLog(audit_path).close()


@pytest.mark.parametrize("field", ["seq", "hash", "prev", "ts"])
def test_fields_cannot_overwrite_the_envelope(tmp_path: Path, field: str) -> None:
    log = AuditLog(tmp_path / "audit.log")
    with pytest.raises(ValueError, match="reserved"):
        log.append("decision", **{field: "x"})
    log.close()


def test_non_json_fields_are_refused_and_write_nothing(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    log = AuditLog(path)
    with pytest.raises(TypeError):
        log.append("decision", score=object())
    log.close()
    assert path.read_text() == ""
    assert verify_audit(path) == []


def test_main_reads_the_path_from_a_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _write_log(tmp_path / "state" / "audit.log", 2)
    config = tmp_path / "config.yaml"
    config.write_text("state_dir: state\n")
    assert verify_audit_main(["--config", str(config)]) == 0
    assert "2 entries" in capsys.readouterr().out
    config.write_text("state_dri: state\n")
    assert verify_audit_main(["--config", str(config)]) == 2


def test_verifying_a_live_log_is_no_false_alarm(
    audit_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """verify-audit on a running door: the daemon appends an entry (and moves the head) just
    after verify read the log. The head is then ahead of what was read, yet nothing was cut."""
    log = AuditLog(audit_path)
    read_bytes = Path.read_bytes

    def read_then_append(self: Path) -> bytes:
        data = read_bytes(self)
        if self == audit_path:
            log.append("relay_off")  # the daemon, between verify's two reads
        return data

    monkeypatch.setattr(Path, "read_bytes", read_then_append)
    try:
        assert verify_audit(audit_path) == []
    finally:
        log.close()
    monkeypatch.undo()
    assert verify_audit(audit_path) == []
    # A head really ahead of the log is still found.
    audit_path.write_text("".join(_lines(audit_path)[:5]))
    assert any("truncated from the end" in p for p in verify_audit(audit_path))


def test_a_deeply_nested_line_is_reported_not_a_crash(audit_path: Path) -> None:
    """One edited line of 100 000 '[': json.loads raises RecursionError, not ValueError.
    verify-audit must report the line, and the daemon must still open its log."""
    with audit_path.open("ab") as handle:
        handle.write(b"[" * 100_000 + b"\n")
    problems = verify_audit(audit_path)
    assert any("line 6: not a valid audit entry" in p for p in problems), problems
    log = AuditLog(audit_path)
    entry = log.append("relay_off")
    log.close()
    assert entry["seq"] == 7  # after the audit_recovered entry that records the bad line
    head_path(audit_path).write_text("[" * 100_000)
    assert any("unreadable" in p for p in verify_audit(audit_path))


def test_a_huge_seq_is_reported_without_listing_every_missing_number(audit_path: Path) -> None:
    """An entry whose seq was edited to 10**15: verify-audit must name the gap, not build a list
    of every missing number (hours, then out of memory; here it runs under a 1 GB limit)."""
    lines = _lines(audit_path)
    entry = json.loads(lines[2])
    entry["seq"] = 10**15
    lines[2] = json.dumps(entry) + "\n"
    audit_path.write_text("".join(lines))
    script = (
        "import resource, sys\n"
        "resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))\n"
        "from edge.audit import verify_audit_main\n"
        f"sys.exit(verify_audit_main(['--path', {str(audit_path)!r}]))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parent.parent,
    )
    assert done.returncode == 1, done.stderr
    assert f"seq 3-{10**15 - 1} missing before it" in done.stdout, done.stdout

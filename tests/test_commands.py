"""Remote command parsing and the unlock gate, with an injected clock (no broker, no relay)."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import SecretStr

from edge.commands import (
    CODE_PATTERN,
    HA_CODE_FORMAT,
    LOCK,
    MAX_COMMAND_BYTES,
    UNLOCK,
    CommandGate,
    ParsedCommand,
    code_matches,
    load_unlock_code,
    parse_lock_command,
    parse_switch_command,
)
from edge.config import HomeAssistantConfig
from edge.errors import ConfigError
from tests.fakes import FakeClock

CODE = "482913"


def _json(**fields: object) -> bytes:
    return json.dumps(fields).encode()


def _gate(clock: FakeClock, rate: int = 3, remote: bool = True, **kw: float) -> CommandGate:
    return CommandGate(remote, SecretStr(CODE) if remote else None, rate, clock, **kw)  # type: ignore[arg-type]


def _unlock(code: str | None = CODE) -> ParsedCommand:
    return parse_lock_command(_json(action=UNLOCK, code=code))


# -- parsing -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("payload", "action", "code"),
    [
        (_json(action="UNLOCK", code=CODE), UNLOCK, CODE),
        (_json(action="LOCK", code=None), LOCK, None),
        (_json(action="LOCK"), LOCK, None),
        (_json(action="UNLOCK", code=""), UNLOCK, None),  # HA sends "" when nothing was typed
        (b"LOCK", LOCK, None),
        (b" UNLOCK\n", UNLOCK, None),
    ],
)
def test_parse_lock_command_accepts_the_documented_forms(
    payload: bytes, action: str, code: str | None
) -> None:
    parsed = parse_lock_command(payload)
    assert (parsed.action, parsed.code, parsed.error) == (action, code, None)


@pytest.mark.parametrize(
    "payload",
    [
        b"\xff\xfeUNLOCK",  # not UTF-8
        b'{"action": "UNLOCK", "code": "48',  # truncated JSON
        b'["UNLOCK"]',  # JSON, but not an object
        b"unlock",  # case matters: HA sends exactly payload_unlock
        b"OPEN",
        b"",
        _json(action="unlock", code=CODE),
        _json(action="UNLOCK", code=482913),  # a number is a template mistake, not a code
        _json(action="UNLOCK", code=CODE, pulse_s=60),  # unknown key
        b'{"action": "LOCK", "action": "UNLOCK", "code": "482913"}',  # ambiguous
        _json(action="UNLOCK", code="x" * MAX_COMMAND_BYTES),  # oversized
        b"[" * 5000,  # deeply nested garbage
    ],
)
def test_parse_lock_command_rejects_malformed_payloads(payload: bytes) -> None:
    parsed = parse_lock_command(payload)
    assert parsed.malformed
    assert parsed.action is None and parsed.code is None
    assert parsed.error


def test_parsed_command_repr_never_shows_the_code() -> None:
    assert CODE not in repr(_unlock())


@given(st.binary(max_size=400))
@settings(max_examples=300, deadline=None)
def test_parse_lock_command_never_raises_and_yields_only_known_actions(payload: bytes) -> None:
    parsed = parse_lock_command(payload)
    assert parsed.action in (None, LOCK, UNLOCK)
    assert (parsed.action is None) == (parsed.error is not None)


@pytest.mark.parametrize(("payload", "action"), [(b"ON", "ON"), (b"OFF\n", "OFF")])
def test_parse_switch_command(payload: bytes, action: str) -> None:
    assert parse_switch_command(payload).action == action


@pytest.mark.parametrize("payload", [b"on", b"1", b"true", b"\xff", b"ON" * 200, b""])
def test_parse_switch_command_rejects_anything_else(payload: bytes) -> None:
    assert parse_switch_command(payload).malformed


# -- the unlock code -----------------------------------------------------------------------------
def _ha(**fields: object) -> HomeAssistantConfig:
    return HomeAssistantConfig.model_validate(fields)


def test_no_code_is_loaded_when_remote_unlock_is_off(tmp_path: Path) -> None:
    assert load_unlock_code(_ha(unlock_code_file=tmp_path / "missing")) is None


def test_code_from_file_drops_only_the_line_ending(tmp_path: Path) -> None:
    path = tmp_path / "code"
    path.write_text(CODE + "\n")
    path.chmod(0o600)
    secret = load_unlock_code(_ha(remote_unlock=True, unlock_code_file=path))
    assert secret is not None and secret.get_secret_value() == CODE


def test_code_file_readable_by_others_is_warned_about(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "code"
    path.write_text(CODE)
    path.chmod(0o644)
    with caplog.at_level(logging.WARNING, logger="edge.commands"):
        load_unlock_code(_ha(remote_unlock=True, unlock_code_file=path))
    assert "chmod 600" in caplog.text
    assert CODE not in caplog.text


def test_code_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LIVEGATE_TEST_CODE", CODE)
    secret = load_unlock_code(_ha(remote_unlock=True, unlock_code_env="LIVEGATE_TEST_CODE"))
    assert secret is not None and secret.get_secret_value() == CODE


@pytest.mark.parametrize("bad", ["1234", "12 3456", "x" * 65])
def test_weak_or_odd_codes_refuse_to_start_without_showing_the_code(
    tmp_path: Path, bad: str
) -> None:
    path = tmp_path / "code"
    path.write_text(bad)
    with pytest.raises(ConfigError, match="homeassistant.unlock_code_file") as err:
        load_unlock_code(_ha(remote_unlock=True, unlock_code_file=path))
    assert bad not in str(err.value)


def test_missing_code_file_or_variable_is_a_config_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(ConfigError, match="unlock_code_file"):
        load_unlock_code(_ha(remote_unlock=True, unlock_code_file=tmp_path / "missing"))
    monkeypatch.delenv("LIVEGATE_NO_SUCH_CODE", raising=False)
    with pytest.raises(ConfigError, match="LIVEGATE_NO_SUCH_CODE"):
        load_unlock_code(_ha(remote_unlock=True, unlock_code_env="LIVEGATE_NO_SUCH_CODE"))


def test_code_matches() -> None:
    assert code_matches(CODE, SecretStr(CODE))
    assert not code_matches(CODE + "0", SecretStr(CODE))
    assert not code_matches("", SecretStr(CODE))


def test_ha_code_format_takes_valid_codes_and_nothing() -> None:
    pattern = re.compile(HA_CODE_FORMAT)
    assert pattern.match(CODE) and pattern.match("")
    assert not pattern.match("12 3456")
    # Whatever the device accepts as a code, HA's keypad lets through.
    for code in ("abcdef", "x" * 64, CODE):
        assert CODE_PATTERN.match(code) and pattern.match(code)


# -- the gate ------------------------------------------------------------------------------------
def test_gate_needs_a_code_when_remote_unlock_is_on(clock: FakeClock) -> None:
    with pytest.raises(ConfigError):
        CommandGate(True, None, 3, clock)


def test_lock_is_always_accepted(clock: FakeClock) -> None:
    for gate in (_gate(clock), _gate(clock, remote=False)):
        assert gate.check(parse_lock_command(b"LOCK"), retained=False).accepted
        assert gate.check(parse_lock_command(b"LOCK"), retained=True).accepted


def test_unlock_refusals_in_order(clock: FakeClock) -> None:
    assert _gate(clock, remote=False).check(_unlock(), retained=False).reason == "disabled"
    gate = _gate(clock)
    assert gate.check(_unlock(), retained=True).reason == "retained"
    assert gate.check(_unlock(None), retained=False).reason == "code_missing"
    assert gate.check(_unlock("000000"), retained=False).reason == "bad_code"
    verdict = gate.check(_unlock(), retained=False)
    assert verdict.accepted and verdict.reason == "ok"


def test_malformed_command_is_never_accepted(clock: FakeClock) -> None:
    verdict = _gate(clock).check(parse_lock_command(b"\xff"), retained=False)
    assert (verdict.accepted, verdict.reason) == (False, "malformed")


def test_rate_limit_counts_attempts_and_frees_after_a_minute(clock: FakeClock) -> None:
    gate = _gate(clock, rate=3)
    assert gate.check(_unlock("000000"), retained=False).reason == "bad_code"
    clock.advance(10)
    assert gate.check(_unlock(None), retained=False).reason == "code_missing"
    clock.advance(10)
    assert gate.check(_unlock(), retained=False).accepted
    clock.advance(10)
    # Even the right code waits once three attempts are in the window.
    assert gate.check(_unlock(), retained=False).reason == "rate_limited"
    clock.advance(30)  # the first attempt (t=0) has left the 60 s window
    assert gate.check(_unlock(), retained=False).accepted


def test_refusals_before_the_rate_check_do_not_use_the_budget(clock: FakeClock) -> None:
    gate = _gate(clock, rate=1)
    for _ in range(5):
        assert gate.check(_unlock(), retained=True).reason == "retained"
    assert gate.check(_unlock(), retained=False).accepted


def test_rate_limited_attempts_do_not_extend_the_wait(clock: FakeClock) -> None:
    gate = _gate(clock, rate=1)
    assert gate.check(_unlock(), retained=False).accepted
    for _ in range(10):
        clock.advance(5)
        assert gate.check(_unlock(), retained=False).reason == "rate_limited"
    clock.advance(10.0)  # 60 s after the one counted attempt
    assert gate.check(_unlock(), retained=False).accepted


def test_repeated_wrong_codes_lock_remote_unlock_out(clock: FakeClock) -> None:
    gate = _gate(clock, rate=60, bad_codes=3, bad_code_window_s=600, bad_code_lockout_s=900)
    for _ in range(3):
        assert gate.check(_unlock("000000"), retained=False).reason == "bad_code"
        clock.advance(1)
    assert gate.check(_unlock(), retained=False).reason == "bad_code_lockout"
    clock.advance(900)
    assert gate.check(_unlock(), retained=False).accepted


def test_wrong_codes_spread_out_do_not_lock_out(clock: FakeClock) -> None:
    gate = _gate(clock, rate=60, bad_codes=3, bad_code_window_s=600, bad_code_lockout_s=900)
    for _ in range(6):
        assert gate.check(_unlock("000000"), retained=False).reason == "bad_code"
        clock.advance(301)  # never three within 600 s
    assert gate.check(_unlock(), retained=False).accepted


@given(st.lists(st.tuples(st.text(max_size=12), st.booleans(), st.floats(0, 120)), max_size=30))
@settings(max_examples=200, deadline=None)
def test_no_sequence_of_wrong_or_retained_attempts_is_ever_accepted(
    attempts: list[tuple[str, bool, float]],
) -> None:
    clock = FakeClock()
    gate = _gate(clock, rate=5)
    for code, retained, wait in attempts:
        clock.advance(wait)
        verdict = gate.check(_unlock(code), retained=retained)
        if verdict.accepted:
            assert code == CODE and not retained

"""systemd/livegate.service: what the door needs from it, checked by systemd's own analyzer."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "systemd" / "livegate.service"
SYSUSERS = ROOT / "systemd" / "livegate.sysusers"
INSTALL = ROOT / "scripts" / "install.sh"
DOC = ROOT / "README.md"  # its "Install on a Raspberry Pi" section
VENV_PYTHON = "/opt/livegate/venv/bin/python"
CONFIG = "/etc/livegate/config.yaml"
MAX_EXPOSURE = 4.0

Unit = dict[str, dict[str, list[str]]]


def parse_unit(text: str) -> Unit:
    """Sections -> key -> every value in order (systemd keys may repeat; an empty one resets)."""
    unit: Unit = {}
    section: dict[str, list[str]] | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            section = unit.setdefault(line[1:-1], {})
            continue
        assert section is not None, f"key outside a section: {line}"
        key, sep, value = line.partition("=")
        assert sep, f"not a key=value line: {line}"
        section.setdefault(key.strip(), []).append(value.strip())
    return unit


@pytest.fixture(scope="module")
def unit() -> Unit:
    return parse_unit(UNIT.read_text())


def one(unit: Unit, section: str, key: str) -> str:
    values = unit[section].get(key)
    assert values, f"[{section}] {key}= is missing"
    return values[-1]


def systemd_analyze() -> str:
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.fail("systemd-analyze not found: apt-get install systemd (scripts/setup.sh does it)")
    return tool


def test_daemon_is_a_notify_service_with_a_watchdog(unit: Unit) -> None:
    assert one(unit, "Service", "Type") == "notify"
    assert one(unit, "Service", "NotifyAccess") == "main"
    watchdog = one(unit, "Service", "WatchdogSec")
    assert re.fullmatch(r"\d+", watchdog) and 10 <= int(watchdog) <= 120
    assert one(unit, "Service", "ExecStart") == f"{VENV_PYTHON} -P -m edge run --config {CONFIG}"


def test_relay_is_locked_after_every_stop(unit: Unit) -> None:
    # ExecStopPost runs after clean stops, crashes, watchdog aborts and SIGKILL alike.
    assert unit["Service"]["ExecStopPost"] == [f"{VENV_PYTHON} -P -m edge lock --config {CONFIG}"]


def test_restart_on_failure_within_limits(unit: Unit) -> None:
    assert one(unit, "Service", "Restart") == "on-failure"
    # Exit 2 means "refused to start" (config, model): restarting cannot fix it.
    assert "2" in one(unit, "Service", "RestartPreventExitStatus").split()
    assert int(one(unit, "Unit", "StartLimitBurst")) >= 1
    assert int(one(unit, "Unit", "StartLimitIntervalSec")) > 0


def test_runs_as_its_own_user_in_gpio_and_video(unit: Unit) -> None:
    assert one(unit, "Service", "User") == "livegate"
    assert set(one(unit, "Service", "SupplementaryGroups").split()) == {"gpio", "video"}
    assert one(unit, "Service", "NoNewPrivileges") == "yes"
    assert one(unit, "Service", "CapabilityBoundingSet") == ""
    # The installer creates exactly that user and those memberships.
    lines = [ln.split() for ln in SYSUSERS.read_text().splitlines() if ln and ln[0] != "#"]
    assert ["u", "livegate"] == lines[0][:2]
    assert {tuple(ln) for ln in lines if ln[0] == "m"} == {
        ("m", "livegate", "gpio"),
        ("m", "livegate", "video"),
    }


def test_device_allow_list_reaches_camera_and_gpio_only(unit: Unit) -> None:
    assert one(unit, "Service", "DevicePolicy") == "closed"
    allowed = {value.split()[0] for value in unit["Service"]["DeviceAllow"]}
    # libcamera/V4L2 (/dev/video*, /dev/v4l-subdev*), media controller, DMA heaps; lgpio.
    assert {"char-video4linux", "char-media", "char-dma_heap", "char-gpiochip"} <= allowed
    assert not any(a.startswith("block-") or a in ("char-mem", "char-tty") for a in allowed)
    # PrivateDevices=yes would hide the camera: the allow-list is the device sandbox.
    assert unit["Service"].get("PrivateDevices", ["no"])[-1] == "no"


def test_file_system_is_read_only_but_state(unit: Unit) -> None:
    service = unit["Service"]
    assert one(unit, "Service", "ProtectSystem") == "strict"
    assert one(unit, "Service", "ProtectHome") == "yes"
    assert one(unit, "Service", "PrivateTmp") == "yes"
    assert one(unit, "Service", "StateDirectory") == "livegate"  # /var/lib/livegate
    assert one(unit, "Service", "ConfigurationDirectory") == "livegate"
    assert "ReadWritePaths" not in service


def test_no_secret_in_the_unit(unit: Unit) -> None:
    for value in unit["Service"].get("Environment", []):
        name = value.split("=", 1)[0]
        assert not re.search(r"PASSW|SECRET|TOKEN|UNLOCK|_KEY$", name, re.I), value
    for credential in unit["Service"].get("LoadCredential", []):
        _, _, path = credential.partition(":")
        assert path.startswith("/etc/livegate/"), credential


def test_unit_paths_match_the_installer(unit: Unit) -> None:
    prefix = re.search(r"^PREFIX=(\S+)", INSTALL.read_text(), re.M)
    assert prefix is not None
    assert VENV_PYTHON == f"{prefix.group(1)}/venv/bin/python"
    assert f"PYTHONPATH={prefix.group(1)}/app" in unit["Service"]["Environment"]
    assert f"LIVEGATE_ASSETS={prefix.group(1)}/assets" in unit["Service"]["Environment"]


def test_lgpio_can_make_its_fifo_in_the_working_directory(unit: Unit) -> None:
    # lgpio mkfifo()s .lgd-nfy* in $LG_WD (else the working directory) and Python opens it
    # relative to the working directory; a read-only one makes gpiozero drop lgpio silently.
    workdir = one(unit, "Service", "WorkingDirectory")
    assert f"LG_WD={workdir}" in unit["Service"]["Environment"]
    writable = {f"/run/{d}" for d in unit["Service"].get("RuntimeDirectory", [])}
    writable |= {f"/var/lib/{d}" for d in unit["Service"].get("StateDirectory", [])}
    assert workdir in writable
    # ...and gpiozero must not fall back to another pin library when lgpio fails.
    assert "GPIOZERO_PIN_FACTORY=lgpio" in unit["Service"]["Environment"]


def _verify(tmp_path: Path, text: str) -> subprocess.CompletedProcess:
    # verify checks that ExecStart's program exists: point it at this interpreter.
    path = tmp_path / "livegate.service"
    path.write_text(text.replace(VENV_PYTHON, sys.executable))
    return subprocess.run(
        [systemd_analyze(), "verify", "--man=no", str(path)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=60,
    )


def test_systemd_analyze_verify_prints_nothing(tmp_path: Path) -> None:
    result = _verify(tmp_path, UNIT.read_text())
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""


def test_verify_would_catch_a_mistake(tmp_path: Path) -> None:
    # The check above can fail: verify exits 0 on warnings, but it does print them.
    broken = UNIT.read_text().replace("Restart=on-failure", "Restrat=on-failure")
    result = _verify(tmp_path, broken)
    assert "Restrat" in result.stderr


def _exposure(unit_path: Path) -> float:
    result = subprocess.run(
        [systemd_analyze(), "security", "--offline=yes", str(unit_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d)", result.stdout + result.stderr)
    assert match, result.stdout + result.stderr
    return float(match.group(1))


def test_security_exposure_is_ok_and_documented() -> None:
    exposure = _exposure(UNIT)
    assert exposure <= MAX_EXPOSURE
    documented = re.search(r"exposure level[^\n]*?(\d+\.\d) OK", DOC.read_text())
    assert documented, f"{DOC} must record the measured exposure"
    assert float(documented.group(1)) == exposure


def test_exposure_score_reacts_to_hardening(tmp_path: Path) -> None:
    # The score is a measurement, not a constant: dropping the hardening makes it worse.
    lines = UNIT.read_text().splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.startswith("DevicePolicy="))
    end = next(i for i, ln in enumerate(lines) if ln.startswith("[Install]"))
    weak = tmp_path / "livegate.service"
    weak.write_text("\n".join(lines[:start] + lines[end:]) + "\n")
    assert _exposure(weak) > _exposure(UNIT) + 3.0

"""scripts/install.sh and scripts/uninstall.sh against a temporary root (DESTDIR), without apt,
pip or systemctl: the files they write, what an upgrade keeps, what uninstall leaves."""

from __future__ import annotations

import argparse
import os
import re
import shutil
import stat
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from edge.assets import DEFAULT_ASSETS_DIR, MEDIAPIPE_ASSETS, RES10_ASSETS, checked_asset
from edge.config import load_config

ROOT = Path(__file__).resolve().parent.parent
INSTALL = ROOT / "scripts" / "install.sh"
UNINSTALL = ROOT / "scripts" / "uninstall.sh"
SCRIPTS = [INSTALL, UNINSTALL, ROOT / "scripts" / "check_pi_requirements.sh"]
ALL_ASSETS = RES10_ASSETS + MEDIAPIPE_ASSETS
IS_ROOT = os.geteuid() == 0


def run(
    script: Path, dest: Path, *args: str, path: str | None = None
) -> subprocess.CompletedProcess:
    env = {**os.environ, "DESTDIR": str(dest), "LIVEGATE_SETTLE_S": "0"}
    if path is not None:
        env["PATH"] = path
    for name in ("LIVEGATE_SKIP_APT", "LIVEGATE_SKIP_PIP", "LIVEGATE_SKIP_SYSTEMCTL"):
        env.pop(name, None)
    return subprocess.run(
        ["bash", str(script), *args], capture_output=True, text=True, env=env, timeout=300
    )


def install(dest: Path, *args: str) -> subprocess.CompletedProcess:
    return run(
        INSTALL,
        dest,
        "--no-apt",
        "--no-pip",
        "--no-systemctl",
        "--python",
        sys.executable,
        "--assets-from",
        str(DEFAULT_ASSETS_DIR),
        *args,
    )


def installed_ok(dest: Path, *args: str) -> subprocess.CompletedProcess:
    if not all((DEFAULT_ASSETS_DIR / a.name).is_file() for a in ALL_ASSETS):
        pytest.skip(f"model files missing in {DEFAULT_ASSETS_DIR}: python scripts/fetch_assets.py")
    result = install(dest, *args)
    assert result.returncode == 0, result.stdout + result.stderr
    return result


@pytest.fixture(scope="module")
def pi(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One fresh install, shared by the read-only checks below."""
    dest = tmp_path_factory.mktemp("pi")
    installed_ok(dest)
    return dest


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_scripts_are_shellcheck_clean(script: Path) -> None:
    tool = shutil.which("shellcheck")
    if tool is None:
        pytest.fail("shellcheck not found: apt-get install shellcheck (scripts/setup.sh does it)")
    result = subprocess.run([tool, str(script)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout


def test_unit_sysusers_and_command_are_installed(pi: Path) -> None:
    unit = pi / "etc/systemd/system/livegate.service"
    assert unit.read_bytes() == (ROOT / "systemd/livegate.service").read_bytes()
    assert mode(unit) == 0o644
    sysusers = pi / "etc/sysusers.d/livegate.conf"
    assert sysusers.read_bytes() == (ROOT / "systemd/livegate.sysusers").read_bytes()
    cli = pi / "usr/local/bin/livegate"
    assert mode(cli) == 0o755
    text = cli.read_text()
    assert "runuser -u livegate" in text and "/opt/livegate/venv/bin/python -P -m edge" in text


def local_cli(pi: Path, folder: Path) -> Callable[..., subprocess.CompletedProcess]:
    """The installed command, pointed at this checkout and interpreter instead of /opt (and not
    switching user, which needs the real livegate account), written to ``folder``, which is also
    its TMPDIR; run as ``livegate(*args, cwd=...)``."""
    config = pi / "etc/livegate/config.yaml"
    text = (pi / "usr/local/bin/livegate").read_text()
    text = text.replace('exec runuser -u livegate -- "$0" "$@"', ":")
    text = text.replace("/opt/livegate/venv/bin/python", sys.executable)
    text = text.replace("PYTHONPATH=/opt/livegate/app", f"PYTHONPATH={ROOT}")
    text = text.replace("LIVEGATE_ASSETS=/opt/livegate/assets", f"LIVEGATE_ASSETS={ROOT}/assets")
    text = text.replace("/etc/livegate/config.yaml", str(config))
    cli = folder / "livegate"
    cli.write_text(text)
    env = {**os.environ, "TMPDIR": str(folder)}

    def livegate(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
        return subprocess.run(
            ["sh", str(cli), *args], capture_output=True, text=True, env=env, timeout=120, cwd=cwd
        )

    return livegate


def test_cli_runs_edge_with_the_service_config(pi: Path, tmp_path: Path) -> None:
    config = pi / "etc/livegate/config.yaml"
    livegate = local_cli(pi, tmp_path)

    # Its paths are those of a Pi (/opt/livegate/...), not of this machine: keys and values only.
    result = livegate("check-config", "--no-files")
    assert result.returncode == 0, result.stderr
    assert str(config) in result.stdout  # the service's config by default
    result = livegate("check-config", "--config", str(ROOT / "config.yaml"))
    assert result.returncode == 0, result.stderr
    assert str(ROOT / "config.yaml") in result.stdout  # unless one is named
    assert livegate("lock", "--relay", "mock").returncode == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["livegate"]  # work folder removed


def test_cli_reads_relative_paths_from_where_it_was_typed(pi: Path, tmp_path: Path) -> None:
    """``sudo livegate enroll add alice --source alice.mp4`` in the folder holding the clip: the
    command runs in a work folder of its own, which once made every relative path name a file
    there ("alice.mp4: no such file" with the clip right beside the user)."""
    tools = tmp_path / "tools"
    tools.mkdir()
    livegate = local_cli(pi, tools)
    home = tmp_path / "home"
    home.mkdir()
    shutil.copy(ROOT / "config.yaml", home / "door.yaml")

    result = livegate("check-config", "--no-files", "--config", "door.yaml", cwd=home)
    assert result.returncode == 0, result.stderr
    assert f"{home}/door.yaml: OK" in result.stdout
    result = livegate("check-config", "--no-files", "--config=door.yaml", cwd=home)
    assert result.returncode == 0, result.stderr

    # A file that is not there is named where the user looked for it.
    result = livegate("enroll", "add", "alice", "--source", "gone.mp4", cwd=home)
    assert result.returncode == 2
    assert f"{home}/gone.mp4: no such file" in result.stderr


def test_cli_gives_the_service_config_to_every_command_that_reads_one(pi: Path) -> None:
    """Each top-level command of ``python -m edge`` with a ``--config`` option is in the
    wrapper's list (``sudo livegate calibrate`` once ran against no config at all)."""
    from edge.__main__ import build_parser

    text = (pi / "usr/local/bin/livegate").read_text()
    listed = set(re.findall(r"([a-z-]+)\\ \*", text))
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    reads_config = {
        name
        for name, parser in sub.choices.items()
        if any("--config" in a.option_strings for a in parser._actions)
    }
    assert "calibrate" in reads_config and "run" in reads_config
    assert reads_config <= listed, sorted(reads_config - listed)


def test_code_and_venv_are_in_opt(pi: Path) -> None:
    app = pi / "opt/livegate/app"
    assert (app / "edge/__main__.py").is_file()
    assert not (app / "bench").exists()  # the measurement tools stay in the clone
    # The Pi gets the int8 models with their sidecars, not the bench's Keras model or v1.
    models = app / "models"
    assert (models / "liveness.tflite").is_file() and (models / "liveness.json").is_file()
    assert not list(models.rglob("*.keras")) and not (models / "v1").exists()
    assert (models / "third_party").is_dir()
    assert (app / "requirements-pi.txt").read_bytes() == (ROOT / "requirements-pi.txt").read_bytes()
    assert not (pi / "opt/livegate/app.new").exists()
    cfg = (pi / "opt/livegate/venv/pyvenv.cfg").read_text()
    assert "include-system-site-packages = true" in cfg  # apt's picamera2 and lgpio
    assert (pi / "opt/livegate/venv/bin/python").exists()


def test_model_files_are_there_and_checked(pi: Path) -> None:
    for asset in ALL_ASSETS:
        checked_asset(asset, pi / "opt/livegate/assets")  # raises on a wrong sha256


def test_new_config_is_valid_and_names_installed_paths(pi: Path) -> None:
    path = pi / "etc/livegate/config.yaml"
    assert mode(path) == 0o644
    config = load_config(path)
    assert config.state_dir == Path("/var/lib/livegate")  # the unit's StateDirectory
    assert config.camera.source == "picamera2"
    assert config.liveness.model == Path("/opt/livegate/app/models/liveness.tflite")
    assert config.detector.assets_dir == Path("/opt/livegate/assets")
    assert (config.relay.pin, config.relay.active_high) == (17, True)
    assert config.mqtt.password_file is None
    assert "password:" not in path.read_text()


def test_credentials_folder_is_root_only(pi: Path) -> None:
    assert mode(pi / "etc/livegate/credentials") == 0o700


@pytest.mark.skipif(
    not IS_ROOT or shutil.which("systemd-sysusers") is None,
    reason="needs root and systemd-sysusers",
)
def test_service_user_is_created_under_the_root(pi: Path) -> None:
    users = {ln.split(":")[0]: ln.split(":") for ln in (pi / "etc/passwd").read_text().splitlines()}
    assert users["livegate"][5:] == ["/var/lib/livegate", "/usr/sbin/nologin"]
    assert int(users["livegate"][2]) < 1000  # a system user
    lines = (pi / "etc/group").read_text().splitlines()
    groups = {ln.split(":")[0]: ln.split(":")[3] for ln in lines}
    assert "livegate" in groups["gpio"].split(",")
    assert "livegate" in groups["video"].split(",")


def test_camera_option_reaches_a_new_config(tmp_path: Path) -> None:
    installed_ok(tmp_path, "--camera", "0")
    assert load_config(tmp_path / "etc/livegate/config.yaml").camera.source == "0"


def test_rerun_keeps_config_and_secrets_and_replaces_code(tmp_path: Path) -> None:
    installed_ok(tmp_path)
    config = tmp_path / "etc/livegate/config.yaml"
    edited = config.read_text().replace("pin: 17", "pin: 27") + "# edited on the Pi\n"
    config.write_text(edited)
    secret = tmp_path / "etc/livegate/credentials/mqtt_password"
    secret.write_text("hunter2\n")
    stale = tmp_path / "opt/livegate/app/edge/removed_module.py"
    stale.write_text("")
    (tmp_path / "etc/systemd/system/livegate.service").write_text("[Unit]\n")

    result = installed_ok(tmp_path, "--camera", "0")  # --camera only shapes a new config

    assert config.read_text() == edited
    assert load_config(config).relay.pin == 27
    assert secret.read_text() == "hunter2\n"
    assert not stale.exists()
    unit = tmp_path / "etc/systemd/system/livegate.service"
    assert unit.read_bytes() == (ROOT / "systemd/livegate.service").read_bytes()
    assert "kept" in result.stdout


def test_upgrade_refusing_the_kept_config_leaves_old_code(tmp_path: Path) -> None:
    installed_ok(tmp_path)
    config = tmp_path / "etc/livegate/config.yaml"
    config.write_text(config.read_text().replace("relay:\n", "relay:\n  pinn: 4\n"))
    marker = tmp_path / "opt/livegate/app/edge/old_code_marker.py"
    marker.write_text("")

    result = install(tmp_path)

    assert result.returncode != 0
    assert "relay.pinn" in result.stderr + result.stdout
    assert marker.exists()  # the running door keeps the code it was started with
    assert not (tmp_path / "opt/livegate/app.new").exists()


def test_bad_camera_value_writes_nothing(tmp_path: Path) -> None:
    result = install(tmp_path, "--camera", 'x" ; evil: "y')
    assert result.returncode != 0
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(os.uname().machine == "aarch64", reason="checks the refusal off aarch64")
def test_pip_install_refused_off_aarch64(tmp_path: Path) -> None:
    result = run(INSTALL, tmp_path, "--no-apt", "--no-systemctl", "--python", sys.executable)
    assert result.returncode != 0
    assert "aarch64" in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_uninstall_keeps_config_and_data_unless_purged(tmp_path: Path) -> None:
    installed_ok(tmp_path)
    state = tmp_path / "var/lib/livegate"
    state.mkdir(parents=True)
    (state / "enrolled.json").write_text("{}")

    result = run(UNINSTALL, tmp_path, "--no-systemctl")
    assert result.returncode == 0, result.stderr
    for gone in ("opt/livegate", "etc/systemd/system/livegate.service", "usr/local/bin/livegate"):
        assert not (tmp_path / gone).exists(), gone
    assert (tmp_path / "etc/livegate/config.yaml").is_file()
    assert (state / "enrolled.json").is_file()

    result = run(UNINSTALL, tmp_path, "--no-systemctl", "--purge")
    assert result.returncode == 0, result.stderr
    assert not (tmp_path / "etc/livegate").exists()
    assert not state.exists()
    assert not (tmp_path / "etc/sysusers.d/livegate.conf").exists()
    if IS_ROOT and (tmp_path / "etc/passwd").exists():
        assert "livegate:" not in (tmp_path / "etc/passwd").read_text()
        groups = (tmp_path / "etc/group").read_text()
        assert not any(ln.startswith("livegate:") for ln in groups.splitlines())
        assert all("livegate" not in ln.split(":")[3] for ln in groups.splitlines())


def fake_systemd(bin_dir: Path, log: Path, start_ok: bool) -> str:
    """systemctl/journalctl stand-ins that record their calls: PATH for the scripts."""
    bin_dir.mkdir()
    restart = "exit 0" if start_ok else "exit 1"
    (bin_dir / "systemctl").write_text(
        "#!/bin/sh\n"
        f'echo "systemctl $*" >> "{log}"\n'
        'case "$1" in\n'
        f"  restart) {restart} ;;\n"
        "  show) echo 0 ;;\n"
        "esac\n"
    )
    (bin_dir / "journalctl").write_text(f'#!/bin/sh\necho "journalctl $*" >> "{log}"\n')
    for tool in bin_dir.iterdir():
        tool.chmod(0o755)
    return f"{bin_dir}:{os.environ['PATH']}"


def install_with(dest: Path, path: str) -> subprocess.CompletedProcess:
    return run(
        INSTALL,
        dest,
        "--no-apt",
        "--no-pip",
        "--python",
        sys.executable,
        "--assets-from",
        str(DEFAULT_ASSETS_DIR),
        path=path,
    )


def test_service_is_enabled_started_and_checked(tmp_path: Path) -> None:
    if not all((DEFAULT_ASSETS_DIR / a.name).is_file() for a in ALL_ASSETS):
        pytest.skip(f"model files missing in {DEFAULT_ASSETS_DIR}")
    log = tmp_path / "calls.log"
    result = install_with(tmp_path / "root", fake_systemd(tmp_path / "bin", log, start_ok=True))
    assert result.returncode == 0, result.stderr
    calls = log.read_text().splitlines()
    order = [
        "systemctl daemon-reload",
        "systemctl enable livegate.service",
        "systemctl restart livegate.service",
        "systemctl is-active --quiet livegate.service",
    ]
    assert [c for c in calls if c in order] == order
    assert "livegate is running" in result.stdout
    assert "journalctl -u livegate -f" in result.stdout  # what to do next


def test_failed_start_shows_the_log_and_fails(tmp_path: Path) -> None:
    if not all((DEFAULT_ASSETS_DIR / a.name).is_file() for a in ALL_ASSETS):
        pytest.skip(f"model files missing in {DEFAULT_ASSETS_DIR}")
    log = tmp_path / "calls.log"
    result = install_with(tmp_path / "root", fake_systemd(tmp_path / "bin", log, start_ok=False))
    assert result.returncode != 0
    assert any(c.startswith("journalctl -u livegate.service") for c in log.read_text().splitlines())
    assert "did not start" in result.stderr


def test_uninstall_stops_the_service_first(tmp_path: Path) -> None:
    log = tmp_path / "calls.log"
    path = fake_systemd(tmp_path / "bin", log, start_ok=True)
    result = run(UNINSTALL, tmp_path / "root", path=path)
    assert result.returncode == 0, result.stderr
    calls = log.read_text().splitlines()
    assert calls.index("systemctl disable --now livegate.service") < calls.index(
        "systemctl daemon-reload"
    )

"""Config: documented defaults, clear errors naming the key, nothing touched on a bad config."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from gpiozero.pins.mock import MockFactory
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge.__main__ import main
from edge.config import Config, load_config, parse_config
from edge.errors import ConfigError
from tests.conftest import REPO_ROOT


def _leaves(data: object, prefix: str = "") -> dict[str, object]:
    if isinstance(data, dict):
        out: dict[str, object] = {}
        for key, value in data.items():
            out.update(_leaves(value, f"{prefix}{key}."))
        return out
    return {prefix.rstrip("."): data}


def test_config_yaml_documents_every_key_with_its_default() -> None:
    documented = _leaves(yaml.safe_load((REPO_ROOT / "config.yaml").read_text()))
    defaults = _leaves(Config().model_dump(mode="json"))
    assert set(documented) == set(defaults), "config.yaml and the models must list the same keys"
    for key, value in defaults.items():
        assert documented[key] == value or str(documented[key]) == str(value), key
    lines = (REPO_ROOT / "config.yaml").read_text().splitlines()
    for key in defaults:
        leaf = key.split(".")[-1] + ":"
        at = [i for i, line in enumerate(lines) if line.strip().startswith(leaf)]
        assert at, key
        # documented: a comment on the line itself or right above it
        assert any("#" in lines[i] or lines[i - 1].lstrip().startswith("#") for i in at), key


def test_relative_paths_resolve_against_the_config_folder(tmp_path: Path) -> None:
    (tmp_path / "c.yaml").write_text("liveness:\n  model: m/x.tflite\nstate_dir: state\n")
    config = load_config(tmp_path / "c.yaml")
    assert config.liveness.model == tmp_path / "m" / "x.tflite"
    assert config.sidecar_path == tmp_path / "m" / "x.json"
    assert config.journal_path == tmp_path / "state" / "events.sqlite3"


@pytest.mark.parametrize(
    ("yaml_text", "named"),
    [
        ("relay:\n  pinn: 4\n", ["relay.pinn", "did you mean 'relay.pin'"]),
        ("camera:\n  fps: fast\n", ["camera.fps", "'fast'"]),
        ("relay:\n  pulse_s: 30\n", ["relay.pulse_s", "less than or equal to 10"]),
        (
            "decision:\n  min_live_frames: 9\n  vote_frames: 5\n",
            ["decision", "min_live_frames (9)"],
        ),
        (
            "decision:\n  min_live_frames: 2\n  vote_frames: 4\n",
            ["decision", "min_live_frames (2) is not a majority of vote_frames (4)"],
        ),
        (
            "decision:\n  vote_frames: 1\n  min_live_frames: 1\n  combine: mean_logit\n",
            ["decision.vote_frames = 1", "greater than or equal to 2"],
        ),
        ("homeassistant:\n  remote_unlock: true\n", ["homeassistant", "unlock_code"]),
        ("mqtt:\n  device_id: 'front door'\n", ["mqtt.device_id"]),
        ("- just\n- a list\n", ["expected a mapping"]),
        ("relay: [\n", ["not valid YAML"]),
    ],
)
def test_bad_config_exits_2_naming_the_key(
    tmp_path: Path, yaml_text: str, named: list[str]
) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(yaml_text)
    result = subprocess.run(
        [sys.executable, "-m", "edge", "check-config", "--config", str(path)],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
    )
    assert result.returncode == 2
    for fragment in named:
        assert fragment in result.stderr


def test_missing_model_refuses_to_start_without_touching_the_relay(
    tmp_path: Path, mock_factory: MockFactory
) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("liveness:\n  model: nowhere.tflite\nmqtt:\n  enabled: false\n")
    assert main(["run", "--config", str(path), "--relay", "mock"]) == 2
    assert mock_factory.pins == {}, "no GPIO pin may be created when the daemon refuses to start"


@pytest.mark.parametrize(
    "yaml_text",
    ["relay:\n  pin: 99\n", "relay:\n  pulse_s: 11\n", "unknown_section: {}\n", "camera: 3\n"],
)
def test_bad_config_run_never_touches_relay(
    tmp_path: Path, mock_factory: MockFactory, yaml_text: str
) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(yaml_text)
    assert main(["run", "--config", str(path), "--relay", "mock"]) == 2
    assert mock_factory.pins == {}


def test_check_config_accepts_repository_config() -> None:
    assert main(["check-config", "--config", str(REPO_ROOT / "config.yaml")]) == 0


def test_parse_empty_is_defaults(tmp_path: Path) -> None:
    assert parse_config(None, tmp_path).relay.pulse_s == 3.0
    with pytest.raises(ConfigError):
        parse_config({"relay": {"pulse_s": 0}}, tmp_path)


def test_detector_confidence_defaults_per_kind_unless_set(tmp_path: Path) -> None:
    res10 = parse_config({"detector": {"kind": "res10"}}, tmp_path).detector
    tiles = parse_config({"detector": {"kind": "blazeface_tiles"}}, tmp_path).detector
    assert res10.confidence_for() == 0.5
    assert tiles.confidence_for() == 0.7
    assert tiles.confidence_for("res10") == 0.5  # the bench builds every kind from one config
    fixed = parse_config({"detector": {"kind": "blazeface", "confidence": 0.9}}, tmp_path)
    assert fixed.detector.confidence_for() == fixed.detector.confidence_for("res10") == 0.9


# -- random structures: a clear refusal or a config, never a crash -------------------------------


def _section_keys() -> dict[str, list[str]]:
    keys: dict[str, list[str]] = {}
    for name, field in Config.model_fields.items():
        fields = getattr(field.annotation, "model_fields", None)
        keys[name] = list(fields) if fields else []
    return keys


SECTION_KEYS = _section_keys()
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20)
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=6,
)
SECTIONS = st.sampled_from(sorted(SECTION_KEYS)).flatmap(
    lambda name: st.tuples(
        st.just(name),
        st.dictionaries(
            st.sampled_from(SECTION_KEYS[name] or ["x"]) | st.text(max_size=6), VALUES, max_size=4
        )
        | VALUES,
    )
)
CONFIGS = (
    st.dictionaries(st.text(max_size=8), VALUES, max_size=2)
    | st.lists(SECTIONS, max_size=4).map(dict)
    | VALUES
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=CONFIGS)
def test_random_config_structures_are_refused_clearly_or_accepted(data: object) -> None:
    try:
        config = parse_config(data, Path("/tmp"))
    except ConfigError as exc:
        assert str(exc).strip(), "a refusal names what is wrong"
    else:
        assert isinstance(config, Config)


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(text=st.text(max_size=200) | CONFIGS.map(lambda d: yaml.safe_dump(d, allow_unicode=True)))
def test_random_yaml_run_exits_2_or_runs_never_touching_relay_on_refusal(
    tmp_path: Path, mock_factory: MockFactory, text: str
) -> None:
    path = tmp_path / "random.yaml"
    path.write_text(text)
    code = main(["check-config", "--config", str(path)])
    assert code in (0, 2)
    if code == 2:
        assert main(["run", "--config", str(path), "--relay", "mock"]) == 2
        assert mock_factory.pins == {}, "a refused config never creates a GPIO pin"

"""LiveGate configuration: pydantic models, one section per stage, validated once and frozen.

Relative paths in a config file are resolved against the folder of that file, so the repository's
``config.yaml`` works from any working directory and ``/etc/livegate/config.yaml`` can name absolute
paths. Errors name the key path, the value and the reason, with the closest valid key when a key is
misspelt; the daemon never runs half-configured.
"""

from __future__ import annotations

import difflib
import logging
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from edge.coco_labels import COCO_CLASS_NAMES
from edge.errors import ConfigError

if TYPE_CHECKING:
    from edge.detectors.registry import DetectorKind

logger = logging.getLogger(__name__)

# Door safety: no configuration may hold the strike open longer than this.
PULSE_HARD_CAP_S = 10.0


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _detectors() -> dict[str, DetectorKind]:
    # The registry, imported only when a detector section is validated: its detector modules load
    # numpy and OpenCV, which importing this module (edge.relay, `python -m edge lock`) must not.
    from edge.detectors.registry import DETECTORS

    return DETECTORS


class CameraConfig(Section):
    source: str = Field(
        "0",
        description="Camera index ('0'), video file path, RTSP/HTTP URL, or 'picamera2'.",
    )
    width: int = Field(640, ge=64, le=4096, description="Requested capture width in pixels.")
    height: int = Field(480, ge=64, le=4096, description="Requested capture height in pixels.")
    fps: float = Field(30.0, gt=0, le=240, description="Requested capture frame rate.")
    realtime: bool = Field(
        False,
        description="Play file sources at their own frame rate (true) or as fast as the pipeline"
        " takes them (false: every frame is processed, as in tests and the demo).",
    )
    reconnect_initial_s: float = Field(
        1.0, gt=0, description="First wait before reopening a failed source; doubles each time."
    )
    reconnect_max_s: float = Field(30.0, gt=0, description="Longest wait between reopen attempts.")
    lost_after_s: float = Field(
        3.0, gt=0, description="No frame for this long: the camera is reported lost."
    )
    frozen_after_s: float = Field(
        5.0, gt=0, description="The very same frame repeated for this long: reported lost."
    )
    max_frame_age_s: float = Field(
        0.5, gt=0, description="A frame older than this is never used for a decision."
    )


class DetectorConfig(Section):
    kind: str = Field(
        "res10",
        description="Face detector: res10 (OpenCV SSD), blazeface (MediaPipe short range), or"
        " blazeface_tiles (BlazeFace on overlapping tiles too: finds smaller faces). The"
        " liveness model's sidecar names the detectors it was validated on (box_detectors;"
        " the shipped one: res10 only); another kind is refused at start.",
    )
    confidence: float | None = Field(
        None,
        ge=0.05,
        le=1.0,
        description="Minimum face detection score; null = the detector's own default (res10 0.5,"
        " BlazeFace 0.7: its scores run higher, and at 0.5 it reports thumbs and hands).",
    )
    min_face_px: int = Field(
        60, ge=0, description="Ignore faces whose box is narrower than this (far from the door)."
    )
    min_visible: float = Field(
        0.8,
        ge=0.0,
        le=1.0,
        description="Ignore faces with less than this share of their box inside the frame (a face"
        " cut by the frame edge cannot be judged).",
    )
    detect_width: int = Field(
        0, ge=0, description="Downscale frames to this width before detection (0: no downscale)."
    )
    every_n_frames: int = Field(
        3,
        ge=1,
        le=10,
        description="While faces are known, search the whole frame every Nth frame and only"
        " around the known faces in between (regions); the whole frame at once when no face is"
        " known or one is lost. 1 = the whole frame every time.",
    )
    region_input_px: int = Field(
        128,
        ge=64,
        le=300,
        description="res10's input size for the regions around known faces (300 on whole"
        " frames). BlazeFace's input is fixed at 128.",
    )
    region_scale: float = Field(
        2.0,
        ge=1.2,
        le=4.0,
        description="A region is a square of this many times the face's long side.",
    )
    threads: int = Field(
        0,
        ge=0,
        description="Detector threads (res10: OpenCV, process-wide; BlazeFace: interpreter);"
        " 0 = the library's default.",
    )
    assets_dir: Path | None = Field(
        None,
        description="Folder with the fetched model files (default: ./assets, LIVEGATE_ASSETS).",
    )

    @field_validator("kind")
    @classmethod
    def _known_kind(cls, kind: str) -> str:
        detectors = _detectors()  # the kinds are the registry's, one entry per detector
        if kind not in detectors:
            close = difflib.get_close_matches(kind, list(detectors), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ValueError(f"unknown detector kind {kind!r}{hint}; known: {', '.join(detectors)}")
        return kind

    @model_validator(mode="after")
    def _regions_supported(self) -> DetectorConfig:
        if self.every_n_frames > 1 and _detectors()[self.kind].region_factory is None:
            raise ValueError(
                f"detector {self.kind!r} cannot search regions around known faces:"
                " set detector.every_n_frames to 1"
            )
        return self

    def confidence_for(self, kind: str | None = None) -> float:
        """The score threshold for detector ``kind`` (default: the configured kind)."""
        if self.confidence is not None:
            return self.confidence
        return _detectors()[kind or self.kind].default_confidence


class LivenessConfig(Section):
    model: Path = Field(Path("models/liveness.tflite"), description="Int8 TFLite liveness model.")
    sidecar: Path | None = Field(
        None, description="JSON sidecar of the model (default: the model path with .json)."
    )
    threshold: float | None = Field(
        None,
        ge=0.0,
        le=1.0,
        description="Override of the sidecar's operating threshold on the 'real' probability.",
    )
    camera_calibration: bool = Field(
        True,
        description="Use <state_dir>/liveness_calibration.json when `python -m edge calibrate`"
        " wrote one for this model: the threshold rises to this camera's live faces (never"
        " falls below the model's own). Ignored when liveness.threshold is set.",
    )
    blink: Literal["off", "required"] = Field(
        "off", description="Require an eye blink (MediaPipe face mesh) before a grant."
    )
    blink_window_s: float = Field(
        4.0, gt=0, description="With blink required: a blink must be seen within this window."
    )


# Measured on every 10th frame of 22 replay and live clips (issue 15): at score >= 0.5 these three
# classes around the face flagged 11 of 13 replay clips and 0 of 430 live frames; at 0.4 two live
# frames were flagged.
DEFAULT_DEVICE_CLASSES = ("cell phone", "laptop", "tv")


class DeviceGuardConfig(Section):
    enabled: bool = Field(
        True,
        description="Run the device guard: a phone, laptop or monitor (COCO SSD) around a face"
        " makes that frame a spoof vote, whatever the liveness score.",
    )
    min_score: float = Field(
        0.5, ge=0.05, le=1.0, description="Lowest object score that counts as a device."
    )
    classes: tuple[str, ...] = Field(
        DEFAULT_DEVICE_CLASSES,
        min_length=1,
        description="COCO classes that count as a device (e.g. 'cell phone', 'laptop', 'tv';"
        " 'book' for printed sheets is untested).",
    )
    face_overlap: float = Field(
        0.5,
        gt=0.0,
        le=1.0,
        description="A device box is around a face when it contains the face centre or covers"
        " at least this share of the face box.",
    )
    every_n_frames: int = Field(
        3,
        ge=1,
        le=30,
        description="While a face is undecided, run the guard on its first frame and then every"
        " Nth frame, and on the next frame after it flagged the face (a result counts until the"
        " next run); never on an empty doorstep or after a decision.",
    )

    @field_validator("classes")
    @classmethod
    def _known_classes(cls, classes: tuple[str, ...]) -> tuple[str, ...]:
        for name in classes:
            if name not in COCO_CLASS_NAMES:
                close = difflib.get_close_matches(name, sorted(COCO_CLASS_NAMES), n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise ValueError(
                    f"unknown class {name!r}{hint}; valid COCO classes:"
                    f" {', '.join(sorted(COCO_CLASS_NAMES))}"
                )
        return classes


class DecisionConfig(Section):
    # At least 2: with 1, 'votes' never decided (a vote needs 2 frames) and 'mean_logit' acted
    # on a single frame.
    vote_frames: int = Field(
        5,
        ge=2,
        le=100,
        description="Voting window M in frames (at least 2: one frame is never enough to act on).",
    )
    vote_seconds: float = Field(
        1.0, gt=0, description="Voting window in seconds; whichever of the two is reached first."
    )
    min_live_frames: int = Field(
        4, ge=1, description="Grant only when at least N of the last M frames are live."
    )
    min_spoof_frames: int = Field(
        4, ge=1, description="Deny as spoof when at least this many of the last M are not live."
    )
    combine: Literal["votes", "mean_logit"] = Field(
        "votes",
        description="How a face's frames are combined: 'votes' (N of M frames live, as above) or"
        " 'mean_logit' (the mean log-odds of P(real) over the window against the model's"
        " threshold; min_live_frames/min_spoof_frames are then unused).",
    )
    track_iou: float = Field(
        0.3, gt=0, lt=1, description="Box overlap (IoU) that continues a face track."
    )
    track_timeout_s: float = Field(
        1.0, gt=0, description="A track not seen for this long has left (face present clears)."
    )
    cooldown_s: float = Field(5.0, ge=0, description="No new grant this long after an unlock.")
    lockout_spoofs: int = Field(3, ge=1, description="Spoof denials K that trigger a lockout...")
    lockout_window_s: float = Field(60.0, gt=0, description="...within this window T.")
    lockout_s: float = Field(300.0, ge=0, description="How long a lockout refuses every face.")

    @model_validator(mode="after")
    def _votes_fit_window(self) -> DecisionConfig:
        if self.min_live_frames > self.vote_frames:
            raise ValueError(
                f"min_live_frames ({self.min_live_frames}) exceeds vote_frames ({self.vote_frames})"
            )
        if self.combine == "votes" and 2 * self.min_live_frames <= self.vote_frames:
            # The door opens on live frames only when most of the window agrees: an attack
            # that passes the model on a minority of its frames must not be let in.
            raise ValueError(
                f"min_live_frames ({self.min_live_frames}) is not a majority of vote_frames"
                f" ({self.vote_frames}): give more than {self.vote_frames // 2}"
            )
        if self.min_spoof_frames > self.vote_frames:
            raise ValueError(
                f"min_spoof_frames ({self.min_spoof_frames}) exceeds vote_frames"
                f" ({self.vote_frames})"
            )
        return self


class AccessConfig(Section):
    policy: Literal["enrolled", "any_live"] = Field(
        "enrolled",
        description="'enrolled': live AND recognised; 'any_live': any live face"
        " (not access control).",
    )
    store: Path | None = Field(
        None, description="Enrolment store (default: <state_dir>/enrolled.json)."
    )
    max_distance: float = Field(
        0.38, gt=0, le=1.0, description="Largest embedding distance that counts as a match."
    )
    min_margin: float = Field(
        0.08, ge=0, description="The match must be this much nearer than the next person."
    )
    samples_per_track: int = Field(
        3, ge=1, le=20, description="Recognition runs on at most this many frames of a face."
    )


class RelayConfig(Section):
    pin: int = Field(17, ge=0, le=53, description="BCM GPIO pin driving the relay board.")
    active_high: bool = Field(
        True, description="True if the relay closes (door unlocks) when the pin is high."
    )
    pulse_s: float = Field(
        3.0, gt=0, le=PULSE_HARD_CAP_S, description="How long one grant holds the strike open."
    )
    mock: bool = Field(False, description="Use gpiozero's MockFactory (no hardware).")


class TlsConfig(Section):
    enabled: bool = Field(False, description="Connect with TLS.")
    ca_certs: Path | None = Field(None, description="CA bundle (default: the system's).")
    certfile: Path | None = Field(None, description="Client certificate, for per-device certs.")
    keyfile: Path | None = Field(None, description="Client key.")


class MqttConfig(Section):
    enabled: bool = Field(True, description="Publish events and state over MQTT.")
    host: str = Field("127.0.0.1", min_length=1, description="Broker host.")
    port: int = Field(1883, ge=1, le=65535, description="Broker port.")
    tls: TlsConfig = Field(default_factory=TlsConfig)
    username: str | None = Field(None, description="Broker user name (per device).")
    password_file: Path | None = Field(
        None, description="File holding the broker password (root-only or a systemd credential)."
    )
    password_env: str | None = Field(
        None, description="Environment variable holding the broker password."
    )
    base_topic: str = Field("livegate", min_length=1, description="Topic prefix.")
    device_id: str = Field(
        "door", pattern=r"^[A-Za-z0-9_-]+$", description="Stable id of this door (topics, HA ids)."
    )
    keepalive_s: int = Field(30, ge=5, le=3600, description="MQTT keepalive.")
    max_payload_bytes: int = Field(
        4096, ge=64, description="Incoming payloads larger than this are refused."
    )

    def password(self) -> SecretStr | None:
        """The password from its file or environment variable, never from the YAML itself."""
        if self.password_file is not None:
            try:
                secret = SecretStr(self.password_file.read_text().strip())
                mode = self.password_file.stat().st_mode
            except OSError as exc:
                raise ConfigError(
                    f"mqtt.password_file: cannot read {self.password_file}: {exc.strerror}"
                ) from None
            if mode & 0o077:
                logger.warning(
                    "mqtt.password_file: %s is readable by other users; chmod 600 it (or use a"
                    " systemd credential)",
                    self.password_file,
                )
            return secret
        if self.password_env is not None:
            value = os.environ.get(self.password_env)
            if value is None:
                raise ConfigError(f"mqtt.password_env: variable {self.password_env} is not set")
            return SecretStr(value)
        return None


class HomeAssistantConfig(Section):
    discovery: bool = Field(True, description="Announce the device to Home Assistant.")
    discovery_prefix: str = Field("homeassistant", min_length=1, description="HA discovery prefix.")
    remote_unlock: bool = Field(
        False, description="Accept UNLOCK commands over MQTT (dangerous; needs a code)."
    )
    unlock_code_file: Path | None = Field(None, description="File holding the remote unlock code.")
    unlock_code_env: str | None = Field(
        None, description="Environment variable holding the remote unlock code."
    )
    unlock_rate_per_min: int = Field(
        3, ge=1, le=60, description="Remote unlock attempts accepted per minute at most."
    )
    snapshot: bool = Field(
        False,
        description="Keep a JPEG of the frame behind each decision of snapshot_kinds (with the face"
        " box) in <state_dir>/snapshots and show it on HA's image entity. It stores faces.",
    )
    snapshot_kinds: tuple[
        Literal["granted", "denied_spoof", "denied_unknown", "denied_disabled", "lockout"], ...
    ] = Field(("granted", "denied_spoof"), description="Decisions that get a snapshot.")
    snapshot_keep: int = Field(
        20,
        ge=0,
        le=1000,
        description="Newest snapshots kept in <state_dir>/snapshots (owner-only files; 0: none are"
        " stored, HA still gets them).",
    )

    @model_validator(mode="after")
    def _unlock_needs_code(self) -> HomeAssistantConfig:
        if self.remote_unlock and self.unlock_code_file is None and self.unlock_code_env is None:
            raise ValueError("remote_unlock needs unlock_code_file or unlock_code_env")
        return self


class EventsConfig(Section):
    journal: Path | None = Field(
        None, description="SQLite event journal (default: <state_dir>/events.sqlite3)."
    )
    max_rows: int = Field(100_000, ge=100, description="Delivered events kept at most.")
    max_age_days: float = Field(30.0, gt=0, description="Delivered events kept at most this long.")
    audit_log: Path | None = Field(
        None, description="Hash-chained audit log (default: <state_dir>/audit.log)."
    )


class FleetConfig(Section):
    enabled: bool = Field(
        False,
        description="Take enrolments from the fleet topic <base_topic>/fleet/people/# (signed,"
        " encrypted; see docs/fleet.md). Needs mqtt.enabled.",
    )
    public_key: Path | None = Field(
        None, description="The fleet's Ed25519 public key (PEM): only messages it verifies apply."
    )
    content_key_file: Path | None = Field(
        None,
        description="The fleet's 256-bit AES-GCM content key (base64), readable by the service"
        " user only: it decrypts the embeddings.",
    )
    signing_key: Path | None = Field(
        None,
        description="Admin only: the Ed25519 signing key (PEM, mode 0600) used by `fleet publish`"
        " and `fleet revoke`. Never on a door.",
    )
    max_message_bytes: int = Field(
        262_144,
        ge=4096,
        description="Fleet messages larger than this are refused (a person's embeddings take"
        " ~2 KB each).",
    )

    @model_validator(mode="after")
    def _enabled_needs_keys(self) -> FleetConfig:
        if self.enabled and (self.public_key is None or self.content_key_file is None):
            raise ValueError("fleet.enabled needs public_key and content_key_file")
        return self


class LoggingConfig(Section):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO", description="Log level.")


class Config(Section):
    state_dir: Path = Field(
        Path("var"), description="Writable folder for the journal, audit log and enrolment store."
    )
    camera: CameraConfig = Field(default_factory=CameraConfig)
    detector: DetectorConfig = Field(default_factory=DetectorConfig)
    liveness: LivenessConfig = Field(default_factory=LivenessConfig)
    device_guard: DeviceGuardConfig = Field(default_factory=DeviceGuardConfig)
    decision: DecisionConfig = Field(default_factory=DecisionConfig)
    access: AccessConfig = Field(default_factory=AccessConfig)
    relay: RelayConfig = Field(default_factory=RelayConfig)
    mqtt: MqttConfig = Field(default_factory=MqttConfig)
    homeassistant: HomeAssistantConfig = Field(default_factory=HomeAssistantConfig)
    events: EventsConfig = Field(default_factory=EventsConfig)
    logging: LoggingConfig = Field(default_factory=LoggingConfig)
    fleet: FleetConfig = Field(default_factory=FleetConfig)

    @model_validator(mode="after")
    def _fleet_needs_mqtt(self) -> Config:
        # Without a broker a door could never learn of a revocation: refuse, do not half-run.
        if self.fleet.enabled and not self.mqtt.enabled:
            raise ValueError("fleet.enabled needs mqtt.enabled (enrolments arrive over MQTT)")
        return self

    @property
    def sidecar_path(self) -> Path:
        return self.liveness.sidecar or self.liveness.model.with_suffix(".json")

    @property
    def journal_path(self) -> Path:
        return self.events.journal or self.state_dir / "events.sqlite3"

    @property
    def audit_path(self) -> Path:
        return self.events.audit_log or self.state_dir / "audit.log"

    @property
    def store_path(self) -> Path:
        return self.access.store or self.state_dir / "enrolled.json"

    @property
    def calibration_path(self) -> Path:
        """Where ``python -m edge calibrate`` keeps this camera's liveness calibration."""
        return self.state_dir / "liveness_calibration.json"


# Keys holding paths, resolved against the config file's folder when relative.
_PATH_KEYS = (
    ("state_dir",),
    ("detector", "assets_dir"),
    ("liveness", "model"),
    ("liveness", "sidecar"),
    ("access", "store"),
    ("mqtt", "password_file"),
    ("mqtt", "tls", "ca_certs"),
    ("mqtt", "tls", "certfile"),
    ("mqtt", "tls", "keyfile"),
    ("homeassistant", "unlock_code_file"),
    ("events", "journal"),
    ("events", "audit_log"),
    ("fleet", "public_key"),
    ("fleet", "content_key_file"),
    ("fleet", "signing_key"),
)


def _resolve_paths(data: dict[str, Any], base: Path) -> None:
    for keys in _PATH_KEYS:
        node: Any = data
        for key in keys[:-1]:
            node = node.get(key) if isinstance(node, dict) else None
        if isinstance(node, dict) and isinstance(node.get(keys[-1]), (str, Path)):
            path = Path(node[keys[-1]]).expanduser()
            node[keys[-1]] = str(path if path.is_absolute() else base / path)


def _model_at(keys: tuple[str | int, ...]) -> type[BaseModel] | None:
    model: type[BaseModel] = Config
    for key in keys:
        field = model.model_fields.get(str(key))
        annotation = field.annotation if field else None
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return None
        model = annotation
    return model


# Keys whose value may be a secret: an error names the key but never shows the value, even for a
# misspelt or unknown key (``mqtt.password: ...`` is exactly what a user might write).
_SECRET_KEY = re.compile(r"pass|secret|token|code|credential|private|(^|_)key($|_)", re.IGNORECASE)
_SECRET_SAFE_SUFFIXES = ("_file", "_env")  # these hold a path or a variable name, not the secret


def _may_be_secret(loc: tuple[str | int, ...]) -> bool:
    return any(
        isinstance(part, str)
        and _SECRET_KEY.search(part) is not None
        and not part.endswith(_SECRET_SAFE_SUFFIXES)
        for part in loc
    )


def describe_errors(error: ValidationError) -> list[str]:
    """One line per problem: ``key.path: value ...: reason (did you mean 'x'?)``."""
    lines = []
    for item in error.errors():
        loc = tuple(item["loc"])
        path = ".".join(str(part) for part in loc) or "(top level)"
        reason = item["msg"]
        if item["type"] == "extra_forbidden":
            parent = _model_at(loc[:-1])
            known = sorted(parent.model_fields) if parent else []
            close = difflib.get_close_matches(str(loc[-1]), known, n=1)
            hint = (
                f" (did you mean '{'.'.join(map(str, loc[:-1] + (close[0],)))}'?)" if close else ""
            )
            reason = f"unknown key{hint}; valid keys here: {', '.join(known)}"
        value = item.get("input")
        if isinstance(value, dict):
            shown = ""
        elif _may_be_secret(loc):
            shown = " = <hidden>"
        else:
            shown = f" = {value!r}"
        lines.append(f"{path}{shown}: {reason}")
    return lines


def _sections(data: object) -> dict[str, Any]:
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"(top level): expected a mapping of sections, got {type(data).__name__}")
    return data


def parse_config(data: object, base_dir: Path) -> Config:
    try:
        config = Config.model_validate(_sections(data))
    except ValidationError as exc:
        raise ConfigError("\n".join(describe_errors(exc))) from None
    # Resolve after validation so that defaults are anchored at the config file's folder too.
    resolved = config.model_dump()
    _resolve_paths(resolved, base_dir)
    return Config.model_validate(resolved)


def _read_yaml(path: Path) -> object:
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        # Only what is wrong and where: PyYAML's own message quotes the line, which may hold a
        # secret.
        problem = getattr(exc, "problem", None) or type(exc).__name__
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise ConfigError(f"{path} is not valid YAML{where}: {problem}") from None
    return data


def load_config(path: Path) -> Config:
    """Read, validate and freeze the config at ``path``; ConfigError lists every problem."""
    path = Path(path)
    return parse_config(_read_yaml(path), path.resolve().parent)


class _RelayPart(BaseModel):
    """A config file as ``load_relay_config`` reads it: the ``relay`` section, validated as in
    ``Config``; the other sections are not looked at."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    relay: RelayConfig = Field(default_factory=RelayConfig)


# Relay keys that locking does not use. A bad value in one (say, an edit the running daemon never
# saw) is reported, but must not keep the stop hook from locking the door.
NOT_NEEDED_TO_LOCK = frozenset({"pulse_s"})


def load_relay_config(path: Path) -> tuple[RelayConfig, list[str]]:
    """The ``relay`` section of the config at ``path`` alone, validated as ``load_config``
    validates it, and the problems that were let pass: those in keys of ``NOT_NEEDED_TO_LOCK``,
    whose values are then the defaults. Any other bad relay key raises ConfigError naming it; a
    problem elsewhere in the file is not looked for. For ``python -m edge lock``: driving the pin
    locked is safe whatever else the file says, but not with a guessed pin or locked level, and
    validating the other sections would load the face detectors (numpy, OpenCV)."""
    data = _sections(_read_yaml(Path(path)))
    try:
        return _RelayPart.model_validate(data).relay, []
    except ValidationError as exc:
        problems = describe_errors(exc)
        if not all(_not_needed_to_lock(tuple(item["loc"])) for item in exc.errors()):
            raise ConfigError("\n".join(problems)) from None
    relay = {key: value for key, value in data["relay"].items() if key not in NOT_NEEDED_TO_LOCK}
    return RelayConfig.model_validate(relay), problems


def _not_needed_to_lock(loc: tuple[object, ...]) -> bool:
    return len(loc) >= 2 and loc[0] == "relay" and loc[1] in NOT_NEEDED_TO_LOCK


def with_overrides(config: Config, **sections: dict[str, Any]) -> Config:
    """A copy of ``config`` with some fields of some sections replaced, validated again."""
    data = config.model_dump()
    for section, values in sections.items():
        if isinstance(data.get(section), dict):
            data[section].update(values)
        else:
            data[section] = values
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError("\n".join(describe_errors(exc))) from None

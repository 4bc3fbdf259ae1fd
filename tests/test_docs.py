"""The docs agree with the code: commands that exist, event keys events carry, files that exist."""

from __future__ import annotations

import argparse
import dataclasses
import re
import threading
from pathlib import Path

import pytest
from gpiozero.pins.mock import MockFactory

from edge.__main__ import build_parser
from edge.config import Config, parse_config
from edge.device_guard import DeviceBox, DeviceGuard
from edge.events import EVENT_KINDS, Event, EventBus
from edge.homeassistant import HA_EVENT_TYPES, discovery_payload, topics
from edge.mqtt import device_topic
from edge.pipeline import Pipeline
from edge.relay import DoorRelay
from tests.conftest import REPO_ROOT
from tests.fakes import (
    ConstantLiveness,
    FixedFaceDetector,
    ScriptedCamera,
    ScriptedDeviceDetector,
)

DOCS = sorted((REPO_ROOT / "docs").glob("*.md")) + [REPO_ROOT / "README.md"]
HA_DOC = REPO_ROOT / "docs" / "home-assistant.md"
INSTALL_DOC = REPO_ROOT / "docs" / "install-pi.md"
UNIT = REPO_ROOT / "systemd" / "livegate.service"


def subcommands() -> set[str]:
    parser = build_parser()
    actions = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return set(actions[0].choices)


def test_docs_name_only_commands_that_exist() -> None:
    known = subcommands()
    for doc in DOCS:
        text = doc.read_text()
        assert "--unregister" not in text, f"{doc.name}: the command is `unregister`"
        named = re.findall(r"(?:python -m edge|sudo livegate) ([a-z][a-z-]*)", text)
        unknown = sorted(set(named) - known)
        assert not unknown, f"{doc.name} names commands that do not exist: {unknown}"


def decision_event_keys(tmp_path: Path, p_real: float, device: bool = False) -> set[str]:
    """The keys of the decision event the real frame loop emits for one face (``device``: with
    the device guard seeing a phone around it)."""
    config = parse_config(
        {"access": {"policy": "any_live"}, "mqtt": {"enabled": False}, "relay": {"pulse_s": 0.1}},
        tmp_path,
    )
    events: list[Event] = []
    relay = DoorRelay(config.relay)
    # A phone around FixedFaceDetector's face box (40, 30, 110, 100).
    phone = DeviceBox("cell phone", 0.9, (20, 10, 130, 140))
    pipeline = Pipeline(
        config,
        ScriptedCamera([("frames", 300)]),
        FixedFaceDetector(),
        ConstantLiveness(p_real),
        relay,
        EventBus(None, [events.append]),
        guard=(
            DeviceGuard(ScriptedDeviceDetector([phone]), config.device_guard) if device else None
        ),
    )
    timer = threading.Timer(1.0, pipeline.stop)
    timer.start()
    try:
        pipeline.run()
    finally:
        timer.cancel()
        relay.close()
    decisions = [e for e in events if e.kind in ("granted", "denied_spoof")]
    assert decisions, [e.kind for e in events]
    return set(decisions[0].to_dict())


def test_home_assistant_examples_use_keys_the_events_carry(
    tmp_path: Path, mock_factory: MockFactory
) -> None:
    keys = {"event_type"} | decision_event_keys(tmp_path / "g", 0.95)
    keys |= decision_event_keys(tmp_path / "s", 0.05)
    keys |= decision_event_keys(tmp_path / "d", 0.95, device=True)
    text = HA_DOC.read_text()
    # Attributes read directly, or through an alias (`{% set a = trigger.to_state.attributes %}`).
    names = ["attributes", *re.findall(r"set (\w+) = trigger\.to_state\.attributes\b", text)]
    used = {key for name in names for key in re.findall(rf"\b{name}\.(\w+)", text)}
    assert used, "the automation example reads an attribute"
    assert used <= keys, f"docs read attributes no event carries: {sorted(used - keys)}"
    assert "score" in used


def test_home_assistant_docs_list_every_event_type() -> None:
    text = HA_DOC.read_text()
    row = next(line for line in text.splitlines() if line.startswith("| `event."))
    listed = re.findall(r"`([a-z_]+)`", row.split("these types:", 1)[1].split(", with", 1)[0])
    assert sorted(listed) == sorted(HA_EVENT_TYPES)


def test_readme_lists_every_event_kind() -> None:
    text = (REPO_ROOT / "README.md").read_text()
    listed = re.findall(r"`([a-z_]+)`", re.search(r"^Kinds: (.*?)\.\s", text, re.M | re.S)[1])
    assert sorted(listed) == sorted(EVENT_KINDS)


def ha_table(heading: str) -> list[list[str]]:
    """The body rows of the first table below ``heading`` in docs/home-assistant.md, as lists of
    cells (an escaped ``\\|`` inside a cell is no separator)."""
    lines = HA_DOC.read_text().splitlines()
    rows: list[list[str]] = []
    for line in lines[lines.index(heading) + 1 :]:
        if line.startswith("|"):
            rows.append([cell.strip() for cell in re.split(r"(?<!\\)\|", line)[1:-1]])
        elif rows:
            break
    assert len(rows) > 2, f"no table below {heading!r}"
    return rows[2:]  # without the header and its --- line


def test_home_assistant_docs_list_every_topic_the_device_uses() -> None:
    """Every topic of edge.homeassistant.Topics (and the daemon's event stream) has its row in
    the topic table, and the table says "yes" exactly for those the daemon retains (the ones
    `unregister` clears)."""
    config = Config.model_validate({"mqtt": {"device_id": "frontdoor"}})
    m = config.mqtt

    def as_documented(topic: str) -> str:
        topic = topic.replace(device_topic(m, ""), "<base>/<device>/")
        return topic.replace(f"/{m.device_id}/", "/<device>/")

    t = topics(config)
    used = {as_documented(getattr(t, field.name)) for field in dataclasses.fields(t)}
    used.add(as_documented(device_topic(m, "event")))  # edge.daemon's durable event stream
    retained = {as_documented(x) for x in (*t.retained_states, t.availability, t.discovery)}
    table: dict[str, str] = {}
    for row in ha_table("## Topics and payloads"):
        named = re.fullmatch(r"`([^`]+)`", row[0])
        assert named, f"not one topic in the first cell: {row[0]}"
        table[named.group(1)] = row[-1]
    assert sorted(used - set(table)) == [], "topics the code uses with no row in the table"
    assert sorted(set(table) - used) == [], "rows for topics the code does not use"
    wrong = sorted(topic for topic, cell in table.items() if (cell == "yes") != (topic in retained))
    assert wrong == [], "the Retained column disagrees with the code"


def test_home_assistant_docs_list_every_entity() -> None:
    """Every entity of the discovery message, with every optional one turned on, has its default
    entity id (HA's: device name and entity name, slugified) in the entity table."""
    config = Config.model_validate(
        {
            "mqtt": {"device_id": "frontdoor"},
            "access": {"policy": "enrolled"},
            "homeassistant": {"snapshot": True},
            "fleet": {"enabled": True, "public_key": "k.pem", "content_key_file": "k.key"},
        }
    )
    payload = discovery_payload(config)

    def slug(text: str) -> str:
        return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")

    device = payload["dev"]["name"]
    entities = {
        f"{c['p']}.{slug(device + ' ' + c['name'])}"
        for c in payload["cmps"].values()
        if "name" in c  # {"p": ...} alone removes an entity the config leaves out
    }
    documented = {
        entity for row in ha_table("### Entities") for entity in re.findall(r"`([^`]+)`", row[0])
    }
    assert sorted(entities - documented) == [], "entities with no row in the entity table"
    assert sorted(documented - entities) == [], "rows for entities the code does not announce"


def test_unit_file_documentation_exists_and_is_installed() -> None:
    unit = UNIT.read_text()
    referenced = set(re.findall(r"docs/[\w./-]+\.md", unit))
    assert "docs/install-pi.md" in referenced
    for path in referenced:
        assert (REPO_ROOT / path).is_file(), f"the unit points to {path}, which does not exist"
    documentation = re.search(r"^Documentation=file:/opt/livegate/app/(\S+)$", unit, re.M)
    assert documentation and (REPO_ROOT / documentation.group(1)).is_file()
    # The installer copies docs/ into /opt/livegate/app, where Documentation= points.
    install = (REPO_ROOT / "scripts" / "install.sh").read_text()
    assert re.search(r"for item in [^\n]*\bdocs\b", install)


@pytest.mark.parametrize(
    "topic",
    [
        r"^## \d+\. Wiring",
        r"10 kΩ resistor",
        r"^## \d+\. The camera",
        r"rpicam-hello --list-cameras",
        r"^## \d+\. The first enrolment",
        r"livegate enroll add",
        r"^## \d+\. Checking the service",
        r"systemctl status livegate",
        r"^## \d+\. Security exposure",
        r"/etc/livegate/credentials",
    ],
)
def test_install_guide_covers_the_newcomer_path(topic: str) -> None:
    assert re.search(topic, INSTALL_DOC.read_text(), re.M), topic


def test_readme_points_to_the_install_guide_and_says_snapshots_store_faces() -> None:
    readme = (REPO_ROOT / "README.md").read_text()
    assert "docs/install-pi.md" in readme
    assert re.search(r"snapshot[^\n]*\n?[^\n]*\*\*stores pictures of faces\*\*", readme)

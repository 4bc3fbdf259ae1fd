"""``python -m edge enroll``: frame choice, refusals naming the file, store effects, real clips.

Data use: people are enrolled from the FIRST part of their real clip (frames 0-40 %, or the
first frames written out as images) and recognised on frames from the LAST part of it.
"""

from __future__ import annotations

import argparse
import json
import stat
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge.assets import DEFAULT_ASSETS_DIR, RES10_ASSETS
from edge.config import Config, parse_config
from edge.detectors.base import FaceDetector
from edge.detectors.registry import make_detector
from edge.enroll import (
    Position,
    Sample,
    add_enroll_parser,
    collect_samples,
    consistent_embeddings,
    parse_position,
    pick_spread,
    run_enroll,
    spread_indices,
)
from edge.errors import EXIT_FAILURE, EXIT_OK, EXIT_REFUSED, InputError, ModelError
from edge.identity import EMBEDDING_MODEL_SHA256, EnrolmentStore, FaceEmbedder, Recogniser
from edge.preprocess import crop_with_margin
from tests.conftest import VIDEOS

WOLF = VIDEOS / "wolf_real.mp4"
ZUBAIR = VIDEOS / "zubair_real.mov"
# res10 at 0.5 also "finds" a face on wolf's shirt in most frames (scores 0.52-0.70), so every
# wolf frame would show two faces; enrolment counts faces at 0.75 for his clip.
WOLF_CONFIDENCE = "0.75"

# -- pure helpers ---------------------------------------------------------------------------------


def test_positions_are_frame_indices_or_fractions() -> None:
    assert parse_position("40") == Position(40, False)
    assert parse_position("0.4") == Position(0.4, True)
    assert parse_position("1.0").frame(200) == 200
    assert parse_position("0.25").frame(199) == 50
    assert parse_position("7").frame(None) == 7
    for bad in ("-1", "1.5", "half", ""):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_position(bad)
    with pytest.raises(InputError, match="known length"):
        parse_position("0.5").frame(None)


def test_spread_indices_cover_the_range_evenly() -> None:
    assert spread_indices(0, 5, 10) == [0, 1, 2, 3, 4]
    picked = spread_indices(10, 110, 5)
    assert picked[0] == 10 and picked[-1] == 109 and len(picked) == 5
    assert np.ptp(np.diff(picked)) <= 1
    assert spread_indices(5, 5, 3) == []


def _sample(index: int, sharp: float) -> Sample:
    return Sample(f"frame {index}", index, np.zeros((1, 1, 3), np.uint8), (0, 0, 1, 1), sharp)


def test_pick_spread_takes_the_sharpest_of_each_part() -> None:
    samples = [_sample(i, sharp) for i, sharp in [(0, 5), (3, 9), (5, 1), (6, 2), (9, 3)]]
    picked = pick_spread(samples, 2, 0, 10)  # parts [0, 5) and [5, 10)
    assert [s.index for s in picked] == [3, 9]
    assert [s.index for s in pick_spread(samples, 1, 0, 10)] == [3]
    assert [s.index for s in pick_spread(samples[:1], 3, 0, 10)] == [0]


# -- command line -------------------------------------------------------------------------------


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="edge")
    sub = parser.add_subparsers(dest="command", required=True)
    add_enroll_parser(sub)
    return parser.parse_args(argv)


def test_parser_reads_every_command() -> None:
    args = parse(
        [
            "enroll",
            "add",
            "Ann Lee",
            "--source",
            "x.mp4",
            "--end",
            "0.4",
            "--samples",
            "5",
            "--config",
            "c.yaml",
            "--replace",
        ]
    )
    assert (args.enroll_command, args.name, args.source, args.samples) == (
        "add",
        "Ann Lee",
        "x.mp4",
        5,
    )
    assert args.end == Position(0.4, True) and args.start is None and args.replace
    assert args.config == Path("c.yaml")
    assert parse(["enroll", "list"]).enroll_command == "list"
    assert not hasattr(parse(["enroll", "list"]), "config")  # the enroll-level default stays
    assert parse(["enroll", "remove", "Ann"]).name == "Ann"
    with pytest.raises(SystemExit):
        parse(["enroll", "add", "Ann"])  # --source is required
    with pytest.raises(SystemExit):
        parse(["enroll", "add", "Ann", "--source", "0", "--samples", "0"])


@pytest.fixture
def config(tmp_path: Path) -> Config:
    return parse_config({"state_dir": "state"}, tmp_path)


def run(config: Config, *argv: str) -> int:
    return run_enroll(parse(["enroll", *argv]), config)


def test_list_of_an_empty_store_says_how_to_enrol(
    config: Config, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(config, "list") == EXIT_OK
    assert "enroll add" in capsys.readouterr().out
    assert not config.store_path.exists()


def test_corrupt_store_is_reported_and_left_alone(
    config: Config, capsys: pytest.CaptureFixture[str]
) -> None:
    config.store_path.parent.mkdir(parents=True)
    config.store_path.write_text("{ not json")
    assert run(config, "list") == EXIT_FAILURE
    assert "not valid JSON" in capsys.readouterr().err
    assert run(config, "remove", "Ann") == EXIT_FAILURE
    assert config.store_path.read_text() == "{ not json"


def _store_with(config: Config, *names: str) -> None:
    store = EnrolmentStore(config.store_path, EMBEDDING_MODEL_SHA256)
    rng = np.random.default_rng(0)
    for name in names:
        store.add(name, [rng.normal(size=128)])
    store.save()


def test_list_shows_names_samples_and_dates(
    config: Config, capsys: pytest.CaptureFixture[str]
) -> None:
    _store_with(config, "Ann", "Bo")
    assert run(config, "list") == EXIT_OK
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["NAME", "SAMPLES", "ENROLLED"]
    assert [line.split()[:2] for line in lines[1:]] == [["Ann", "1"], ["Bo", "1"]]
    assert all("T" in line.split()[2] for line in lines[1:])  # ISO date and time


def test_remove_rewrites_the_file_without_the_person(
    config: Config, capsys: pytest.CaptureFixture[str]
) -> None:
    _store_with(config, "Ann", "Bo")
    assert run(config, "remove", "Bo") == EXIT_OK
    assert "Bo" not in json.loads(config.store_path.read_text())["people"]
    assert stat.S_IMODE(config.store_path.stat().st_mode) == 0o600
    assert run(config, "remove", "Bo") == EXIT_REFUSED
    assert "'Bo' is not enrolled (enrolled: Ann)" in capsys.readouterr().err


def _people(counts: dict[str, int], apart: float = 0.72, spread: float = 0.19) -> list[np.ndarray]:
    """Embeddings of people ``apart`` from each other, each sample ``spread`` from its person's
    centre (two of one person about 0.27 apart: dlib's figures on the sample clips)."""
    rng = np.random.default_rng(1)
    embeddings = []
    for number, count in enumerate(counts.values()):
        centre = np.zeros(128)
        centre[number] = apart / np.sqrt(2)  # the centres are ``apart`` from one another
        for _ in range(count):
            noise = rng.normal(size=128)
            embeddings.append(centre + spread * noise / np.linalg.norm(noise))
    return embeddings


def _samples(count: int) -> list[Sample]:
    return [
        Sample(f"frame {i}", i, np.zeros((1, 1, 3), np.uint8), (0, 0, 1, 1), 0.0)
        for i in range(count)
    ]


@pytest.mark.parametrize("counts", [{"ann": 5, "bo": 5}, {"ann": 6, "bo": 4}, {"ann": 4, "bo": 6}])
def test_a_clip_of_two_people_is_refused_not_enrolled_as_one(counts: dict[str, int]) -> None:
    """The samples of a clip in which Ann is followed by Bo must not all go under one name (a
    coordinate-wise median of two people lies between them and once let both through)."""
    embeddings = _people(counts)
    with pytest.raises(InputError, match="more than one person"):
        consistent_embeddings(_samples(len(embeddings)), embeddings, from_images=False)


def test_one_stray_sample_of_a_clip_is_dropped_and_the_rest_kept() -> None:
    embeddings = _people({"ann": 9, "passer_by": 1})
    kept = consistent_embeddings(_samples(10), embeddings, from_images=False)
    assert len(kept) == 9
    assert all(any(k is e for e in embeddings[:9]) for k in kept)


# -- with the real detector and embedder ----------------------------------------------------------


@pytest.fixture(scope="module")
def detector() -> FaceDetector:
    if not all((DEFAULT_ASSETS_DIR / a.name).exists() for a in RES10_ASSETS):
        pytest.skip("res10 assets missing (python scripts/fetch_assets.py)")
    return make_detector("res10", confidence=0.5)


@pytest.fixture(scope="module")
def embedder() -> FaceEmbedder:
    pytest.importorskip("dlib")
    try:
        return FaceEmbedder()
    except ModelError as exc:
        pytest.skip(f"dlib models not installed: {exc}")


def frame_of(clip: Path, index: int) -> np.ndarray:
    if not clip.exists():
        pytest.skip(f"{clip} missing")
    capture = cv2.VideoCapture(str(clip))
    capture.set(cv2.CAP_PROP_POS_FRAMES, index)
    ok, frame = capture.read()
    capture.release()
    assert ok, f"{clip} frame {index}"
    return frame


@pytest.fixture(scope="module")
def zubair_images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Four frames of the first 40 % of zubair_real, written as the photos a user would give."""
    folder = tmp_path_factory.mktemp("zubair_photos")
    for index in (0, 25, 50, 75):
        cv2.imwrite(str(folder / f"zubair_{index:03d}.jpg"), frame_of(ZUBAIR, index))
    return folder


def test_enrol_from_photos_then_recognise_later_frames(
    config: Config,
    zubair_images: Path,
    embedder: FaceEmbedder,
    detector: FaceDetector,
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert run(config, "add", "zubair", "--source", str(zubair_images)) == EXIT_OK
    assert "4 samples" in capsys.readouterr().out
    store = EnrolmentStore.load(config.store_path, EMBEDDING_MODEL_SHA256)
    assert store.people() == ["zubair"] and store.person("zubair").samples == 4
    assert stat.S_IMODE(config.store_path.stat().st_mode) == 0o600
    recogniser = Recogniser(store, config.access.max_distance, config.access.min_margin)
    late = frame_of(ZUBAIR, 190)  # from the last 5 % of the clip, never enrolled
    (face,) = detector.detect(late)
    assert recogniser.match(embedder.embed(late, face.box)).person == "zubair"


def _write_folder(folder: Path, images: dict[str, np.ndarray | bytes]) -> Path:
    folder.mkdir()
    for name, content in images.items():
        if isinstance(content, bytes):
            (folder / name).write_bytes(content)
        else:
            cv2.imwrite(str(folder / name), content)
    return folder


@pytest.mark.parametrize(
    ("bad_name", "make", "reason"),
    [
        ("wall.png", lambda f: np.full_like(f, 180), "no face found"),
        ("two.jpg", lambda f: np.hstack([f, f]), "2 faces found"),
        ("broken.jpg", lambda f: b"\xff\xd8 this is not a jpeg", "cannot read this image"),
        ("tiny.png", lambda f: cv2.resize(f, (96, 54)), "no face found|the face is only"),
    ],
)
def test_an_unusable_image_is_refused_naming_it_and_nothing_is_written(
    tmp_path: Path,
    config: Config,
    detector: FaceDetector,
    capsys: pytest.CaptureFixture[str],
    bad_name: str,
    make: object,
    reason: str,
) -> None:
    good = frame_of(ZUBAIR, 10)
    folder = _write_folder(
        tmp_path / "photos",
        {"a_good.jpg": good, "b_good.jpg": frame_of(ZUBAIR, 40), bad_name: make(good)},  # type: ignore[operator]
    )
    assert run(config, "add", "zubair", "--source", str(folder)) == EXIT_REFUSED
    err = capsys.readouterr().err
    assert str(folder / bad_name) in err
    assert any(part in err for part in reason.split("|"))
    assert not config.store_path.exists()


def test_a_photo_of_someone_else_among_the_photos_is_refused_naming_it(
    tmp_path: Path,
    config: Config,
    embedder: FaceEmbedder,
    detector: FaceDetector,
    capsys: pytest.CaptureFixture[str],
) -> None:
    wolf = crop_with_margin(frame_of(WOLF, 5), (127, 273, 433, 691), 1.6)
    # A plain border keeps res10 from seeing a second "face" on his shirt.
    wolf = cv2.copyMakeBorder(wolf, 100, 100, 100, 100, cv2.BORDER_CONSTANT, value=(200,) * 3)
    assert len(detector.detect(wolf)) == 1
    photos = {f"zubair_{i}.jpg": frame_of(ZUBAIR, i) for i in (0, 30, 60)}
    folder = _write_folder(tmp_path / "photos", {**photos, "zz_wolf.jpg": wolf})
    assert run(config, "add", "zubair", "--source", str(folder)) == EXIT_REFUSED
    err = capsys.readouterr().err
    assert "zz_wolf.jpg" in err and "another person" in err
    assert not config.store_path.exists()


def test_bad_sources_and_names_are_refused(
    tmp_path: Path, config: Config, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(config, "add", "zubair", "--source", str(tmp_path / "nothing.mp4")) == EXIT_REFUSED
    assert "no such file" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert run(config, "add", "zubair", "--source", str(tmp_path / "empty")) == EXIT_REFUSED
    assert "holds no images" in capsys.readouterr().err
    (tmp_path / "notes.mp4").write_text("not a video")
    assert run(config, "add", "zubair", "--source", str(tmp_path / "notes.mp4")) == EXIT_REFUSED
    assert run(config, "add", "bad\nname", "--source", str(tmp_path / "empty")) == EXIT_REFUSED
    assert "invalid name" in capsys.readouterr().err
    assert not config.store_path.exists()


def test_clip_samples_come_from_the_asked_part_and_spread_over_it(detector: FaceDetector) -> None:
    if not WOLF.exists():
        pytest.skip("wolf_real.mp4 missing")
    strict = make_detector("res10", confidence=float(WOLF_CONFIDENCE))
    samples = collect_samples(str(WOLF), strict, count=4, end=Position(0.4, True))
    stop = round(0.4 * 130)
    assert len(samples) == 4
    assert all(0 <= s.index < stop for s in samples)
    parts = {int(s.index / (stop / 4)) for s in samples}
    assert parts == {0, 1, 2, 3}  # one per quarter of the range
    # At the daemon's default 0.5 the shirt counts as a second face: too few usable frames.
    with pytest.raises(InputError, match="usable frames"):
        collect_samples(str(WOLF), detector, count=4, end=Position(0.4, True))


@pytest.mark.slow
def test_enrol_two_people_from_clips_and_tell_them_apart(
    config: Config,
    zubair_images: Path,
    embedder: FaceEmbedder,
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert (
        run(
            config,
            "add",
            "wolf",
            "--source",
            str(WOLF),
            "--end",
            "0.4",
            "--samples",
            "4",
            "--confidence",
            WOLF_CONFIDENCE,
        )
        == EXIT_OK
    )
    assert run(config, "add", "zubair", "--source", str(zubair_images)) == EXIT_OK
    store = EnrolmentStore.load(config.store_path, EMBEDDING_MODEL_SHA256)
    assert store.people() == ["wolf", "zubair"]
    recogniser = Recogniser(store, config.access.max_distance, config.access.min_margin)
    strict = make_detector("res10", confidence=float(WOLF_CONFIDENCE))
    for person, clip, index in (("wolf", WOLF, 120), ("zubair", ZUBAIR, 185)):
        frame = frame_of(clip, index)  # from the part of the clip never used for enrolment
        face = max(strict.detect(frame), key=lambda d: d.area)
        assert recogniser.match(embedder.embed(frame, face.box)).person == person
    # Adding wolf's frames to zubair is refused without --replace.
    assert (
        run(
            config,
            "add",
            "zubair",
            "--source",
            str(WOLF),
            "--end",
            "0.4",
            "--samples",
            "3",
            "--confidence",
            WOLF_CONFIDENCE,
        )
        == EXIT_REFUSED
    )
    assert "--replace" in capsys.readouterr().err
    assert (
        EnrolmentStore.load(config.store_path, EMBEDDING_MODEL_SHA256).person("zubair").samples == 4
    )


def _clip_of(path: Path, parts: list[tuple[Path, int, int]]) -> Path:
    """One video of the frames [first, stop) of each clip in turn, each frame centred on one
    canvas (the clips differ in size and shape)."""
    size = 960
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 25, (size, size))
    for clip, first, stop in parts:
        if not clip.exists():
            pytest.skip(f"{clip} missing")
        capture = cv2.VideoCapture(str(clip))
        capture.set(cv2.CAP_PROP_POS_FRAMES, first)
        for _ in range(first, stop):
            ok, frame = capture.read()
            assert ok
            canvas = np.full((size, size, 3), 128, np.uint8)
            h, w = frame.shape[:2]
            canvas[(size - h) // 2 : (size - h) // 2 + h, (size - w) // 2 : (size - w) // 2 + w] = (
                frame
            )
            writer.write(canvas)
        capture.release()
    writer.release()
    return path


@pytest.mark.slow
def test_a_clip_of_wolf_then_zubair_is_refused_and_nothing_is_written(
    tmp_path: Path,
    config: Config,
    detector: FaceDetector,
    embedder: FaceEmbedder,
    capsys: pytest.CaptureFixture[str],
) -> None:
    clip = _clip_of(tmp_path / "two.mp4", [(WOLF, 0, 50), (ZUBAIR, 0, 50)])
    argv = ["add", "wolf", "--source", str(clip), "--confidence", WOLF_CONFIDENCE]
    assert run(config, *argv) == EXIT_REFUSED
    assert "more than one person in the clip" in capsys.readouterr().err
    assert not config.store_path.exists()
    # Each half alone is one person and is enrolled.
    assert run(config, *argv, "--end", "50") == EXIT_OK

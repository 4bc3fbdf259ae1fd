"""Gather: res10 crops out of a real clip and out of a folder of images; bad input refused."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from edge.errors import InputError
from train_host.__main__ import main
from train_host.gather import gather, list_inputs

CLIP = "wolf_real.mp4"


def _crops(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.jpg"))


def test_gather_clip_writes_readable_face_crops(
    videos_dir: Path, res10_assets: Path, tmp_path: Path
) -> None:
    stats = gather(videos_dir / CLIP, tmp_path, "real", skip=16, progress=False)
    crops = _crops(tmp_path / "real")
    frames = int(cv2.VideoCapture(str(videos_dir / CLIP)).get(cv2.CAP_PROP_FRAME_COUNT))
    assert stats.frames_read == frames
    assert stats.frames_examined == -(-frames // 16)  # every 16th frame, the first included
    assert stats.saved == len(crops) > 0
    assert stats.saved + stats.no_face + stats.duplicates == stats.frames_examined
    for path in crops:
        image = cv2.imread(str(path))
        assert image is not None and max(image.shape[:2]) <= 224
        # A face crop from a 544x960 portrait clip is far smaller than the frame.
        assert image.shape[0] < 960 and image.shape[1] < 544


def test_margin_makes_larger_crops(videos_dir: Path, res10_assets: Path, tmp_path: Path) -> None:
    capture = cv2.VideoCapture(str(videos_dir / CLIP))
    ok, frame = capture.read()
    capture.release()
    assert ok
    images = tmp_path / "frames"
    images.mkdir()
    cv2.imwrite(str(images / "f0.png"), frame)
    tight = gather(images, tmp_path / "m1", "fake", margin=1.0, max_side=0, progress=False)
    wide = gather(images, tmp_path / "m2", "fake", margin=2.0, max_side=0, progress=False)
    assert tight.saved == wide.saved == 1
    (a,), (b,) = _crops(tmp_path / "m1" / "fake"), _crops(tmp_path / "m2" / "fake")
    ha, wa = cv2.imread(str(a)).shape[:2]
    hb, wb = cv2.imread(str(b)).shape[:2]
    # 2x margin doubles both sides (give or take rounding); reflection padding keeps it full size.
    assert abs(hb - 2 * ha) <= 2 and abs(wb - 2 * wa) <= 2


def test_near_duplicates_are_skipped(res10_assets: Path, videos_dir: Path, tmp_path: Path) -> None:
    capture = cv2.VideoCapture(str(videos_dir / CLIP))
    ok, frame = capture.read()
    capture.release()
    assert ok
    images = tmp_path / "same"
    images.mkdir()
    for i in range(3):  # the very same picture three times
        cv2.imwrite(str(images / f"f{i}.png"), frame)
    stats = gather(images, tmp_path / "out", "real", progress=False)
    assert (stats.saved, stats.duplicates) == (1, 2)


def test_frame_without_face_is_counted(res10_assets: Path, tmp_path: Path) -> None:
    images = tmp_path / "blank"
    images.mkdir()
    cv2.imwrite(str(images / "grey.png"), np.full((240, 320, 3), 128, np.uint8))
    stats = gather(images, tmp_path / "out", "real", progress=False)
    assert (stats.saved, stats.no_face) == (0, 1)


def test_bad_inputs_refused(tmp_path: Path) -> None:
    with pytest.raises(InputError):
        list_inputs(tmp_path / "missing.mp4")
    with pytest.raises(InputError):
        list_inputs(tmp_path)  # empty folder
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(InputError):
        list_inputs(tmp_path / "notes.txt")


def test_cli_bad_input_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(
        [
            "gather",
            str(tmp_path / "nope.mp4"),
            "--out",
            str(tmp_path),
            "--label",
            "real",
            "--no-progress",
        ]
    )
    assert code == 2
    assert "does not exist" in capsys.readouterr().err

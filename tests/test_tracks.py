"""Track-level error rates: the door's two ways of combining frames, on synthetic captures."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from train_host.tracks import captures, track_report, window_verdicts


def test_window_rules_differ_where_one_frame_is_very_sure() -> None:
    # Four barely-live frames and one sure spoof: 4 of 5 grants, the mean log-odds do not.
    scores = np.array([0.6, 0.6, 0.6, 0.6, 0.01])
    verdicts = window_verdicts(scores, np.full(5, 0.5), window=5, min_live=4)
    assert verdicts["votes"].tolist() == [True]
    assert verdicts["mean_logit"].tolist() == [False]
    # A 4-frame capture is one window needing ceil(4 * 4 / 5) = 4 live frames.
    short = window_verdicts(np.array([0.9, 0.9, 0.9, 0.1]), np.full(4, 0.5), 5, 4)
    assert short["votes"].tolist() == [False]


def test_a_capture_gets_in_when_any_window_grants() -> None:
    # An attack video whose frames 3..7 look live gets in; a live video that never reaches 4 of 5
    # stays outside; a one-frame capture is no track and is not counted.
    fake = [0.1, 0.1, 0.1, 0.9, 0.9, 0.9, 0.9, 0.9]
    real = [0.9, 0.1, 0.9, 0.1, 0.9, 0.1, 0.9]
    scores = np.array(fake + real + [0.9])
    is_real = np.array([False] * 8 + [True] * 7 + [True])
    ids = [("a", i) for i in range(8)] + [("b", i) for i in range(7)] + [("c", 0)]
    sources = np.array(["s"] * 16)
    report = track_report(scores, np.full(16, 0.5), is_real, ids, sources, window=5, min_live=4)
    votes = report["pooled"]["votes"]
    assert votes["capture_apcer"] == 1.0 and votes["capture_bpcer"] == 1.0
    assert (votes["n_captures_fake"], votes["n_captures_real"]) == (1, 1)
    assert votes["window_apcer"] == 2 / 4  # 4 windows of 5 in 8 frames, the last two grant


def test_captures_from_video_origins_and_frame_files(tmp_path: Path) -> None:
    manifest = tmp_path / "manifest.csv"
    manifest.write_text(
        "source,label,origin\n"
        "a,real,owner/repo@c:videos/real.mp4#12\n"
        "a,real,owner/repo@c:videos/real.mp4#3\n"
        "b,fake,owner/repo@c:frames/client001_photo/frame_00075.jpg\n"
    )
    assert captures(manifest) == [
        ("owner/repo@c:videos/real.mp4", 12),
        ("owner/repo@c:videos/real.mp4", 3),
        ("owner/repo@c:frames/client001_photo", 75),
    ]

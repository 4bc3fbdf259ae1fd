"""The benchmark: its helpers on hand-made inputs, and a tiny run whose JSON must be complete and
sane. No test here asserts a speed: the figures depend on the machine and its load."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from bench.clips import BENCH_WIDTH, ClipSource, find_clips, fit_width, one_per_label
from bench.run import PEER_INPUT, _finite, ms_stats, peer_input
from edge.errors import InputError
from tests.conftest import MODEL, REPO_ROOT

# -- helpers ------------------------------------------------------------------------------------


def test_fit_width_keeps_the_aspect_ratio() -> None:
    portrait = np.zeros((960, 544, 3), np.uint8)
    landscape = np.zeros((540, 960, 3), np.uint8)
    assert fit_width(portrait).shape == (1129, BENCH_WIDTH, 3)
    assert fit_width(landscape).shape == (360, BENCH_WIDTH, 3)
    already = np.zeros((480, BENCH_WIDTH, 3), np.uint8)
    assert fit_width(already) is already


def test_ms_stats_converts_seconds_to_milliseconds() -> None:
    stats = ms_stats([0.001 * v for v in range(1, 101)])
    assert stats is not None
    assert stats["median_ms"] == pytest.approx(50.5)
    assert stats["p95_ms"] == pytest.approx(95.05)
    assert stats["n"] == 100
    assert ms_stats([]) is None


def test_peer_input_is_the_peers_own_square_crop_in_rgb() -> None:
    # Blue (BGR) square where the 1.5x crop of a 40 px box at (80, 80) lands, red elsewhere.
    frame = np.zeros((200, 200, 3), np.uint8)
    frame[:, :] = (0, 0, 255)
    frame[70:130, 70:130] = (255, 0, 0)
    x = peer_input(frame, (80, 80, 120, 120))
    assert x.shape == (1, 3, PEER_INPUT, PEER_INPUT)
    assert x.dtype == np.float32
    # The crop is exactly the blue square: blue everywhere, in RGB channel order, in [0, 1].
    assert np.allclose(x[0, 2], 1.0)
    assert np.allclose(x[0, 0], 0.0)


def test_peer_input_reflects_where_the_crop_leaves_the_frame() -> None:
    frame = np.zeros((100, 100, 3), np.uint8)
    frame[:50, :50] = (0, 255, 0)  # green top-left quarter, black elsewhere
    x = peer_input(frame, (0, 0, 40, 40))  # the 60 px crop starts 10 px outside the frame
    assert x.shape == (1, 3, PEER_INPUT, PEER_INPUT)
    # Reflected, not black: the outside border copies the green quarter.
    assert x[0, 1, 0, 0] == pytest.approx(1.0)
    assert x[0, 1].mean() > 0.6


def test_find_clips_labels_from_file_names(tmp_path: Path) -> None:
    for name in ("ann_real.mp4", "ann_fake.mov", "bob_real.avi", "notes.txt", "x.mp4"):
        (tmp_path / name).write_bytes(b"")
    clips = find_clips(tmp_path)
    assert [(c.name, c.label, c.person) for c in clips] == [
        ("ann_fake.mov", "fake", "ann"),
        ("ann_real.mp4", "real", "ann"),
        ("bob_real.avi", "real", "bob"),
    ]
    assert [c.name for c in one_per_label(clips)] == ["ann_fake.mov", "ann_real.mp4"]
    with pytest.raises(InputError):
        find_clips(tmp_path / "missing")


def _write_clip(path: Path, frames: int) -> None:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 30.0, (320, 240))
    for i in range(frames):
        image = np.full((240, 320, 3), 40 + 10 * i, np.uint8)
        writer.write(image)
    writer.release()


def test_clip_source_plays_once_or_loops_to_a_budget(tmp_path: Path) -> None:
    clip = tmp_path / "a_real.avi"
    _write_clip(clip, 4)
    once = ClipSource([clip])
    once.open()
    shapes = []
    with pytest.raises(EOFError):
        while True:
            frame = once.read()
            assert frame is not None
            shapes.append(frame.shape)
    once.close()
    assert shapes == [(480, BENCH_WIDTH, 3)] * 4

    looped = ClipSource([clip, clip], total=10)
    looped.open()
    count = 0
    with pytest.raises(EOFError):
        while True:
            looped.read()
            count += 1
    looped.close()
    assert count == 10


def test_finite_replaces_nan_and_numpy_scalars() -> None:
    data = {"a": float("nan"), "b": [np.float32(1.5), np.int64(3)], "c": {"d": math.inf}}
    assert _finite(data) == {"a": None, "b": [1.5, 3], "c": {"d": None}}


# -- a tiny run ---------------------------------------------------------------------------------


def _positive(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0


def _rate(value: Any) -> bool:
    return value is None or (isinstance(value, (int, float)) and 0.0 <= value <= 1.0)


@pytest.fixture(scope="module")
def tiny_results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    if not MODEL.is_file():
        pytest.skip(f"no liveness model at {MODEL}")
    videos = REPO_ROOT.parent / "shared" / "videos"
    if not videos.is_dir():
        pytest.skip("../shared/videos not found")
    out = tmp_path_factory.mktemp("bench") / "bench.json"
    # A section of `python -m bench.memory`, which the full report must keep.
    out.with_suffix(".md").write_text("# old\n\n## Memory\nkept memory\n")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench",
            "--tiny",
            "--json",
            str(out),
            "--markdown",
            str(out.with_suffix(".md")),
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "stage (1 thread)" in done.stdout  # the printed table
    results = json.loads(out.read_text())
    results["_markdown"] = out.with_suffix(".md").read_text()
    return results


def test_tiny_bench_reports_every_stage(tiny_results: dict[str, Any]) -> None:
    stages = tiny_results["stages"]
    for name in (
        "decode",
        "detect_res10+regions",
        "detect_res10",
        "detect_blazeface",
        "crop_preprocess",
        "liveness_inference",
        "decide",
        "pipeline",
    ):
        assert name in stages, name
    for name, stats in {**stages, **tiny_results["stages_all_threads"]}.items():
        assert _positive(stats["median_ms"]) and _positive(stats["mean_ms"]), name
        assert stats["p95_ms"] >= stats["median_ms"], name
        assert stats["n"] >= 1, name
    # One unit throughout: a frame's pipeline time holds its detection and liveness time.
    assert stages["pipeline"]["median_ms"] >= stages["liveness_inference"]["median_ms"]


def test_tiny_bench_fps_and_latency_fields(tiny_results: dict[str, Any]) -> None:
    r = tiny_results
    assert _positive(r["fps_1t"]) and _positive(r["fps_all"])
    # The configured path (res10 with regions) first, then each detector on whole frames.
    assert list(r["fps_by_detector"]) == ["res10+regions", "res10", "blazeface", "blazeface_tiles"]
    assert r["setup"]["default_detector"] == "res10+regions"
    for fps in r["fps_by_detector"].values():
        assert _positive(fps["fps_1t"]) and _positive(fps["fps_all"])
    # fps and the per-frame pipeline mean describe the same frames.
    assert r["fps_1t"] == pytest.approx(1000.0 / r["stages"]["pipeline"]["mean_ms"], rel=0.01)
    for key in ("decision_latency_ms", "decision_latency_frames", "decision_latency_camera_ms"):
        assert key in r
    if r["decision_latency_ms"] is not None:
        assert _positive(r["decision_latency_ms"])
        frames = r["decision_latency_frames"]
        assert isinstance(frames, int) and frames >= 1
        assert r["decision_latency_camera_ms"] == pytest.approx(frames / 30 * 1000, abs=0.1)


def test_tiny_bench_memory_models_and_stale_frames(tiny_results: dict[str, Any]) -> None:
    r = tiny_results
    assert _positive(r["rss_mb"]) and r["rss_mb"] < 4096
    assert _positive(r["model_sizes"]["liveness.tflite"]["bytes"])
    for size in r["model_sizes"].values():
        assert size["mb"] == pytest.approx(size["bytes"] / 1e6, abs=1e-3)
    assert isinstance(r["stale_dropped"], int) and r["stale_dropped"] >= 0
    for sim in r["stale"].values():
        assert sim["produced"] >= sim["taken"] >= sim["processed"]
        assert sim["dropped"] <= sim["produced"]
        assert _rate(sim["dropped_share"])


def test_tiny_bench_side_by_side_fields(tiny_results: dict[str, Any]) -> None:
    r = tiny_results
    keras = r["keras"]
    if "skipped" in keras:
        assert keras["skipped"] and r["keras_vs_litert_ratio"] is None
    else:
        assert _positive(r["keras_vs_litert_ratio"])
        assert _rate(r["keras_litert_agreement"]) and r["keras_litert_agreement"] is not None
    for name in ("livegate", "peer"):
        block = r[name]
        assert _positive(block["latency_ms"]), name
        assert _rate(block["real_accept_rate"]) and _rate(block["fake_reject_rate"]), name
        assert block["frames_real"] + block["frames_fake"] > 0, name
    m = r["machine"]
    assert m["cores"] >= 1 and m["python"] and m["cpu"]


def test_tiny_bench_detector_choice_and_report(tiny_results: dict[str, Any]) -> None:
    dc = tiny_results["detector_comparison"]
    assert set(dc["candidates"]) == {"blazeface", "blazeface_tiles", "res10+regions"}
    assert dc["regions"]["every_n_frames"] == 3
    for c in dc["candidates"].values():
        assert c["faces"] >= 1 and _rate(c["main_miss_rate"]) and _rate(c["miss_rate"])
        assert c["qualifies"] == (c["main_miss_rate"] is not None and c["main_miss_rate"] <= 0.01)
        assert _positive(c["ms_median"])
    md = tiny_results["_markdown"]
    for heading in (
        "# LiveGate benchmarks",
        "## Results",
        "## Detector choice",
        "## Bottleneck",
        "## Raspberry Pi estimate",
    ):
        assert heading in md, heading
    assert "python -m bench" in md and "estimate until measured on a Pi" in md
    assert tiny_results["machine"]["cpu"] in md
    assert "## Memory\nkept memory" in md  # python -m bench.memory's section stays


def test_tiny_bench_device_guard_fields(tiny_results: dict[str, Any]) -> None:
    g = tiny_results["device_guard"]
    assert g["classes"] == ["cell phone", "laptop", "tv"] and g["min_score"] == 0.5
    assert _positive(g["ms_per_run_every_frame"]["median_ms"])
    assert _positive(g["fps_1t_guard_on"]) and _positive(g["fps_1t_guard_off"])
    # The configured pass is the guard-on one (guard on by default): the same frames.
    assert g["fps_1t_guard_on"] == pytest.approx(tiny_results["fps_1t"])
    names = {c["name"] for c in tiny_results["setup"]["clips"]}
    assert set(g["clips"]) == names
    for clip in g["clips"].values():
        assert 0 <= clip["flagged_frames"] <= clip["face_frames"] <= clip["frames"]
        assert 0 <= clip["pipeline_guard_flagged"] <= clip["pipeline_guard_runs"]
        assert isinstance(clip["verdicts_guard_on"], dict)
        assert isinstance(clip["verdicts_guard_off"], dict)
    runs = sum(c["pipeline_guard_runs"] for c in g["clips"].values())
    assert (g["ms_per_frame_avg"] > 0) == (runs > 0)
    assert "fps_1t>=30 with the device guard" in tiny_results["goals"]
    assert "device guard (COCO SSD" in tiny_results["_markdown"]
    assert _positive(tiny_results["model_sizes"]["device guard coco ssd"]["bytes"])


def test_guard_only_bench_alternates_off_and_on_and_keeps_its_section(tmp_path: Path) -> None:
    if not MODEL.is_file() or not (REPO_ROOT.parent / "shared" / "videos").is_dir():
        pytest.skip("no liveness model or ../shared/videos")
    out, md = tmp_path / "guard.json", tmp_path / "BENCH.md"
    md.write_text("# old\n\n## Soak\nkept\n")
    # Through the one-release alias `python -m edge bench`, which hands over to `python -m bench`.
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "edge",
            "bench",
            "--guard",
            "--frames",
            "2",
            "--json",
            str(out),
            "--markdown",
            str(md),
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    g = json.loads(out.read_text())["device_guard"]
    assert _positive(g["fps_1t_guard_on"]) and _positive(g["fps_1t_guard_off"])
    assert _positive(g["fps_1t_cpu_guard_on"]) and _positive(g["fps_1t_cpu_guard_off"])
    for clip in g["clips"].values():
        assert clip["frames"] == 2 and clip["verdicts_guard_off"] is not None
    text = md.read_text()
    assert "## Soak\nkept" in text and "## Device guard speed (focused run)" in text
    assert "python -m bench --guard" in text


def test_markdown_sections_are_replaced_or_appended(tmp_path: Path) -> None:
    from bench.report import read_section, write_section

    report = tmp_path / "BENCHMARKS.md"
    report.write_text("# B\n\n## Results\n\nold table\n\n## Pi\n\nestimate\n")
    write_section(report, "## Soak", "soak 1\n")
    assert read_section(report, "## Soak") == "soak 1\n"
    write_section(report, "## Results", "\nnew table\n\n")
    text = report.read_text()
    assert "old table" not in text and "new table" in text
    assert text.index("## Results") < text.index("## Pi") < text.index("## Soak")
    write_section(report, "## Soak", "soak 2\n")
    assert report.read_text().count("## Soak") == 1 and "soak 2" in report.read_text()
    assert read_section(tmp_path / "missing.md", "## Soak") is None


def test_edge_bench_alias_hands_over_to_the_bench_package() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "edge", "bench", "--help"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "usage: python -m bench" in done.stdout and "--tiny" in done.stdout

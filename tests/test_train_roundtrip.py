"""Dataset splitting and weighting (fast), and a tiny train -> export -> load -> evaluate round
trip on a small subset of ../shared/data/faces (slow: TensorFlow)."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge.errors import InputError
from train_host.__main__ import main
from train_host.dataset import find_images, group_of, make_folds, sample_weights


def test_find_images_any_depth(tmp_path: Path) -> None:
    image = np.full((20, 20, 3), 100, np.uint8)
    for rel in (
        "srcA/real/a.jpg",
        "srcA/fake/b.png",
        "srcB/session1/real/c.jpg",
        "srcB/other/d.jpg",
        "real/e.jpg",
    ):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(tmp_path / rel), image)
    found = {(it.path.name, it.label, it.source) for it in find_images(tmp_path)}
    assert found == {
        ("a.jpg", "real", "srcA"),
        ("b.png", "fake", "srcA"),
        ("c.jpg", "real", "srcB"),
        ("e.jpg", "real", tmp_path.name),
    }


def test_find_images_refuses_empty(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no images"):
        find_images(tmp_path)
    with pytest.raises(InputError, match="not a folder"):
        find_images(tmp_path / "missing")


def test_folds_keep_shared_image_sources_together() -> None:
    sources = np.array(
        ["saikan45", "apfol", "jtboing", "shivamyadav09", "imironica", "a", "b", "c", "d"] * 3
    )
    groups = np.array([group_of(s) for s in sources])
    folds = make_folds(groups, 3)
    fold_of_saikan = {
        int(f)
        for s, f in zip(sources, folds, strict=True)
        if s in ("saikan45", "apfol", "jtboing", "shivamyadav09")
    }
    assert len(fold_of_saikan) == 1
    for group in set(groups.tolist()):  # every group sits in exactly one fold
        assert len(set(folds[groups == group].tolist())) == 1
    assert np.array_equal(folds, make_folds(groups, 3))  # deterministic
    with pytest.raises(ValueError):
        make_folds(groups, 1)


def test_weights_balance_labels_and_damp_big_sources() -> None:
    # group "big": 90 crops (60 real, 30 fake); group "small": 10 crops (5 / 5).
    groups = np.array(["big"] * 90 + ["small"] * 10)
    y = np.array([1] * 60 + [0] * 30 + [1] * 5 + [0] * 5)
    w = sample_weights(y, groups, source_power=0.5)
    assert w.mean() == pytest.approx(1.0)
    assert w[y == 1].sum() == pytest.approx(w[y == 0].sum())
    # Before label balancing big:small = sqrt(90):sqrt(10) = 3:1, not 9:1.
    raw = sample_weights(y, groups, source_power=0.5)
    ratio = raw[groups == "big"].sum() / raw[groups == "small"].sum()
    assert 2.0 < ratio < 4.5


def _subset(faces_dir: Path, dest: Path, per_label: int) -> Counter[str]:
    """Copy a few crops per label of three sources into a private folder (tmp, not the repo)."""
    counts: Counter[str] = Counter()
    for source in ("alexcamargoweb", "shubhamlala", "wolf-huo"):
        for label in ("real", "fake"):
            files = sorted((faces_dir / source / label).glob("*.jpg"))[:per_label]
            (dest / source / label).mkdir(parents=True)
            for f in files:
                shutil.copy(f, dest / source / label / f.name)
            counts[label] += len(files)
    return counts


@pytest.mark.slow
def test_tiny_train_export_load_evaluate(
    faces_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "faces"
    counts = _subset(faces_dir, data, per_label=40)
    model_path = tmp_path / "model" / "liveness.tflite"
    code = main(
        [
            "train",
            "--data",
            str(data),
            "--run-dir",
            str(tmp_path / "run"),
            "--no-cv",
            "--threshold",
            "0.5",
            "--epochs",
            "8",
            "--epoch-size",
            "512",
            "--size",
            "32",
            "--export",
            str(model_path),
            "--cache-dir",
            str(tmp_path / "cache"),
            "--min-score-std",
            "0",
        ]
    )
    assert code == 0
    sidecar = json.loads(model_path.with_suffix(".json").read_text())
    assert sidecar["input"]["dtype"] == "int8" and sidecar["input"]["shape"] == [1, 32, 32, 3]
    assert sidecar["labels"] == ["fake", "real"] and sidecar["threshold"] == 0.5
    assert sidecar["export_check"]["agreement_at_threshold"] >= 0.99
    assert sidecar["training"]["n_real"] == counts["real"]

    from edge.liveness import LivenessModel

    model = LivenessModel.load(model_path)  # ai-edge-litert, sidecar checks
    assert model.spec.input_height == 32 and model.spec.margin == 1.0

    # export again from the run dir: the preprocessing comes from the run's preprocess.json,
    # and a flag contradicting it is refused instead of exporting a mis-served model.
    run = tmp_path / "run"
    recorded = json.loads((run / "preprocess.json").read_text())
    assert recorded == sidecar["preprocess"]
    again = tmp_path / "again" / "liveness.tflite"
    common = [
        "export",
        "--keras",
        str(run / "model.keras"),
        "--data",
        str(data),
        "--out",
        str(again),
        "--threshold",
        "0.5",
        "--cache-dir",
        str(tmp_path / "cache"),
    ]
    assert main([*common, "--colour", "YCrCb"]) == 2
    assert "--colour YCrCb contradicts" in capsys.readouterr().err
    assert main([*common, "--highpass", "1.5"]) == 2
    assert not again.exists()
    assert main(common) == 0
    assert json.loads(again.with_suffix(".json").read_text())["preprocess"] == recorded

    out = tmp_path / "eval.json"
    assert (
        main(
            [
                "evaluate",
                "--model",
                str(model_path),
                "--data",
                str(data),
                "--json",
                str(out),
                "--no-progress",
            ]
        )
        == 0
    )
    result = json.loads(out.read_text())
    for key in ("apcer", "bpcer", "acer", "auc", "threshold", "n_real", "n_fake"):
        assert key in result
    assert (result["n_real"], result["n_fake"]) == (counts["real"], counts["fake"])
    assert result["threshold"] == 0.5
    assert result["acer"] == pytest.approx((result["apcer"] + result["bpcer"]) / 2)
    assert set(result["per_source"]) == {"alexcamargoweb", "shubhamlala", "wolf-huo"}


def test_evaluate_bad_inputs_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    model = tmp_path / "m.tflite"
    model.write_bytes(b"junk")
    # Wrong model (no sidecar).
    assert main(["evaluate", "--model", str(model), "--data", str(empty), "--no-progress"]) == 2
    assert "sidecar" in capsys.readouterr().err


def test_evaluate_unreadable_image_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tests.conftest import MODEL

    if not MODEL.is_file():
        pytest.skip("no shipped model")
    data = tmp_path / "d" / "src" / "real"
    data.mkdir(parents=True)
    (data / "broken.jpg").write_bytes(b"not a jpeg")
    # A whole-frames folder (what a context model reads) whose manifest names a broken image.
    (tmp_path / "d" / "frames.json").write_text('{"kind": "frames"}')
    (tmp_path / "d" / "manifest.csv").write_text(
        "source,label,file,box_x,box_y,box_w,box_h\nsrc,real,src/real/broken.jpg,1,1,20,20\n"
    )
    assert (
        main(["evaluate", "--model", str(MODEL), "--data", str(tmp_path / "d"), "--no-progress"])
        == 2
    )
    assert "cannot read image" in capsys.readouterr().err
    # And a folder without any real/ or fake/ images.
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["evaluate", "--model", str(MODEL), "--data", str(empty), "--no-progress"]) == 2
    geometry = json.loads(MODEL.with_suffix(".json").read_text())["preprocess"].get("geometry")
    # A tight-crop model finds no crops there; a context model needs whole frames with boxes.
    want = "no frames.json" if geometry == "context_shift" else "no images"
    assert want in capsys.readouterr().err


def test_standardized_livenessnet_ignores_overall_brightness_and_contrast() -> None:
    pytest.importorskip("keras")
    from train_host.model import make_livenessnet

    rng = np.random.default_rng(0)
    x = rng.uniform(0.2, 0.6, size=(4, 32, 32, 3)).astype(np.float32)
    darker_flatter = 0.5 * x + 0.1  # a dimmer camera with less contrast, same picture
    plain = make_livenessnet((32, 32, 3))
    standardized = make_livenessnet((32, 32, 3), standardize=True)
    same = standardized.predict(x, verbose=0), standardized.predict(darker_flatter, verbose=0)
    np.testing.assert_allclose(same[0], same[1], atol=1e-3)
    moved = plain.predict(x, verbose=0), plain.predict(darker_flatter, verbose=0)
    assert np.abs(moved[0] - moved[1]).max() > 1e-3


def test_cv_report_names_the_worst_attack_species_per_fold_and_pooled() -> None:
    from train_host.dataset import FaceSet
    from train_host.train import TrainConfig, _fold_thresholds, _pooled_at_fold_thresholds

    # Fold 0 (source "a"): 20 reals at 0.5..0.975, 6 prints all accepted, 2 tablets refused.
    # Fold 1 (source "b"): the same reals, 12 prints refused. Each fold's threshold (from the
    # other fold) is 0.525; pooled, prints pass 6 of 18, but in fold 0 all of them.
    reals = 0.5 + 0.025 * np.arange(20)
    scores = np.concatenate([reals, [0.9] * 6, [0.1] * 2, reals, [0.1] * 12])
    y = np.array([1] * 20 + [0] * 8 + [1] * 20 + [0] * 12)
    sources = np.array(["a"] * 28 + ["b"] * 32)
    attack = np.array(
        ["none"] * 20 + ["print"] * 6 + ["screen_tablet"] * 2 + ["none"] * 20 + ["print"] * 12
    )
    faces = FaceSet(np.zeros((60, 1, 1, 3), np.float32), y, sources, [""] * 60, {"attack": attack})
    folds = (sources == "b").astype(np.int64)
    cfg = TrainConfig(folds=2, epochs=0)
    thresholds, reports = _fold_thresholds(faces, cfg, folds, scores, scores, [{}, {}], [0.0, 0.0])
    assert reports[0]["threshold_from_other_folds"] == pytest.approx(0.525)
    fold0 = reports[0]["test"]
    assert fold0["apcer"] == pytest.approx(6 / 8)
    assert (fold0["worst_species"], fold0["apcer_max_species"]) == ("print", 1.0)
    pooled, _, _ = _pooled_at_fold_thresholds(faces, scores, scores, scores >= thresholds)
    assert pooled["apcer"] == pytest.approx(6 / 20)
    assert pooled["apcer_per_species"] == {"print": pytest.approx(6 / 18), "screen_tablet": 0.0}
    assert pooled["apcer_max_species"] == pytest.approx(6 / 18)

"""Liveness v2: the Keras MiniFASNet port, whole-frame data, context-model training and evaluation.

The port is proven on the sample clips, cut by the daemon's own detector and crop function: the
fused pretrained pair must reproduce the per-clip figures measured with the original code
(issue 14: wolf_real 100 % of frames real, wolf_fake 2 %, zubair_real 79 %, zubair_fake 0 %).
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge.detectors.res10 import Res10Detector
from edge.errors import InputError, ModelError
from edge.preprocess import PreprocessSpec, face_input
from tests.conftest import MODEL, SHARED
from train_host.__main__ import main

SILENTFACE = SHARED / "peers" / "silentface"
FRAMES = SHARED / "data" / "frames"
CONTEXT_PAIR = PreprocessSpec(
    80, 80, "BGR", scale=1.0, geometry="context_shift", context_scales=(2.7, 4.0), resize="linear"
)


def _need(path: Path) -> None:
    if not path.exists():
        pytest.skip(f"{path} not found")


def _clip_inputs(clip: Path, detector: Res10Detector, spec: PreprocessSpec) -> np.ndarray:
    """The daemon's input for the largest face of every frame of ``clip``, with frame numbers."""
    capture = cv2.VideoCapture(str(clip))
    inputs, numbers = [], []
    index = 0
    try:
        while True:
            ok, frame = capture.read()
            if not ok:
                break
            found = detector.detect(frame)
            if found:
                face = max(found, key=lambda d: d.area)
                inputs.append(face_input(frame, face.context_box, spec))
                numbers.append(index)
            index += 1
    finally:
        capture.release()
    return np.stack(inputs), np.array(numbers)


def test_port_loads_every_array_once_and_refuses_a_wrong_file(tmp_path: Path) -> None:
    pytest.importorskip("keras")
    _need(SILENTFACE)
    from train_host.minifasnet import load_npz_weights, make_liveness_minifasnet, pretrained_model

    model = make_liveness_minifasnet(["MiniFASNetV2"])
    # 334 tensors = every array of the state dict, BatchNorm's num_batches_tracked included.
    assert load_npz_weights(model, SILENTFACE / "2.7_80x80_MiniFASNetV2.npz") == 334
    # V1SE's channel counts differ: its weights do not fit a V2 branch.
    with pytest.raises(ValueError):
        load_npz_weights(model, SILENTFACE / "4_0_0_80x80_MiniFASNetV1SE.npz")
    # An extra array in the file (a layer the port would silently skip) is refused.
    with np.load(SILENTFACE / "2.7_80x80_MiniFASNetV2.npz") as data:
        arrays = {k: data[k] for k in data.files}
    arrays["module.extra.weight"] = np.zeros(3, np.float32)
    np.savez(tmp_path / "extra.npz", **arrays)
    with pytest.raises(ValueError, match="not used by the port"):
        load_npz_weights(make_liveness_minifasnet(["MiniFASNetV2"]), tmp_path / "extra.npz")
    pair = pretrained_model("minifasnet_pair", SILENTFACE)
    assert pair.input_shape == (None, 80, 80, 6) and pair.output_shape == (None, 2)
    out = np.asarray(pair(np.full((2, 80, 80, 6), 128.0, np.float32), training=False))
    np.testing.assert_allclose(out.sum(axis=1), 1.0, atol=1e-5)  # [P(fake), P(real)]


def test_wise_alpha_moves_only_that_far_from_the_published_weights() -> None:
    """WiSE-FT: alpha 0 restores the published weights, alpha 1 keeps the fine-tuned ones, and
    in between every tensor sits on the line between the two; a bad alpha is refused."""
    pytest.importorskip("keras")
    _need(SILENTFACE)
    from train_host.minifasnet import pretrained_model
    from train_host.train import TrainConfig, interpolate_from_published

    published = pretrained_model("minifasnet_v2", SILENTFACE).get_weights()
    rng = np.random.default_rng(0)
    tuned = [w + rng.normal(0, 0.1, w.shape).astype(w.dtype) for w in published]
    model = pretrained_model("minifasnet_v2", SILENTFACE)

    def mixed(alpha: float) -> list[np.ndarray]:
        model.set_weights(tuned)
        cfg = TrainConfig(arch="minifasnet_v2", pretrained_dir=str(SILENTFACE), wise_alpha=alpha)
        interpolate_from_published(model, cfg)
        return model.get_weights()

    for got, want in zip(mixed(0.0), published, strict=True):
        np.testing.assert_allclose(got, want, atol=1e-6)
    for got, want in zip(mixed(1.0), tuned, strict=True):
        np.testing.assert_allclose(got, want, atol=1e-6)
    for got, p, q in zip(mixed(0.25), published, tuned, strict=True):
        np.testing.assert_allclose(got, 0.75 * p + 0.25 * q, atol=1e-5)
    with pytest.raises(ValueError, match="wise_alpha"):
        mixed(1.5)


def test_port_reproduces_the_original_figures_on_the_sample_clips(
    videos_dir: Path, res10_assets: Path
) -> None:
    keras = pytest.importorskip("keras")
    _need(SILENTFACE)
    from train_host.minifasnet import REAL_CLASS, pretrained_model

    pair = pretrained_model("minifasnet_pair", SILENTFACE)
    fused = keras.Model(pair.input, pair.get_layer("fuse").output)  # the original predictor
    detector = Res10Detector(confidence=0.5, min_face_px=40, min_visible=0.5)
    real_share: dict[str, float] = {}
    for clip in sorted(videos_dir.iterdir()):
        x, numbers = _clip_inputs(clip, detector, CONTEXT_PAIR)
        if clip.name.startswith("zubair_fake"):
            x = x[numbers >= 32]  # frames 0-31 show the real Zubair beside the phone
        probs = np.asarray(fused(x, training=False))
        real_share[clip.stem] = float(np.mean(probs.argmax(axis=1) == REAL_CLASS))
    assert real_share["wolf_real"] >= 0.97
    assert real_share["wolf_fake"] <= 0.06
    assert 0.72 <= real_share["zubair_real"] <= 0.88
    assert real_share["zubair_fake"] <= 0.03


def _tiny_frames(tmp_path: Path, per_cell: int = 6) -> Path:
    """A few real frames of two sources from ../shared/data/frames (the same format)."""
    _need(FRAMES)
    out = tmp_path / "frames"
    with (FRAMES / "manifest.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    picked: list[dict[str, str]] = []
    for source in ("apfol", "tranvanluyt2203"):
        for label in ("real", "fake"):
            cell = [r for r in rows if r["source"] == source and r["label"] == label]
            picked.extend(cell[:: max(1, len(cell) // per_cell)][:per_cell])
    for row in picked:
        (out / row["file"]).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(FRAMES / row["file"], out / row["file"])
    with (out / "manifest.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(picked)
    shutil.copy(FRAMES / "frames.json", out / "frames.json")
    return out


def test_frames_are_cut_with_the_daemons_function(tmp_path: Path) -> None:
    from train_host.frames import is_frames_dir, load_frames, row_box

    data = _tiny_frames(tmp_path, per_cell=3)
    assert is_frames_dir(data) and not is_frames_dir(tmp_path)
    faces = load_frames(data, CONTEXT_PAIR, cache_dir=tmp_path / "cache")
    assert faces.x.shape == (12, 80, 80, 6)
    with (data / "manifest.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    frame = cv2.imread(str(data / rows[0]["file"]))
    np.testing.assert_array_equal(faces.x[0], face_input(frame, row_box(rows[0]), CONTEXT_PAIR))
    assert sorted(set(faces.meta["attack"].tolist())) == ["none", "screen_laptop", "screen_phone"]
    again = load_frames(data, CONTEXT_PAIR, cache_dir=tmp_path / "cache")  # from the cache
    np.testing.assert_array_equal(again.x, faces.x)
    assert list(again.meta["capture"]) == list(faces.meta["capture"])
    # A manifest that lost its box columns is refused by name.
    with (data / "manifest.csv").open("w", newline="") as handle:
        handle.write("source,label,file\napfol,real,x.jpg\n")
    with pytest.raises(InputError, match="box_x"):
        load_frames(data, CONTEXT_PAIR)


def test_context_model_trains_exports_and_evaluates_on_frames(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("keras")
    _need(SILENTFACE)
    data = _tiny_frames(tmp_path)
    model_path = tmp_path / "model" / "liveness.tflite"
    code = main(
        ["train", "--arch", "minifasnet_v2", "--data", str(data), "--run-dir",
         str(tmp_path / "run"), "--no-cv", "--threshold", "0.5", "--epochs", "0",
         "--export", str(model_path), "--cache-dir", str(tmp_path / "cache"),
         "--pretrained-dir", str(SILENTFACE), "--min-score-std", "0"]
    )  # fmt: skip
    assert code == 0
    sidecar = json.loads(model_path.with_suffix(".json").read_text())
    assert sidecar["input"]["shape"] == [1, 80, 80, 3] and sidecar["input"]["dtype"] == "int8"
    assert sidecar["preprocess"]["geometry"] == "context_shift"
    assert sidecar["preprocess"]["context_scales"] == [2.7]
    assert sidecar["preprocess"]["colour_order"] == "BGR" and sidecar["preprocess"]["scale"] == 1.0

    out = tmp_path / "eval.json"
    assert main(["evaluate", "--model", str(model_path), "--data", str(data), "--json",
                 str(out), "--no-progress"]) == 0  # fmt: skip
    result = json.loads(out.read_text())
    for key in ("apcer", "bpcer", "acer", "auc", "eer", "threshold", "n_real", "n_fake"):
        assert key in result
    assert (result["n_real"], result["n_fake"]) == (12, 12)
    assert set(result["per_attack"]) == {"none", "screen_laptop", "screen_phone"}
    assert set(result["per_capture"]) == {"phone", "webcam"}
    # The pretrained V2 already tells these apart (AUC well above chance).
    assert result["auc"] > 0.75

    # A folder of cut crops cannot feed a context model: refused with exit 2, saying why.
    crops = tmp_path / "crops" / "src" / "real"
    crops.mkdir(parents=True)
    cv2.imwrite(str(crops / "a.jpg"), np.full((40, 40, 3), 128, np.uint8))
    capsys.readouterr()
    assert main(["evaluate", "--model", str(model_path), "--data", str(tmp_path / "crops"),
                 "--no-progress"]) == 2  # fmt: skip
    err = capsys.readouterr().err
    assert "no frames.json" in err and "context_shift" in err
    # And training a context model on cut crops is refused the same way.
    assert (
        main(
            [
                "train",
                "--arch",
                "minifasnet_v2",
                "--data",
                str(tmp_path / "crops"),
                "--run-dir",
                str(tmp_path / "run2"),
                "--no-cv",
                "--threshold",
                "0.5",
            ]
        )
        == 2
    )
    assert "frames.json" in capsys.readouterr().err


def test_daemon_refuses_a_sidecar_with_a_crop_it_cannot_cut(tmp_path: Path) -> None:
    from edge.liveness import LivenessModel

    if not MODEL.is_file():
        pytest.skip("no shipped model")
    model = tmp_path / "liveness.tflite"
    shutil.copy(MODEL, model)
    sidecar = json.loads(MODEL.with_suffix(".json").read_text())
    sidecar["preprocess"]["geometry"] = "fisheye_v9"
    model.with_suffix(".json").write_text(json.dumps(sidecar))
    with pytest.raises(ModelError, match="fisheye_v9"):
        LivenessModel.load(model)
    # A context sidecar whose scales do not match the model's input channels is refused too.
    sidecar = json.loads(MODEL.with_suffix(".json").read_text())
    channels = sidecar["input"]["shape"][3]
    scales = [2.7] * (channels // 3 + 1)
    sidecar["preprocess"].update(
        geometry="context_shift", context_scales=scales, highpass_sigma=0.0
    )
    model.with_suffix(".json").write_text(json.dumps(sidecar))
    with pytest.raises(ModelError, match="does not match its input shape"):
        LivenessModel.load(model)


def test_prelu_rewrite_keeps_the_function_and_leaves_no_prelu_in_int8() -> None:
    keras = pytest.importorskip("keras")
    from ai_edge_litert.interpreter import Interpreter

    from train_host.delegable import PReLUAsAddRelu, delegable_prelu
    from train_host.export import convert_int8
    from train_host.minifasnet import with_flip_average

    inputs = keras.Input((12, 12, 4))
    x = keras.layers.Conv2D(4, 3, padding="same", name="c1")(inputs)
    x = keras.layers.PReLU(shared_axes=[1, 2], name="p1")(x)
    x = keras.layers.Conv2D(4, 1, name="c2")(x)
    x = keras.layers.PReLU(shared_axes=[1, 2], name="p2")(x)
    x = keras.layers.Flatten()(x)
    model = keras.Model(inputs, keras.layers.Dense(2, name="d")(x))
    model.get_layer("p1").set_weights([np.array([[[-0.3, 0.0, 0.25, 0.9]]], np.float32)])
    model.get_layer("p2").set_weights([np.array([[[0.1, 0.5, 1.5, 0.2]]], np.float32)])
    rewritten = delegable_prelu(model)
    # Slopes below 1 are rewritten; a slope of 1.5 (where the identity does not hold) is not.
    assert isinstance(rewritten.get_layer("p1"), PReLUAsAddRelu)
    assert isinstance(rewritten.get_layer("p2"), keras.layers.PReLU)
    x = np.random.default_rng(0).normal(0, 3, (16, 12, 12, 4)).astype(np.float32)
    np.testing.assert_allclose(np.asarray(rewritten(x)), np.asarray(model(x)), atol=1e-5)

    # The mirror average: the mean of the verdicts on x and on x mirrored left to right.
    flipped = with_flip_average(model)
    expected = (np.asarray(model(x)) + np.asarray(model(x[:, :, ::-1].copy()))) / 2
    assert not np.allclose(np.asarray(model(x)), expected, atol=1e-3)
    np.testing.assert_allclose(np.asarray(flipped(x)), expected, atol=1e-5)

    # Inside the nested model too, every PReLU becomes MUL + ADD in the int8 graph.
    model.get_layer("p2").set_weights([np.array([[[0.1, 0.5, 0.7, 0.2]]], np.float32)])
    np.testing.assert_allclose(
        np.asarray(delegable_prelu(flipped)(x)), np.asarray(flipped(x)), atol=1e-5
    )
    interpreter = Interpreter(model_content=convert_int8(flipped, x[:8]))
    ops = {op["op_name"] for op in interpreter._get_ops_details()}
    assert "PRELU" not in ops and {"MUL", "ADD", "REVERSE_V2"} <= ops


def test_shipped_liveness_model_has_no_undelegated_prelu() -> None:
    # int8 PRELU falls off XNNPACK and was most of the per-face time (train_host/delegable.py).
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(MODEL))
    ops = [op["op_name"] for op in interpreter._get_ops_details()]
    assert ops and "PRELU" not in ops


def test_clip_check_scores_the_daemons_crop_of_the_largest_face(
    videos_dir: Path, res10_assets: Path
) -> None:
    from train_host.evaluate import score_clips

    clip = videos_dir / "wolf_fake.mp4"
    _need(clip)

    class RecordingModel:
        def __init__(self) -> None:
            self.boxes: list[tuple[float, float, float, float]] = []

        def score_face(self, frame: np.ndarray, box: tuple[float, float, float, float]) -> float:
            self.boxes.append(tuple(box))
            return 0.9

        def is_live(self, score: float) -> bool:
            return score >= 0.5

    model = RecordingModel()
    result = score_clips(model, [clip])  # type: ignore[arg-type]
    capture = cv2.VideoCapture(str(clip))
    ok, frame = capture.read()
    capture.release()
    assert ok
    found = Res10Detector(confidence=0.5, min_face_px=60).detect(frame)
    largest = max(found, key=lambda d: d.area)
    # This replay fills the frame: its unclipped box leaves the picture, the clipped one not.
    assert largest.context_box != tuple(largest.box)
    assert model.boxes[0] == pytest.approx(largest.context_box)
    assert result["wolf_fake.mp4"]["faces"] == len(model.boxes)

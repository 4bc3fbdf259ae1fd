"""LivenessModel on the shipped int8 model: it scores faces, and refuses a mismatched sidecar."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge.errors import ModelError
from edge.liveness import LivenessModel, TfliteRunner, check_quantisation
from edge.preprocess import PreprocessSpec, face_input, preprocess_crop
from tests.conftest import MODEL, SHARED
from tests.fakes import FixedOutputRunner

FRAMES = SHARED / "data" / "frames"


@pytest.fixture
def model_pair(tmp_path: Path) -> tuple[Path, Path]:
    """A private copy of the shipped model and sidecar, safe to corrupt."""
    if not MODEL.is_file() or not MODEL.with_suffix(".json").is_file():
        pytest.skip(f"no shipped model at {MODEL}")
    model = tmp_path / "liveness.tflite"
    shutil.copy(MODEL, model)
    shutil.copy(MODEL.with_suffix(".json"), model.with_suffix(".json"))
    return model, model.with_suffix(".json")


def _edit_sidecar(sidecar: Path, change: Callable[[dict], None]) -> None:
    data = json.loads(sidecar.read_text())
    change(data)
    sidecar.write_text(json.dumps(data))


def _crops(faces_dir: Path, label: str, n: int) -> list[np.ndarray]:
    paths = sorted((faces_dir / "alexcamargoweb" / label).glob("*.jpg"))[:n]
    return [cv2.imread(str(p)) for p in paths]


def _frames(source: str, per_label: int) -> list[tuple[np.ndarray, tuple[float, ...]]]:
    """Whole frames and their res10 boxes from ../shared/data/frames."""
    from train_host.frames import read_manifest, row_box

    if not FRAMES.is_dir():
        pytest.skip(f"{FRAMES} not found")
    rows = [r for r in read_manifest(FRAMES) if r["source"] == source]
    picked = [r for r in rows if r["label"] == "real"][:per_label]
    picked += [r for r in rows if r["label"] == "fake"][:per_label]
    return [(cv2.imread(str(FRAMES / r["file"])), row_box(r)) for r in picked]


def test_loads_and_scores(model_pair: tuple[Path, Path], faces_dir: Path) -> None:
    model_path, sidecar_path = model_pair
    model = LivenessModel.load(model_path)
    sidecar = json.loads(sidecar_path.read_text())
    assert model.threshold == pytest.approx(sidecar["threshold"])
    assert model.labels == sidecar["labels"] and {"real", "fake"} <= set(model.labels)
    assert model.spec.margin == sidecar["preprocess"]["margin"]
    assert model.sha256 == sidecar["sha256"]
    if model.spec.geometry == "margin":
        scores = [
            model.score(preprocess_crop(c, model.spec))
            for c in _crops(faces_dir, "real", 10) + _crops(faces_dir, "fake", 10)
        ]
    else:  # a context model is cut from whole frames around the detector's box
        scores = [model.score_face(frame, box) for frame, box in _frames("apfol", 10)]
    assert all(0.0 <= s <= 1.0 for s in scores)
    # A collapsed int8 export gives (nearly) one value for every face.
    assert len(set(scores)) > 2
    assert model.is_live(model.threshold) and not model.is_live(model.threshold - 1e-6)


def test_threshold_override(model_pair: tuple[Path, Path]) -> None:
    model = LivenessModel.load(model_pair[0], threshold=0.9)
    assert model.threshold == 0.9
    assert model.is_live(0.95) and not model.is_live(0.85)


def test_score_face_is_face_input_then_score(
    model_pair: tuple[Path, Path], videos_dir: Path
) -> None:
    model = LivenessModel.load(model_pair[0])
    capture = cv2.VideoCapture(str(videos_dir / "wolf_real.mp4"))
    ok, frame = capture.read()
    capture.release()
    assert ok
    box = (150, 300, 400, 600)
    assert model.score_face(frame, box) == model.score(face_input(frame, box, model.spec))


def test_wrong_face_shape_refused(model_pair: tuple[Path, Path]) -> None:
    model = LivenessModel.load(model_pair[0])
    with pytest.raises(ValueError, match="shape"):
        model.score(
            np.zeros(
                (model.spec.input_height + 1, model.spec.input_width, model.spec.channels),
                np.float32,
            )
        )


def test_wrong_sha_refused(model_pair: tuple[Path, Path]) -> None:
    model_path, sidecar = model_pair
    _edit_sidecar(sidecar, lambda d: d.update(sha256="0" * 64))
    with pytest.raises(ModelError, match="sha256"):
        LivenessModel.load(model_path)


def test_modified_model_refused(model_pair: tuple[Path, Path]) -> None:
    model_path, _ = model_pair
    data = bytearray(model_path.read_bytes())
    data[-1] ^= 0xFF
    model_path.write_bytes(bytes(data))
    with pytest.raises(ModelError, match="sha256"):
        LivenessModel.load(model_path)


def test_wrong_input_shape_refused(model_pair: tuple[Path, Path]) -> None:
    model_path, sidecar = model_pair

    def change(d: dict) -> None:
        d["input"]["shape"] = [1, 99, 99, 3]
        d["preprocess"]["input_height"] = d["preprocess"]["input_width"] = 99

    _edit_sidecar(sidecar, change)
    with pytest.raises(ModelError, match="input shape differs"):
        LivenessModel.load(model_path)


@pytest.mark.parametrize("part", ["input", "output"])
def test_a_sidecar_dtype_other_than_the_models_is_refused(
    model_pair: tuple[Path, Path], part: str
) -> None:
    model_path, sidecar = model_pair
    _edit_sidecar(sidecar, lambda d: d[part].update(dtype="float32"))
    with pytest.raises(ModelError, match=f"{part} dtype differs"):
        LivenessModel.load(model_path)


def test_preprocess_size_must_match_input(model_pair: tuple[Path, Path]) -> None:
    model_path, sidecar = model_pair
    _edit_sidecar(sidecar, lambda d: d["preprocess"].update(input_width=7))
    with pytest.raises(ModelError, match="preprocess size"):
        LivenessModel.load(model_path)


@pytest.mark.parametrize(
    ("labels", "message"),
    [
        (["fake", "live"], "must contain 'real' and 'fake'"),
        (["fake", "real", "mask"], "output size differs"),
    ],
)
def test_bad_labels_refused(model_pair: tuple[Path, Path], labels: list[str], message: str) -> None:
    model_path, sidecar = model_pair
    _edit_sidecar(sidecar, lambda d: d.update(labels=labels))
    with pytest.raises(ModelError, match=message):
        LivenessModel.load(model_path)


def test_missing_fields_refused(model_pair: tuple[Path, Path]) -> None:
    model_path, sidecar = model_pair
    _edit_sidecar(sidecar, lambda d: d.pop("labels"))
    with pytest.raises(ModelError, match="labels"):
        LivenessModel.load(model_path)


def test_missing_or_garbled_sidecar_refused(model_pair: tuple[Path, Path]) -> None:
    model_path, sidecar = model_pair
    sidecar.write_text("{not json")
    with pytest.raises(ModelError, match="not valid JSON"):
        LivenessModel.load(model_path)
    sidecar.unlink()
    with pytest.raises(ModelError, match="missing"):
        LivenessModel.load(model_path)


def test_explicit_sidecar_path(model_pair: tuple[Path, Path], tmp_path: Path) -> None:
    model_path, sidecar = model_pair
    other = tmp_path / "elsewhere.json"
    sidecar.rename(other)
    assert LivenessModel.load(model_path, other).sha256 == json.loads(other.read_text())["sha256"]


def test_not_a_model_refused(tmp_path: Path) -> None:
    bogus = tmp_path / "bogus.tflite"
    bogus.write_bytes(b"not a flatbuffer")
    from edge.liveness import sha256_bytes

    bogus.with_suffix(".json").write_text(
        json.dumps(
            {
                "sha256": sha256_bytes(b"not a flatbuffer"),
                "labels": ["fake", "real"],
                "input": {"shape": [1, 32, 32, 3], "dtype": "int8"},
                "threshold": 0.5,
                "preprocess": {
                    "input_height": 32,
                    "input_width": 32,
                    "colour_order": "RGB",
                    "margin": 1.0,
                    "scale": 1 / 255,
                },
            }
        )
    )
    with pytest.raises(ModelError, match="cannot load"):
        LivenessModel.load(bogus)


def test_out_of_range_threshold_refused(model_pair: tuple[Path, Path]) -> None:
    with pytest.raises(ModelError, match="outside"):
        LivenessModel.load(model_pair[0], threshold=1.5)


def _model_giving(output: list[float]) -> LivenessModel:
    """A LivenessModel whose network always answers ``output`` (labels fake, real)."""
    spec = PreprocessSpec(input_height=8, input_width=8, colour_order="BGR", scale=1.0)
    runner = FixedOutputRunner(output)
    return LivenessModel(runner, spec, ["fake", "real"], 0.46, "f" * 64, {})  # type: ignore[arg-type]


@pytest.mark.parametrize("p_real", [float("inf"), 3.2, 1.01, float("nan"), -float("inf"), -0.5])
def test_a_score_that_is_no_probability_is_a_spoof_vote(p_real: float) -> None:
    # A logit, an infinity or a NaN where a probability belongs: never live (clipping made
    # +inf and 3.2 a sure live face).
    model = _model_giving([0.0, p_real])
    score = model.score(np.zeros((8, 8, 3), np.float32))
    assert score == 0.0
    assert not model.is_live(score)


@pytest.mark.parametrize(("p_real", "expected"), [(0.8, 0.8), (1.0000001, 1.0), (-1e-7, 0.0)])
def test_probabilities_and_their_rounding_are_kept(p_real: float, expected: float) -> None:
    model = _model_giving([1.0 - p_real, p_real])
    assert model.score(np.zeros((8, 8, 3), np.float32)) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("part", "change"),
    [
        ("input", {"scale": 1 / 255}),
        ("input", {"zero_point": 0}),
        ("output", {"scale": 1 / 256}),
        ("output", {"zero_point": 0}),
    ],
)
def test_sidecar_quantisation_must_be_the_models(
    model_pair: tuple[Path, Path], part: str, change: dict
) -> None:
    model_path, sidecar = model_pair
    _edit_sidecar(sidecar, lambda d: d[part]["quantization"].update(change))
    with pytest.raises(ModelError, match=f"{part} quantisation differs"):
        LivenessModel.load(model_path)


@pytest.mark.parametrize("scale", [1 / 255, 255.0, -1.0])
def test_preprocess_scale_the_int8_input_cannot_represent_is_refused(
    model_pair: tuple[Path, Path], scale: float
) -> None:
    # The shipped input is quantised for pixels 0-255; fed 0-1 every face becomes input -128 or
    # -127, i.e. one score for everybody.
    model_path, sidecar = model_pair
    _edit_sidecar(sidecar, lambda d: d["preprocess"].update(scale=scale))
    with pytest.raises(ModelError, match="every face would be fed"):
        LivenessModel.load(model_path)


def test_sidecars_without_recorded_quantisation_still_load(model_pair: tuple[Path, Path]) -> None:
    # Sidecars of the first exports recorded only shape and dtype: the model's own parameters,
    # and the preprocessing range check, still apply.
    model_path, sidecar = model_pair
    _edit_sidecar(sidecar, lambda d: (d["input"].pop("quantization"), d.pop("output")))
    model = LivenessModel.load(model_path)
    assert model.threshold == pytest.approx(json.loads(sidecar.read_text())["threshold"])


def _runner_with(input_quant: tuple[float, int], output_quant: tuple[float, int]) -> TfliteRunner:
    """A TfliteRunner's tensor details without an interpreter (a model the converter would not
    write, so no file of it exists to load)."""
    runner = TfliteRunner.__new__(TfliteRunner)
    runner.input = {"dtype": np.int8, "shape": [1, 8, 8, 3], "quantization": input_quant}
    runner.output = {"dtype": np.int8, "shape": [1, 2], "quantization": output_quant}
    return runner


@pytest.mark.parametrize(
    ("input_quant", "output_quant", "part"),
    [((0.0, 0), (1 / 255, -128), "input"), ((1.0, -128), (0.0, 0), "output")],
)
def test_integer_tensors_without_quantisation_are_refused(
    input_quant: tuple[float, int], output_quant: tuple[float, int], part: str
) -> None:
    # run() would cast float pixels 0-255 straight to int8 (wrapping), or read raw int8 outputs
    # (up to 127) as P(real), which the score then saw as certainly live.
    spec = PreprocessSpec(input_height=8, input_width=8, colour_order="BGR", scale=1.0)
    with pytest.raises(ModelError, match=f"int8 {part} has no quantisation"):
        check_quantisation(_runner_with(input_quant, output_quant), {}, spec)
    check_quantisation(_runner_with((1.0, -128), (1 / 255, -128)), {}, spec)

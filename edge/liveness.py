"""The liveness model the door runs: a full-int8 TFLite file plus its JSON sidecar.

Runs on ai-edge-litert (or the older tflite-runtime); never TensorFlow. ``LivenessModel.load``
refuses a model whose sidecar does not match it (hash, input shape/dtype, quantisation and the
preprocessing's value range, labels), because a mismatched pair would score faces with the wrong
preprocessing or the wrong class and the door must fail locked rather than guess.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import threading
from pathlib import Path
from typing import Any, overload

import numpy as np

from edge.errors import ModelError
from edge.preprocess import FloatBox, PreprocessSpec, face_input

logger = logging.getLogger(__name__)


@overload
def is_live(p_real: float, threshold: float) -> bool: ...
@overload
def is_live(p_real: np.ndarray, threshold: float) -> np.ndarray: ...
def is_live(p_real: float | np.ndarray, threshold: float) -> bool | np.ndarray:
    """The live rule, the one place it is written: P(real) at or above the model's threshold.
    On one score a bool; on an array of scores an array of bools."""
    return p_real >= threshold


def _read_sidecar(sidecar_path: Path, model_path: Path) -> dict[str, Any]:
    """The model's JSON sidecar as a dict; ModelError when it is missing or not a JSON object."""
    if not sidecar_path.is_file():
        raise ModelError(
            f"sidecar {sidecar_path} of {model_path} is missing: the model cannot be used"
            " without it (export writes both files)"
        )
    try:
        sidecar = json.loads(sidecar_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelError(f"sidecar {sidecar_path} is not valid JSON: {exc}") from exc
    if not isinstance(sidecar, dict):
        raise ModelError(f"sidecar {sidecar_path} is not a JSON object")
    return sidecar


SIDECAR_FORMAT = "livegate-liveness/1"
# How far outside [0, 1] a P(real) may lie and still be a probability: float rounding of a softmax
# (int8 outputs dequantise exactly into [0, 1]). Anything further out is not a probability at all.
PROBABILITY_SLACK = 1e-3


def interpreter_class(alternative: str = "") -> Any:
    """ai-edge-litert's Interpreter (tflite-runtime, its predecessor, as a fallback); ModelError
    saying what to install, and ``alternative`` (e.g. a setting that avoids the model), if
    neither is there."""
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        try:
            from tflite_runtime.interpreter import Interpreter  # type: ignore[no-redef]
        except ImportError:
            raise ModelError(
                "neither ai-edge-litert nor tflite-runtime is installed:"
                f" pip install ai-edge-litert (see requirements.txt){alternative}"
            ) from None
    return Interpreter


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class TfliteRunner:
    """One single-input, single-output TFLite interpreter with (de)quantisation done for you.

    Not thread-safe by itself (TFLite interpreters are not); callers serialise with a lock.
    """

    def __init__(self, model_content: bytes, num_threads: int = 1) -> None:
        try:
            self.interpreter = interpreter_class()(
                model_content=model_content, num_threads=num_threads
            )
            self.interpreter.allocate_tensors()
        except ModelError:
            raise
        except Exception as exc:  # the interpreter raises ValueError/RuntimeError on bad files
            raise ModelError(f"the interpreter cannot load the model: {exc}") from exc
        inputs = self.interpreter.get_input_details()
        outputs = self.interpreter.get_output_details()
        if len(inputs) != 1 or len(outputs) != 1:
            raise ModelError(
                f"expected a model with 1 input and 1 output, got {len(inputs)} and {len(outputs)}"
            )
        self.input = inputs[0]
        self.output = outputs[0]

    @property
    def input_shape(self) -> list[int]:
        return [int(v) for v in self.input["shape"]]

    @property
    def input_dtype(self) -> str:
        return np.dtype(self.input["dtype"]).name

    @property
    def output_dtype(self) -> str:
        return np.dtype(self.output["dtype"]).name

    def input_range(self) -> tuple[float, float] | None:
        """The float values the integer input tensor can represent (None: a float input)."""
        dtype = np.dtype(self.input["dtype"])
        if not np.issubdtype(dtype, np.integer):
            return None
        scale, zero_point = self._quant(self.input)
        info = np.iinfo(dtype)
        return (info.min - zero_point) * scale, (info.max - zero_point) * scale

    @property
    def output_size(self) -> int:
        return int(np.prod(self.output["shape"]))

    @staticmethod
    def _quant(detail: dict[str, Any]) -> tuple[float, int]:
        scale, zero_point = detail.get("quantization", (0.0, 0))
        return float(scale), int(zero_point)

    def quantisation(self) -> dict[str, dict[str, float | int]]:
        (i_s, i_z), (o_s, o_z) = self._quant(self.input), self._quant(self.output)
        return {
            "input": {"scale": i_s, "zero_point": i_z},
            "output": {"scale": o_s, "zero_point": o_z},
        }

    def run(self, x: np.ndarray) -> np.ndarray:
        """Float input of the model's shape (batch 1) -> float output vector."""
        dtype = np.dtype(self.input["dtype"])
        scale, zero_point = self._quant(self.input)
        if np.issubdtype(dtype, np.integer) and scale > 0:
            info = np.iinfo(dtype)
            q = np.round(x / np.float32(scale)) + zero_point
            data = np.clip(q, info.min, info.max).astype(dtype)
        else:
            data = x.astype(dtype)
        self.interpreter.set_tensor(self.input["index"], data.reshape(self.input_shape))
        self.interpreter.invoke()
        out = self.interpreter.get_tensor(self.output["index"]).reshape(-1)
        o_scale, o_zero = self._quant(self.output)
        if np.issubdtype(out.dtype, np.integer) and o_scale > 0:
            return (out.astype(np.float32) - o_zero) * np.float32(o_scale)
        return out.astype(np.float32)


# The preprocessing's value range and the int8 input's range must agree this closely (share of
# the preprocessing's span, at each end): calibration may trim a few levels, never a factor.
INPUT_RANGE_SLACK = 0.25


def check_quantisation(runner: TfliteRunner, sidecar: dict[str, Any], spec: PreprocessSpec) -> None:
    """ModelError when the model's (de)quantisation cannot be done as the sidecar says.

    An integer tensor without quantisation parameters would have float pixels cast (wrapped) to
    int8 and raw integers read as probabilities; a sidecar whose recorded dtype or quantisation is
    not the model's was written for another export; and a preprocessing scale whose values the
    int8 input cannot represent (pixels 0-255 into an input quantised for 0-1, or the reverse)
    saturates every face to nearly one input, so one score for everybody."""
    quant = runner.quantisation()
    for name, dtype in (("input", runner.input_dtype), ("output", runner.output_dtype)):
        if np.issubdtype(np.dtype(dtype), np.integer) and not quant[name]["scale"] > 0:
            raise ModelError(
                f"the model's {dtype} {name} has no quantisation parameters: it cannot be fed"
                " or read as probabilities; export it again"
            )
        recorded = sidecar.get(name, {})
        if not isinstance(recorded, dict) or not isinstance(recorded.get("quantization", {}), dict):
            raise ModelError(f"the sidecar's {name!r} is not an object with a quantization object")
        if "dtype" in recorded and str(recorded["dtype"]) != dtype:
            raise ModelError(f"{name} dtype differs: model {dtype}, sidecar {recorded['dtype']}")
        if "quantization" in recorded:
            want = recorded["quantization"]
            same = int(want.get("zero_point", 0)) == quant[name]["zero_point"] and math.isclose(
                float(want.get("scale", 0.0)), quant[name]["scale"], rel_tol=1e-6
            )
            if not same:
                raise ModelError(
                    f"{name} quantisation differs: model {quant[name]}, sidecar {want}: the"
                    " sidecar belongs to another export"
                )
    _check_input_range(runner, spec)


def _check_input_range(runner: TfliteRunner, spec: PreprocessSpec) -> None:
    model_range = runner.input_range()
    if model_range is None or spec.highpass_sigma > 0.0:
        return  # a float input takes any value; a high-pass input is centred on 0.5 by design
    ends = sorted((0.0, 255.0 * spec.scale))
    span = ends[1] - ends[0]
    if span <= 0 or any(
        abs(got - want) > INPUT_RANGE_SLACK * span
        for got, want in zip(model_range, ends, strict=True)
    ):
        raise ModelError(
            f"preprocess scale {spec.scale} gives inputs in [{ends[0]:g}, {ends[1]:g}], but the"
            f" model's {runner.input_dtype} input represents [{model_range[0]:g},"
            f" {model_range[1]:g}]: every face would be fed as nearly the same input"
        )


class LivenessModel:
    """P(real) for a face, from a checked .tflite + sidecar pair."""

    def __init__(
        self,
        runner: TfliteRunner,
        spec: PreprocessSpec,
        labels: list[str],
        threshold: float,
        sha256: str,
        sidecar: dict[str, Any],
    ) -> None:
        self.runner = runner
        self.spec = spec
        self.labels = labels
        self.threshold = threshold
        self.sha256 = sha256
        self.sidecar = sidecar
        self._real_index = labels.index("real")
        self._lock = threading.Lock()
        self._warned_not_probability = False  # once: a broken model would say it every frame

    @classmethod
    def load(
        cls,
        model_path: Path,
        sidecar_path: Path | None = None,
        threshold: float | None = None,
        num_threads: int = 1,
    ) -> LivenessModel:
        model_path = Path(model_path)
        sidecar_path = Path(sidecar_path) if sidecar_path else model_path.with_suffix(".json")
        try:
            content = model_path.read_bytes()
        except OSError as exc:
            raise ModelError(
                f"cannot read liveness model {model_path}: {exc}; train and export one with"
                " `python -m train_host train` or restore models/liveness.tflite"
            ) from exc
        sidecar = _read_sidecar(sidecar_path, model_path)

        digest = sha256_bytes(content)
        if sidecar.get("sha256") != digest:
            raise ModelError(
                f"sha256 of {model_path} is {digest} but sidecar {sidecar_path} says"
                f" {sidecar.get('sha256')!r}: the model and sidecar do not belong together"
            )
        try:
            # A spec this version cannot honour (an unknown crop geometry, say) is refused here:
            # scoring with another crop than the model was trained on would be a guess.
            spec = PreprocessSpec.from_json(sidecar["preprocess"])
            labels = [str(v) for v in sidecar["labels"]]
            want_shape = [int(v) for v in sidecar["input"]["shape"]]
            want_dtype = str(sidecar["input"]["dtype"])
            stored_threshold = float(sidecar["threshold"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelError(f"sidecar {sidecar_path} lacks or garbles a field: {exc!r}") from exc
        if "real" not in labels or "fake" not in labels:
            raise ModelError(
                f"sidecar {sidecar_path} labels {labels} must contain 'real' and 'fake'"
            )

        runner = TfliteRunner(content, num_threads=num_threads)
        if runner.input_shape != want_shape:
            raise ModelError(
                f"input shape differs: model {model_path} takes {runner.input_shape},"
                f" sidecar says {want_shape}"
            )
        if runner.input_dtype != want_dtype:
            raise ModelError(
                f"input dtype differs: model {model_path} takes {runner.input_dtype},"
                f" sidecar says {want_dtype}"
            )
        if want_shape[1:] != [spec.input_height, spec.input_width, spec.channels]:
            raise ModelError(
                f"sidecar {sidecar_path} preprocess size {spec.input_height}x{spec.input_width}"
                f"x{spec.channels} ({spec.geometry} crops) does not match its input shape"
                f" {want_shape}"
            )
        check_quantisation(runner, sidecar, spec)
        if runner.output_size != len(labels):
            raise ModelError(
                f"output size differs: model {model_path} gives {runner.output_size} values,"
                f" sidecar names {len(labels)} labels {labels}"
            )
        chosen = stored_threshold if threshold is None else float(threshold)
        if not 0.0 <= chosen <= 1.0:
            raise ModelError(f"liveness threshold {chosen} is outside [0, 1]")
        logger.info(
            "liveness model %s (sha256 %s…) input %s threshold %.4f",
            model_path,
            digest[:12],
            want_shape,
            chosen,
        )
        return cls(runner, spec, labels, chosen, digest, sidecar)

    def probabilities(self, face: np.ndarray) -> np.ndarray:
        want = (self.spec.input_height, self.spec.input_width, self.spec.channels)
        if face.shape != want:
            raise ValueError(f"face input has shape {face.shape}, the model wants {want}")
        with self._lock:
            return self.runner.run(face[np.newaxis].astype(np.float32))

    def score(self, face: np.ndarray) -> float:
        """P(real) of a preprocessed face (``preprocess_crop`` output), in [0, 1].

        A value that is no probability (NaN, infinite, or outside [0, 1] beyond rounding: a
        model that outputs logits, a broken dequantisation) scores 0.0, a spoof vote. Clipping
        it instead turned +inf or a logit of 3 into 1.0, a live vote on doubtful input."""
        p_real = float(self.probabilities(face)[self._real_index])
        if not math.isfinite(p_real) or not (
            -PROBABILITY_SLACK <= p_real <= 1.0 + PROBABILITY_SLACK
        ):
            if not self._warned_not_probability:
                self._warned_not_probability = True
                logger.warning(
                    "liveness model %s… gave P(real) %r, not a probability: counted as a spoof"
                    " (and so is every such score from now on)",
                    self.sha256[:12],
                    p_real,
                )
            return 0.0
        return min(max(p_real, 0.0), 1.0)

    def score_face(self, frame_bgr: np.ndarray, box: FloatBox) -> float:
        return self.score(face_input(frame_bgr, box, self.spec))

    def is_live(self, p_real: float) -> bool:
        return is_live(p_real, self.threshold)

    @property
    def box_detectors(self) -> list[str] | None:
        """The face detectors whose boxes this model's crops were validated on (sidecar
        ``box_detectors``); None when the sidecar does not say (v1 models: tight crops)."""
        value = self.sidecar.get("box_detectors")
        return [str(v) for v in value] if isinstance(value, list) else None

    def refuse_other_detector(self, kind: str) -> None:
        """ModelError when ``kind`` is not a detector this model was validated with.

        A context crop is cut around the detector's box: another detector's boxes (tighter,
        shifted) give the model crops it was never measured on. Measured on the sample clips with
        v2 and BlazeFace boxes: a phone replay granted, a real person refused. Doubtful input:
        the door refuses to start instead."""
        allowed = self.box_detectors
        if allowed is not None and kind not in allowed:
            raise ModelError(
                f"detector.kind {kind!r}: the liveness model (sha256 {self.sha256[:12]}…) was"
                f" validated only on boxes of {allowed} (its sidecar's box_detectors); other boxes"
                f" change its crops and its verdicts. Set detector.kind: {allowed[0]}, or use a"
                f" model validated on {kind} boxes"
            )

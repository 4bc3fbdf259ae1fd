"""Keras LivenessNet -> full-int8 TFLite (batch-1 signature) + JSON sidecar, checked after export.

Imports TensorFlow (host only). The check runs the exported bytes through ``edge.liveness`` on
ai-edge-litert, the daemon's own inference code, and refuses the export when it disagrees with
Keras on more than 1 % of the check crops or its scores collapse to a near-constant (a known
full-int8 failure, FACTS.md).
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import platform
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from edge.errors import ModelError
from edge.liveness import SIDECAR_FORMAT, TfliteRunner, is_live, sha256_bytes
from edge.preprocess import PreprocessSpec
from train_host.dataset import LABELS
from train_host.metrics import json_safe

logger = logging.getLogger(__name__)

MIN_AGREEMENT = 0.99
# A healthy model spreads its P(real) over the check crops; a collapsed export does not.
MIN_SCORE_STD = 0.05


def convert_int8(model: Any, representative: np.ndarray) -> bytes:
    """Full-int8 conversion (int8 input and output) with a fixed batch-1 signature.

    PReLUs are rewritten first (``train_host.delegable``): the same function, in ops that
    XNNPACK runs in int8.

    Goes through a SavedModel exported with a batch-1 ``input_signature``: the fixed batch avoids
    the shape ops Keras 3 ``Flatten`` adds, and converting a traced function directly leaves
    resource-variable reads the calibrator cannot run.
    """
    import tensorflow as tf

    from train_host.delegable import delegable_prelu

    model = delegable_prelu(model)
    height, width, channels = (int(v) for v in model.input_shape[1:])
    signature = [tf.TensorSpec([1, height, width, channels], tf.float32, name="face")]

    def rep_data() -> Any:
        for sample in representative:
            yield [sample[np.newaxis].astype(np.float32)]

    with tempfile.TemporaryDirectory(prefix="livegate-export-") as tmp:
        model.export(tmp, format="tf_saved_model", input_signature=signature, verbose=False)
        converter = tf.lite.TFLiteConverter.from_saved_model(tmp)
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = rep_data
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.int8
        converter.inference_output_type = tf.int8
        return bytes(converter.convert())


def keras_scores(model: Any, x: np.ndarray, batch: int = 256) -> np.ndarray:
    """P(real) from Keras, in batches (``model(x)`` is much faster than ``predict`` here)."""
    real = LABELS.index("real")
    out = [
        np.asarray(model(x[i : i + batch], training=False))[:, real]
        for i in range(0, len(x), batch)
    ]
    return np.concatenate(out) if out else np.zeros(0, np.float32)


def tflite_scores(content: bytes, x: np.ndarray) -> np.ndarray:
    runner = TfliteRunner(content)
    real = LABELS.index("real")
    return np.array([runner.run(sample[np.newaxis])[real] for sample in x], dtype=np.float32)


def check_export(
    content: bytes,
    model: Any,
    x: np.ndarray,
    threshold: float,
    min_score_std: float = MIN_SCORE_STD,
    min_agreement: float = MIN_AGREEMENT,
) -> dict[str, float | int]:
    """Compare the int8 model with Keras on ``x``; raise ModelError when it is not fit to ship."""
    k = keras_scores(model, x)
    t = tflite_scores(content, x)
    report: dict[str, float | int] = {
        "n": int(len(x)),
        "agreement_at_threshold": float(np.mean(is_live(k, threshold) == is_live(t, threshold))),
        "agreement_argmax": float(np.mean((k >= 0.5) == (t >= 0.5))),
        "max_abs_diff": float(np.max(np.abs(k - t))) if len(x) else 0.0,
        "mean_abs_diff": float(np.mean(np.abs(k - t))) if len(x) else 0.0,
        "tflite_score_std": float(np.std(t)),
        "keras_score_std": float(np.std(k)),
        "tflite_distinct_scores": int(np.unique(t).size),
    }
    logger.info("export check: %s", report)
    if report["agreement_at_threshold"] < min_agreement:
        raise ModelError(
            f"int8 export agrees with Keras on only {report['agreement_at_threshold']:.2%} of"
            f" {len(x)} check crops (need {min_agreement:.0%}): not exported"
        )
    # Collapse: the int8 scores lost their spread, absolutely or against Keras's own.
    if report["tflite_score_std"] < max(min_score_std, 0.5 * report["keras_score_std"]):
        raise ModelError(
            f"int8 export scores have std {report['tflite_score_std']:.4f} over {len(x)} crops:"
            " the export collapsed to a near-constant; not exported"
        )
    return report


def tool_versions() -> dict[str, str]:
    import cv2
    import keras
    import tensorflow as tf

    versions = {
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "numpy": np.__version__,
        "opencv": cv2.__version__,
    }
    try:
        from importlib.metadata import version

        versions["ai-edge-litert"] = version("ai-edge-litert")
    except Exception:  # noqa: BLE001 - only informative
        pass
    return versions


def write_model(
    content: bytes,
    out_path: Path,
    spec: PreprocessSpec,
    threshold: float,
    export_check: dict[str, Any],
    extra: dict[str, Any],
) -> dict[str, Any]:
    """Write ``out_path`` (.tflite) and its .json sidecar; returns the sidecar."""
    runner = TfliteRunner(content)
    sidecar: dict[str, Any] = {
        "format": SIDECAR_FORMAT,
        "labels": list(LABELS),
        "input": {
            "shape": runner.input_shape,
            "dtype": runner.input_dtype,
            "quantization": runner.quantisation()["input"],
        },
        "output": {
            "shape": [int(v) for v in runner.output["shape"]],
            "dtype": np.dtype(runner.output["dtype"]).name,
            "quantization": runner.quantisation()["output"],
        },
        "preprocess": spec.to_json(),
        "threshold": float(threshold),
        "sha256": sha256_bytes(content),
        "export_check": export_check,
        "exported_utc": _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "versions": tool_versions(),
        **extra,
    }
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    sidecar_path = out_path.with_suffix(".json")
    # Write both next to their final names, then rename: a reader never sees a mixed pair
    # for long, and a failed run leaves the old pair alone.
    tmp_model = out_path.with_suffix(".tflite.tmp")
    tmp_sidecar = sidecar_path.with_suffix(".json.tmp")
    tmp_model.write_bytes(content)
    tmp_sidecar.write_text(json.dumps(json_safe(sidecar), indent=2) + "\n")
    tmp_model.replace(out_path)
    tmp_sidecar.replace(sidecar_path)
    logger.info("wrote %s (%d bytes) and %s", out_path, len(content), sidecar_path)
    return sidecar


def representative_sample(x: np.ndarray, groups: np.ndarray, n: int, seed: int) -> np.ndarray:
    """About ``n`` crops spread evenly over the source groups (calibration must see them all)."""
    rng = np.random.default_rng(seed)
    uniq = sorted(set(groups.tolist()))
    per = max(1, n // max(1, len(uniq)))
    idx: list[int] = []
    for g in uniq:
        members = np.flatnonzero(groups == g)
        idx.extend(rng.choice(members, size=min(per, members.size), replace=False).tolist())
    return x[np.array(sorted(idx))]


def export(
    model: Any,
    out_path: Path,
    spec: PreprocessSpec,
    threshold: float,
    calib_x: np.ndarray,
    check_x: np.ndarray,
    extra: dict[str, Any],
    min_score_std: float = MIN_SCORE_STD,
    min_agreement: float = MIN_AGREEMENT,
) -> dict[str, Any]:
    content = convert_int8(model, calib_x)
    report = check_export(content, model, check_x, threshold, min_score_std, min_agreement)
    report["min_agreement"] = min_agreement
    report["representative_crops"] = int(len(calib_x))
    return write_model(content, out_path, spec, threshold, report, extra)

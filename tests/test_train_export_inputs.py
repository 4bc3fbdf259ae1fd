"""Which inputs ``train --export`` hands to the int8 export (no TensorFlow: training and the
conversion are stubbed, the command's own data handling runs)."""

from __future__ import annotations

import os
import subprocess
import sys
import types
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import train_host.__main__ as cli
import train_host.dataset
import train_host.export
import train_host.train
from train_host.dataset import FaceSet

SOURCES = ("alpha", "beta", "clips")


def _faces(per_source: int = 12) -> FaceSet:
    """Every input of a source is filled with that source's index, so an input tells its source."""
    xs, ys, sources = [], [], []
    for k, source in enumerate(SOURCES):
        for i in range(per_source):
            xs.append(np.full((4, 4, 3), float(k), np.float32))
            ys.append(i % 2)
            sources.append(source)
    return FaceSet(np.stack(xs), np.array(ys), np.array(sources), [""] * len(ys))


@pytest.fixture
def stubbed(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """``train``'s data, training and export stubbed; records what reached them."""
    seen: dict[str, Any] = {}
    faces = _faces()
    monkeypatch.setattr(cli, "_training_data", lambda args, cfg, spec: faces)
    monkeypatch.setattr(train_host.train, "setup_tf", lambda cfg: None)

    def train_final(final: FaceSet, cfg: Any, epochs: int, run_dir: Path) -> str:
        seen["trained_on"] = sorted(set(final.sources.tolist()))
        return "model"

    def export(model: Any, out: Path, spec: Any, threshold: float, calib: np.ndarray,
               check: np.ndarray, extra: dict[str, Any], **kw: Any) -> dict[str, Any]:  # fmt: skip
        seen["calib"], seen["check"], seen["extra"] = calib, check, extra
        return {"export_check": {}}

    monkeypatch.setattr(train_host.train, "train_final", train_final)
    monkeypatch.setattr(train_host.export, "export", export)
    return seen


def _train(tmp_path: Path, *extra: str) -> int:
    return cli.main(
        ["train", "--run-dir", str(tmp_path / "run"), "--no-cv", "--threshold", "0.5",
         "--export", str(tmp_path / "m.tflite"), "--representative", "30", *extra]
    )  # fmt: skip


def test_calibration_leaves_out_the_final_excluded_sources(
    tmp_path: Path, stubbed: dict[str, Any]
) -> None:
    assert _train(tmp_path, "--final-exclude", "clips") == 0
    assert stubbed["trained_on"] == ["alpha", "beta"]
    calib_sources = {SOURCES[int(v)] for v in stubbed["calib"][:, 0, 0, 0]}
    assert calib_sources == {"alpha", "beta"}


def test_calibration_uses_every_source_without_exclusions(
    tmp_path: Path, stubbed: dict[str, Any]
) -> None:
    assert _train(tmp_path) == 0
    assert {SOURCES[int(v)] for v in stubbed["calib"][:, 0, 0, 0]} == set(SOURCES)


LIMIT_SCRIPT = """
import numpy as np
from train_host.__main__ import _limit
from train_host.dataset import FaceSet
sources = np.array([f"source{k}" for k in range(8) for _ in range(20)])
y = np.arange(sources.size) % 2
faces = FaceSet(np.zeros((sources.size, 1, 1, 3), np.float32), y, sources,
                [str(i) for i in range(sources.size)])
print(",".join(_limit(faces, 3, 42).paths))
"""


def test_limit_per_source_picks_the_same_inputs_in_every_run() -> None:
    """--limit-per-source with one --seed: the same inputs whatever the interpreter's string
    hashing (each run of python has its own unless PYTHONHASHSEED is set)."""
    root = Path(__file__).resolve().parent.parent
    picks = {
        subprocess.run(
            [sys.executable, "-c", LIMIT_SCRIPT],
            env={**os.environ, "PYTHONHASHSEED": str(hash_seed)},
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        for hash_seed in range(4)
    }
    assert len(picks) == 1


def test_holdout_refuses_final_exclude_it_would_train_on(
    tmp_path: Path, stubbed: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The hold-out model is the shipped one and trains on every fold but one: --final-exclude
    cannot be honoured there, and is refused rather than silently trained on."""

    def train_holdout(faces: FaceSet, cfg: Any, fold: int, run_dir: Path) -> Any:
        stubbed["trained_on"] = sorted(set(faces.sources.tolist()))
        return "model", 0.5, {"best_epoch": 1}

    monkeypatch.setattr(train_host.train, "train_holdout", train_holdout)
    args = ["train", "--run-dir", str(tmp_path / "run"), "--holdout-fold", "0", "--folds", "3"]
    assert cli.main([*args, "--final-exclude", "clips"]) == 2
    assert "trained_on" not in stubbed
    assert cli.main(args) == 0  # without the option the hold-out run goes ahead


@pytest.fixture
def stubbed_export(stubbed: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """``export``'s Keras load stubbed too (a model of the default 32x32 input), and its data."""
    model = types.SimpleNamespace(input_shape=(None, 32, 32, 3))
    fake_keras = types.SimpleNamespace(
        models=types.SimpleNamespace(load_model=lambda path, compile: model)
    )
    monkeypatch.setitem(sys.modules, "keras", fake_keras)
    monkeypatch.setitem(sys.modules, "train_host.minifasnet", types.ModuleType("minifasnet"))
    monkeypatch.setattr(train_host.dataset, "load_faces", lambda root, spec, cache: _faces())
    return stubbed


def _export(tmp_path: Path) -> int:
    run = tmp_path / "run"
    return cli.main(
        ["export", "--keras", str(run / "model.keras"), "--data", str(tmp_path),
         "--out", str(tmp_path / "again.tflite"), "--threshold", "0.5", "--representative", "30"]
    )  # fmt: skip


def test_export_of_a_run_keeps_its_final_excluded_sources_out_of_calibration(
    tmp_path: Path, stubbed_export: dict[str, Any]
) -> None:
    """`export --keras RUN/model.keras` (the model card's way to the shipped file) calibrates
    without the sources that run's final model was trained without."""
    assert _train(tmp_path, "--final-exclude", "clips") == 0
    assert _export(tmp_path) == 0
    assert {SOURCES[int(v)] for v in stubbed_export["calib"][:, 0, 0, 0]} == {"alpha", "beta"}
    assert stubbed_export["extra"]["training"]["final_excluded_sources"] == ["clips"]
    # Another run in the same dir without the option: its model calibrates on every source.
    assert _train(tmp_path) == 0
    assert _export(tmp_path) == 0
    assert {SOURCES[int(v)] for v in stubbed_export["calib"][:, 0, 0, 0]} == set(SOURCES)

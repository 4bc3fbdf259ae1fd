"""``python -m train_host {gather,train,export,evaluate,tracks,calibration,clips}``: the trainer's
command line.

Exit codes: 0 done, 1 unexpected failure, 2 bad input (missing files, unreadable images, a model
that does not match its sidecar, an export that failed its check). TensorFlow is imported only by
``train`` and ``export``.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edge.errors import LiveGateError
from train_host.train import ARCHS, DEFAULT_PRETRAINED

if TYPE_CHECKING:
    from edge.preprocess import PreprocessSpec

logger = logging.getLogger("train_host")

DEFAULT_DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "faces"
DEFAULT_FRAMES = DEFAULT_DATA.parent / "frames"
DEFAULT_MODEL = Path(__file__).resolve().parent.parent / "models" / "liveness.tflite"
DEFAULT_CACHE = Path("/tmp/livegate_cache")
TRAIN_COLOURS = ("RGB", "YCrCb")  # colour orders of edge.preprocess the trainer offers
SPEC_FILE = "preprocess.json"  # in a run dir, beside model.keras: how the model was trained
# In a run dir, beside model.keras: the sources --final-exclude kept out of it, which `export`
# must keep out of its int8 calibration too.
EXCLUDE_FILE = "final_exclude.json"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m train_host", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (
        _add_gather, _add_train, _add_export, _add_evaluate, _add_tracks, _add_calibration,
        _add_clips,
    ):  # fmt: skip
        add(sub)
    return parser


def _add_gather(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``gather``: cut face crops."""
    g = sub.add_parser("gather", help="cut face crops out of videos or images")
    g.add_argument("input", type=Path, help="a video, an image, or a folder of them")
    g.add_argument("--out", type=Path, required=True, help="crops go to OUT/<label>/")
    g.add_argument("--label", choices=("real", "fake"), required=True)
    g.add_argument("--confidence", type=float, default=0.5, help="minimum res10 score")
    g.add_argument("--skip", type=int, default=16, help="use every SKIP-th video frame")
    g.add_argument(
        "--margin",
        type=float,
        default=1.0,
        help="box enlargement around its centre (1.0 = tight, as the shipped model)",
    )
    g.add_argument("--max-side", type=int, default=224, help="shrink crops to this long side")
    g.add_argument("--no-progress", action="store_true")


def _add_train(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``train``: its options in three groups."""
    t = sub.add_parser("train", help="leave-sources-out CV, then train on all and export")
    _train_model_options(t)
    _train_fit_options(t)
    _train_output_options(t)


def _train_model_options(t: argparse.ArgumentParser) -> None:
    """What is trained: data, architecture, pretrained weights, frozen parts."""
    t.add_argument(
        "--data",
        type=Path,
        default=None,
        help="tight crops in <source>/<label>/ (livenessnet; default ../shared/data/faces), or"
        " whole frames with boxes (frames.json + manifest.csv; minifasnet_*; default"
        " ../shared/data/frames)",
    )
    t.add_argument(
        "--arch",
        choices=ARCHS,
        default="livenessnet",
        help="livenessnet: v1 CNN from scratch on tight crops; minifasnet_v2 (2.7x context),"
        " minifasnet_v1se (4.0x), minifasnet_pair (both, fused): Silent-Face's pretrained"
        " weights fine-tuned on context crops",
    )
    t.add_argument(
        "--pretrained-dir",
        type=Path,
        default=DEFAULT_PRETRAINED,
        help="folder with Silent-Face's .npz weights (minifasnet_*)",
    )
    t.add_argument(
        "--ft-weight",
        type=float,
        default=0.0,
        help="minifasnet_*: weight of the Fourier-spectrum auxiliary loss (0: off)",
    )
    t.add_argument(
        "--train-from",
        default="conv1",
        help="minifasnet_*: fine-tune from this block on, earlier blocks frozen (conv1: all;"
        " e.g. conv_5, conv_6_sep, linear)",
    )
    t.add_argument(
        "--freeze-bn",
        action="store_true",
        help="minifasnet_*: keep every BatchNorm as published while the rest fine-tunes",
    )
    t.add_argument(
        "--flip-average",
        action="store_true",
        help="minifasnet_*: the model averages its verdicts on the crop and its mirror image"
        " (inside the exported model; twice the compute)",
    )
    t.add_argument(
        "--wise-alpha",
        type=float,
        default=1.0,
        help="minifasnet_*: after fine-tuning keep (1 - alpha) of the published weights"
        " (weight-space ensembling; 1: the fine-tuned weights as they are)",
    )
    t.add_argument(
        "--final-exclude",
        default="",
        help="comma-separated sources used in CV but left out of the final model (e.g. the"
        " captures of the sample clips, so end-to-end tests on those clips stay unseen)",
    )


def _train_fit_options(t: argparse.ArgumentParser) -> None:
    """How it is fitted: run dir, input, epochs, folds, threshold rule, colour."""
    t.add_argument("--run-dir", type=Path, required=True, help="CV report, plots, Keras model")
    t.add_argument("--size", type=int, default=32, help="square model input size")
    t.add_argument("--epochs", type=int, default=20, help="max epochs per fold (early stopping)")
    t.add_argument(
        "--patience",
        type=int,
        default=5,
        help="early stopping on the validation fold (0: always run --epochs)",
    )
    t.add_argument("--learning-rate", type=float, default=1e-3)
    t.add_argument("--epoch-size", type=int, default=4096, help="crops drawn per epoch")
    t.add_argument(
        "--final-epochs",
        type=int,
        default=0,
        help="epochs of the final model (0: median best epoch of the folds)",
    )
    t.add_argument("--folds", type=int, default=5)
    t.add_argument("--seed", type=int, default=42)
    t.add_argument(
        "--max-bpcer",
        type=float,
        default=0.05,
        help="threshold rule: lowest APCER with BPCER <= this on validation data",
    )
    t.add_argument(
        "--source-power",
        type=float,
        default=0.5,
        help="a source of n crops weighs n**p in total (0: all equal, 1: by size)",
    )
    t.add_argument(
        "--standardize",
        action="store_true",
        help="per-image standardisation as the model's first layer",
    )
    t.add_argument(
        "--colour",
        choices=TRAIN_COLOURS,
        default="RGB",
        help="colour order of the model input (stored in the sidecar)",
    )
    t.add_argument(
        "--highpass",
        type=float,
        default=0.0,
        metavar="SIGMA",
        help="feed only fine texture: crop minus its Gaussian blur of SIGMA input pixels",
    )


def _train_output_options(t: argparse.ArgumentParser) -> None:
    """CV or not, export and its checks, cache, quick-run limits."""
    t.add_argument("--no-cv", action="store_true", help="skip CV (needs --threshold)")
    t.add_argument(
        "--holdout-fold",
        type=int,
        default=None,
        help="instead of CV: train on the other folds, this one picks the threshold",
    )
    t.add_argument("--threshold", type=float, default=None, help="threshold when --no-cv")
    t.add_argument("--export", type=Path, default=None, help="write the int8 model here")
    t.add_argument(
        "--cache-dir",
        type=Path,
        default=DEFAULT_CACHE,
        help="preprocessed-crop cache (.npz of arrays)",
    )
    t.add_argument(
        "--min-score-std",
        type=float,
        default=0.05,
        help="export check: refuse int8 scores with a smaller spread (collapse)",
    )
    t.add_argument(
        "--min-agreement",
        type=float,
        default=0.99,
        help="export check: least share of check inputs on which int8 and Keras agree at the"
        " threshold (every reported metric is the int8 model's own either way)",
    )
    t.add_argument(
        "--limit-per-source",
        type=int,
        default=0,
        help="use at most N crops per source and label (quick runs, tests)",
    )
    _add_representative(t)


def _add_representative(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--representative",
        type=int,
        default=2000,
        help="int8 calibration inputs, spread evenly over the sources (default 2000: with 400 the"
        " pair's int8 scores drifted further from Keras's)",
    )


def _add_export(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``export``: int8 TFLite + sidecar from a saved Keras model."""
    e = sub.add_parser("export", help="int8 TFLite + sidecar from a saved Keras model")
    e.add_argument("--keras", type=Path, required=True, help="model.keras from train")
    e.add_argument(
        "--data",
        type=Path,
        default=None,
        help="calibration/check inputs (default: ../shared/data/frames for context models,"
        " ../shared/data/faces for tight ones)",
    )
    e.add_argument("--out", type=Path, default=DEFAULT_MODEL)
    e.add_argument("--cv", type=Path, default=None, help="cv.json: threshold and metrics")
    e.add_argument("--threshold", type=float, default=None)
    e.add_argument(
        "--colour",
        choices=TRAIN_COLOURS,
        default=None,
        help="colour order it was trained on (default: the run's preprocess.json, else RGB)",
    )
    e.add_argument(
        "--highpass",
        type=float,
        default=None,
        help="high-pass sigma it was trained on (default: the run's preprocess.json, else 0)",
    )
    e.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE)
    e.add_argument("--min-agreement", type=float, default=0.99, help="as for train")
    _add_representative(e)


def _add_evaluate(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``evaluate``: metrics of an exported model."""
    v = sub.add_parser(
        "evaluate",
        help="metrics of an exported model on labelled frames (crops for a tight-crop model)",
    )
    v.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    v.add_argument(
        "--data",
        type=Path,
        required=True,
        help="whole frames with boxes (frames.json + manifest.csv), or crops in"
        " .../real/, .../fake/",
    )
    v.add_argument("--threshold", type=float, default=None, help="override the sidecar's")
    v.add_argument("--json", type=Path, default=None, help="also write the result here")
    v.add_argument("--no-progress", action="store_true")


def _add_tracks(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``tracks``: track-level error rates of a run."""
    k = sub.add_parser(
        "tracks", help="track-level APCER/BPCER of a run: N-of-M votes vs mean log-odds"
    )
    k.add_argument("--run-dir", type=Path, required=True, help="a train run (oof_scores.npz)")
    k.add_argument("--data", type=Path, default=DEFAULT_FRAMES, help="the run's frames folder")
    k.add_argument("--window", type=int, default=5, help="frames per vote (decision.vote_frames)")
    k.add_argument("--min-live", type=int, default=4, help="N of the window (min_live_frames)")
    k.add_argument("--json", type=Path, default=None)


def _add_calibration(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``calibration``: the door's camera calibration replayed on a run's held-out scores."""
    from edge.calibration import DEFAULT_MAX_THRESHOLD, DEFAULT_QUANTILE

    c = sub.add_parser(
        "calibration",
        help="APCER/BPCER of a run with and without the door's camera calibration",
    )
    c.add_argument("--run-dir", type=Path, required=True, help="a train run (oof_scores.npz)")
    c.add_argument("--data", type=Path, default=DEFAULT_FRAMES, help="the run's frames folder")
    c.add_argument("--quantile", type=float, default=DEFAULT_QUANTILE, help="as `edge calibrate`")
    c.add_argument(
        "--max-threshold", type=float, default=DEFAULT_MAX_THRESHOLD, help="as `edge calibrate`"
    )
    c.add_argument("--seed", type=int, default=1, help="which half of the people calibrates")
    c.add_argument("--json", type=Path, default=None)


def _cmd_calibration(args: argparse.Namespace) -> int:
    from edge.errors import InputError
    from train_host.calibration import report_for_run
    from train_host.metrics import json_safe

    try:
        report = report_for_run(
            args.run_dir, args.data, args.quantile, args.max_threshold, args.seed
        )
    except (OSError, KeyError, ValueError) as exc:
        raise InputError(f"cannot replay the calibration on {args.run_dir}: {exc}") from exc
    summary = {k: {"frames": v["frames"], "tracks": v["tracks"]}
               for k, v in report.items() if isinstance(v, dict) and "frames" in v}  # fmt: skip
    print(json.dumps(json_safe(summary), indent=2))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(json_safe(report), indent=2) + "\n")
    return 0


def _add_clips(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``clips``: the shipped model on whole clips."""
    c = sub.add_parser("clips", help="score res10 faces of whole clips (a check, not tuning)")
    c.add_argument("clips", type=Path, nargs="+", help="video files or folders of them")
    c.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    c.add_argument("--threshold", type=float, default=None)
    c.add_argument("--json", type=Path, default=None)


def _cmd_clips(args: argparse.Namespace) -> int:
    from edge.liveness import LivenessModel
    from edge.media import VIDEO_SUFFIXES
    from train_host.evaluate import score_clips
    from train_host.gather import list_inputs

    clips = [
        p for arg in args.clips for p in list_inputs(arg) if p.suffix.lower() in VIDEO_SUFFIXES
    ]
    model = LivenessModel.load(args.model, threshold=args.threshold)
    result = {
        "model_sha256": model.sha256,
        "threshold": model.threshold,
        "clips": score_clips(model, clips),
    }
    print(json.dumps(result, indent=2))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


def _cmd_gather(args: argparse.Namespace) -> int:
    from train_host.gather import gather

    stats = gather(
        args.input,
        args.out,
        args.label,
        confidence=args.confidence,
        skip=args.skip,
        margin=args.margin,
        max_side=args.max_side,
        progress=not args.no_progress,
    )
    print(stats.line())
    return 0


def _limit(faces: Any, per: int, seed: int) -> Any:
    import numpy as np

    rng = np.random.default_rng(seed)
    keep = np.zeros(len(faces), dtype=bool)
    # Sorted: a set's order of strings changes with every interpreter (hash randomisation), and
    # the draws follow it, so the same --seed would pick other inputs in each run.
    for source in sorted(set(faces.sources.tolist())):
        for label in (0, 1):
            idx = np.flatnonzero((faces.sources == source) & (faces.y == label))
            keep[rng.choice(idx, size=min(per, idx.size), replace=False)] = True
    return faces.subset(keep)


def _training_summary(faces: Any, cfg: Any, epochs: int, data: Path) -> dict[str, Any]:
    from dataclasses import asdict

    from train_host.dataset import describe

    counts = describe(faces)
    return {
        "data": str(data),
        "n_real": int((faces.y == 1).sum()),
        "n_fake": int((faces.y == 0).sum()),
        "per_source": counts,
        "final_epochs": epochs,
        "config": asdict(cfg),
    }


def _box_detectors(spec: PreprocessSpec) -> dict[str, list[str]]:
    """Context crops were cut around res10 boxes (the frames pool's): the daemon refuses other
    detectors with such a model (``LivenessModel.refuse_other_detector``)."""
    return {"box_detectors": ["res10"]} if spec.geometry == "context_shift" else {}


def _cv_metrics(cv: dict[str, Any]) -> dict[str, Any]:
    return {
        "protocol": "leave-sources-out, int8 through ai-edge-litert, each fold's threshold"
        " chosen on the other folds' out-of-fold scores",
        "pooled_at_fold_thresholds": cv["pooled_at_fold_thresholds"],
        "pooled_oof_threshold": cv["pooled_oof_threshold"],
        "pooled_at_oof_threshold": cv["pooled_at_oof_threshold"],
        "per_fold": [
            {"fold": f["fold"], "test_groups": f["test_groups"], **f["test"]} for f in cv["folds"]
        ],
    }


def _train_config(args: argparse.Namespace) -> Any:
    """The TrainConfig of ``train``'s options."""
    from train_host.train import TrainConfig

    return TrainConfig(
        arch=args.arch,
        pretrained_dir=str(args.pretrained_dir),
        ft_weight=args.ft_weight,
        train_from=args.train_from,
        freeze_bn=args.freeze_bn,
        flip_average=args.flip_average,
        wise_alpha=args.wise_alpha,
        size=args.size,
        epochs=args.epochs,
        seed=args.seed,
        folds=args.folds,
        max_bpcer=args.max_bpcer,
        source_power=args.source_power,
        epoch_size=args.epoch_size,
        patience=args.patience,
        learning_rate=args.learning_rate,
        standardize=args.standardize,
        colour_order=args.colour,
        highpass_sigma=args.highpass,
        representative=args.representative,
    )


def _training_data(args: argparse.Namespace, cfg: Any, spec: Any) -> Any:
    """The FaceSet ``--data`` names (default: frames for a context model, crops otherwise)."""
    from edge.errors import InputError
    from train_host.dataset import load_faces
    from train_host.frames import is_frames_dir, load_frames

    if args.data is None:
        args.data = DEFAULT_FRAMES if cfg.is_context else DEFAULT_DATA
    if is_frames_dir(args.data):
        return load_frames(args.data, spec, args.cache_dir)
    if cfg.is_context:
        raise InputError(
            f"{args.data} has no frames.json: a context model ({cfg.arch}) is cut from whole"
            " frames with face boxes (the format of ../shared/data/frames), not from tight crops"
        )
    return load_faces(args.data, spec, args.cache_dir)


def _export_trained(
    args: argparse.Namespace,
    cfg: Any,
    model: Any,
    spec: Any,
    threshold: float,
    faces: Any,
    final_faces: Any,
    epochs: int,
    how: dict[str, Any],
) -> None:
    """``--export``: the int8 model and its sidecar (``how``: threshold rule, sources left out
    of the final model, CV metrics); prints where it went and its export check."""
    from train_host.export import export, representative_sample

    # Calibration sets the int8 ranges, so it is part of fitting: it sees only the final model's
    # own data, never the sources --final-exclude keeps unseen. The check may use them all.
    calib = representative_sample(final_faces.x, final_faces.groups, cfg.representative, cfg.seed)
    check = representative_sample(faces.x, faces.groups, cfg.check_crops, cfg.seed + 1)
    sidecar = export(
        model,
        args.export,
        spec,
        threshold,
        calib,
        check,
        {
            "threshold_rule": how["threshold_rule"],
            "training": {
                **_training_summary(final_faces, cfg, epochs, args.data),
                "final_excluded_sources": how["excluded"],
            },
            "metrics": how["metrics"],
        },
        min_score_std=args.min_score_std,
        min_agreement=args.min_agreement,
    )
    print(
        json.dumps(
            {
                "model": str(args.export),
                "threshold": threshold,
                "export_check": sidecar["export_check"],
            },
            indent=2,
        )
    )


def _cmd_train(args: argparse.Namespace) -> int:
    import numpy as np

    from edge.errors import InputError
    from train_host.train import cross_validate, setup_tf, spec_for, train_final, train_holdout

    cfg = _train_config(args)
    if args.no_cv and args.threshold is None:
        raise InputError("--no-cv needs --threshold (there is no validation data to choose it)")
    if args.holdout_fold is not None and args.final_exclude:
        # The hold-out model is the shipped one and trains on every fold but one: the sources
        # would be trained on, not left out as asked.
        raise InputError(
            "--final-exclude cannot be honoured with --holdout-fold; use CV or --no-cv"
        )
    setup_tf(cfg)
    spec = spec_for(cfg)
    # Beside the run's model.keras: how it was trained, so that `export` cannot serve it with
    # another preprocessing.
    args.run_dir.mkdir(parents=True, exist_ok=True)
    (args.run_dir / SPEC_FILE).write_text(json.dumps(spec.to_json(), indent=2) + "\n")
    faces = _training_data(args, cfg, spec)
    if args.limit_per_source:
        faces = _limit(faces, args.limit_per_source, cfg.seed)
    excluded = _final_exclusions(args, faces)
    logger.info("%d crops (%d real) from %s", len(faces), int((faces.y == 1).sum()), args.data)
    extra_metrics: dict[str, Any] = {}
    final_faces = faces
    rule = f"lowest APCER with BPCER <= {cfg.max_bpcer:g} on pooled leave-sources-out scores"
    if args.holdout_fold is not None:
        model, threshold, extra_metrics = train_holdout(faces, cfg, args.holdout_fold, args.run_dir)
        epochs = extra_metrics["best_epoch"]
        rule = f"lowest APCER with BPCER <= {cfg.max_bpcer:g} on the held-out fold"
        if args.threshold is not None:
            threshold = float(args.threshold)
    elif args.no_cv:
        threshold = float(args.threshold)
        epochs = args.final_epochs or cfg.epochs
    else:
        cv = cross_validate(faces, cfg, args.run_dir)
        print(
            json.dumps(
                {
                    "pooled_at_fold_thresholds": cv["pooled_at_fold_thresholds"],
                    "pooled_oof_threshold": cv["pooled_oof_threshold"],
                },
                indent=2,
            )
        )
        threshold = float(cv["pooled_oof_threshold"])
        # --epochs 0 measures the pretrained start as it is; its "final model" is that start too.
        epochs = args.final_epochs or (
            max(3, int(statistics.median(cv["best_epochs"]))) if cfg.epochs else 0
        )
        extra_metrics = _cv_metrics(cv)
    if args.holdout_fold is None:
        if args.threshold is not None:
            threshold = float(args.threshold)
        final_faces = faces.subset(~np.isin(faces.sources, excluded))
        if excluded:
            logger.info("final model without %s: %d inputs", excluded, len(final_faces))
        model = train_final(final_faces, cfg, epochs, args.run_dir)
    if args.export:
        _export_trained(
            args,
            cfg,
            model,
            spec,
            threshold,
            faces,
            final_faces,
            epochs,
            {"threshold_rule": rule, "excluded": excluded, "metrics": extra_metrics},
        )
    return 0


def _final_exclusions(args: argparse.Namespace, faces: Any) -> list[str]:
    """The sources ``--final-exclude`` names, checked against the data and written to the run
    dir (always, so a later run in the same dir never inherits an earlier run's list)."""
    from edge.errors import InputError

    excluded = [name for name in args.final_exclude.split(",") if name]
    unknown = sorted(set(excluded) - set(faces.sources.tolist()))
    if unknown:
        raise InputError(f"--final-exclude names sources not in the data: {unknown}")
    text = json.dumps({"final_excluded_sources": excluded}) + "\n"
    (args.run_dir / EXCLUDE_FILE).write_text(text)
    return excluded


def recorded_exclusions(recorded: Path) -> list[str]:
    """The sources a saved Keras model was trained without (``final_exclude.json`` of its run);
    none when there is no such file (a run of an older trainer)."""
    from edge.errors import InputError

    if not recorded.is_file():
        return []
    try:
        names = json.loads(recorded.read_text())["final_excluded_sources"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InputError(f"cannot read {recorded}: {exc}") from exc
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise InputError(f"{recorded}: final_excluded_sources is not a list of source names")
    return names


def recorded_spec(
    recorded: Path, colour: str | None, highpass: float | None
) -> PreprocessSpec | None:
    """The preprocessing a saved Keras model was trained with, from the run's
    ``preprocess.json`` (written by ``train``); None when there is no such file (a run of an
    older trainer). Flags that contradict it are refused."""
    from edge.errors import InputError
    from edge.preprocess import PreprocessSpec

    if not recorded.is_file():
        return None
    try:
        spec = PreprocessSpec.from_json(json.loads(recorded.read_text()))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InputError(f"cannot read {recorded}: {exc}") from exc
    if colour is not None and colour != spec.colour_order:
        raise InputError(
            f"--colour {colour} contradicts {recorded}: the model was trained on"
            f" {spec.colour_order} input"
        )
    if highpass is not None and highpass != spec.highpass_sigma:
        raise InputError(
            f"--highpass {highpass:g} contradicts {recorded}: the model was trained with"
            f" sigma {spec.highpass_sigma:g}"
        )
    return spec


def _cmd_export(args: argparse.Namespace) -> int:
    import keras

    import train_host.minifasnet  # noqa: F401 - registers its layers for load_model
    from edge.errors import InputError, ModelError
    from train_host.dataset import group_of, load_faces
    from train_host.export import export, representative_sample
    from train_host.frames import load_frames
    from train_host.train import TrainConfig, spec_for

    try:
        model = keras.models.load_model(args.keras, compile=False)
    except Exception as exc:  # noqa: BLE001 - Keras raises many types for a bad file
        raise ModelError(f"cannot load Keras model {args.keras}: {exc}") from exc
    size = int(model.input_shape[1])
    recorded = args.keras.parent / SPEC_FILE
    spec = recorded_spec(recorded, args.colour, args.highpass)
    if spec is None:
        logger.warning("%s not found: exporting with --colour/--highpass as given", recorded)
        spec = spec_for(
            TrainConfig(
                size=size, colour_order=args.colour or "RGB", highpass_sigma=args.highpass or 0.0
            )
        )
    if (spec.input_height, spec.input_width) != (size, int(model.input_shape[2])):
        raise InputError(
            f"{args.keras} takes {model.input_shape[1]}x{model.input_shape[2]} input, but"
            f" {SPEC_FILE} says {spec.input_height}x{spec.input_width}"
        )
    cfg = TrainConfig(
        size=size,
        colour_order=spec.colour_order,
        highpass_sigma=spec.highpass_sigma,
        representative=args.representative,
    )
    extra: dict[str, Any] = {}
    threshold = args.threshold
    if args.cv is not None:
        try:
            cv = json.loads(args.cv.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise InputError(f"cannot read CV report {args.cv}: {exc}") from exc
        extra["metrics"] = _cv_metrics(cv)
        if threshold is None:
            threshold = float(cv["pooled_oof_threshold"])
    extra.update(_box_detectors(spec))
    if threshold is None:
        raise InputError("give --threshold or --cv (the CV report holds the chosen threshold)")
    if spec.geometry == "context_shift":
        faces = load_frames(args.data or DEFAULT_FRAMES, spec, args.cache_dir)
    else:
        faces = load_faces(args.data or DEFAULT_DATA, spec, args.cache_dir)
    import numpy as np

    groups = np.array([group_of(s) for s in faces.sources])
    # The sources the model was trained without stay out of its calibration as well.
    excluded = recorded_exclusions(args.keras.parent / EXCLUDE_FILE)
    fit = ~np.isin(faces.sources, excluded)
    if excluded:
        extra["training"] = {"final_excluded_sources": excluded}
    calib = representative_sample(faces.x[fit], groups[fit], cfg.representative, cfg.seed)
    check = representative_sample(faces.x, groups, cfg.check_crops, cfg.seed + 1)
    sidecar = export(
        model,
        args.out,
        spec,
        float(threshold),
        calib,
        check,
        extra,
        min_agreement=args.min_agreement,
    )
    print(json.dumps({"model": str(args.out), "export_check": sidecar["export_check"]}, indent=2))
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from train_host.evaluate import evaluate
    from train_host.metrics import json_safe

    result = json_safe(
        evaluate(args.model, args.data, threshold=args.threshold, progress=not args.no_progress)
    )
    assert isinstance(result, dict)
    headline = {
        k: result[k]
        for k in ("apcer", "bpcer", "acer", "auc", "eer", "threshold", "n_real", "n_fake")
    }
    # ISO/IEC 30107-3's APCER is the worst species's; "apcer" above pools every attack.
    for k in ("apcer_max_species", "worst_species"):
        if k in result:
            headline[k] = result[k]
    print(json.dumps(headline, indent=2))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


def _cmd_tracks(args: argparse.Namespace) -> int:
    from edge.errors import InputError
    from train_host.metrics import json_safe
    from train_host.tracks import report_for_run

    try:
        report = report_for_run(args.run_dir, args.data, args.window, args.min_live)
    except (OSError, KeyError, ValueError) as exc:
        raise InputError(f"cannot compare track rules for {args.run_dir}: {exc}") from exc
    print(json.dumps(json_safe(report["pooled"]), indent=2))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(json_safe(report), indent=2) + "\n")
    return 0


COMMANDS = {
    "gather": _cmd_gather,
    "train": _cmd_train,
    "export": _cmd_export,
    "evaluate": _cmd_evaluate,
    "clips": _cmd_clips,
    "tracks": _cmd_tracks,
    "calibration": _cmd_calibration,
}


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        return COMMANDS[args.command](args)
    except LiveGateError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (ValueError, OSError) as exc:
        # Bad input that reached a library (e.g. an empty box, a path that vanished).
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

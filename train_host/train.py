"""Train LivenessNet: leave-sources-out cross-validation, then the final model on all data.

Imports TensorFlow (host only). Protocol (also in models/MODEL_CARD.md):
- source groups (``dataset.group_of``) are split into ``folds`` folds (``dataset.make_folds``);
- fold k: the model trains on the other folds for a fixed number of epochs, is exported to
  full-int8 and scores fold k through ai-edge-litert, so every reported number is the shipped
  kind of model;
- fold k's threshold is the lowest APCER with BPCER <= ``max_bpcer`` on the out-of-fold scores
  of the other folds (never on fold k's own scores);
- the final model trains on all groups for the same epochs; its threshold is chosen the same way
  on all pooled out-of-fold scores.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edge.preprocess import PreprocessSpec
from train_host import metrics
from train_host.dataset import LABELS, FaceSet, describe, make_folds, sample_weights

logger = logging.getLogger(__name__)


# Silent-Face's published MiniFASNet weights (Apache-2.0): the pretrained start of the v2 models.
DEFAULT_PRETRAINED = Path(__file__).resolve().parents[2] / "shared" / "peers" / "silentface"
ARCHS = ("livenessnet", "minifasnet_v2", "minifasnet_v1se", "minifasnet_pair")


@dataclass(frozen=True)
class TrainConfig:
    # livenessnet: the v1 CNN from scratch on tight crops in [0, 1]; minifasnet_*: Silent-Face's
    # pretrained networks on context crops (BGR 0-255), fine-tuned.
    arch: str = "livenessnet"
    pretrained_dir: str = str(DEFAULT_PRETRAINED)
    size: int = 32
    epochs: int = 20
    epoch_size: int = 4096
    batch_size: int = 32
    learning_rate: float = 1e-3
    patience: int = 5
    seed: int = 42
    folds: int = 5
    source_power: float = 0.5
    max_bpcer: float = 0.05
    blur_prob: float = 0.3
    representative: int = 2000
    check_crops: int = 2000
    threads: int = 2
    standardize: bool = False
    colour_order: str = "RGB"
    highpass_sigma: float = 0.0
    # > 0 (context models): also learn the input's Fourier spectrum from the features, with this
    # weight on its loss (Silent-Face's auxiliary target; the head is not exported).
    ft_weight: float = 0.0
    # Context models: fine-tune from this block of each branch on (earlier blocks stay as
    # published); "conv1" trains everything.
    train_from: str = "conv1"
    # Context models: keep every BatchNorm as published (statistics and scale), so a few
    # thousand frames of a few cameras cannot re-centre features learnt on many more.
    freeze_bn: bool = False
    # Context models: average the verdicts on the input and on its mirror image (inside the
    # exported model, so the daemon needs nothing new).
    flip_average: bool = False
    # Context models: after fine-tuning, move only this far from the published weights towards
    # the fine-tuned ones (weight-space ensembling, "WiSE-FT"; 1: the fine-tuned weights as they
    # are), so what a few training cameras taught cannot erase what the published weights know.
    wise_alpha: float = 1.0

    @property
    def is_context(self) -> bool:
        return self.arch != "livenessnet"

    @property
    def value_max(self) -> float:
        """Largest input value (the spec's scale times 255)."""
        return 255.0 if self.is_context else 1.0


def build_model(cfg: TrainConfig) -> Any:
    """A fresh model of ``cfg.arch`` (pretrained weights loaded where it has them)."""
    if cfg.is_context:
        from train_host.minifasnet import freeze_before, pretrained_model

        model = pretrained_model(cfg.arch, Path(cfg.pretrained_dir))
        freeze_before(model, cfg.train_from)
        if cfg.freeze_bn:
            import keras

            for layer in model.layers:
                if isinstance(layer, keras.layers.BatchNormalization):
                    layer.trainable = False  # Keras 3: a frozen BN also runs in inference mode
        return model
    from train_host.model import make_livenessnet

    return make_livenessnet((cfg.size, cfg.size, 3), standardize=cfg.standardize)


def setup_tf(cfg: TrainConfig) -> None:
    import keras
    import tensorflow as tf

    try:
        tf.config.threading.set_intra_op_parallelism_threads(cfg.threads)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    except RuntimeError:  # TensorFlow already ran in this process (tests): keep its threads
        logger.info("TensorFlow is initialised already: thread counts left as they are")
    keras.utils.set_random_seed(cfg.seed)


def _balanced_stream(faces: FaceSet, cfg: TrainConfig, seed: int) -> Any:
    """An endless, augmented stream that draws each (source group, label) cell with the total
    weight ``sample_weights`` gives it: groups weigh n**source_power, both labels weigh the same.

    Drawing instead of weighting keeps an epoch short (``epoch_size`` crops) on a shared CPU
    while imironica's 6,000 crops still cannot dominate.
    """
    import tensorflow as tf

    from train_host.model import make_augmenter, make_context_augmenter

    weights = sample_weights(faces.y, faces.groups, cfg.source_power)
    groups = faces.groups
    cells: list[Any] = []
    cell_weights: list[float] = []
    for group in sorted(set(groups.tolist())):
        for label in (0, 1):
            idx = np.flatnonzero((groups == group) & (faces.y == label))
            if idx.size == 0:
                continue
            cell = tf.data.Dataset.from_tensor_slices((faces.x[idx], faces.y[idx]))
            cells.append(cell.shuffle(idx.size, seed=seed, reshuffle_each_iteration=True).repeat())
            cell_weights.append(float(weights[idx].sum()))
    total = sum(cell_weights)
    ds = tf.data.Dataset.sample_from_datasets(
        cells, weights=[w / total for w in cell_weights], seed=seed
    ).batch(cfg.batch_size, drop_remainder=True)
    augmenter = make_context_augmenter(seed) if cfg.is_context else make_augmenter(seed)
    rng = tf.random.Generator.from_seed(seed)
    size = faces.x.shape[1]
    value_max = cfg.value_max

    def aug(xb: Any, yb: Any) -> Any:
        xb = augmenter(xb, training=True)
        # Blur (a cheaper, out-of-focus or far camera): down- then up-sample the batch.
        small = tf.cast(tf.round(rng.uniform([], 0.35, 0.9) * size), tf.int32)
        blurred = tf.image.resize(tf.image.resize(xb, [small, small]), [size, size])
        xb = tf.cond(rng.uniform([]) < cfg.blur_prob, lambda: blurred, lambda: xb)
        return tf.clip_by_value(xb, 0.0, value_max), yb

    return ds.map(aug, num_parallel_calls=1).prefetch(2)


def train_model(
    train: FaceSet,
    val: FaceSet | None,
    cfg: TrainConfig,
    epochs: int,
    seed: int,
    monitor_only: bool = False,
) -> tuple[Any, dict[str, list[float]], int]:
    """Fit one LivenessNet; returns (model, history, best epoch count).

    ``val`` drives early stopping (when ``cfg.patience`` > 0), unless ``monitor_only``: then its
    loss is only recorded for the plots and never picks anything.
    """
    import keras

    keras.utils.set_random_seed(seed)
    model = build_model(cfg)
    if epochs == 0:  # the pretrained start as it is (a baseline in the same protocol)
        return _scoring_model(model, cfg), {}, 0
    fit_model = model
    stream = _balanced_stream(train, cfg, seed)
    if cfg.ft_weight > 0 and cfg.is_context:
        from train_host.minifasnet import ft_target, with_ft_head

        fit_model = with_ft_head(model)
        fit_model.compile(
            optimizer=keras.optimizers.Adam(cfg.learning_rate),
            loss={"probs": "sparse_categorical_crossentropy", "ft": "mse"},
            loss_weights={"probs": 1.0, "ft": cfg.ft_weight},
        )
        stream = stream.map(lambda xb, yb: (xb, {"probs": yb, "ft": ft_target(xb)}))
        val = None  # the twin's validation needs targets too; nothing is chosen by it here
    else:
        model.compile(
            optimizer=keras.optimizers.Adam(cfg.learning_rate),
            loss="sparse_categorical_crossentropy",
            metrics=["accuracy"],
            weighted_metrics=[],
        )
    fit_kwargs: dict[str, Any] = {}
    callbacks: list[Any] = []
    if val is not None:
        # Validation weighs sources and labels like training, so one big source cannot pick
        # the epoch on its own.
        wv = sample_weights(val.y, val.groups, cfg.source_power)
        fit_kwargs["validation_data"] = (val.x, val.y, wv)
        fit_kwargs["validation_batch_size"] = 256
        if cfg.patience > 0 and not monitor_only:
            callbacks.append(
                keras.callbacks.EarlyStopping(
                    monitor="val_loss", patience=cfg.patience, restore_best_weights=True
                )
            )
    history = fit_model.fit(
        stream,
        epochs=epochs,
        steps_per_epoch=max(1, cfg.epoch_size // cfg.batch_size),
        callbacks=callbacks,
        verbose=2,
        **fit_kwargs,
    )
    hist = {k: [float(v) for v in vals] for k, vals in history.history.items()}
    if cfg.is_context and cfg.wise_alpha < 1.0:
        interpolate_from_published(model, cfg)
    if val is not None and cfg.patience > 0 and not monitor_only and hist.get("val_loss"):
        best = int(np.argmin(hist["val_loss"])) + 1
    else:
        best = len(hist.get("loss", [])) or epochs
    return _scoring_model(model, cfg), hist, best


def interpolate_from_published(model: Any, cfg: TrainConfig) -> None:
    """Set ``model``'s weights to (1 - alpha) x published + alpha x its own (WiSE-FT)."""
    if not 0.0 <= cfg.wise_alpha <= 1.0:
        raise ValueError(f"wise_alpha must be in [0, 1], got {cfg.wise_alpha}")
    from train_host.minifasnet import pretrained_model

    published = pretrained_model(cfg.arch, Path(cfg.pretrained_dir)).get_weights()
    tuned = model.get_weights()
    a = np.float32(cfg.wise_alpha)
    model.set_weights([(1 - a) * p + a * q for p, q in zip(published, tuned, strict=True)])


def _scoring_model(model: Any, cfg: TrainConfig) -> Any:
    """The trained network as it is scored and shipped (with the mirror average if asked)."""
    if cfg.flip_average and cfg.is_context:
        from train_host.minifasnet import with_flip_average

        return with_flip_average(model)
    return model


def _int8_scores(
    model: Any, fit_set: FaceSet, score_sets: list[FaceSet], cfg: TrainConfig, seed: int
) -> tuple[bytes, list[np.ndarray]]:
    from train_host.export import convert_int8, representative_sample, tflite_scores

    calib = representative_sample(fit_set.x, fit_set.groups, cfg.representative, seed)
    content = convert_int8(model, calib)
    return content, [tflite_scores(content, s.x) for s in score_sets]


def _per_source(scores: np.ndarray, faces: FaceSet, threshold: float) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for source in sorted(set(faces.sources.tolist())):
        mask = faces.sources == source
        out[source] = metrics.summary(scores[mask], faces.y[mask] == 1, threshold)
    return out


def cross_validate(faces: FaceSet, cfg: TrainConfig, out_dir: Path) -> dict[str, Any]:
    """Leave-sources-out CV; writes ``cv.json`` and ``oof_scores.npz`` into ``out_dir``."""
    folds = make_folds(faces.groups, cfg.folds)
    oof, oof_keras, histories, seconds = _train_folds(faces, cfg, folds)
    oof_threshold, fold_reports = _fold_thresholds(
        faces, cfg, folds, oof, oof_keras, histories, seconds
    )
    is_real = faces.y == 1
    accepted = oof >= oof_threshold
    pooled, per_source, per_meta = _pooled_at_fold_thresholds(faces, oof, oof_keras, accepted)
    global_threshold = metrics.choose_threshold(oof, is_real, cfg.max_bpcer)
    report = {
        "config": asdict(cfg),
        "labels": list(LABELS),
        "data": describe(faces),
        "folds": fold_reports,
        "pooled_at_fold_thresholds": pooled,
        "per_source_at_fold_thresholds": per_source,
        "per_attack_capture_at_fold_thresholds": per_meta,
        "pooled_oof_threshold": global_threshold,
        "pooled_at_oof_threshold": metrics.summary(oof, is_real, global_threshold),
        "best_epochs": [f["best_epoch"] for f in fold_reports],
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "cv.json").write_text(json.dumps(metrics.json_safe(report), indent=2) + "\n")
    np.savez(
        out_dir / "oof_scores.npz",
        scores=oof,
        keras_scores=oof_keras,
        thresholds=oof_threshold,
        y=faces.y,
        sources=faces.sources.astype(str),
        folds=folds,
    )
    plot_curves(histories, out_dir / "plot.png")
    plot_det(oof, is_real, folds, out_dir / "det.png")
    return report


def _train_folds(
    faces: FaceSet, cfg: TrainConfig, folds: np.ndarray
) -> tuple[np.ndarray, np.ndarray, list[dict[str, list[float]]], list[float]]:
    """One model per fold on the other folds: the int8 and Keras out-of-fold scores, the
    training histories and seconds per fold."""
    from train_host.export import keras_scores

    oof = np.full(len(faces), np.nan, dtype=np.float64)
    oof_keras = np.full(len(faces), np.nan, dtype=np.float64)
    histories: list[dict[str, list[float]]] = []
    seconds: list[float] = []
    for k in range(cfg.folds):
        started = time.monotonic()
        test, train = faces.subset(folds == k), faces.subset(folds != k)
        logger.info(
            "fold %d: test %s (%d), train %d crops",
            k,
            sorted(set(test.groups.tolist())),
            len(test),
            len(train),
        )
        # Fixed epochs: early stopping on one held-out source picked undertrained models
        # (best epoch 1-3 of 20, pooled AUC 0.41). The test fold's loss is only recorded.
        # Context models skip that record: scoring a 4,800-frame fold after every epoch costs
        # more than the epoch on 2 cores, and nothing is chosen by it.
        monitor = None if cfg.is_context else test
        model, hist, _ = train_model(
            train, monitor, cfg, cfg.epochs, cfg.seed + k, monitor_only=True
        )
        histories.append(hist)
        _, (test_scores,) = _int8_scores(model, train, [test], cfg, cfg.seed + k)
        test_mask = folds == k
        oof[test_mask] = test_scores
        oof_keras[test_mask] = keras_scores(model, test.x)
        seconds.append(round(time.monotonic() - started, 1))
        logger.info("fold %d test AUC %.3f", k, metrics.roc_auc(test_scores, test.y == 1))
    return oof, oof_keras, histories, seconds


def _fold_thresholds(
    faces: FaceSet,
    cfg: TrainConfig,
    folds: np.ndarray,
    oof: np.ndarray,
    oof_keras: np.ndarray,
    histories: list[dict[str, list[float]]],
    seconds: list[float],
) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """Each fold's threshold (from the other folds' scores) and its report."""
    oof_threshold = np.full(len(faces), np.nan, dtype=np.float64)
    fold_reports: list[dict[str, Any]] = []
    # Each fold's threshold comes from the out-of-fold scores of the OTHER folds (sources its
    # model never saw either, scored by their own fold models): no score of fold k picks the
    # threshold applied to fold k.
    for k in range(cfg.folds):
        test_mask = folds == k
        others = ~test_mask
        threshold = metrics.choose_threshold(oof[others], faces.y[others] == 1, cfg.max_bpcer)
        oof_threshold[test_mask] = threshold
        test = faces.subset(test_mask)
        report = {
            "fold": k,
            "test_groups": sorted(set(test.groups.tolist())),
            "n_train": int(others.sum()),
            "best_epoch": cfg.epochs,
            "epochs_run": len(histories[k].get("loss", [])),
            "threshold_from_other_folds": threshold,
            "test": metrics.summary(
                oof[test_mask], test.y == 1, threshold, test.meta.get("attack")
            ),
            "test_keras_auc": metrics.roc_auc(oof_keras[test_mask], test.y == 1),
            "test_per_source": _per_source(oof[test_mask], test, threshold),
            "seconds": seconds[k],
        }
        logger.info("fold %d test: %s", k, json.dumps(metrics.json_safe(report["test"])))
        fold_reports.append(report)
    return oof_threshold, fold_reports


def _pooled_at_fold_thresholds(
    faces: FaceSet, oof: np.ndarray, oof_keras: np.ndarray, accepted: np.ndarray
) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """Pooled, per source and per attack type / capture device, at each fold's own threshold."""
    is_real = faces.y == 1
    # Pooled at each fold's own threshold (from the other folds): the honest operating point.
    apcer = float(np.mean(accepted[~is_real]))
    bpcer = float(np.mean(~accepted[is_real]))
    pooled: dict[str, Any] = {
        "apcer": apcer,
        "bpcer": bpcer,
        "acer": (apcer + bpcer) / 2.0,
        "auc": metrics.roc_auc(oof, is_real),
        "eer": metrics.equal_error_rate(oof, is_real)[0],
        "n_real": int(is_real.sum()),
        "n_fake": int((~is_real).sum()),
        "keras_auc": metrics.roc_auc(oof_keras, is_real),
    }
    if "attack" in faces.meta:
        # ISO/IEC 30107-3 reports the worst attack species, not the pooled share above.
        per = metrics.species_apcer(accepted, is_real, faces.meta["attack"])
        name, worst = metrics.worst_species(per)
        pooled |= {"apcer_per_species": per, "apcer_max_species": worst, "worst_species": name}
    per_source: dict[str, Any] = {}
    for source in sorted(set(faces.sources.tolist())):
        m = faces.sources == source
        acc = accepted[m]
        real_m = is_real[m]
        per_source[source] = {
            "apcer": float(np.mean(acc[~real_m])) if (~real_m).any() else None,
            "bpcer": float(np.mean(~acc[real_m])) if real_m.any() else None,
            "auc": metrics.roc_auc(oof[m], real_m),
            "n_real": int(real_m.sum()),
            "n_fake": int((~real_m).sum()),
        }
    # Per attack type (APCER of its attack inputs) and per capture device (both rates), at the
    # same fold thresholds: what a door owner's camera and attacker would meet.
    per_meta: dict[str, Any] = {}
    for column in ("attack", "capture"):
        if column not in faces.meta:
            continue
        values = faces.meta[column]
        per_meta[column] = {
            value: {
                "apcer": float(np.mean(accepted[m & ~is_real])) if (m & ~is_real).any() else None,
                "bpcer": float(np.mean(~accepted[m & is_real])) if (m & is_real).any() else None,
                "n_real": int((m & is_real).sum()),
                "n_fake": int((m & ~is_real).sum()),
            }
            for value in sorted(set(values.tolist()))
            for m in [values == value]
        }
    return pooled, per_source, per_meta


def plot_curves(histories: list[dict[str, list[float]]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    for i, hist in enumerate(histories):
        name = f"fold {i}" if len(histories) > 1 else "final"
        ax_loss.plot(hist.get("loss", []), label=f"{name} train")
        ax_acc.plot(hist.get("accuracy", []), label=f"{name} train")
        if "val_loss" in hist:
            ax_loss.plot(hist["val_loss"], "--", label=f"{name} val")
            ax_acc.plot(hist["val_accuracy"], "--", label=f"{name} val")
    ax_loss.set(title="loss (weighted)", xlabel="epoch")
    ax_acc.set(title="accuracy (weighted)", xlabel="epoch")
    ax_loss.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def plot_det(scores: np.ndarray, is_real: np.ndarray, folds: np.ndarray, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 5))
    for k in sorted(set(folds.tolist())):
        m = folds == k
        if is_real[m].any() and (~is_real[m]).any():
            c = metrics.error_curve(scores[m], is_real[m])
            ax.plot(c["apcer"] * 100, c["bpcer"] * 100, lw=0.8, label=f"fold {k}")
    c = metrics.error_curve(scores, is_real)
    ax.plot(c["apcer"] * 100, c["bpcer"] * 100, "k", lw=2, label="pooled")
    ax.set(
        xscale="symlog",
        yscale="symlog",
        xlabel="APCER %",
        ylabel="BPCER %",
        title="DET, leave-sources-out (int8)",
        xlim=(0, 100),
        ylim=(0, 100),
    )
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def train_final(faces: FaceSet, cfg: TrainConfig, epochs: int, out_dir: Path) -> Any:
    """The shipped model: all groups, fixed epoch count, no validation split."""
    model, hist, _ = train_model(faces, None, cfg, epochs, cfg.seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save(out_dir / "model.keras")
    (out_dir / "final_history.json").write_text(json.dumps(hist) + "\n")
    plot_curves([hist], out_dir / "final_plot.png")
    return model


def spec_for(cfg: TrainConfig) -> PreprocessSpec:
    if cfg.is_context:
        from train_host.minifasnet import INPUT_PX, context_scales

        # Silent-Face's geometry and input convention: the weights were trained on it.
        return PreprocessSpec(
            input_height=INPUT_PX,
            input_width=INPUT_PX,
            colour_order="BGR",
            scale=1.0,
            geometry="context_shift",
            context_scales=context_scales(cfg.arch),
            resize="linear",
        )
    # Training crops are tight res10 boxes, so the model must be served on margin 1.0 crops.
    return PreprocessSpec(
        input_height=cfg.size,
        input_width=cfg.size,
        colour_order=cfg.colour_order,  # type: ignore[arg-type]
        margin=1.0,
        scale=1.0 / 255.0,
        highpass_sigma=cfg.highpass_sigma,
    )


def train_holdout(
    faces: FaceSet, cfg: TrainConfig, fold: int, out_dir: Path
) -> tuple[Any, float, dict[str, Any]]:
    """A quicker model: train on all folds but ``fold``, which picks the epoch and threshold.

    Used for a first model before the full cross-validation has run.
    """
    folds = make_folds(faces.groups, cfg.folds)
    train, val = faces.subset(folds != fold), faces.subset(folds == fold)
    model, hist, best = train_model(train, val, cfg, cfg.epochs, cfg.seed)
    _, (val_scores,) = _int8_scores(model, train, [val], cfg, cfg.seed)
    threshold = metrics.choose_threshold(val_scores, val.y == 1, cfg.max_bpcer)
    report = {
        "protocol": f"hold-out: trained on {len(train)} crops, validated on fold {fold}"
        f" {sorted(set(val.groups.tolist()))} ({len(val)} crops), int8 through ai-edge-litert",
        "best_epoch": best,
        "val_at_threshold": metrics.summary(
            val_scores, val.y == 1, threshold, val.meta.get("attack")
        ),
        "val_per_source": _per_source(val_scores, val, threshold),
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save(out_dir / "model.keras")
    (out_dir / "holdout.json").write_text(json.dumps(metrics.json_safe(report), indent=2) + "\n")
    plot_curves([hist], out_dir / "plot.png")
    return model, threshold, report

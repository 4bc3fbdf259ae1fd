"""Two fine-tunes of the pretrained pair, scored on the Replay-Attack fold only (the fold that
holds nearly all of the shipped model's errors), float Keras with the mirror average:

- ``--tight-pool``: train on the frames pool without Replay-Attack PLUS all of the tight-crop pool
  ``../shared/data/faces`` (14 captures, 14,600 crops, each crop taken as a frame whose face
  box is the whole crop, so the context clamps to 1x, as Replay-Attack's clamps to ~1.5x);
- ``--wise``: train on the frames pool without Replay-Attack, then interpolate the weights
  between the published and the fine-tuned ones (WiSE-FT) at several alphas.

    python docs/model/experiments/finetune_replayattack_fold.py --tight-pool   # ~6 min here
    python docs/model/experiments/finetune_replayattack_fold.py --wise   # ~3 min + 1 per alpha

BatchNorm frozen, lr 1e-4, 3 epochs of 4,096 drawn crops, seed 42 (``train_host``'s training
loop and its source-balanced stream). Needs ``runs/E_pair_flip/oof_scores.npz`` for the folds.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT))

from edge.preprocess import PreprocessSpec, face_input  # noqa: E402
from train_host.dataset import FaceSet  # noqa: E402
from train_host.frames import load_frames  # noqa: E402
from train_host.metrics import apcer_bpcer, choose_threshold, roc_auc  # noqa: E402
from train_host.minifasnet import pretrained_model, with_flip_average  # noqa: E402
from train_host.train import TrainConfig, setup_tf, train_model  # noqa: E402

SHARED = ROOT.parent / "shared"
WEIGHTS = SHARED / "peers" / "silentface"


def tight_pool(spec: PreprocessSpec) -> FaceSet:
    root = SHARED / "data" / "faces"
    with (root / "manifest.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    x = []
    for r in rows:
        image = cv2.imread(str(root / r["file"]))
        h, w = image.shape[:2]
        x.append(face_input(image, (0.0, 0.0, float(w), float(h)), spec))
    return FaceSet(
        np.stack(x).astype(np.float32),
        np.array([1 if r["label"] == "real" else 0 for r in rows]),
        np.array([r["source"] for r in rows]),
        [r["file"] for r in rows],
    )


def score(model, test: FaceSet, train: FaceSet, name: str) -> None:
    s = model.predict(test.x, batch_size=256, verbose=0)[:, 1]
    st = model.predict(train.x, batch_size=256, verbose=0)[:, 1]
    real = test.y == 1
    thr = choose_threshold(st, train.y == 1)  # from the other folds, as the trainer does
    apcer, bpcer = apcer_bpcer(s, real, thr)
    own = choose_threshold(s, real)  # Replay-Attack's own BPCER-5 % point: ranking alone
    own_apcer, _ = apcer_bpcer(s, real, own)
    print(
        f"{name}: Replay-Attack AUC {roc_auc(s, real):.4f}; other folds' threshold {thr:.3f}:"
        f" APCER {100 * apcer:.1f} % BPCER {100 * bpcer:.1f} %; at its own BPCER 5 %:"
        f" APCER {100 * own_apcer:.1f} %",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tight-pool", action="store_true")
    parser.add_argument("--wise", action="store_true")
    args = parser.parse_args()
    sidecar = json.loads((ROOT / "models" / "liveness.json").read_text())
    spec = PreprocessSpec.from_json(sidecar["preprocess"])
    frames = load_frames(SHARED / "data" / "frames", spec)
    folds = np.load(ROOT / "runs" / "E_pair_flip" / "oof_scores.npz")["folds"]
    test, other = frames.subset(folds == 0), frames.subset(folds != 0)
    train = other
    if args.tight_pool:
        tight = tight_pool(spec)
        train = FaceSet(
            np.concatenate([other.x, tight.x]),
            np.concatenate([other.y, tight.y]),
            np.concatenate([other.sources, tight.sources]),
            other.paths + tight.paths,
        )
    cfg = TrainConfig(
        arch="minifasnet_pair",
        epochs=3,
        learning_rate=1e-4,
        freeze_bn=True,
        flip_average=False,
        threads=2,  # the mirror average is added for scoring below
    )
    setup_tf(cfg)
    score(with_flip_average(pretrained_model("minifasnet_pair", WEIGHTS)), test, other, "published")
    tuned, history, _ = train_model(train, None, cfg, cfg.epochs, cfg.seed)
    print("training loss per epoch", [round(v, 4) for v in history["loss"]], flush=True)
    score(
        with_flip_average(tuned),
        test,
        other,
        "fine-tuned" + (" with the tight pool" if args.tight_pool else ""),
    )
    if args.wise:
        published = pretrained_model("minifasnet_pair", WEIGHTS)
        mixed = pretrained_model("minifasnet_pair", WEIGHTS)
        start, end = published.get_weights(), tuned.get_weights()
        mirrored = with_flip_average(mixed)
        for alpha in (0.1, 0.2, 0.3, 0.5):
            pairs = zip(start, end, strict=True)
            mixed.set_weights([(1 - alpha) * a + alpha * b for a, b in pairs])
            score(mirrored, test, other, f"WiSE-FT alpha {alpha}")


if __name__ == "__main__":
    main()

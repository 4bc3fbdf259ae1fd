"""Fixed (unlearnt) ways to score the pretrained pair, and the facenox peer beside it, in the
leave-sources-out protocol of ``train_host train`` (float Keras; fold thresholds from the other
folds' scores at BPCER <= 5 %, as the trainer picks them).

    python docs/model/experiments/score_rules.py      # from the repository root, ~6 min here

Needs ``runs/E_pair_flip/oof_scores.npz`` (the shipped run, for its folds) and onnxruntime (the
bench's dependency) for the peer. Nothing here is shipped; the model card quotes its output.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT))

import keras  # noqa: E402

from bench.run import PeerModel  # noqa: E402
from edge.preprocess import PreprocessSpec, face_input  # noqa: E402
from train_host.frames import read_manifest, row_box  # noqa: E402
from train_host.metrics import choose_threshold, roc_auc  # noqa: E402
from train_host.minifasnet import pretrained_model  # noqa: E402

FRAMES = ROOT.parent / "shared" / "data" / "frames"
PEER = ROOT.parent / "shared" / "peers" / "facenox" / "best_model.onnx"
WEIGHTS = ROOT.parent / "shared" / "peers" / "silentface"


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def log_odds(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, 1e-7, 1 - 1e-7)
    return np.log(p / (1 - p))


def main() -> None:
    rows = read_manifest(FRAMES)
    run = np.load(ROOT / "runs" / "E_pair_flip" / "oof_scores.npz")
    folds, y, src = run["folds"], run["y"] == 1, run["sources"]
    images = [cv2.imread(str(FRAMES / r["file"])) for r in rows]
    sidecar = json.loads((ROOT / "models" / "liveness.json").read_text())
    spec = PreprocessSpec.from_json(sidecar["preprocess"])
    pair = pretrained_model("minifasnet_pair", WEIGHTS)
    outputs = [pair.get_layer(f"b{i}_prob").output for i in (0, 1)]
    branches = keras.Model(pair.input, outputs)

    def branch_probs(spec: PreprocessSpec, move=lambda b: b) -> dict[str, np.ndarray]:
        frames = zip(images, rows, strict=True)
        x = np.stack([face_input(im, move(row_box(r)), spec) for im, r in frames])
        out = {}
        for name, xs in (("", x), ("flip_", x[:, :, ::-1, :])):
            v2, v1se = branches.predict(xs.astype(np.float32), batch_size=256, verbose=0)
            out[name + "v2"], out[name + "v1se"] = softmax(v2), softmax(v1se)
        return out

    def report(name: str, s: np.ndarray) -> None:
        thr = np.zeros_like(s)
        for f in np.unique(folds):
            thr[folds == f] = choose_threshold(s[folds != f], y[folds != f])
        acc = s >= thr
        ra = src == "replayattack"
        print(
            f"{name:40s} APCER {100 * acc[~y].mean():5.1f} BPCER {100 * (~acc[y]).mean():5.1f}"
            f" AUC {roc_auc(s, y):.3f}  Replay-Attack AUC {roc_auc(s[ra], y[ra]):.3f}",
            flush=True,
        )

    def scaled(k: float):
        def move(b):
            x1, y1, x2, y2 = b
            cx, cy, w, h = (x1 + x2) / 2, (y1 + y2) / 2, (x2 - x1) * k, (y2 - y1) * k
            return (cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2)

        return move

    p = branch_probs(spec)
    real = {k: v[:, 1] for k, v in p.items()}
    shipped = sum(real.values()) / 4
    v2, v1se = (real["v2"] + real["flip_v2"]) / 2, (real["v1se"] + real["flip_v1se"]) / 2
    report("shipped rule: mean of 4 softmaxes (float)", shipped)
    report("V2 alone", v2)
    report("V1SE alone", v1se)
    report("min(V2, V1SE)", np.minimum(v2, v1se))
    report("geometric mean", np.sqrt(v2 * v1se))
    report("mean log-odds of P(real)", sum(log_odds(r) for r in real.values()) / 4)
    report(
        "1 - max(P(print), P(replay))",
        1 - np.maximum(sum(v[:, 0] for v in p.values()) / 4, sum(v[:, 2] for v in p.values()) / 4),
    )
    area = branch_probs(dataclasses.replace(spec, resize="area"))
    report("INTER_AREA resize", sum(v[:, 1] for v in area.values()) / 4)
    tta = [shipped] + [
        sum(v[:, 1] for v in branch_probs(spec, scaled(k)).values()) / 4 for k in (0.9, 1.1)
    ]
    report("box x0.9 / x1 / x1.1 averaged", sum(tta) / 3)
    peer = PeerModel(PEER, threads=2)
    frames = zip(images, rows, strict=True)
    peer_logit = np.array([peer.logit_diff(im, row_box(r)) for im, r in frames])
    report("facenox peer alone (fp32)", peer_logit)
    for w in (0.25, 0.5, 1.0):
        report(f"shipped log-odds + {w} x peer logit", log_odds(shipped) + w * peer_logit)


if __name__ == "__main__":
    main()

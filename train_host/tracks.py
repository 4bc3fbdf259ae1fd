"""Track-level error rates: the frame scores of one capture combined as the door combines them.

The door never acts on one frame: ``edge.decide`` combines the frames of a face track, either as
N-of-M votes or as the mean log-odds over the window (``decision.combine``). Which is better is
measured here on the leave-sources-out scores of a training run: the frames of one capture
(one video, from the manifest's ``origin``, in frame order) are slid through windows of the
door's size, each window judged by both rules at the frame's own fold threshold. A capture
"gets in" when any of its windows would grant; an attack that gets in is what a door must never
allow, a live capture that never gets in is a person left outside. No TensorFlow here.
"""

from __future__ import annotations

import csv
import math
import re
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from edge.decide import logit

_FRAME_INDEX = re.compile(r"#(\d+)$")
_LAST_NUMBER = re.compile(r"(\d+)")


def captures(manifest: Path) -> list[tuple[str, int]]:
    """(capture id, frame index) per manifest row. A video's frames carry ``#index`` in their
    origin; frames stored as files (Replay-Attack, NUAA) belong to the folder they lie in, in the
    order of the last number of their file name."""
    with Path(manifest).open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    out: list[tuple[str, int]] = []
    for i, row in enumerate(rows):
        origin = row.get("origin", "") or f"row{i}"
        match = _FRAME_INDEX.search(origin)
        if match:
            out.append((origin[: match.start()], int(match.group(1))))
            continue
        folder, _, name = origin.rpartition("/")
        numbers = _LAST_NUMBER.findall(name)
        out.append((folder or origin, int(numbers[-1]) if numbers else i))
    return out


def window_verdicts(
    scores: np.ndarray, thresholds: np.ndarray, window: int, min_live: int
) -> dict[str, np.ndarray]:
    """Per window of ``window`` consecutive frames: would each rule grant? (Shorter captures
    make one window of all their frames; N scales down as ``edge.decide`` does, never below 2.)"""
    n = len(scores)
    size = min(window, n)
    need = max(2, math.ceil(min_live * size / window))
    votes, means = [], []
    for start in range(0, n - size + 1):
        s, t = scores[start : start + size], thresholds[start : start + size]
        votes.append(int(np.sum(s >= t)) >= need)
        mean = np.mean([logit(float(p)) for p in s])
        means.append(mean >= np.mean([logit(float(x)) for x in t]))
    return {"votes": np.array(votes, bool), "mean_logit": np.array(means, bool)}


def track_report(
    scores: np.ndarray,
    thresholds: np.ndarray,
    is_real: np.ndarray,
    capture_ids: list[tuple[str, int]],
    sources: np.ndarray,
    window: int = 5,
    min_live: int = 4,
) -> dict[str, Any]:
    """Window- and capture-level APCER/BPCER of both rules, pooled and per source."""
    groups: dict[str, list[int]] = defaultdict(list)
    for i, (cid, _) in enumerate(capture_ids):
        groups[f"{sources[i]}|{cid}|{int(is_real[i])}"].append(i)
    per_rule: dict[str, dict[str, list[bool]]] = {
        r: {"win_real": [], "win_fake": [], "cap_real": [], "cap_fake": []}
        for r in ("votes", "mean_logit")
    }
    per_source: dict[str, dict[str, dict[str, list[bool]]]] = defaultdict(
        lambda: {r: {"cap_real": [], "cap_fake": []} for r in ("votes", "mean_logit")}
    )
    for key, idx in groups.items():
        idx = sorted(idx, key=lambda i: capture_ids[i][1])
        real = bool(is_real[idx[0]])
        if len(idx) < 2:
            continue  # one frame is never enough to decide; such a capture is not a track
        verdicts = window_verdicts(scores[idx], thresholds[idx], window, min_live)
        source = key.split("|", 1)[0]
        for rule, granted in verdicts.items():
            kind = "real" if real else "fake"
            per_rule[rule][f"win_{kind}"].extend(granted.tolist())
            per_rule[rule][f"cap_{kind}"].append(bool(granted.any()))
            per_source[source][rule][f"cap_{kind}"].append(bool(granted.any()))

    def rates(d: dict[str, list[bool]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for level in ("win", "cap"):
            real, fake = d.get(f"{level}_real", []), d.get(f"{level}_fake", [])
            name = "window" if level == "win" else "capture"
            out[f"{name}_apcer"] = float(np.mean(fake)) if fake else None
            out[f"{name}_bpcer"] = float(1.0 - np.mean(real)) if real else None
            out[f"n_{name}s_real"], out[f"n_{name}s_fake"] = len(real), len(fake)
        return out

    return {
        "window": window,
        "min_live": min_live,
        "pooled": {rule: rates(d) for rule, d in per_rule.items()},
        "per_source": {
            src: {rule: rates(d) for rule, d in rules.items()}
            for src, rules in sorted(per_source.items())
        },
    }


def run_scores(run_dir: Path, frames_dir: Path) -> dict[str, Any]:
    """A run's ``oof_scores.npz`` (written by ``train``) with the capture order of its frames:
    scores, thresholds, is_real, sources and ids (capture id, frame index) per frame."""
    with np.load(Path(run_dir) / "oof_scores.npz") as data:  # arrays only
        run = {
            "scores": data["scores"],
            "thresholds": data["thresholds"],
            "is_real": data["y"] == 1,
            "sources": data["sources"],
        }
    run["ids"] = captures(Path(frames_dir) / "manifest.csv")
    if len(run["ids"]) != len(run["scores"]):
        raise ValueError(
            f"{run_dir} has {len(run['scores'])} scores but {frames_dir} lists"
            f" {len(run['ids'])} frames: not the data of that run"
        )
    return run


def report_for_run(
    run_dir: Path, frames_dir: Path, window: int = 5, min_live: int = 4
) -> dict[str, Any]:
    """``track_report`` of a run's out-of-fold scores on its frames."""
    run = run_scores(run_dir, frames_dir)
    return track_report(
        run["scores"], run["thresholds"], run["is_real"], run["ids"], run["sources"], window,
        min_live,
    )  # fmt: skip

"""What the door's camera calibration (``edge/calibration.py``) does on sources it never saw.

Replays the rule on a training run's leave-sources-out scores: per source (one camera set-up),
some live frames play the owner standing in front of ``python -m edge calibrate``, and the rest
of the source is the door's later traffic. Sources with several people: half the people (seeded)
calibrate, and only the other people's frames, live and attack, are scored, so no one is judged
against their own calibration. Sources with one person: the earlier half of their live frames (in
capture order) calibrates, the later half and every attack frame are scored. Each test frame is
judged at ``raised_threshold(its fold's threshold, the calibration quantile, max)``, exactly the
daemon's rule, and at the fold threshold alone, frame by frame and as the door's tracks. No
TensorFlow here.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np

from edge.calibration import DEFAULT_MAX_THRESHOLD, DEFAULT_QUANTILE, raised_threshold
from train_host.tracks import run_scores, track_report


def calibration_split(
    sources: np.ndarray,
    subjects: np.ndarray,
    is_real: np.ndarray,
    order: list[tuple[str, int]],
    seed: int = 1,
) -> tuple[np.ndarray, np.ndarray]:
    """(calibrate, test) masks over the frames, as the module docstring says."""
    rng = np.random.default_rng(seed)
    calibrate = np.zeros(len(sources), bool)
    test = np.zeros(len(sources), bool)
    for source in sorted(set(sources.tolist())):
        in_source = sources == source
        live = np.flatnonzero(in_source & is_real)
        if live.size == 0:
            continue  # no live frame to calibrate with: this source says nothing here
        people = sorted(set(subjects[live].tolist()))
        if len(people) > 1:
            chosen = set(rng.permutation(people)[: len(people) // 2].tolist())
            theirs = np.isin(subjects, list(chosen))
            calibrate |= in_source & is_real & theirs
            test |= in_source & ~theirs
        else:
            live = sorted(live.tolist(), key=lambda i: order[i])
            calibrate[live[: len(live) // 2]] = True
            test |= in_source & ~calibrate
    return calibrate, test


def calibrated_thresholds(
    scores: np.ndarray,
    thresholds: np.ndarray,
    sources: np.ndarray,
    calibrate: np.ndarray,
    quantile: float = DEFAULT_QUANTILE,
    max_threshold: float = DEFAULT_MAX_THRESHOLD,
) -> np.ndarray:
    """Each frame's threshold after its source's calibration (unchanged without one)."""
    out = thresholds.astype(np.float64).copy()
    for source in set(sources[calibrate].tolist()):
        in_source = sources == source
        live_quantile = float(np.quantile(scores[in_source & calibrate], quantile))
        out[in_source] = [
            raised_threshold(float(t), live_quantile, max_threshold) for t in thresholds[in_source]
        ]
    return out


def _frame_rates(scores: np.ndarray, thresholds: np.ndarray, is_real: np.ndarray) -> dict:
    live = scores >= thresholds
    fake, real = ~is_real, is_real
    return {
        "apcer": float(np.mean(live[fake])) if fake.any() else None,
        "bpcer": float(np.mean(~live[real])) if real.any() else None,
        "n_real": int(real.sum()),
        "n_fake": int(fake.sum()),
    }


def report_for_run(
    run_dir: Path,
    frames_dir: Path,
    quantile: float = DEFAULT_QUANTILE,
    max_threshold: float = DEFAULT_MAX_THRESHOLD,
    seed: int = 1,
) -> dict[str, Any]:
    """Frame- and track-level APCER/BPCER on the test frames, without and with calibration."""
    run = run_scores(run_dir, frames_dir)
    scores, thresholds, is_real, sources, order = (
        run["scores"], run["thresholds"], run["is_real"], run["sources"], run["ids"]
    )  # fmt: skip
    with (Path(frames_dir) / "manifest.csv").open(newline="") as handle:
        subjects = np.array([row.get("subject", "") or "" for row in csv.DictReader(handle)])
    calibrate, test = calibration_split(sources, subjects, is_real, order, seed)
    raised = calibrated_thresholds(scores, thresholds, sources, calibrate, quantile, max_threshold)
    report: dict[str, Any] = {
        "rule": {"quantile": quantile, "max_threshold": max_threshold, "seed": seed},
        "calibration_frames": int(calibrate.sum()),
    }
    ids = [order[i] for i in np.flatnonzero(test)]
    for name, th in (("model_threshold", thresholds), ("calibrated", raised)):
        per_source = {}
        for source in sorted(set(sources[test].tolist())):
            cell = test & (sources == source)
            per_source[source] = {
                **_frame_rates(scores[cell], th[cell], is_real[cell]),
                "threshold_median": float(np.median(th[cell])),
            }
        report[name] = {
            "frames": _frame_rates(scores[test], th[test], is_real[test]),
            "tracks": track_report(scores[test], th[test], is_real[test], ids, sources[test])[
                "pooled"
            ]["votes"],
            "per_source": per_source,
        }
    return report

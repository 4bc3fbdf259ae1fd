"""Presentation-attack metrics (ISO/IEC 30107-3) in pure numpy.

Scores are P(real); a face is accepted as real when ``score >= threshold``.
APCER: share of attacks (fakes) accepted, pooled over every attack instrument species;
BPCER: share of bona fide (real) faces rejected; ACER: the mean of these two.
ISO/IEC 30107-3 computes APCER per presentation attack instrument species (APCER_PAIS) and
reports the worst species: a pooled APCER hides a species that passes often behind a large one
that never does, so ``summary`` also gives ``apcer_per_species`` and ``apcer_max_species`` when
it is told each sample's species.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from edge.liveness import is_live


def _split(scores: np.ndarray, is_real: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    scores = np.asarray(scores, dtype=np.float64).ravel()
    is_real = np.asarray(is_real, dtype=bool).ravel()
    if scores.shape != is_real.shape:
        raise ValueError(f"{scores.size} scores but {is_real.size} labels")
    if not np.all(np.isfinite(scores)):
        raise ValueError("scores contain NaN or infinity")
    return scores[is_real], scores[~is_real]


def apcer_bpcer(scores: np.ndarray, is_real: np.ndarray, threshold: float) -> tuple[float, float]:
    """(APCER, BPCER) at ``threshold``; NaN for a class with no samples."""
    real, fake = _split(scores, is_real)
    apcer = float(np.mean(is_live(fake, threshold))) if fake.size else math.nan
    bpcer = float(np.mean(~is_live(real, threshold))) if real.size else math.nan
    return apcer, bpcer


def species_apcer(
    accepted: np.ndarray, is_real: np.ndarray, species: np.ndarray
) -> dict[str, float]:
    """APCER_PAIS: for each attack instrument species, the share of its attacks accepted.

    ``accepted`` holds the decisions (so each sample may have met its own threshold);
    bona fide samples are ignored whatever their species; an empty name is "unspecified".
    """
    accepted = np.asarray(accepted, dtype=bool).ravel()
    is_real = np.asarray(is_real, dtype=bool).ravel()
    names = np.array([str(v) or "unspecified" for v in np.asarray(species).ravel()])
    if not accepted.shape == is_real.shape == names.shape:
        raise ValueError(f"{accepted.size} decisions, {is_real.size} labels, {names.size} species")
    attack = ~is_real
    return {
        name: float(np.mean(accepted[attack & (names == name)]))
        for name in sorted(set(names[attack].tolist()))
    }


def worst_species(per_species: dict[str, float]) -> tuple[str | None, float]:
    """(name, APCER) of the species accepted most often: ISO/IEC 30107-3's reported APCER."""
    if not per_species:
        return None, math.nan
    name = max(sorted(per_species), key=lambda k: per_species[k])
    return name, per_species[name]


def roc_auc(scores: np.ndarray, is_real: np.ndarray) -> float:
    """Area under the ROC curve = P(score of a random real > score of a random fake), ties 1/2."""
    real, fake = _split(scores, is_real)
    if real.size == 0 or fake.size == 0:
        return math.nan
    both = np.concatenate([real, fake])
    # Mann-Whitney U from average ranks, so ties count one half.
    order = np.argsort(both, kind="mergesort")
    ranks = np.empty(both.size, dtype=np.float64)
    sorted_vals = both[order]
    i = 0
    while i < both.size:
        j = i
        while j + 1 < both.size and sorted_vals[j + 1] == sorted_vals[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2.0 + 1.0
        i = j + 1
    u = ranks[: real.size].sum() - real.size * (real.size + 1) / 2.0
    return float(u / (real.size * fake.size))


def _candidate_thresholds(scores: np.ndarray) -> np.ndarray:
    # Every distinct score, plus one above the maximum (accept nothing).
    uniq = np.unique(scores)
    return np.concatenate([uniq, [np.inf]])


def error_curve(scores: np.ndarray, is_real: np.ndarray) -> dict[str, np.ndarray]:
    """APCER and BPCER at every distinct threshold (for DET/ROC plots and the EER)."""
    real, fake = _split(scores, is_real)
    thresholds = _candidate_thresholds(np.concatenate([real, fake]))
    real_sorted, fake_sorted = np.sort(real), np.sort(fake)
    # BPCER(t) = #real < t / n_real ; APCER(t) = #fake >= t / n_fake
    bpcer = np.searchsorted(real_sorted, thresholds, side="left") / max(real.size, 1)
    apcer = 1.0 - np.searchsorted(fake_sorted, thresholds, side="left") / max(fake.size, 1)
    return {"threshold": thresholds, "apcer": apcer, "bpcer": bpcer}


def equal_error_rate(scores: np.ndarray, is_real: np.ndarray) -> tuple[float, float]:
    """(EER, threshold): the point where APCER and BPCER are closest; EER is their mean there."""
    real, fake = _split(scores, is_real)
    if real.size == 0 or fake.size == 0:
        return math.nan, math.nan
    curve = error_curve(scores, is_real)
    gap = np.abs(curve["apcer"] - curve["bpcer"])
    best = int(np.argmin(gap))
    eer = float((curve["apcer"][best] + curve["bpcer"][best]) / 2.0)
    return eer, float(curve["threshold"][best])


def choose_threshold(scores: np.ndarray, is_real: np.ndarray, max_bpcer: float = 0.05) -> float:
    """The threshold with the lowest APCER among those with BPCER <= ``max_bpcer``.

    APCER only falls as the threshold rises, so this is the highest threshold that still rejects
    at most ``max_bpcer`` of the real faces: the k-th lowest real score, k = floor(max_bpcer * n).
    """
    real, _ = _split(scores, is_real)
    if real.size == 0:
        raise ValueError("cannot choose a threshold without real samples")
    if not 0.0 <= max_bpcer < 1.0:
        raise ValueError(f"max_bpcer must be in [0, 1), got {max_bpcer}")
    real_sorted = np.sort(real)
    k = int(math.floor(max_bpcer * real.size + 1e-9))
    return float(real_sorted[k])


def summary(
    scores: np.ndarray,
    is_real: np.ndarray,
    threshold: float,
    species: np.ndarray | None = None,
) -> dict[str, Any]:
    """All the numbers of one evaluation, JSON-ready (NaN where a class is absent).

    ``apcer`` and ``acer`` pool every attack; with ``species`` (each sample's attack instrument
    species) the APCER of each species and of the worst one are added.
    """
    real, fake = _split(scores, is_real)
    apcer, bpcer = apcer_bpcer(scores, is_real, threshold)
    eer, eer_threshold = equal_error_rate(scores, is_real)
    acer = (apcer + bpcer) / 2.0 if not (math.isnan(apcer) or math.isnan(bpcer)) else math.nan
    out: dict[str, Any] = {
        "apcer": apcer,
        "bpcer": bpcer,
        "acer": acer,
        "auc": roc_auc(scores, is_real),
        "eer": eer,
        "eer_threshold": eer_threshold,
        "threshold": float(threshold),
        "n_real": int(real.size),
        "n_fake": int(fake.size),
    }
    if species is not None:
        per = species_apcer(
            is_live(np.asarray(scores, np.float64).ravel(), threshold), is_real, species
        )
        name, worst = worst_species(per)
        out |= {"apcer_per_species": per, "apcer_max_species": worst, "worst_species": name}
    return out


def json_safe(value: object) -> object:
    """NaN/inf -> None recursively, so json.dumps writes strict JSON."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value

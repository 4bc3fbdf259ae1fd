"""ISO/IEC 30107-3 metrics against hand-computed cases (scores are P(real), accept if >= t)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from train_host import metrics

# Two fakes (0.1, 0.4) and two reals (0.35, 0.8): the textbook ROC example, AUC 3/4.
SCORES = np.array([0.1, 0.4, 0.35, 0.8])
IS_REAL = np.array([False, False, True, True])


def test_apcer_bpcer_at_half() -> None:
    # t=0.5: no fake accepted; the real at 0.35 rejected.
    assert metrics.apcer_bpcer(SCORES, IS_REAL, 0.5) == (0.0, 0.5)


def test_threshold_is_inclusive() -> None:
    # t=0.35: the fake at 0.4 is accepted (1 of 2); the real at exactly 0.35 is accepted.
    assert metrics.apcer_bpcer(SCORES, IS_REAL, 0.35) == (0.5, 0.0)


def test_auc_textbook_case() -> None:
    # Pairs (real, fake): (0.35,0.1) ok, (0.35,0.4) wrong, (0.8,0.1) ok, (0.8,0.4) ok -> 3/4.
    assert metrics.roc_auc(SCORES, IS_REAL) == pytest.approx(0.75)


def test_auc_counts_ties_as_half() -> None:
    scores = np.array([0.5, 0.5, 0.9])
    is_real = np.array([True, False, True])
    # Pairs: (0.5 vs 0.5) tie = 1/2, (0.9 vs 0.5) = 1 -> 1.5 / 2.
    assert metrics.roc_auc(scores, is_real) == pytest.approx(0.75)


def test_auc_perfect_and_inverted() -> None:
    assert metrics.roc_auc(np.array([0.9, 0.1]), np.array([True, False])) == 1.0
    assert metrics.roc_auc(np.array([0.1, 0.9]), np.array([True, False])) == 0.0


def test_eer_where_both_errors_meet() -> None:
    # reals 0.6 0.7 0.8 0.9, fakes 0.1 0.2 0.3 0.65: at t=0.65 one real (0.6) is rejected and
    # one fake (0.65) accepted -> APCER = BPCER = 1/4.
    scores = np.array([0.6, 0.7, 0.8, 0.9, 0.1, 0.2, 0.3, 0.65])
    is_real = np.array([True] * 4 + [False] * 4)
    eer, threshold = metrics.equal_error_rate(scores, is_real)
    assert eer == pytest.approx(0.25)
    assert metrics.apcer_bpcer(scores, is_real, threshold) == (0.25, 0.25)


def test_eer_zero_when_separable() -> None:
    eer, threshold = metrics.equal_error_rate(np.array([0.9, 0.8, 0.2]), np.array([1, 1, 0]))
    assert eer == 0.0
    assert 0.2 < threshold <= 0.8


def test_choose_threshold_lowest_apcer_with_bpcer_limit() -> None:
    # 20 reals at 0.05, 0.10, ..., 1.00: BPCER <= 5 % allows rejecting one, so t = 0.10.
    reals = np.arange(1, 21) * 0.05
    fakes = np.array([0.02, 0.09, 0.5])
    scores = np.concatenate([reals, fakes])
    is_real = np.array([True] * 20 + [False] * 3)
    t = metrics.choose_threshold(scores, is_real, max_bpcer=0.05)
    assert t == pytest.approx(0.10)
    apcer, bpcer = metrics.apcer_bpcer(scores, is_real, t)
    assert bpcer == pytest.approx(0.05)
    assert apcer == pytest.approx(1 / 3)  # only the fake at 0.5 gets in


def test_choose_threshold_zero_bpcer_keeps_every_real() -> None:
    scores = np.array([0.3, 0.6, 0.9, 0.1])
    is_real = np.array([True, True, True, False])
    assert metrics.choose_threshold(scores, is_real, max_bpcer=0.0) == pytest.approx(0.3)


def test_summary_fields_and_counts() -> None:
    result = metrics.summary(SCORES, IS_REAL, 0.5)
    assert result["apcer"] == 0.0 and result["bpcer"] == 0.5
    assert result["acer"] == pytest.approx(0.25)
    assert result["auc"] == pytest.approx(0.75)
    assert (result["n_real"], result["n_fake"]) == (2, 2)
    assert result["threshold"] == 0.5


# Ten prints that never pass and two tablet replays that both do, with two reals that pass:
# pooled APCER 2/12, but ISO/IEC 30107-3 reports the worst species, the tablets' 100 %.
SPECIES_SCORES = np.array([0.1] * 10 + [0.9, 0.8] + [0.7, 0.95])
SPECIES_REAL = np.array([False] * 12 + [True, True])
SPECIES = np.array(["print"] * 10 + ["screen_tablet"] * 2 + ["none"] * 2)


def test_summary_reports_the_worst_attack_species_beside_the_pooled_apcer() -> None:
    result = metrics.summary(SPECIES_SCORES, SPECIES_REAL, 0.5, SPECIES)
    assert result["apcer"] == pytest.approx(2 / 12)
    assert result["apcer_per_species"] == {"print": 0.0, "screen_tablet": 1.0}
    assert (result["worst_species"], result["apcer_max_species"]) == ("screen_tablet", 1.0)
    # Without species there is nothing to name, and nothing is made up.
    assert "apcer_max_species" not in metrics.summary(SPECIES_SCORES, SPECIES_REAL, 0.5)


def test_species_apcer_takes_each_samples_own_decision() -> None:
    # Decisions at per-sample (fold) thresholds: one print of two accepted; reals ignored.
    accepted = np.array([True, False, False, True])
    is_real = np.array([False, False, False, True])
    per = metrics.species_apcer(accepted, is_real, np.array(["print", "print", "", "none"]))
    assert per == {"print": 0.5, "unspecified": 0.0}
    assert metrics.worst_species(per) == ("print", 0.5)
    assert metrics.worst_species({})[0] is None


def test_summary_without_fakes_gives_nan_apcer() -> None:
    result = metrics.summary(np.array([0.9, 0.2]), np.array([True, True]), 0.5)
    assert math.isnan(result["apcer"]) and result["bpcer"] == 0.5
    assert metrics.json_safe(result)["apcer"] is None


def test_bad_input_raises() -> None:
    with pytest.raises(ValueError):
        metrics.apcer_bpcer(np.array([0.1, 0.2]), np.array([True]), 0.5)
    with pytest.raises(ValueError):
        metrics.roc_auc(np.array([np.nan, 0.2]), np.array([True, False]))
    with pytest.raises(ValueError):
        metrics.choose_threshold(np.array([0.2]), np.array([False]))


def test_metrics_module_does_not_import_tensorflow() -> None:
    import subprocess
    import sys

    code = "import sys, train_host.metrics, train_host.evaluate; print('tensorflow' in sys.modules)"
    root = Path(__file__).resolve().parent.parent
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=root
    )
    assert out.stdout.strip() == "False"

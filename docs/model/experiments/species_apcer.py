"""APCER per attack instrument species (ISO/IEC 30107-3) of a finished run, from its stored
out-of-fold scores, written into its ``cv.json`` (no retraining; every other number is checked
to be unchanged before anything is written):

    python docs/model/experiments/species_apcer.py runs/E_pair_flip/oof_scores.npz \\
        ../shared/data/frames docs/model/cv.json

Runs of a trainer that predates ``apcer_per_species`` lack it; newer runs write it themselves.
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT))

from train_host import metrics  # noqa: E402

SPECIES_KEYS = ("apcer_per_species", "apcer_max_species", "worst_species")


def add_species(cv: dict[str, Any], run: dict[str, np.ndarray], attack: np.ndarray) -> None:
    """Add the species figures to every fold report and to both pooled summaries of ``cv``."""
    s, t, y, folds = run["scores"], run["thresholds"], run["y"] == 1, run["folds"]
    for rep in cv["folds"]:
        m = folds == rep["fold"]
        th = rep["threshold_from_other_folds"]
        if not np.all(t[m] == th):
            raise ValueError(f"fold {rep['fold']}: thresholds differ from {th}")
        new = metrics.summary(s[m], y[m], th, attack[m])
        for k in ("apcer", "bpcer", "auc", "eer"):
            if abs(new[k] - rep["test"][k]) > 1e-12:
                raise ValueError(f"fold {rep['fold']}: {k} differs: not this run's scores")
        rep["test"] |= {k: new[k] for k in SPECIES_KEYS}
    per = metrics.species_apcer(s >= t, y, attack)
    name, worst = metrics.worst_species(per)
    cv["pooled_at_fold_thresholds"] |= {
        "apcer_per_species": per,
        "apcer_max_species": worst,
        "worst_species": name,
    }
    new = metrics.summary(s, y, cv["pooled_oof_threshold"], attack)
    cv["pooled_at_oof_threshold"] |= {k: new[k] for k in SPECIES_KEYS}


def main(argv: list[str]) -> int:
    npz, frames, cv_path = (Path(a) for a in argv)
    with np.load(npz) as data:  # arrays only
        run = {k: data[k] for k in ("scores", "thresholds", "y", "folds", "sources")}
    with (frames / "manifest.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    if [r["source"] for r in rows] != run["sources"].tolist():
        raise ValueError(f"{frames} is not the data of {npz} (sources differ row by row)")
    cv = json.loads(cv_path.read_text())
    add_species(cv, run, np.array([r["attack"] for r in rows]))
    cv_path.write_text(json.dumps(metrics.json_safe(cv), indent=2) + "\n")
    for rep in [*cv["folds"], {"fold": "pooled", "test": cv["pooled_at_fold_thresholds"]}]:
        per = {k: round(100 * v, 1) for k, v in rep["test"]["apcer_per_species"].items()}
        print(rep["fold"], rep["test"]["worst_species"], per)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

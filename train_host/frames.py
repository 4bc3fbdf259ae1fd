"""Whole frames with face boxes (the format of ``../shared/data/frames``) -> model inputs.

A frames folder has ``frames.json`` (``{"kind": "frames", ...}``) at its root and a
``manifest.csv`` with one row per frame: source, subject, label, attack, capture, file (relative to
the folder), frame size and the detector's face box (``box_x, box_y, box_w, box_h`` in stored
pixels, unclipped: it may reach past the frame, as the daemon's ``Detection.raw`` does). Every
input is cut with ``edge.preprocess.face_input``, the daemon's own function, so a model is trained
and evaluated on exactly the crops it will see at the door. No TensorFlow here.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from edge.errors import InputError
from edge.preprocess import PreprocessSpec, face_input
from train_host.dataset import LABELS, FaceSet, read_bgr

logger = logging.getLogger(__name__)

FRAMES_MARKER = "frames.json"
MANIFEST = "manifest.csv"
REQUIRED_COLUMNS = ("source", "label", "file", "box_x", "box_y", "box_w", "box_h")
# Optional columns kept per input for the per-attack / per-device report.
META_COLUMNS = ("subject", "attack", "capture")


def is_frames_dir(root: Path) -> bool:
    """Is ``root`` a whole-frames folder (``frames.json`` with kind "frames" at its root)?"""
    marker = Path(root) / FRAMES_MARKER
    if not marker.is_file():
        return False
    try:
        data = json.loads(marker.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"{marker} is not valid JSON: {exc}") from exc
    return isinstance(data, dict) and data.get("kind") == "frames"


def read_manifest(root: Path) -> list[dict[str, str]]:
    path = Path(root) / MANIFEST
    if not path.is_file():
        raise InputError(f"{root} has {FRAMES_MARKER} but no {MANIFEST} with the face boxes")
    with path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    if not rows:
        raise InputError(f"{path} lists no frames")
    missing = [c for c in REQUIRED_COLUMNS if c not in rows[0]]
    if missing:
        raise InputError(f"{path} lacks the columns {missing} (needs {list(REQUIRED_COLUMNS)})")
    for i, row in enumerate(rows, start=2):
        if row["label"] not in LABELS:
            raise InputError(f"{path} line {i}: label {row['label']!r} is not one of {LABELS}")
    return rows


def row_box(row: dict[str, str]) -> tuple[float, float, float, float]:
    """The manifest box as x1, y1, x2, y2 (floats, unclipped)."""
    x, y, w, h = (float(row[k]) for k in ("box_x", "box_y", "box_w", "box_h"))
    return (x, y, x + w, y + h)


def load_frames(
    root: Path, spec: PreprocessSpec, cache_dir: Path | None = None, workers: int = 2
) -> FaceSet:
    """Every manifest frame's model input (``spec``'s crops), with labels, sources and meta."""
    root = Path(root)
    if not is_frames_dir(root):
        raise InputError(f"{root} is not a frames folder (no {FRAMES_MARKER} with kind 'frames')")
    rows = read_manifest(root)
    cache: Path | None = None
    if cache_dir is not None:
        key = hashlib.sha256(repr(sorted(spec.to_json().items())).encode())
        key.update((root / MANIFEST).read_bytes())
        key.update(str(root.resolve()).encode())
        cache = Path(cache_dir) / f"frames-{key.hexdigest()[:16]}.npz"
        if cache.is_file():
            with np.load(cache) as data:  # arrays only
                logger.info("loaded %d inputs from cache %s", data["y"].size, cache)
                return _faceset(data["x"], rows, root)

    def one(row: dict[str, str]) -> np.ndarray:
        frame = read_bgr(root / row["file"])
        try:
            return face_input(frame, row_box(row), spec)
        except ValueError as exc:
            raise InputError(f"{root / row['file']}: {exc}") from exc

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        x = np.stack(list(pool.map(one, rows))).astype(np.float32)
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(".tmp.npz")
        np.savez(tmp, x=x, y=np.array([LABELS.index(r["label"]) for r in rows]))
        tmp.replace(cache)
    return _faceset(x, rows, root)


def _faceset(x: np.ndarray, rows: list[dict[str, str]], root: Path) -> FaceSet:
    meta = {c: np.array([r.get(c, "") or "" for r in rows]) for c in META_COLUMNS}
    return FaceSet(
        x=x,
        y=np.array([LABELS.index(r["label"]) for r in rows], dtype=np.int64),
        sources=np.array([r["source"] for r in rows]),
        paths=[str(root / r["file"]) for r in rows],
        meta=meta,
    )

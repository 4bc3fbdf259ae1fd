"""Labelled face crops on disk -> arrays, source groups, leave-sources-out folds, weights.

No TensorFlow here: ``evaluate`` uses this module on machines without it. Every image goes through
``edge.preprocess.preprocess_crop``, the very function the daemon uses.
"""

from __future__ import annotations

import hashlib
import logging
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from edge.errors import InputError
from edge.media import IMAGE_SUFFIXES
from edge.preprocess import PreprocessSpec, preprocess_crop

logger = logging.getLogger(__name__)

LABELS: tuple[str, str] = ("fake", "real")  # model output order

# Sources that share images (see ../shared/data/faces/README.md) must stay in one group, or the
# same picture would sit on both sides of a validation split.
SHARED_IMAGE_GROUPS: dict[str, str] = {
    "saikan45": "saikan45+",
    "apfol": "saikan45+",
    "shivamyadav09": "saikan45+",
    "jtboing": "saikan45+",
}


@dataclass(frozen=True)
class Item:
    path: Path
    label: str  # "real" or "fake"
    source: str


@dataclass
class FaceSet:
    """Preprocessed crops with their labels (1 = real) and sources."""

    x: np.ndarray  # N x H x W x 3 float32
    y: np.ndarray  # N int64, index into LABELS
    sources: np.ndarray  # N str
    paths: list[str]
    # Optional per-sample columns (e.g. attack, capture, subject of a frames manifest).
    meta: dict[str, np.ndarray] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.y.size)

    def subset(self, mask: np.ndarray) -> FaceSet:
        idx = np.flatnonzero(mask)
        return FaceSet(
            self.x[idx],
            self.y[idx],
            self.sources[idx],
            [self.paths[i] for i in idx],
            {k: v[idx] for k, v in self.meta.items()},
        )

    @property
    def groups(self) -> np.ndarray:
        return np.array([group_of(s) for s in self.sources])


def group_of(source: str) -> str:
    return SHARED_IMAGE_GROUPS.get(source, source)


def find_images(root: Path) -> list[Item]:
    """Every image under a ``real`` or ``fake`` folder at any depth below ``root``.

    The source of an image is the first folder below ``root`` (``root`` itself when the label
    folder sits directly in it), as in ``../shared/data/faces/<source>/<label>/``.
    """
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"{root} is not a folder: give a folder with real/ and fake/ sub-folders")
    items: list[Item] = []
    for path in sorted(root.rglob("*")):
        if path.suffix.lower() not in IMAGE_SUFFIXES or not path.is_file():
            continue
        rel = path.relative_to(root).parts
        labels = [p for p in rel[:-1] if p in LABELS]
        if not labels:
            continue
        label = labels[-1]  # the innermost real/fake folder decides
        source = rel[0] if rel[0] not in LABELS else root.name
        items.append(Item(path, label, source))
    if not items:
        raise InputError(
            f"no images under {root} in a folder named 'real' or 'fake'"
            f" (looked for {', '.join(sorted(IMAGE_SUFFIXES))})"
        )
    return items


def read_bgr(path: Path) -> np.ndarray:
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None or image.size == 0:
        raise InputError(f"cannot read image {path}: the file is missing, empty or not an image")
    return image


def load_items(items: Sequence[Item], spec: PreprocessSpec, workers: int = 2) -> FaceSet:
    """Read and preprocess ``items`` (the crops are cut already: only ``preprocess_crop``)."""

    def one(item: Item) -> np.ndarray:
        return preprocess_crop(read_bgr(item.path), spec)

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        arrays = list(pool.map(one, items))
    empty = np.zeros((0, spec.input_height, spec.input_width, 3), np.float32)
    x = np.stack(arrays).astype(np.float32) if arrays else empty
    y = np.array([LABELS.index(it.label) for it in items], dtype=np.int64)
    sources = np.array([it.source for it in items])
    return FaceSet(x, y, sources, [str(it.path) for it in items])


def load_faces(root: Path, spec: PreprocessSpec, cache_dir: Path | None = None) -> FaceSet:
    """``find_images`` + ``load_items``, cached as a plain .npz of arrays keyed on files+spec."""
    items = find_images(root)
    if cache_dir is None:
        return load_items(items, spec)
    key = hashlib.sha256()
    key.update(repr(sorted(spec.to_json().items())).encode())
    for it in items:
        key.update(f"{it.path}|{it.label}|{it.source}|{it.path.stat().st_size}\n".encode())
    cache = Path(cache_dir) / f"faces-{key.hexdigest()[:16]}.npz"
    if cache.is_file():
        with np.load(cache) as data:  # numpy loads arrays only unless told otherwise
            logger.info("loaded %d crops from cache %s", data["y"].size, cache)
            return FaceSet(data["x"], data["y"], data["sources"], [str(p) for p in data["paths"]])
    faces = load_items(items, spec)
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_suffix(".tmp.npz")
    np.savez(
        tmp,
        x=faces.x,
        y=faces.y,
        sources=faces.sources.astype(str),
        paths=np.array(faces.paths, dtype=str),
    )
    tmp.replace(cache)
    return faces


def make_folds(groups: np.ndarray, n_folds: int) -> np.ndarray:
    """Fold index per sample: whole groups per fold, largest groups first into the smallest fold.

    Deterministic (sorted by size, then name), so every run splits the same way.
    """
    counts = Counter(groups.tolist())
    if n_folds < 2 or n_folds > len(counts):
        raise ValueError(f"need 2..{len(counts)} folds for {len(counts)} source groups")
    sizes = [0] * n_folds
    fold_of: dict[str, int] = {}
    for group, size in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])):
        target = min(range(n_folds), key=lambda f: (sizes[f], f))
        fold_of[group] = target
        sizes[target] += size
    return np.array([fold_of[g] for g in groups.tolist()], dtype=np.int64)


def sample_weights(y: np.ndarray, groups: np.ndarray, source_power: float = 0.5) -> np.ndarray:
    """Per-sample weights: a group of n crops weighs n**source_power in total (so the 6,000 crops
    of imironica do not dominate), and both labels weigh the same in total. Mean weight 1.
    """
    w = np.zeros(y.size, dtype=np.float64)
    counts = Counter(groups.tolist())
    for group, n in counts.items():
        w[groups == group] = float(n) ** source_power / n
    for label in np.unique(y):
        mask = y == label
        w[mask] *= 0.5 / w[mask].sum()
    return (w / w.mean()).astype(np.float32)


def describe(faces: FaceSet) -> dict[str, dict[str, int]]:
    """Counts per source and label, for the sidecar and the model card."""
    out: dict[str, dict[str, int]] = {}
    for source, label in zip(faces.sources.tolist(), faces.y.tolist(), strict=True):
        out.setdefault(source, {"real": 0, "fake": 0})[LABELS[label]] += 1
    return dict(sorted(out.items()))

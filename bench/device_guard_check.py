"""``python -m bench.device_guard_check``: how often the device guard fires on labelled frames.

Reads a frames pool laid out like ``../shared/data/frames`` (``manifest.csv`` with source, label,
attack, file and the res10 face box ``box_x, box_y, box_w, box_h`` in stored pixels) and runs the
guard with the configured classes, score and overlap on every frame, around that face box. Prints
per source, label and attack: frames, frames flagged, and the highest device score seen around a
face, so that the margin between live frames and the threshold is visible. A live frame flagged
is a live person the door would refuse: the number that must stay at 0.
"""

from __future__ import annotations

import argparse
import csv
import shlex
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2

from edge.assets import REPO_ROOT
from edge.config import Config, load_config, parse_config
from edge.device_guard import CocoSsdDetector, DeviceGuard, device_around
from edge.errors import EXIT_OK, EXIT_REFUSED, InputError

DEFAULT_FRAMES = REPO_ROOT.parent / "shared" / "data" / "frames"
# Its section of BENCHMARKS.md, kept when the bench rewrites the file.
MARKDOWN_HEADING = "## Device guard on labelled frames"


@dataclass
class Row:
    """Counts of one (source, label, attack) group."""

    frames: int = 0
    flagged: int = 0
    top_score: float = 0.0  # highest configured-class device score around a face, any score


def scan(frames_dir: Path, config: Config, limit: int | None = None) -> dict[tuple, Row]:
    """Run the guard over the pool; ``limit`` frames per group at most (None: all)."""
    manifest = frames_dir / "manifest.csv"
    if not manifest.is_file():
        raise InputError(f"{manifest} not found: pass --frames with a folder holding manifest.csv")
    guard_cfg = config.device_guard
    guard = DeviceGuard(CocoSsdDetector(), guard_cfg)
    rows: dict[tuple, Row] = {}
    with manifest.open(newline="") as handle:
        for item in csv.DictReader(handle):
            key = (item["source"], item["label"], item.get("attack", ""))
            row = rows.setdefault(key, Row())
            if limit is not None and row.frames >= limit:
                continue
            image = cv2.imread(str(frames_dir / item["file"]))
            if image is None:
                raise InputError(f"cannot read {frames_dir / item['file']}")
            height, width = image.shape[:2]
            x, y, w, h = (float(item[k]) for k in ("box_x", "box_y", "box_w", "box_h"))
            # The manifest keeps res10's unclipped box; the daemon clips boxes to the frame.
            face = (
                max(0, round(x)),
                max(0, round(y)),
                min(width, round(x + w)),
                min(height, round(y + h)),
            )
            row.frames += 1
            # Every score of the configured classes, to show the margin below min_score too.
            found = [d for d in guard.detector.detect(image, 0.05) if d.label in guard.classes]
            near = device_around(face, found, guard_cfg.face_overlap)
            if near is not None:
                row.top_score = max(row.top_score, near.score)
                row.flagged += near.score >= guard_cfg.min_score
    return rows


def format_rows(rows: dict[tuple, Row], config: Config) -> str:
    g = config.device_guard
    lines = [
        f"device guard: classes {', '.join(g.classes)}, score >= {g.min_score},"
        f" face_overlap {g.face_overlap}; every frame, around its res10 face box",
        f"{'source':<18}{'label':<6}{'attack':<16}{'frames':>7}{'flagged':>9}{'share':>8}"
        f"{'top score':>11}",
    ]
    totals: dict[str, list[int]] = {}
    for (source, label, attack), row in sorted(rows.items()):
        share = row.flagged / row.frames if row.frames else 0.0
        lines.append(
            f"{source:<18}{label:<6}{attack:<16}{row.frames:>7}{row.flagged:>9}"
            f"{share:>8.1%}{row.top_score:>11.3f}"
        )
        total = totals.setdefault(label, [0, 0])
        total[0] += row.frames
        total[1] += row.flagged
    for label, (frames, flagged) in sorted(totals.items()):
        lines.append(f"all {label}: {flagged} of {frames} frames flagged")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.device_guard_check", description=__doc__.splitlines()[0]
    )
    parser.add_argument(
        "--frames",
        type=Path,
        default=DEFAULT_FRAMES,
        help="frames pool with manifest.csv (default: ../shared/data/frames)",
    )
    parser.add_argument(
        "--config",
        type=Path,
        default=None,
        help="config whose device_guard section is used (default: defaults)",
    )
    parser.add_argument("--limit", type=int, default=None, help="frames per group at most")
    parser.add_argument(
        "--markdown",
        type=Path,
        default=None,
        help=f"also write the '{MARKDOWN_HEADING}' section of this file (BENCHMARKS.md)",
    )
    args = parser.parse_args(argv)
    config = load_config(args.config) if args.config else parse_config({}, REPO_ROOT)
    try:
        rows = scan(args.frames, config, args.limit)
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    table = format_rows(rows, config)
    print(table)
    if args.markdown is not None:
        from bench.report import write_section

        command = "python -m bench.device_guard_check " + " ".join(
            shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:])
        )
        body = (
            f"Command: `{command.strip()}` (frames: {args.frames.name}, whole frames with"
            " their res10 face box; a live frame flagged is a live person refused)\n\n"
            f"```\n{table}\n```\n"
        )
        write_section(args.markdown, MARKDOWN_HEADING, body)
        print(f"\nwrote the {MARKDOWN_HEADING!r} section of {args.markdown}")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())

"""Memory: peak RSS of a daemon-like process (``python -m bench.resources SPEC`` is that process)
and the model file sizes."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.clips import (
    Clip,
    ClipSource,
)
from bench.parts import Door, load_liveness, path_label
from edge.assets import DEFAULT_ASSETS_DIR, REPO_ROOT
from edge.config import Config, parse_config, with_overrides
from edge.detectors.registry import detector_from_config
from edge.device_guard import COCO_SSD_DIR, COCO_SSD_MODEL, load_device_guard
from edge.errors import ModelError
from edge.pipeline import Pipeline


# -- memory: a daemon-like subprocess -----------------------------------------------------------
def proc_status_kb(key: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def rss_child_main(argv: Sequence[str]) -> int:
    """Run in a fresh process: build the daemon's parts as ``edge.daemon`` does, run the frame
    loop over a clip, print peak and current RSS as JSON."""
    spec = json.loads(argv[0])
    config = parse_config(spec["config"], Path("/"))
    start_kb = proc_status_kb("VmRSS")
    from edge.daemon import IdentityService  # the daemon's own module and its imports

    liveness = load_liveness(config, 1)
    detector = detector_from_config(config.detector, num_threads=1)  # as the daemon does
    identity = IdentityService(config) if config.access.policy == "enrolled" else None
    door = Door(config)
    try:
        source = ClipSource([Path(spec["clip"])], total=spec.get("frames"))
        pipeline = Pipeline(
            config,
            source,
            detector,
            liveness,
            door.relay,
            door.bus,
            identity=identity,
            audit=door.audit.append,
            guard=load_device_guard(config.device_guard),
        )
        pipeline.run()
    finally:
        door.close()
    peak_kb = proc_status_kb("VmHWM") or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(
        json.dumps(
            {
                "peak_rss_mb": round(peak_kb / 1024.0, 1),
                "end_rss_mb": round((proc_status_kb("VmRSS") or 0) / 1024.0, 1),
                "start_rss_mb": round((start_kb or 0) / 1024.0, 1),
                "frames": pipeline.stats.frames_processed,
                "grants": pipeline.stats.grants,
            }
        )
    )
    return 0


def measure_rss(config: Config, clip: Clip, frames: int | None, state_dir: Path) -> dict[str, Any]:
    data = with_overrides(config, state_dir=state_dir).model_dump(mode="json")
    spec = json.dumps({"config": data, "clip": str(clip.path), "frames": frames})
    path = os.environ.get("PYTHONPATH")
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT) + (os.pathsep + path if path else ""))
    done = subprocess.run(
        [sys.executable, "-m", "bench.resources", spec],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
        cwd=str(REPO_ROOT),
    )
    if done.returncode != 0:
        tail = done.stderr.strip().splitlines()[-3:]
        return {"error": f"exit {done.returncode}: {' | '.join(tail)}"}
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    path = path_label(config.detector.kind, config.detector.every_n_frames)
    result.update(detector=path, policy=config.access.policy, clip=clip.name)
    return result


def model_sizes(config: Config, keras_path: Path | None, peer_dir: Path) -> dict[str, Any]:
    from edge.assets import BLAZEFACE_SHORT_RANGE, FACE_MESH, RES10_CAFFEMODEL, RES10_PROTOTXT

    assets = Path(config.detector.assets_dir or DEFAULT_ASSETS_DIR)
    files = {
        "liveness.tflite": config.liveness.model,
        "liveness.json": config.sidecar_path,
        "res10 caffemodel": assets / RES10_CAFFEMODEL.name,
        "res10 prototxt": assets / RES10_PROTOTXT.name,
        "blazeface short range": assets / BLAZEFACE_SHORT_RANGE.name,
        "face mesh": assets / FACE_MESH.name,
        "device guard coco ssd": COCO_SSD_DIR / COCO_SSD_MODEL,
        "peer fp32 onnx": peer_dir / "best_model.onnx",
        "peer int8 onnx": peer_dir / "best_model_quantized.onnx",
    }
    if keras_path is not None:
        files["keras (seed way)"] = keras_path
    try:
        from edge.identity import FACE_RESNET, SHAPE_PREDICTOR_5, models_dir

        files["dlib face resnet"] = models_dir() / FACE_RESNET.name
        files["dlib 5-point aligner"] = models_dir() / SHAPE_PREDICTOR_5.name
    except (ImportError, ModelError):
        pass
    out = {}
    for name, path in files.items():
        if Path(path).is_file():
            size = Path(path).stat().st_size
            out[name] = {"bytes": size, "mb": round(size / 1e6, 3)}
    return out


if __name__ == "__main__":
    sys.exit(rss_child_main(sys.argv[1:]))

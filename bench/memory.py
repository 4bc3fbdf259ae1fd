"""``python -m bench.memory``: where the daemon's memory goes, step by step; its peak end to end.

1. Step by step: each row is a fresh process (``bench.memory_steps``) that repeats the daemon's
   start-up in the daemon's order down to that row (imports, config, command line, models, the
   camera, the first frames through the detector, then the other parts on their faces) and
   reports its RSS, peak RSS (VmHWM), anonymous and file-backed RSS and threads from
   ``/proc/self/status``; "+MB" is what the row added to the row above. Parts the config does not
   load (face mesh, fleet sync, or face recognition under ``any_live``) are measured apart, each
   added after the last model.
2. End to end: ``python -m edge run --relay mock`` itself on a clip at camera pace (capture thread
   and one-slot handoff, as with a camera), MQTT pointed at a closed local port, state in a
   temporary folder; its peak RSS is the kernel's (``ru_maxrss`` from ``wait4``, in a bare
   launcher process) when it exits.
   Once per access policy with the environment as it is, and once more per ``--env`` variant
   (glibc malloc settings, say), in the same run. Then ``python -m edge lock`` and
   ``check-config``, and the daemon-like process whose figure ``python -m bench`` reports.

Nothing is timed. ``--markdown BENCHMARKS.md`` writes the "## Memory" section of that file.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import socket
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from bench.clips import Clip, find_clips
from bench.parts import bench_config, path_label
from edge.assets import REPO_ROOT
from edge.config import Config, with_overrides
from edge.errors import EXIT_OK, EXIT_REFUSED, InputError

DEFAULT_VIDEOS = REPO_ROOT.parent / "shared" / "videos"
# Its section of BENCHMARKS.md, kept when `python -m bench` rewrites the file.
MARKDOWN_HEADING = "## Memory"
DEFAULT_FRAMES = 30
# glibc malloc settings compared with the environment as it is (none of them is set by default).
DEFAULT_ENV_VARIANTS = ("MALLOC_ARENA_MAX=2", "MALLOC_ARENA_MAX=2 MALLOC_TRIM_THRESHOLD_=131072")

# The daemon's start-up in its own order: (step key, label). Identity, blink and the camera
# rows follow the config; see default_steps.
LOAD_STEPS = (
    ("python", "python interpreter"),
    ("numpy", "numpy"),
    ("cv2", "cv2 (OpenCV)"),
    ("pydantic", "pydantic, yaml"),
    ("config", "edge.config, config loaded"),
    ("cli", "command line (python -m edge)"),
    ("gpiozero", "gpiozero"),
    ("paho", "paho-mqtt"),
    ("daemon", "edge.daemon + what run() imports"),
    ("litert", "ai_edge_litert"),
    ("liveness", "liveness model (interpreter)"),
    ("detector", "face detector"),
    ("guard", "device guard (COCO SSD interpreter)"),
    ("dlib", "dlib (access.policy: enrolled)"),
    ("identity", "dlib models (aligner + ResNet)"),
    ("blink", "face mesh (liveness.blink: required)"),
)
RUN_STEPS = (
    ("camera", "camera: clip opened, first frame (OpenCV)"),
    ("detect", "first frames through the face detector"),
    ("parts", "liveness, guard, identity on their faces"),
)
EXTRA_LABELS = {
    "dlib": "+ dlib + models (policy enrolled)",
    "blink": "+ face mesh (liveness.blink: required)",
    "fleet": "+ fleet sync: edge.fleet (cryptography)",
}


def on_path(config: Config, key: str) -> bool:
    """Does the daemon with ``config`` load step ``key``?"""
    if key == "detector":
        return True
    if key in ("dlib", "identity"):
        return config.access.policy == "enrolled"
    if key == "blink":
        return config.liveness.blink == "required"
    if key == "guard":
        return config.device_guard.enabled
    return True


def default_steps(config: Config) -> list[tuple[str, str]]:
    steps = [(key, label) for key, label in LOAD_STEPS if on_path(config, key)]
    return steps + list(RUN_STEPS)


def extra_steps(config: Config) -> list[tuple[list[str], str]]:
    """The parts this config does not load, each as the step keys that load it."""
    extras: list[tuple[list[str], str]] = []
    if not on_path(config, "dlib"):
        extras.append((["dlib", "identity"], EXTRA_LABELS["dlib"]))
    if not on_path(config, "blink"):
        extras.append((["blink"], EXTRA_LABELS["blink"]))
    if not config.fleet.enabled:
        extras.append((["fleet"], EXTRA_LABELS["fleet"]))
    return extras


# -- processes ------------------------------------------------------------------------------------
def _env() -> dict[str, str]:
    path = os.environ.get("PYTHONPATH")
    return dict(os.environ, PYTHONPATH=str(REPO_ROOT) + (os.pathsep + path if path else ""))


def step_status(config: Config, steps: Sequence[str], frames: int) -> dict[str, Any]:
    """Memory of a fresh process after ``steps``."""
    spec = {"steps": list(steps), "config": config.model_dump(mode="json"), "frames": frames}
    done = subprocess.run(
        [sys.executable, "-m", "bench.memory_steps", json.dumps(spec)],
        capture_output=True,
        text=True,
        timeout=600,
        env=_env(),
        cwd=str(REPO_ROOT),
    )
    if done.returncode != 0:
        tail = " | ".join(done.stderr.strip().splitlines()[-3:])
        raise RuntimeError(f"step {steps[-1]} failed (exit {done.returncode}): {tail}")
    status: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return status


# Starts the command and reports its ru_maxrss from wait4. The kernel keeps a process's peak RSS
# across exec, and a process forked from this one starts with this one's pages (bench, pydantic,
# OpenCV: about 70 MB): started from here, no command could ever show less. The launcher is a bare
# interpreter, smaller than any command measured; the command's stdout goes to /dev/null.
_LAUNCHER = """\
import json, os, sys
pid = os.fork()
if pid == 0:
    os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
    os.execv(sys.argv[1], sys.argv[1:])
_, status, usage = os.wait4(pid, 0)
print(json.dumps({"exit": os.waitstatus_to_exitcode(status), "maxrss_kb": usage.ru_maxrss}))
"""


def child_peak(argv: Sequence[str], extra_env: dict[str, str] | None = None) -> dict[str, Any]:
    """Peak RSS (MB) and exit code of ``argv``, from wait4 on exactly that process (started by
    a small launcher, not by this process: see ``_LAUNCHER``)."""
    env = _env()
    env.update(extra_env or {})
    done = subprocess.run(
        [sys.executable, "-c", _LAUNCHER, *argv],
        cwd=str(REPO_ROOT),
        env=env,
        capture_output=True,
        text=True,
        errors="replace",
    )
    stderr_tail = done.stderr.strip().splitlines()[-3:]
    if done.returncode != 0 or not done.stdout.strip():
        return {"peak_mb": None, "exit": done.returncode, "stderr_tail": stderr_tail}
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return {
        "peak_mb": round(result["maxrss_kb"] / 1024.0, 1),  # Linux: kilobytes
        "exit": result["exit"],
        "stderr_tail": stderr_tail,
    }


def closed_port() -> int:
    """A local TCP port nobody listens on (the broker the daemon keeps trying to reach)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def parse_env(text: str) -> dict[str, str]:
    """``"A=1 B=2"`` as a dict; ValueError on a word without ``=``."""
    pairs = {}
    for word in shlex.split(text):
        key, sep, value = word.partition("=")
        if not sep or not key:
            raise ValueError(f"--env: {word!r} is not NAME=VALUE")
        pairs[key] = value
    return pairs


# -- the measurements -----------------------------------------------------------------------------
def measure_steps(config: Config, frames: int) -> dict[str, Any]:
    """One fresh process per row: the daemon's steps down to it, then each part it leaves out."""
    steps = default_steps(config)
    rows: list[dict[str, Any]] = []
    for number, (key, label) in enumerate(steps):
        status = step_status(config, [k for k, _ in steps[: number + 1]], frames)
        previous = rows[-1]["rss_mb"] if rows else 0.0
        rows.append(
            {
                "step": key,
                "label": label,
                **status,
                "added_mb": round(status["rss_mb"] - previous, 1),
            }
        )
    loaded = [k for k, _ in steps if k not in dict(RUN_STEPS)]
    base = next(r for r in rows if r["step"] == loaded[-1])
    extras = []
    for keys, label in extra_steps(config):
        status = step_status(config, loaded + keys, frames)
        extras.append(
            {
                "step": "+".join(keys),
                "label": label,
                **status,
                "added_mb": round(status["rss_mb"] - base["rss_mb"], 1),
            }
        )
    return {"rows": rows, "extras": extras, "extras_after": base["label"]}


def _run_config(config: Config, state: Path, clip: Clip, policy: str, port: int) -> Path:
    """A config file for ``python -m edge run``: the clip at camera pace, a mock relay, state in
    ``state``, MQTT towards ``port`` where nobody listens."""
    cfg = with_overrides(
        config,
        state_dir=state,
        camera={"source": str(clip.path), "realtime": True},
        relay={"mock": True},
        mqtt={"host": "127.0.0.1", "port": port},
        access={"policy": policy, "store": None},
    )
    path = state.parent / f"{state.name}.yaml"
    path.write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
    return path


def measure_daemon(
    config: Config, clip: Clip, variants: Sequence[str], workdir: Path
) -> list[dict[str, Any]]:
    """Peak RSS of ``python -m edge run`` per access policy, as is and per environment variant."""
    port = closed_port()
    policies = [config.access.policy] + [
        p for p in ("enrolled", "any_live") if p != config.access.policy
    ]
    runs = []
    for policy in policies:
        for variant in ("", *variants):
            state = workdir / f"run-{len(runs)}"
            path = _run_config(config, state, clip, policy, port)
            argv = [sys.executable, "-m", "edge", "run", "--config", str(path), "--relay", "mock"]
            result = child_peak(argv, parse_env(variant))
            runs.append({"policy": policy, "env": variant or "(as is)", **result})
    return runs


def measure_commands(config: Config, clip: Clip, workdir: Path) -> list[dict[str, Any]]:
    """Peak RSS of the short commands systemd and the installer run, and of the daemon-like
    process whose figure `python -m bench` reports (any_live, MQTT off, frames 640 px wide)."""
    from bench.resources import measure_rss

    path = _run_config(config, workdir / "commands", clip, config.access.policy, closed_port())
    out = []
    for command in (["lock", "--relay", "mock"], ["check-config"]):
        argv = [sys.executable, "-m", "edge", command[0], "--config", str(path), *command[1:]]
        out.append({"command": "python -m edge " + command[0], **child_peak(argv)})
    bench_cfg = with_overrides(config, access={"policy": "any_live"}, mqtt={"enabled": False})
    rss = measure_rss(bench_cfg, clip, None, workdir / "bench-child")
    out.append(
        {
            "command": "python -m bench.resources (python -m bench's figure, any_live)",
            "peak_mb": rss.get("peak_rss_mb"),
            "exit": 0 if "error" not in rss else 1,
            "stderr_tail": [rss["error"]] if "error" in rss else [],
        }
    )
    return out


def measure(config: Config, clip: Clip, frames: int, variants: Sequence[str]) -> dict[str, Any]:
    from bench.run import machine_info

    with tempfile.TemporaryDirectory(prefix="livegate-memory-") as tmp:
        workdir = Path(tmp)
        step_config = with_overrides(
            config,
            state_dir=workdir / "steps",
            camera={"source": str(clip.path), "realtime": False},
            relay={"mock": True},
        )
        return {
            "machine": machine_info(),
            "clip": clip.name,
            "frames": frames,
            "detector": path_label(config.detector.kind, config.detector.every_n_frames),
            "policy": config.access.policy,
            "steps": measure_steps(step_config, frames),
            "daemon": measure_daemon(config, clip, variants, workdir),
            "commands": measure_commands(config, clip, workdir),
        }


# -- the report -----------------------------------------------------------------------------------
def _step_line(row: dict[str, Any]) -> str:
    return (
        f"{row['label']:<46}{row['rss_mb']:>8.1f}{row['added_mb']:>+8.1f}{row['peak_mb']:>9.1f}"
        f"{row['anon_mb']:>9.1f}{row['file_mb']:>9.1f}{row['threads']:>8}"
    )


def _peak(run: dict[str, Any]) -> str:
    if run["exit"] != 0 or run.get("peak_mb") is None:
        return f"failed (exit {run['exit']}: {' | '.join(run['stderr_tail'])})"
    return f"{run['peak_mb']:.1f}"


def format_memory(r: dict[str, Any]) -> str:
    m = r["machine"]
    steps = r["steps"]
    lines = [
        f"LiveGate memory on {m['cpu']}, {m['cores']} cores, Python {m['python']}; detector"
        f" {r['detector']}, policy {r['policy']}; clip {r['clip']}",
        "",
        "step by step (each row: a fresh process that did the daemon's steps down to it;"
        f" {r['frames']} frames through the detector)",
        f"{'step':<46}{'RSS MB':>8}{'+MB':>8}{'peak MB':>9}{'anon MB':>9}{'file MB':>9}"
        f"{'threads':>8}",
        *(_step_line(row) for row in steps["rows"]),
    ]
    if steps["extras"]:
        lines += ["", f'not on this config\'s path, each added after "{steps["extras_after"]}":']
        lines += [_step_line(row) for row in steps["extras"]]
    lines += [
        "",
        "python -m edge run --relay mock, the clip at camera pace, MQTT to a closed local port:",
        f"{'policy':<10}{'environment':<52}{'peak RSS MB':>12}",
    ]
    lines += [f"{run['policy']:<10}{run['env']:<52}{_peak(run):>12}" for run in r["daemon"]]
    lines += ["", "other processes, peak RSS MB:"]
    lines += [f"  {run['command']:<62}{_peak(run):>8}" for run in r["commands"]]
    return "\n".join(lines)


READING = (
    'Reading it: "+MB" is what a step added to the one above. The face detector\'s two rows'
    " (res10 loaded twice, for whole frames at 300 px and for the regions at 128 px, then their"
    " first passes, where OpenCV allocates each net's buffers) are the largest part; then dlib's"
    " models under `enrolled`, and the Python libraries. The camera row is FFmpeg decoding the"
    " clip: a Raspberry Pi camera goes through picamera2 instead. The end-to-end figures are"
    " `python -m edge run` itself; the figure `python -m bench` reports comes from a daemon-like"
    " process without the command line and MQTT, on frames resized to 640 px wide."
)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.memory", description=__doc__.splitlines()[0]
    )
    parser.add_argument(
        "--config",
        type=Path,
        default=None,
        help="config measured (default: the repo's config.yaml)",
    )
    parser.add_argument(
        "--videos",
        type=Path,
        default=DEFAULT_VIDEOS,
        help="clip folder; its first *_real.* clip plays (default: ../shared/videos)",
    )
    parser.add_argument(
        "--frames",
        type=int,
        default=DEFAULT_FRAMES,
        help=f"frames through the face detector (default {DEFAULT_FRAMES})",
    )
    parser.add_argument(
        "--env",
        action="append",
        default=None,
        metavar="'NAME=VALUE ...'",
        help="an environment variant of the end-to-end run (repeatable; default:"
        f" {' and '.join(DEFAULT_ENV_VARIANTS)}; '' for none)",
    )
    parser.add_argument(
        "--markdown",
        type=Path,
        default=None,
        help=f"also write the '{MARKDOWN_HEADING}' section of this file",
    )
    args = parser.parse_args(argv)
    variants = [v for v in (args.env if args.env is not None else DEFAULT_ENV_VARIANTS) if v]
    try:
        for variant in variants:
            parse_env(variant)
        config = bench_config(argparse.Namespace(config=args.config, model=None))
        clip = next((c for c in find_clips(args.videos) if c.label == "real"), None)
        if clip is None:
            raise InputError(f"no *_real.* clip in {args.videos}")
    except (InputError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    table = format_memory(measure(config, clip, args.frames, variants))
    print(table)
    if args.markdown is not None:
        from bench.report import write_section

        command = "python -m bench.memory " + " ".join(
            shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:])
        )
        body = f"Command: `{command.strip()}`\n\n```\n{table}\n```\n\n{READING}\n"
        write_section(args.markdown, MARKDOWN_HEADING, body)
        print(f"\nwrote the {MARKDOWN_HEADING!r} section of {args.markdown}")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())

"""The bench's results as text: the console table, the BENCHMARKS.md report and its sections."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.common import GOAL_RSS_MB, GOAL_SOAK_GROWTH_MB, REGIONS_SUFFIX


# -- printing -----------------------------------------------------------------------------------
def _fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def format_table(r: dict[str, Any]) -> str:
    """The console table of a full or tiny run."""
    m = r["machine"]
    lines = [
        f"LiveGate bench ({'tiny: figures not meaningful' if r['tiny'] else 'full'})"
        f" on {m['cpu']}, {m['cores']} cores, Python {m['python']},"
        f" load {m['loadavg_start']} -> {m.get('loadavg_end')}",
        f"frames: {r['setup']['frames']}; default detector {r['setup']['default_detector']}",
        "",
        f"{'stage (1 thread)':<28}{'median ms':>10}{'mean ms':>9}{'p95 ms':>9}{'n':>7}"
        f"   | all threads: {'median':>8}{'mean':>8}{'p95':>8}",
    ]
    lines += _table_stages(r)
    lines += _table_flow(r)
    lines += _table_memory_and_keras(r)
    lines += _table_liveness(r)
    verdict = {True: "yes", False: "NO", None: "not measured"}
    lines += ["", "goals: " + ", ".join(f"{k} {verdict[v]}" for k, v in r["goals"].items())]
    for note in r["notes"]:
        lines.append(f"note: {note}")
    lines.append(f"elapsed {r['elapsed_s']} s")
    return "\n".join(lines)


def _table_stages(r: dict[str, Any]) -> list[str]:
    """Per-stage ms, one thread and all threads."""
    lines: list[str] = []
    units = {
        "crop_preprocess": "/face",
        "liveness_inference": "/face",
        "identity": "/face",
        "face_mesh": "/face",
    }
    for name, stats in r["stages"].items():
        other = r["stages_all_threads"].get(name) or {}
        label = name + units.get(name, "/frame")
        lines.append(
            f"{label:<28}{_fmt(stats['median_ms'], 2):>10}{_fmt(stats.get('mean_ms'), 2):>9}"
            f"{_fmt(stats['p95_ms'], 2):>9}{stats['n']:>7}   | {'':13}"
            f"{_fmt(other.get('median_ms'), 2):>8}{_fmt(other.get('mean_ms'), 2):>8}"
            f"{_fmt(other.get('p95_ms'), 2):>8}"
        )
    return lines


def _table_flow(r: dict[str, Any]) -> list[str]:
    """fps, decision latency, the device guard and fresh frames."""
    lines: list[str] = []
    lines += ["", f"{'fps (Pipeline.process)':<28}{'1 thread':>10}{'all':>10}{'1t+decode':>11}"]
    for kind, fps in r["fps_by_detector"].items():
        lines.append(
            f"{kind:<28}{_fmt(fps['fps_1t']):>10}{_fmt(fps['fps_all']):>10}"
            f"{_fmt(fps['fps_1t_with_decode']):>11}"
        )
    for policy, fps in r["fps_by_policy"].items():
        lines.append(f"{'policy ' + policy + ' (1t)':<28}{_fmt(fps):>10}")
    lines += ["", "decision latency, first face -> relay pulse (worst real clip):"]
    for key, lat in r["decision_latency"].items():
        lines.append(
            f"  {key:<32}{_fmt(lat.get('worst_ms'))} ms processing, {_fmt(lat.get('worst_frames'))}"
            f" frames = {_fmt(lat.get('worst_camera_ms'))} ms at 30 fps;"
            f" real clips granted {lat.get('real_clips_granted')}"
        )
        for clip, c in lat["clips"].items():
            lines.append(
                f"      {clip:<18}{c['label']:<5} verdicts {c['verdicts']}"
                f" live frames {_fmt(c['live_frame_rate'], 2)}"
            )
    lines += format_guard(r.get("device_guard"))
    lines += ["", "fresh frames (30 fps camera -> one-slot handoff -> pipeline, 1 thread):"]
    for kind, s in r["stale"].items():
        age = s["age_at_verdict"] or {}
        lines.append(
            f"  {kind:<16} produced {s['produced']}, processed {s['processed']}, dropped"
            f" {s['dropped']} ({_fmt(s['dropped_share'], 2)}), too old {s['too_old']};"
            f" frame age at verdict median {_fmt(age.get('median_ms'))} ms"
            f" p95 {_fmt(age.get('p95_ms'))} ms; face->pulse {_fmt(s['face_to_pulse_ms'])} ms"
        )
    return lines


def _table_memory_and_keras(r: dict[str, Any]) -> list[str]:
    """Peak RSS, model sizes, and the seed's way vs LiveGate."""
    lines: list[str] = []
    lines += ["", "memory (daemon-like subprocess, peak RSS):"]
    for run in r["rss"]:
        if "error" in run:
            lines.append(f"  failed: {run['error']}")
        else:
            lines.append(
                f"  {run['detector']}/{run['policy']}: {run['peak_rss_mb']} MB"
                f" (goal <= {GOAL_RSS_MB:.0f})"
            )
    lines.append(
        "  model files: "
        + ", ".join(f"{name} {v['mb']:.2f} MB" for name, v in r["model_sizes"].items())
    )
    k = r["keras"]
    lines += ["", "seed's way vs LiveGate (same crops):"]
    if "skipped" in k:
        lines.append(f"  skipped: {k['skipped']}")
    else:
        lines.append(
            f"  Keras predict {k['keras_predict']['median_ms']:.2f} ms/face (model(x)"
            f" {k['keras_call']['median_ms']:.2f}) vs int8 LiteRT"
            f" {k['litert_int8_1t']['median_ms']:.3f} ms: {k['ratio']}x (goal >= 20);"
            f" decisions agree on {k['agreement']:.1%} of {k['crops_compared']} crops"
        )
    return lines


def _table_liveness(r: dict[str, Any]) -> list[str]:
    """LiveGate and its peers on the clips' faces."""
    lines: list[str] = []
    lines += [
        "",
        f"{'liveness on the clips':<26}{'ms/face':>9}{'real accepted':>15}"
        f"{'fake rejected':>15}{'frames r/f':>12}",
    ]
    for name in ("livegate", "livegate_v1", "peer", "peer_int8"):
        if name in r:
            p = r[name]
            lines.append(
                f"{name:<26}{_fmt(p['latency_ms'], 3):>9}"
                f"{_fmt(p['real_accept_rate'], 3):>15}{_fmt(p['fake_reject_rate'], 3):>15}"
                f"{str(p['frames_real']) + '/' + str(p['frames_fake']):>12}"
            )
            lines.append(
                "    right per clip: "
                + ", ".join(
                    f"{clip} {_fmt(c['correct_rate'], 2)}" for clip, c in p["by_clip"].items()
                )
            )
    return lines


def format_guard(g: dict[str, Any] | None) -> list[str]:
    """The device guard's lines of the results table."""
    if not g:
        return []
    run = g["ms_per_run_every_frame"] or {}
    pipe = g["ms_per_run_pipeline"] or {}
    lines = [
        "",
        f"device guard (COCO SSD, classes {', '.join(g['classes'])}, score >= {g['min_score']}):",
        f"  per run {_fmt(run.get('median_ms'), 2)} ms median, {_fmt(run.get('p95_ms'), 2)} p95"
        f" (n {run.get('n', 0)}, every frame); in the {g['detector']} frame loop"
        f" {_fmt(pipe.get('median_ms'), 2)} ms median over {pipe.get('n', 0)} runs,"
        f" {_fmt(g['ms_per_frame_avg'], 3)} ms per frame on average",
        f"  fps_1t {g['detector']}: guard on {_fmt(g['fps_1t_guard_on'])},"
        f" off {_fmt(g['fps_1t_guard_off'])} (same run); per CPU second of the loop's thread:"
        f" on {_fmt(g.get('fps_1t_cpu_guard_on'))}, off {_fmt(g.get('fps_1t_cpu_guard_off'))}",
        f"  {'clip':<18}{'label':<6}{'frames':>7}{'faces':>7}{'flagged':>9}{'loop runs':>11}"
        "   verdicts with guard (spoof reasons) | without",
    ]
    for clip, c in g["clips"].items():
        lines.append(
            f"  {clip:<18}{c.get('label', ''):<6}{c.get('frames', '-'):>7}"
            f"{c.get('face_frames', '-'):>7}{c.get('flagged_frames', '-'):>9}"
            f"{str(c['pipeline_guard_flagged']) + '/' + str(c['pipeline_guard_runs']):>11}"
            f"   {c['verdicts_guard_on']} ({c['spoof_reasons_guard_on']}) |"
            f" {c['verdicts_guard_off']}"
        )
    lines.append(
        "  (flagged: frames with a device around a res10 face when the guard runs on"
        " every frame; loop runs: flagged/runs in the frame loop, which runs it only"
        " while a face is undecided)"
    )
    return lines


def format_soak(r: dict[str, Any]) -> str:
    s = r["soak"]
    return "\n".join(
        [
            f"LiveGate soak: {s['frames']} frames ({s['detector']}) in {s['seconds']} s"
            f" = {s['fps']} fps",
            f"RSS after {s['warmup_frames']} warm-up frames {s['rss_start_mb']} MB, at the end"
            f" {s['rss_end_mb']} MB: growth {s['rss_growth_mb']} MB"
            f" (goal < {GOAL_SOAK_GROWTH_MB:g});"
            f" peak {s['rss_peak_mb']} MB",
            f"decisions {s['decisions']} (grants {s['grants']}); journal {s['journal_rows']} rows,"
            f" {s['journal_bytes']} bytes; audit log {s['audit_bytes']} bytes",
        ]
    )


# Per-core speed of a Raspberry Pi relative to a desktop/server x86 core, for the estimate in
# the report. Assumed from public single-core comparisons, NOT measured here.
PI_FACTORS = {
    "Raspberry Pi 4 (Cortex-A72, 1.5-1.8 GHz)": (4.0, 6.0),
    "Raspberry Pi 5 (Cortex-A76, 2.4 GHz)": (2.0, 3.0),
}


def pi_estimate(r: dict[str, Any]) -> list[str]:
    """Markdown lines: the per-frame cost of the default pipeline scaled to a Pi (a range)."""
    stages = r["stages"]
    default = r["setup"]["default_detector"]
    # The mean: with regions, most frames are cheap and every few is a whole-frame pass.
    detect = (stages.get(f"detect_{default}") or {}).get("mean_ms")
    rest = sum(
        (stages.get(k) or {}).get("median_ms") or 0.0
        for k in ("crop_preprocess", "liveness_inference", "decide")
    )
    decode = (stages.get("decode") or {}).get("median_ms") or 0.0
    if detect is None:
        return ["(no detection figures in this run)"]
    here = detect + rest
    lines = [
        f"Per frame here (1 thread): detection ({default}, mean) {detect:.1f} ms + crop,"
        f" liveness and decision {rest:.2f} ms = {here:.1f} ms (decode {decode:.1f} ms comes"
        " from the camera stack on a Pi).",
        "",
        "| board | assumed slowdown per core | pipeline ms/frame | fps on 1 core |",
        "|---|---|---|---|",
    ]
    for board, (low, high) in PI_FACTORS.items():
        lines.append(
            f"| {board} | {low:g}x - {high:g}x | {here * low:.0f} - {here * high:.0f}"
            f" | {1000 / (here * high):.0f} - {1000 / (here * low):.0f} |"
        )
    whole_kind = default.removesuffix(REGIONS_SUFFIX)
    whole = (stages.get(f"detect_{whole_kind}") or {}).get("mean_ms")
    if whole_kind != default and whole is not None:
        empty = whole + rest
        board, (low, high) = next(iter(PI_FACTORS.items()))
        lines += [
            "",
            f"These are the clips' mix, where a face is in view on most frames. With no face"
            f" known every frame is a whole-frame pass ({whole_kind} {whole:.1f} ms here), so the"
            f" first frame of a newcomer costs {empty:.1f} ms here, about {empty * low:.0f} -"
            f" {empty * high:.0f} ms on a {board.split(' (')[0]}: frames arriving meanwhile are"
            " dropped, and the decision on a Pi is that much later than here.",
        ]
    lines += [
        "",
        "This is an **estimate until measured on a Pi**: the slowdown factors are assumptions"
        " from public single-core comparisons, not measurements of ours. Run the same command"
        " on the Pi (`python -m bench --markdown BENCHMARKS.md`) to replace it.",
    ]
    return lines


def format_markdown(r: dict[str, Any]) -> str:
    """BENCHMARKS.md: machine, command, results table, detector choice, bottleneck, Pi
    estimate."""
    lines = _md_header(r) + _md_detector_choice(r) + _md_device_guard(r) + _md_bottleneck(r)
    return "\n".join(lines)


def _md_header(r: dict[str, Any]) -> list[str]:
    """Title, machine, command and the results table."""
    m = r["machine"]
    versions = ", ".join(f"{k} {v}" for k, v in m["versions"].items())
    default = r["setup"]["default_detector"]
    lines = [
        "# LiveGate benchmarks",
        "",
        "Written by the command below; every figure is a measurement of that one run, on a"
        " shared machine, so compare figures of the same run (ratios) rather than across runs."
        " No test asserts a speed.",
        "",
        f"- Command: `{r['command'].strip()}`",
        f"- Machine: {m['cpu']}, {m['cores']} cores, {m['platform']}, Python {m['python']};"
        f" load average {m['loadavg_start']} at the start, {m.get('loadavg_end')} at the end",
        f"- Libraries: {versions}",
        f"- Frames: {r['setup']['frames']}; clips"
        f" {', '.join(c['name'] for c in r['setup']['clips'])}",
        f"- Default detector: `{default}`; vote {r['setup']['vote']}",
        f"- Elapsed: {r['elapsed_s']} s",
        "",
        "## Results",
        "",
        "```",
        format_table(r),
        "```",
        "",
        "Reading the clip figures: labels come from the file names, and zubair_fake.mp4 opens"
        " with the real Zubair in view beside the phone he holds up (frames 0-31), so a grant"
        ' there and some of its "live" frames are right, not spoof errors. Decision latency'
        " counts processing time from the first frame with the face to the relay pulse; the"
        ' "at 30 fps" figure is the same number of frames in camera time.',
        "",
    ]
    return lines


def _md_detector_choice(r: dict[str, Any]) -> list[str]:
    """The detector comparison (when the run made one)."""
    default = r["setup"]["default_detector"]
    lines: list[str] = []
    dc = r.get("detector_comparison")
    if dc:
        lines += [
            "## Detector choice",
            "",
            f"Rule: {dc['rule']}. Reference: res10 faces at score >= 0.5, at least"
            f" `min_face_px` wide, with `min_visible` of the box inside the frame, on"
            f" {dc['frames_per_clip']} frames per clip (res10 {dc['res10_ms_median']} ms/frame,"
            " 1 thread).",
            "",
            "| detector | res10 faces | missed (all) | missed (main face) | frames missed |"
            " extra faces | ms/frame median | ms/frame mean | qualifies |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for name, c in dc["candidates"].items():
            lines.append(
                f"| {name} | {c['faces']} | {_fmt(c['miss_rate'], 4)} |"
                f" {_fmt(c['main_miss_rate'], 4)} | {_fmt(c['frame_miss_rate'], 4)} |"
                f" {c['extra_faces']} | {_fmt(c['ms_median'])} |"
                f" {_fmt(c.get('ms_mean'))} | {'yes' if c['qualifies'] else 'no'} |"
            )
        lines += [
            "",
            "Main-face miss rate per clip: "
            + "; ".join(
                f"{clip}: " + ", ".join(f"{k} {_fmt(v, 4)}" for k, v in row.items())
                for clip, row in dc["clips"].items()
            ),
            "",
        ]
        lines += [
            "`res10+regions` is res10 itself: a whole-frame pass every"
            f" {dc.get('regions', {}).get('every_n_frames', '-')} frames while faces are known"
            " (at once when none is, or when one is lost), and in between res10 at"
            f" {dc.get('regions', {}).get('region_input_px', '-')} px on a square of"
            f" {dc.get('regions', {}).get('region_scale', '-')}x the face around each known"
            " face (`edge/detectors/regions.py`). Its extra faces are faces it finds in a region at"
            " more detail than the whole frame gives res10.",
            "",
            "The miss rule is not the whole choice: spoof decisions must not get worse."
            " `tests/test_daemon_e2e.py` runs every detector, searching whole frames and with"
            " regions, over the real clips and the replay-only part of the fake clips, and the"
            " verdicts per clip are in the results above. With `blazeface_tiles` a sideways"
            " replayed face in zubair_fake.mp4 (which res10 does not find) is found, passed by"
            " the liveness model and granted (a strict expected failure there), so BlazeFace is"
            f" not the default; `{default}` grants no replay there.",
            "",
        ]
    return lines


def _md_device_guard(r: dict[str, Any]) -> list[str]:
    """What the device guard costs (when the run measured it)."""
    lines: list[str] = []
    g = r.get("device_guard")
    if g:
        lines += [
            "## Device guard",
            "",
            "The COCO SSD MobileNet v1 (quantized) looks for a"
            f" {', '.join(g['classes'])} box at score >= {g['min_score']} around each face"
            " (containing its centre or covering enough of it). The frame loop runs it only"
            " while a face is undecided (its first frame, then every"
            f" {g['every_n_frames']} frames, and the frame after a flag), so its cost per frame"
            " is small:"
            f" {_fmt(g['ms_per_frame_avg'], 3)} ms on average in the default pass, where"
            f" fps_1t was {_fmt(g['fps_1t_guard_on'])} with it and"
            f" {_fmt(g['fps_1t_guard_off'])} without (same run). On every frame it costs"
            f" {_fmt((g['ms_per_run_every_frame'] or {}).get('median_ms'), 2)} ms (median)."
            ' "flagged" counts frames with a device around a face when it runs on every'
            " frame: real clips must stay at 0.",
            "",
        ]
    return lines


def _md_bottleneck(r: dict[str, Any]) -> list[str]:
    """Where the time goes, what lifts it, and the Pi estimate."""
    stages = r["stages"]
    default = r["setup"]["default_detector"]
    pipeline = (stages.get("pipeline") or {}).get("mean_ms")
    detect = (stages.get(f"detect_{default}") or {}).get("mean_ms")
    lines: list[str] = []
    lines += ["## Bottleneck", ""]
    if pipeline and detect:
        share = detect / pipeline
        lines.append(
            f"Detection takes {share:.0%} of the default pipeline's {pipeline:.1f} ms per frame"
            " (1 thread)" + (": it is the bottleneck." if share >= 0.5 else ".")
        )
    lines += [
        "What lifts it, all in `config.yaml`: `detector.every_n_frames` (whole-frame passes"
        " only every Nth frame while faces are known, regions around them in between; the"
        " default 3), `detector.kind: blazeface_tiles` (BlazeFace on the frame and two tiles)"
        " or `blazeface` (whole frame only: misses small faces), `detector.detect_width`"
        " (detect on a downscaled frame), and on a Pi the camera's low-resolution stream for"
        " whole-frame passes. With no face in view every frame is a whole-frame pass, so an"
        " empty doorstep runs at the whole-frame rate (`res10` above); frames the pipeline"
        " cannot take in time are dropped by the one-slot handoff, never queued.",
        "",
        "## Raspberry Pi estimate",
        "",
        *pi_estimate(r),
        "",
    ]
    return lines


def read_section(path: Path, heading: str) -> str | None:
    """The body of the ``heading`` section of a markdown file (up to the next ``## ``), if any."""
    if not path.is_file():
        return None
    text = path.read_text()
    start = text.find(f"\n{heading}\n")
    if start < 0:
        return None
    body_start = start + len(heading) + 2
    end = text.find("\n## ", body_start)
    return text[body_start:] if end < 0 else text[body_start : end + 1]


def write_section(path: Path, heading: str, body: str) -> None:
    """Replace (or append) the ``heading`` section of a markdown file with ``body``."""
    text = path.read_text() if path.is_file() else ""
    old = read_section(path, heading)
    block = f"{heading}\n{body}"
    if old is None:
        text = text.rstrip("\n") + ("\n\n" if text else "") + block
    else:
        text = text.replace(f"\n{heading}\n{old}", f"\n{block}", 1)
    path.write_text(text)

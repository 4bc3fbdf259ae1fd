"""Decision logic driven by a fake clock, without frames."""

from __future__ import annotations

import math

import pytest

from edge.config import DecisionConfig
from edge.decide import DecisionEngine, Observation
from edge.detectors.base import box_iou as iou
from tests.fakes import FakeClock

FACE = (100, 100, 200, 220)
DT = 1 / 30  # a 30 fps camera


def live(box: tuple[int, int, int, int] = FACE, p: float = 0.9) -> Observation:
    return Observation(box, p, True)


def spoof(box: tuple[int, int, int, int] = FACE, p: float = 0.1) -> Observation:
    return Observation(box, p, False)


def run(engine: DecisionEngine, clock: FakeClock, frames, dt: float = DT, face_unlock=True):
    verdicts = []
    for faces in frames:
        decisions, _ = engine.update(faces, clock(), face_unlock)
        verdicts += [d.verdict for d in decisions]
        clock.advance(dt)
    return verdicts


def test_iou_cases() -> None:
    assert iou((0, 0, 10, 10), (0, 0, 10, 10)) == 1.0
    assert iou((0, 0, 10, 10), (20, 20, 30, 30)) == 0.0
    assert iou((0, 0, 10, 10), (5, 0, 15, 10)) == pytest.approx(50 / 150)


def test_grant_needs_n_of_m_live_frames(clock: FakeClock) -> None:
    engine = DecisionEngine(DecisionConfig(vote_frames=5, min_live_frames=4), policy="any_live")
    # 3 live of 5 is not enough; neither denied (only 2 spoofs, 4 needed)
    assert run(engine, clock, [[live()], [spoof()], [live()], [spoof()], [live()]]) == []
    # the window slides: the next live frames reach 4 of the last 5
    assert run(engine, clock, [[live()], [live()]]) == ["granted"]


def test_one_grant_per_track_and_latency(clock: FakeClock) -> None:
    engine = DecisionEngine(DecisionConfig(), policy="any_live")
    start = clock()
    decisions = []
    for _ in range(30):
        got, _ = engine.update([live()], clock())
        decisions += got
        clock.advance(DT)
    assert [d.verdict for d in decisions] == ["granted"]
    assert decisions[0].frames_voted == 5
    assert decisions[0].latency_s == pytest.approx(4 * DT)
    assert decisions[0].latency_s == pytest.approx(clock() - start - 26 * DT)


def attempts(engine: DecisionEngine, clock: FakeClock, obs: Observation, times: int) -> list[str]:
    """``times`` separate presentations: the face comes, stays 15 frames, leaves."""
    verdicts = []
    for _ in range(times):
        verdicts += run(engine, clock, [[obs]] * 15)
        clock.advance(engine.config.track_timeout_s + 0.1)
        engine.expire(clock())
    return verdicts


def test_spoof_denied_once_per_face(clock: FakeClock) -> None:
    engine = DecisionEngine(DecisionConfig(), policy="any_live")
    assert run(engine, clock, [[spoof()]] * 60) == ["denied_spoof"]
    # the same face, now scoring live, is not let in: it must step away and come back
    assert run(engine, clock, [[live()]] * 10) == []


def test_spoof_denied_then_lockout_after_k(clock: FakeClock) -> None:
    cfg = DecisionConfig(lockout_spoofs=3, lockout_window_s=60, lockout_s=300)
    engine = DecisionEngine(cfg, policy="any_live")
    assert attempts(engine, clock, spoof(), 3) == ["denied_spoof", "denied_spoof", "lockout"]
    # while locked out, even a live face gets nothing
    assert attempts(engine, clock, live(), 2) == []
    clock.advance(301)
    assert attempts(engine, clock, live(), 1) == ["granted"]


def test_spoof_denials_outside_window_do_not_lock_out(clock: FakeClock) -> None:
    engine = DecisionEngine(
        DecisionConfig(lockout_spoofs=2, lockout_window_s=10), policy="any_live"
    )
    assert attempts(engine, clock, spoof(), 1) == ["denied_spoof"]
    clock.advance(11)
    assert attempts(engine, clock, spoof(), 1) == ["denied_spoof"]


def test_cooldown_between_two_people(clock: FakeClock) -> None:
    engine = DecisionEngine(DecisionConfig(cooldown_s=1.0), policy="any_live")
    a, b = (0, 0, 100, 100), (300, 0, 400, 100)
    assert run(engine, clock, [[live(a)]] * 5) == ["granted"]
    granted_a = clock() - DT
    # a second face during the cooldown waits, then is granted once it is over
    times = []
    for _ in range(60):
        decisions, _ = engine.update([live(b)], clock())
        times += [clock() for d in decisions if d.verdict == "granted"]
        clock.advance(DT)
    assert len(times) == 1
    assert 1.0 <= times[0] - granted_a < 1.0 + 2 * DT


def test_enrolled_policy_waits_for_identity_and_denies_unknown(clock: FakeClock) -> None:
    engine = DecisionEngine(DecisionConfig(), policy="enrolled")
    assert run(engine, clock, [[live()]] * 10) == []  # identity not known yet: never grant
    track = next(iter(engine.tracks.values()))
    engine.note_identity(track.id, None, None)
    assert run(engine, clock, [[live()]] * 10) == ["denied_unknown"]


def test_enrolled_policy_grants_known_person(clock: FakeClock) -> None:
    engine = DecisionEngine(DecisionConfig(), policy="enrolled")
    run(engine, clock, [[live()]])
    track = next(iter(engine.tracks.values()))
    engine.note_identity(track.id, "ada", 0.31)
    decisions, _ = engine.update([live()], clock())
    assert decisions == []  # 2 votes of 5 so far
    clock.advance(DT)
    got = []
    for _ in range(4):
        d, _ = engine.update([live()], clock())
        got += d
        clock.advance(DT)
    assert [(d.verdict, d.person, d.match_distance) for d in got] == [("granted", "ada", 0.31)]


def test_blink_required(clock: FakeClock) -> None:
    engine = DecisionEngine(
        DecisionConfig(), policy="any_live", blink_required=True, blink_window_s=4
    )
    assert run(engine, clock, [[live()]] * 10) == []
    engine.note_blink(next(iter(engine.tracks.values())).id, clock())
    assert run(engine, clock, [[live()]]) == ["granted"]


def test_face_unlock_switch_off_refuses_once(clock: FakeClock) -> None:
    engine = DecisionEngine(DecisionConfig(), policy="any_live")
    assert run(engine, clock, [[live()]] * 20, face_unlock=False) == ["denied_disabled"]


def test_slow_camera_decides_by_seconds(clock: FakeClock) -> None:
    # 3 fps camera: 5 frames would take 1.7 s; the 1 s window decides on the frames it has
    engine = DecisionEngine(DecisionConfig(vote_frames=5, vote_seconds=1.0), policy="any_live")
    decisions = []
    for _ in range(5):
        decisions += engine.update([live()], clock())[0]
        clock.advance(1 / 3)
    assert [d.verdict for d in decisions] == ["granted"]
    assert decisions[0].frames_voted == 4
    assert decisions[0].latency_s == pytest.approx(1.0)


@pytest.mark.parametrize("fps", [2.5, 2.9, 3.85])
def test_slow_camera_decides_when_no_frame_lands_on_the_window_edge(
    clock: FakeClock, fps: float
) -> None:
    # Frame intervals that do not divide vote_seconds: the 1 s window holds 2 or 3 frames and
    # never 5; it must still close, on every frame it can hold, and never on fewer than 2.
    engine = DecisionEngine(DecisionConfig(vote_frames=5, vote_seconds=1.0), policy="any_live")
    decisions = []
    for _ in range(20):
        decisions += engine.update([live()], clock())[0]
        clock.advance(1 / fps)
    assert [d.verdict for d in decisions] == ["granted"]
    # As soon as the window holds every frame that fits in 1 s (both edges included).
    assert decisions[0].frames_voted == math.floor(fps) + 1
    spoofs = DecisionEngine(DecisionConfig(vote_frames=5, vote_seconds=1.0), policy="any_live")
    assert run(spoofs, clock, [[spoof()]] * 20, dt=1 / fps) == ["denied_spoof"]


def test_a_detection_gap_does_not_shrink_the_window(clock: FakeClock) -> None:
    # 30 fps, the face undetected for 1.5 s (the track lives on): the few frames after the gap
    # are not a closed 1 s window; the grant waits for M frames, as on any fast camera.
    engine = DecisionEngine(DecisionConfig(track_timeout_s=2.0), policy="any_live")
    assert run(engine, clock, [[live()]] * 2) == []
    clock.advance(1.5)
    assert run(engine, clock, [[live()]] * 4) == []
    assert run(engine, clock, [[live()]]) == ["granted"]


def test_track_expires_and_face_present(clock: FakeClock) -> None:
    engine = DecisionEngine(DecisionConfig(track_timeout_s=1.0), policy="any_live")
    run(engine, clock, [[live()]])
    assert engine.face_present
    clock.advance(0.5)
    assert engine.expire(clock()) == [] and engine.face_present
    clock.advance(0.6)
    assert [t.id for t in engine.expire(clock())] == [1]
    assert not engine.face_present


def test_a_face_after_the_track_timeout_is_new_even_before_expire(clock: FakeClock) -> None:
    engine = DecisionEngine(DecisionConfig(track_timeout_s=1.0), policy="enrolled")
    run(engine, clock, [[live()]] * 2)
    ada = next(iter(engine.tracks.values()))
    engine.note_identity(ada.id, "ada", 0.3)  # recognised, not yet granted (2 votes of 5)
    # She leaves; for 2 s the pipeline processes no frame (flat or stale ones), so nothing
    # called expire(). Someone else now stands where she stood: not yet recognised, no grant.
    clock.advance(2.0)
    assert run(engine, clock, [[live()]] * 10) == []
    assert ada.frames == 2, "the old track was not continued"
    newest = max(engine.tracks.values(), key=lambda t: t.id)
    assert newest.id != ada.id and newest.person is None


def test_two_faces_tracked_separately(clock: FakeClock) -> None:
    engine = DecisionEngine(DecisionConfig(cooldown_s=0), policy="any_live")
    a, b = (0, 0, 100, 100), (300, 0, 400, 100)
    verdicts = run(engine, clock, [[live(a), spoof(b)]] * 5)
    assert sorted(verdicts) == ["denied_spoof", "granted"]
    assert len(engine.tracks) == 2


def test_mean_logit_weighs_how_sure_each_frame_is(clock: FakeClock) -> None:
    """Four barely-live frames and one sure spoof: N-of-M grants, the mean log-odds do not."""
    frames = [[Observation(FACE, 0.6, True)]] * 4 + [[Observation(FACE, 0.01, False)]]
    votes = DecisionEngine(DecisionConfig(), policy="any_live", live_threshold=0.5)
    assert run(votes, clock, frames) == ["granted"]
    mean = DecisionEngine(
        DecisionConfig(combine="mean_logit"), policy="any_live", live_threshold=0.5
    )
    assert run(mean, clock, frames) == ["denied_spoof"]
    # Sure live frames with one doubtful one: granted either way, after the full window.
    sure = [[Observation(FACE, 0.97, True)]] * 4 + [[Observation(FACE, 0.3, False)]]
    other = DecisionEngine(
        DecisionConfig(combine="mean_logit"), policy="any_live", live_threshold=0.5
    )
    got, _ = other.update(sure[0], clock())
    assert got == []  # one frame is never enough
    assert run(other, clock, sure[1:]) == ["granted"]


def test_mean_logit_uses_the_model_threshold_and_clips_extremes(clock: FakeClock) -> None:
    # Threshold 0.2 (log-odds -1.39): frames at 0.25 are live on average.
    low = DecisionEngine(
        DecisionConfig(combine="mean_logit"), policy="any_live", live_threshold=0.2
    )
    assert run(low, clock, [[Observation(FACE, 0.25, True)]] * 5) == ["granted"]
    # One exact 0.0 from an int8 model counts as 0.001 (log-odds -6.9), not minus infinity:
    # four sure frames (0.999, +6.9 each) still carry the window.
    clipped = DecisionEngine(
        DecisionConfig(combine="mean_logit"), policy="any_live", live_threshold=0.5
    )
    frames = [[Observation(FACE, 1.0, True)]] * 4 + [[Observation(FACE, 0.0, False)]]
    assert run(clipped, clock, frames) == ["granted"]

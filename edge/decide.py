"""Who gets in: face tracks, multi-frame voting, access policy, cooldown and lockout.

Pure logic: no frames, no threads, no I/O. Time comes from the caller (monotonic seconds), so tests
drive it with a fake clock. The engine never unlocks on doubt: a face must be live in at least N of
its last M votes (and recognised, and have blinked, when the policy asks), and a verdict is given
at most once per track.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field, replace
from typing import Literal

from edge.config import DecisionConfig
from edge.detectors.base import box_iou
from edge.device_guard import DeviceBox
from edge.preprocess import Box

Verdict = Literal["granted", "denied_spoof", "denied_unknown", "denied_disabled", "lockout"]
Policy = Literal["enrolled", "any_live"]
# Why a face was refused as a spoof: the liveness model's votes, or a device seen around it.
SpoofReason = Literal["liveness", "device_in_frame"]
_EPS = 1e-6  # float slack when comparing sums of frame intervals with the seconds window


# P(real) is clipped this far from 0 and 1 before taking log-odds: an int8 model outputs exact
# 0 and 1, and one such frame must not outweigh the rest of the window by itself.
_LOGIT_CLIP = 1e-3


def logit(p: float) -> float:
    """Log-odds of a probability, clipped to [_LOGIT_CLIP, 1 - _LOGIT_CLIP] (about +-6.9)."""
    q = min(max(p, _LOGIT_CLIP), 1.0 - _LOGIT_CLIP)
    return math.log(q / (1.0 - q))


@dataclass(frozen=True)
class Observation:
    """One face in one frame, after liveness (and optionally identity and blink)."""

    box: Box
    p_real: float  # liveness model's probability that the face is real
    live: bool  # p_real at or above the model's threshold
    # Device guard: did it run on this frame for this face, and the device it found around it.
    device_checked: bool = False
    device: DeviceBox | None = None


@dataclass(frozen=True)
class Vote:
    t: float
    live: bool  # live by the model AND no device around the face
    p_real: float
    device: DeviceBox | None = None  # the device guard's latest result for the track


@dataclass
class Track:
    id: int
    box: Box
    first_seen: float
    last_seen: float
    frames: int = 1
    votes: deque[Vote] = field(default_factory=deque)
    granted: bool = False
    denied_spoof: bool = False  # a face once judged a spoof stays refused until it leaves
    denied_unknown: bool = False
    # Identity, noted by the pipeline from a few frames (policy "enrolled"): note_identity.
    person: str | None = None
    match_distance: float | None = None
    identity_done: bool = False
    # Blink, noted by the pipeline (liveness.blink = required): note_blink.
    last_blink: float | None = None
    # Device guard, latest result (it counts for every frame until the guard runs again).
    device_checked: bool = False
    device: DeviceBox | None = None

    @property
    def decided(self) -> bool:
        """A verdict was given (or the face is known to be nobody): nothing left to check."""
        return self.granted or self.denied_spoof or self.denied_unknown


@dataclass(frozen=True)
class Decision:
    verdict: Verdict
    track_id: int
    box: Box
    p_real: float  # mean over the votes that decided
    frames_voted: int
    live_votes: int
    latency_s: float  # from the track's first sighting to this decision
    frames_seen: int
    person: str | None = None
    match_distance: float | None = None
    reason: SpoofReason | None = None  # denied_spoof and lockout only
    device: DeviceBox | None = None  # the strongest device of the votes, with device_in_frame


class DecisionEngine:
    """Feed it the faces of each frame with ``update``; it returns the verdicts reached."""

    def __init__(
        self,
        config: DecisionConfig,
        policy: Policy = "enrolled",
        blink_required: bool = False,
        blink_window_s: float = 4.0,
        live_threshold: float = 0.5,
        device_guard: bool = False,
    ) -> None:
        self.config = config
        # The model's threshold as log-odds, for combine = "mean_logit".
        self.live_logit = logit(live_threshold)
        self.policy = policy
        self.blink_required = blink_required
        self.blink_window_s = blink_window_s
        # With the guard on, no face is granted before the guard has looked at it once.
        self.device_guard = device_guard
        self.tracks: dict[int, Track] = {}
        self._next_id = 1
        self._last_grant: float | None = None
        self._spoof_denials: deque[float] = deque()
        self.locked_out_until: float | None = None

    # -- tracking -------------------------------------------------------------------------------
    def _associate(
        self, observations: list[Observation], now: float
    ) -> list[tuple[Track, Observation]]:
        pairs: list[tuple[float, int, int]] = []
        # A track past its timeout has left, even if expire() has not run yet (the pipeline skips
        # it on frames it cannot use: flat, stale, wrong size): a face at the same place now is
        # a new face, and must not inherit the votes or the identity of the one that left.
        live_tracks = [
            t for t in self.tracks.values() if now - t.last_seen <= self.config.track_timeout_s
        ]
        for ti, track in enumerate(live_tracks):
            for oi, obs in enumerate(observations):
                overlap = box_iou(track.box, obs.box)
                if overlap >= self.config.track_iou:
                    pairs.append((overlap, ti, oi))
        pairs.sort(reverse=True)  # greedy: best overlaps first
        used_tracks: set[int] = set()
        used_obs: set[int] = set()
        matched: list[tuple[Track, Observation]] = []
        for _, ti, oi in pairs:
            if ti in used_tracks or oi in used_obs:
                continue
            used_tracks.add(ti)
            used_obs.add(oi)
            track = live_tracks[ti]
            track.box, track.last_seen = observations[oi].box, now
            track.frames += 1
            matched.append((track, observations[oi]))
        for oi, obs in enumerate(observations):
            if oi not in used_obs:
                track = Track(self._next_id, obs.box, now, now)
                self._next_id += 1
                self.tracks[track.id] = track
                matched.append((track, obs))
        return matched

    def track_for(self, box: Box) -> Track | None:
        """The track a face at ``box`` would most likely continue (None: a new face); for the
        pipeline to schedule work on undecided faces before ``update``."""
        best: tuple[float, Track | None] = (0.0, None)
        for track in self.tracks.values():
            overlap = box_iou(track.box, box)
            if overlap >= self.config.track_iou and overlap > best[0]:
                best = (overlap, track)
        return best[1]

    def expire(self, now: float) -> list[Track]:
        """Drop tracks not seen for ``track_timeout_s``; returns those that left."""
        gone = [t for t in self.tracks.values() if now - t.last_seen > self.config.track_timeout_s]
        for track in gone:
            del self.tracks[track.id]
        return gone

    def seen_at(self, now: float) -> list[Track]:
        """The tracks whose face was in the frame of time ``now``."""
        return [track for track in self.tracks.values() if track.last_seen == now]

    def note_identity(self, track_id: int, person: str | None, distance: float | None) -> None:
        """Who the face of a track is, once settled (``person`` None: nobody enrolled)."""
        track = self.tracks.get(track_id)
        if track is not None:
            track.person, track.match_distance = person, distance
            track.identity_done = True

    def note_blink(self, track_id: int, now: float) -> None:
        """The face of a track blinked at ``now``."""
        track = self.tracks.get(track_id)
        if track is not None:
            track.last_blink = now

    def forget_identities(self) -> None:
        """Every track's identity must be settled again (the enrolment store changed)."""
        for track in self.tracks.values():
            track.person, track.match_distance = None, None
            track.identity_done = False

    def forget_tracks(self) -> None:
        """Drop every track (camera lost: no grant may rest on frames from before the loss)."""
        self.tracks.clear()

    @property
    def face_present(self) -> bool:
        return bool(self.tracks)

    def locked_out(self, now: float) -> bool:
        return self.locked_out_until is not None and now < self.locked_out_until

    # -- voting ---------------------------------------------------------------------------------
    def _window(self, track: Track, now: float) -> list[Vote]:
        horizon = now - self.config.vote_seconds - _EPS
        while track.votes and (
            len(track.votes) > self.config.vote_frames or track.votes[0].t < horizon
        ):
            track.votes.popleft()
        return list(track.votes)

    def _closed_by_time(self, votes: list[Vote]) -> bool:
        """The seconds window holds all the frames it can: at this camera's fastest pace so far,
        the next one would push the oldest out. (Testing the span alone against vote_seconds
        closed it only when a frame landed on the window's very edge; at 2.5 or 3.9 fps, never,
        so a slow camera never decided at all.) Never with fewer than 2 frames."""
        if len(votes) < 2:
            return False
        times = [v.t for v in votes]
        fastest = min(b - a for a, b in zip(times, times[1:], strict=False))
        return times[-1] - times[0] + fastest > self.config.vote_seconds + _EPS

    def _needed(self, n: int, votes: int) -> int:
        # N of M, scaled down when the seconds window closes before M frames arrived (slow
        # camera), never below 2 frames: one frame is never enough to act on.
        return max(2, math.ceil(n * votes / self.config.vote_frames))

    def update(
        self, observations: list[Observation], now: float, face_unlock: bool = True
    ) -> tuple[list[Decision], list[Track]]:
        """Add this frame's faces; returns (verdicts reached, tracks they belong to).
        ``face_unlock``: the switch's state now (off: a live face is refused, once)."""
        decisions: list[Decision] = []
        decided_tracks: list[Track] = []
        for track, obs in self._associate(observations, now):
            if obs.device_checked:
                track.device_checked, track.device = True, obs.device
            # A device around the face makes the frame a spoof vote, whatever the model says.
            track.votes.append(
                Vote(now, obs.live and track.device is None, obs.p_real, track.device)
            )
            decision = self._judge(track, now, face_unlock)
            if decision is not None:
                decisions.append(decision)
                decided_tracks.append(track)
        return decisions, decided_tracks

    def _judge(self, track: Track, now: float, face_unlock: bool) -> Decision | None:
        votes = self._window(track, now)
        cfg = self.config
        full = len(votes) >= cfg.vote_frames
        # Whichever comes first: M frames, or a full vote_seconds window (slow camera).
        timed_out = self._closed_by_time(votes)
        if not (full or timed_out) or track.granted or track.denied_spoof:
            return None
        live = sum(v.live for v in votes)
        spoof = len(votes) - live
        need_live = self._needed(cfg.min_live_frames, len(votes))
        need_spoof = self._needed(cfg.min_spoof_frames, len(votes))
        if cfg.combine == "mean_logit":
            # The whole window speaks at once: live when its mean log-odds reach the model's
            # threshold, a spoof otherwise (still never fewer than 2 frames, see above). A frame
            # with a device around the face counts as a sure spoof, whatever the model said.
            odds = [logit(0.0 if v.device is not None else v.p_real) for v in votes]
            track_live = sum(odds) / len(odds) >= self.live_logit
            need_live = need_spoof = len(votes)
            live, spoof = (len(votes), 0) if track_live else (0, len(votes))
        if self.locked_out(now):
            return None  # a lockout was already announced; stay silent and locked
        if spoof >= need_spoof:
            # One denial per face: a photo held up for a minute is one attempt, not one per
            # window; the person must step away (the track ends) to try again.
            track.denied_spoof = True
            return self._deny_spoof(track, votes, live, now)
        if live < need_live:
            return None
        if any(v.device is not None for v in votes):
            return None  # a device was around this face in the window: never act on that
        if self.device_guard and not track.device_checked:
            return None  # the guard has not looked at this face yet
        if self.policy == "enrolled":
            if not track.identity_done:
                return None  # wait for recognition, never grant on an unknown identity
            if track.person is None:
                if track.denied_unknown:
                    return None
                track.denied_unknown = True
                return self._decision("denied_unknown", track, votes, live, now)
        if self.blink_required and (
            track.last_blink is None or now - track.last_blink > self.blink_window_s
        ):
            return None  # live by the CNN, but no blink yet: keep waiting
        if not face_unlock:
            track.granted = True  # one refusal per face, not one per frame
            return self._decision("denied_disabled", track, votes, live, now)
        if self._last_grant is not None and now - self._last_grant < cfg.cooldown_s:
            return None
        track.granted = True
        self._last_grant = now
        return self._decision("granted", track, votes, live, now)

    def _deny_spoof(self, track: Track, votes: list[Vote], live: int, now: float) -> Decision:
        cfg = self.config
        self._spoof_denials.append(now)
        while self._spoof_denials and now - self._spoof_denials[0] > cfg.lockout_window_s:
            self._spoof_denials.popleft()
        if len(self._spoof_denials) >= cfg.lockout_spoofs and cfg.lockout_s > 0:
            self.locked_out_until = now + cfg.lockout_s
            self._spoof_denials.clear()
            return self._spoof_decision("lockout", track, votes, live, now)
        return self._spoof_decision("denied_spoof", track, votes, live, now)

    @classmethod
    def _spoof_decision(
        cls, verdict: Verdict, track: Track, votes: list[Vote], live: int, now: float
    ) -> Decision:
        devices = [v.device for v in votes if v.device is not None]
        decision = cls._decision(verdict, track, votes, live, now)
        if not devices:
            return replace(decision, reason="liveness")
        strongest = max(devices, key=lambda d: d.score)
        return replace(decision, reason="device_in_frame", device=strongest)

    @staticmethod
    def _decision(
        verdict: Verdict, track: Track, votes: list[Vote], live: int, now: float
    ) -> Decision:
        return Decision(
            verdict=verdict,
            track_id=track.id,
            box=track.box,
            p_real=sum(v.p_real for v in votes) / len(votes),
            frames_voted=len(votes),
            live_votes=live,
            latency_s=now - track.first_seen,
            frames_seen=track.frames,
            person=track.person,
            match_distance=track.match_distance,
        )

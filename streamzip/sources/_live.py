"""What live sources (RTSP cameras, microphones) share: their counters, events and wall clock.

A live source's packets carry *stream time* (seconds since its first frame, continuous across
reconnects, with the outages reported as ``Gap`` packets). :class:`WallClock` maps stream time back to
the wall-clock time the media was captured: from the sender's clock when it is known (RTCP sender
reports of an RTSP server, ALSA timestamps of a microphone), else from arrival times (the earliest
arrival seen for a span is the best estimate, since capture can only precede arrival).
"""

from __future__ import annotations

import bisect
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from streamzip.stats import SourceStats

__all__ = ["LiveStats", "SourceEvent", "WallClock"]

#: The most clock segments kept (one per reconnect or re-based clock); older ones are forgotten.
MAX_SEGMENTS = 256
#: The most events kept per source.
MAX_EVENTS = 200


@dataclass
class SourceEvent:
    """Something that happened to a live source (``connected``, ``stalled``, ``gap``…)."""

    kind: str
    mono_s: float
    wall_s: float
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass
class LiveStats(SourceStats):
    """:class:`SourceStats` plus what a live source goes through."""

    state: str = "idle"  # idle, connecting, connected, reconnecting, stopped, failed
    connects: int = 0  # successful opens
    reconnects: int = 0  # successful opens after the first
    open_failures: int = 0
    stalls: int = 0  # watchdog or read-timeout detections
    gaps: int = 0
    gap_s: float = 0.0  # stream time lost to outages
    pts_rebased: int = 0  # pts that jumped (backwards, or ahead of the wall clock) and were re-based
    skipped_packets: int = 0  # video packets not decoded to catch up with real time
    catch_ups: int = 0  # times the reader fell max_lag_s behind
    lag_s: float = 0.0  # the reader's current backlog behind real time
    clock: str | None = None  # where capture times come from: "sender" (RTCP, ALSA) or "arrival"
    last_error: str | None = None  # redacted: safe to show
    events: deque[SourceEvent] = field(default_factory=lambda: deque(maxlen=MAX_EVENTS))

    def event(self, kind: str, **detail: Any) -> SourceEvent:
        ev = SourceEvent(kind, time.monotonic(), time.time(), detail)
        self.events.append(ev)
        return ev

    def to_dict(self) -> dict[str, Any]:
        return {"state": self.state, "connects": self.connects, "reconnects": self.reconnects,
                "open_failures": self.open_failures, "stalls": self.stalls, "gaps": self.gaps,
                "gap_s": round(self.gap_s, 3), "pts_rebased": self.pts_rebased, "clock": self.clock,
                "skipped_packets": self.skipped_packets, "catch_ups": self.catch_ups, "lag_s": round(self.lag_s, 3),
                "frames_decoded": self.frames_decoded, "frames_sampled": self.frames_sampled,
                "audio_samples": self.audio_samples, "corrupt_packets": self.corrupt_packets,
                "media_s": round(self.duration_s, 3), "last_error": self.last_error}


class WallClock:
    """Piecewise map from stream time to capture wall time (seconds since the Unix epoch).

    Each segment (one per connection, or per change of clock source) holds ``wall - t``. A sender
    clock replaces the segment's offset; arrival observations only ever lower it (the least delayed
    arrival is the closest to capture).
    """

    def __init__(self) -> None:
        self._starts: list[float] = []
        self._offsets: list[float] = []
        self._exact: list[bool] = []

    def new_segment(self) -> None:
        """The next observation starts a new segment (a reconnect, a re-based clock)."""
        self._open = False

    _open = False

    def observe(self, t: float, wall_s: float, *, exact: bool) -> None:
        """Stream time ``t`` was captured at ``wall_s`` (``exact``: from the sender's clock) or had
        arrived by then (not exact)."""
        offset = wall_s - t
        if self._open and self._starts:
            if exact and self._exact[-1]:
                if abs(offset - self._offsets[-1]) < 0.02:
                    return
            elif not exact and not self._exact[-1]:
                self._offsets[-1] = min(self._offsets[-1], offset)
                return
            elif not exact and self._exact[-1]:
                return  # a sender clock is better than arrival: keep it
        self._starts.append(t)
        self._offsets.append(offset)
        self._exact.append(exact)
        self._open = True
        if len(self._starts) > MAX_SEGMENTS:
            del self._starts[0], self._offsets[0], self._exact[0]

    def wall_time(self, t: float) -> float | None:
        """Capture wall time of stream time ``t`` (None before any observation)."""
        if not self._starts:
            return None
        i = max(0, bisect.bisect_right(self._starts, t) - 1)
        return t + self._offsets[i]

    def stream_time(self, wall_s: float) -> float | None:
        """The inverse: stream time captured at ``wall_s`` (None before any observation)."""
        if not self._starts:
            return None
        for start, off in zip(reversed(self._starts), reversed(self._offsets)):
            if wall_s - off >= start:
                return wall_s - off
        return wall_s - self._offsets[0]

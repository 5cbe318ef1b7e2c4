"""Decoding shared by every PyAV source (files, RTSP cameras, microphones).

- :class:`VideoSampler` picks the first frame at or after each sample time (``fps``), scales it inside
  FFmpeg with one long-lived ``VideoReformatter`` (a per-frame ``frame.reformat()`` builds a new swscale
  context each time, 30–40 % slower) and batches frames into :class:`~streamzip.packets.VideoFrames`.
- :class:`AudioCollector` decodes audio packet by packet (a corrupt packet is skipped and counted),
  resamples to mono ``sample_rate_hz`` with one long-lived resampler, and cuts
  :class:`~streamzip.packets.AudioChunk` packets in stream time.

Both map a frame to stream time with :meth:`frame_time` (pts minus ``origin``; a missing pts is
estimated, one going backwards is clamped and counted). Live sources override it to put their own
clock (reconnects, re-based pts) in its place; everything after the time is the same for every source.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from streamzip._av import VideoReformatter, av
from streamzip.packets import AudioChunk, Packet, VideoFrames
from streamzip.stats import SourceStats

__all__ = ["AudioCollector", "SourceStats", "VideoSampler"]


def decode_packet(packet: av.Packet, stats: SourceStats) -> list[av.frame.Frame]:
    """The frames of one demuxed packet; a corrupt packet is counted and yields none."""
    try:
        return list(packet.decode())
    except av.error.FFmpegError:
        stats.corrupt_packets += 1
        return []


class VideoSampler:
    """Picks the first frame at or after each sample time, scales it in FFmpeg, batches frames.

    Args:
        config: a :class:`~streamzip.sources.file.DecodeConfig` (fps, size, selection, batch size).
        stats: the source's counters, updated in place.
        stream: the stream id the packets carry.
        origin: seconds subtracted from pts (the container's start time).
        source_rate: the stream's frame rate, when known (sets the sampling tolerance).
    """

    def __init__(self, config, stats: SourceStats, stream: str, *, origin: float = 0.0,  # type: ignore[no-untyped-def]
                 source_rate: float | None = None) -> None:
        self.cfg, self.stats, self.stream, self.origin = config, stats, stream, origin
        self.step = 1.0 / self.cfg.fps
        self.next_t: float | None = None
        self.last_t = -math.inf
        # A frame half a source frame early is the best frame for a sample time: take it.
        rate = source_rate
        self.tolerance_s = 0.5 / rate if rate and rate > self.cfg.fps else 1e-6
        self.frames: list[np.ndarray] = []
        self.times: list[float] = []
        self.reformatter = VideoReformatter()
        self._time_base: float | None = None
        # Added to pts once the clock went back for good (a splice): later frames carry on from there.
        self.shift_s = 0.0
        self.frame_s = 1.0 / rate if rate else 1.0 / 25.0

    @property
    def pending(self) -> bool:
        return bool(self.frames)

    def pts_seconds(self, frame: av.VideoFrame) -> float | None:
        """The frame's pts in seconds (no origin), or None when it has none."""
        if frame.pts is None:
            return None
        if self._time_base is None and frame.time_base is not None:
            self._time_base = float(frame.time_base)  # Fraction arithmetic per frame is slow
        if self._time_base is None:
            return None
        return frame.pts * self._time_base

    def frame_time(self, frame: av.VideoFrame) -> float:
        """Stream time of a decoded frame (estimated when pts is missing; a small step back is clamped, a
        jump back of more than 0.5 s re-bases the clock so that later frames follow on)."""
        raw = self.pts_seconds(frame)
        t = None if raw is None else raw - self.origin + self.shift_s
        if t is None or math.isnan(t):
            self.stats.pts_fixed += 1
            rate = 25.0
            t = (self.last_t + 1.0 / rate) if self.last_t > -math.inf else 0.0
        elif t < self.last_t - 0.5:
            # The clock went back for good (spliced files, an encoder clock reset): carry on from the last
            # frame. Clamping would pin every later frame to one time, and the sampler would drop them all.
            self.stats.pts_fixed += 1
            self.shift_s += self.last_t + self.frame_s - t
            t = self.last_t + self.frame_s
        elif t < self.last_t:
            self.stats.pts_fixed += 1
            t = self.last_t
        return t

    def feed(self, packet: av.Packet) -> list[Packet]:
        """Decode one demuxed packet; returns the batches that filled up."""
        out: list[Packet] = []
        for frame in decode_packet(packet, self.stats):
            assert isinstance(frame, av.VideoFrame)
            out.extend(self.add(frame, self.frame_time(frame)))
        return out

    def add(self, frame: av.VideoFrame, t: float) -> list[Packet]:
        """Take one decoded frame at stream time ``t`` (kept if it falls on a sample time)."""
        self.stats.frames_decoded += 1
        self.last_t = t
        cfg = self.cfg
        if t < cfg.start_s - 1e-9 or (cfg.end_s is not None and t >= cfg.end_s):
            return []
        if self.next_t is None:
            self.next_t = max(t, cfg.start_s)
        if t + self.tolerance_s < self.next_t:
            return []
        if cfg.end_s is not None and self.next_t >= cfg.end_s - 1e-9:
            return []  # the sample time this frame stands for is past the selection
        # Skip ahead over sample times this frame already passed (a gap or a low source fps).
        self.next_t += self.step * max(1, math.floor((t + self.tolerance_s - self.next_t) / self.step + 1e-9) + 1)
        rgb = self.reformatter.reformat(frame, width=cfg.width, height=cfg.height,
                                        format="rgb24", interpolation=cfg.interpolation)
        self.frames.append(rgb.to_ndarray())
        self.times.append(t)
        self.stats.frames_sampled += 1
        self.stats.duration_s = max(self.stats.duration_s, t + self.step - cfg.start_s)
        if len(self.frames) >= cfg.batch_frames:
            return [self._emit()]
        return []

    def _emit(self) -> VideoFrames:
        batch = VideoFrames(stream=self.stream, frames=torch.from_numpy(np.stack(self.frames)),
                            pts_s=torch.tensor(self.times, dtype=torch.float64), duration_s=self.step)
        self.frames, self.times = [], []
        return batch

    def finish(self) -> list[Packet]:
        """The frames still held, as one last batch."""
        return [self._emit()] if self.frames else []


class AudioCollector:
    """Decodes audio packet by packet, resamples to mono, and cuts chunks in stream time.

    Args: as :class:`VideoSampler` (``config`` gives ``sample_rate_hz``, ``audio_chunk_s`` and the
    selection).
    """

    def __init__(self, config, stats: SourceStats, stream: str, *, origin: float = 0.0) -> None:  # type: ignore[no-untyped-def]
        self.cfg, self.stats, self.stream, self.origin = config, stats, stream, origin
        self.rate = self.cfg.sample_rate_hz
        self.resampler = av.AudioResampler(format="flt", layout="mono", rate=self.rate)
        self.parts: list[np.ndarray] = []
        self.start: float | None = None  # stream time of the first sample held
        self.held = 0
        self.last_t = -math.inf

    @property
    def pending(self) -> bool:
        return self.held > 0

    @property
    def next_t(self) -> float | None:
        """Stream time of the next sample expected (None before the first)."""
        if self.start is not None:
            return self.start + self.held / self.rate
        return self.last_t if self.last_t > -math.inf else None

    def frame_time(self, frame: av.AudioFrame) -> float | None:
        """Stream time of a decoded frame, or None to follow on from the previous one."""
        if frame.pts is not None and frame.time_base is not None:
            return float(frame.pts * frame.time_base) - self.origin
        return None

    def feed(self, packet: av.Packet) -> list[Packet]:
        """Decode one demuxed packet; returns the chunks that filled up."""
        out: list[Packet] = []
        for frame in decode_packet(packet, self.stats):
            assert isinstance(frame, av.AudioFrame)
            out.extend(self.add_frame(frame, self.frame_time(frame)))
        return out

    def add_frame(self, frame: av.AudioFrame, t: float | None) -> list[Packet]:
        """Resample one decoded frame that starts at stream time ``t`` (None: right after the last)."""
        try:
            resampled = self.resampler.resample(frame)
        except (av.error.FFmpegError, ValueError):
            self.stats.corrupt_packets += 1
            return []
        out: list[Packet] = []
        for r in resampled:
            out.extend(self.add(r.to_ndarray().reshape(-1), t))
            t = None  # later frames of one resample call follow on contiguously
        return out

    def add(self, samples: np.ndarray, t: float | None) -> list[Packet]:
        """Take mono samples at ``sample_rate_hz`` starting at stream time ``t`` (None: contiguous)."""
        out: list[Packet] = []
        cfg = self.cfg
        expected = (self.start + self.held / self.rate) if self.start is not None else None
        if t is None:
            t = expected if expected is not None else max(self.last_t, 0.0)
        elif expected is not None:
            if t > expected + 0.02:
                # A hole (a skipped corrupt packet, a jump): keep stream time true with a new chunk.
                out.extend(self._emit())
                self.start = t
            else:
                if t < expected - 0.02:
                    self.stats.pts_fixed += 1
                t = expected
        if self.start is None:
            self.start = t
        if t < cfg.start_s:  # only before anything is held
            cut = int(math.ceil((cfg.start_s - t) * self.rate - 1e-6))
            samples = samples[cut:]
            self.start = t + cut / self.rate
        if cfg.end_s is not None:
            room = int(round((cfg.end_s - (self.start + self.held / self.rate)) * self.rate))
            samples = samples[: max(0, room)]
        if samples.size:
            self.parts.append(samples.astype(np.float32, copy=False))
            self.held += samples.size
        self.last_t = self.start + self.held / self.rate
        self.stats.duration_s = max(self.stats.duration_s, self.last_t - cfg.start_s)
        if self.held >= cfg.audio_chunk_s * self.rate:
            out.extend(self._emit())
        return out

    def _emit(self) -> list[Packet]:
        if not self.held or self.start is None:
            self.parts, self.held, self.start = [], 0, None
            return []
        chunk = AudioChunk(stream=self.stream, samples=torch.from_numpy(np.concatenate(self.parts)),
                           sample_rate_hz=self.rate, start_s=self.start)
        self.stats.audio_samples += self.held
        self.start = self.start + self.held / self.rate
        self.parts, self.held = [], 0
        return [chunk]

    def finish(self) -> list[Packet]:
        """Drain the resampler and emit what is held."""
        try:
            tail = self.resampler.resample(None)
        except (av.error.FFmpegError, ValueError):
            tail = []
        out: list[Packet] = []
        for r in tail:
            out.extend(self.add(r.to_ndarray().reshape(-1), None))
        out.extend(self._emit())
        return out

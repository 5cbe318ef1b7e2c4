"""Synthetic media with a known ground truth, for the demo, the tests and the benchmarks.

:func:`make_clip` writes a real file (H.264 + AAC in MP4 by default) through PyAV. The picture runs
through scenes of known kinds — ``static`` (a still textured image), ``pan`` (a texture sliding
sideways), ``motion`` (a square moving over a still background) — with hard cuts between them. The
sound alternates speech-like bursts (a voiced harmonic source with syllable-rate amplitude modulation
and moving formants) with silence. The returned :class:`ClipInfo` says where each scene and each burst
is, so tests can check what the engine kept.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import cast

import numpy as np

from streamzip._av import av

__all__ = ["ClipInfo", "Scene", "make_clip", "scene_cycle", "speech_like"]


@dataclass(frozen=True)
class Scene:
    kind: str  # "static" | "pan" | "motion"
    start_s: float
    end_s: float


@dataclass
class ClipInfo:
    path: str
    duration_s: float
    scenes: list[Scene] = field(default_factory=list)
    speech: list[tuple[float, float]] = field(default_factory=list)
    fps: int = 25
    sample_rate_hz: int = 16000


def _texture(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A smooth random texture (sum of a few coloured blobs and gradients), uint8 (h, w, 3)."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.zeros((h, w, 3), np.float32)
    for _ in range(6):
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        r = rng.uniform(0.1, 0.4) * max(h, w)
        blob = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r))
        img += blob[..., None] * rng.uniform(0, 255, 3)
    img += (xx / w)[..., None] * rng.uniform(0, 80, 3) + (yy / h)[..., None] * rng.uniform(0, 80, 3)
    # Fine detail so that patches differ from each other.
    img += rng.normal(0, 12, (h // 8 + 1, w // 8 + 1, 3)).repeat(8, 0).repeat(8, 1)[:h, :w]
    return np.clip(img, 0, 255).astype(np.uint8)


def _frames(kind: str, n: int, rng: np.random.Generator, h: int, w: int):  # type: ignore[no-untyped-def]
    base = _texture(rng, h, w)
    if kind == "static":
        for _ in range(n):
            yield base
    elif kind == "pan":
        wide = np.concatenate([base, _texture(rng, h, w)], axis=1)
        speed = max(1, w // 50)
        for i in range(n):
            x = (i * speed) % w
            yield np.ascontiguousarray(wide[:, x:x + w])
    elif kind == "motion":
        side = max(8, min(h, w) // 5)
        colour = rng.integers(0, 255, 3, dtype=np.uint8)
        for i in range(n):
            frame = base.copy()
            x = int((w - side) * (0.5 + 0.5 * math.sin(i / 12.0)))
            y = int((h - side) * (0.5 + 0.5 * math.cos(i / 17.0)))
            frame[y:y + side, x:x + side] = colour
            yield frame
    else:
        raise ValueError(f"unknown scene kind {kind!r}; use static, pan or motion")


def speech_like(duration_s: float, sample_rate_hz: int, rng: np.random.Generator) -> np.ndarray:
    """A voiced, syllabic signal: harmonics of a wandering f0 shaped by two moving formants."""
    n = int(duration_s * sample_rate_hz)
    t = np.arange(n) / sample_rate_hz
    f0 = 140 + 30 * np.sin(2 * np.pi * 0.7 * t + rng.uniform(0, 6)) + rng.uniform(-20, 20)
    phase = 2 * np.pi * np.cumsum(f0) / sample_rate_hz
    f1 = 500 + 250 * np.sin(2 * np.pi * 3.1 * t + rng.uniform(0, 6))
    f2 = 1500 + 500 * np.sin(2 * np.pi * 2.3 * t + rng.uniform(0, 6))
    sig = np.zeros(n)
    for k in range(1, 25):
        fk = k * f0
        if float(fk.mean()) > sample_rate_hz / 2 - 200:
            break
        gain = np.exp(-((fk - f1) / 180) ** 2) + 0.6 * np.exp(-((fk - f2) / 260) ** 2) + 0.02
        sig += gain * np.sin(k * phase)
    syllables = 0.5 - 0.5 * np.cos(2 * np.pi * 4.0 * t)  # ~4 syllables per second
    sig *= 0.25 + 0.75 * syllables
    sig += rng.normal(0, 0.02, n)  # breath noise
    ramp = min(n // 2, int(0.02 * sample_rate_hz))
    if ramp:
        env = np.ones(n)
        env[:ramp] = np.linspace(0, 1, ramp)
        env[-ramp:] = np.linspace(1, 0, ramp)
        sig *= env
    return (0.3 * sig / (np.abs(sig).max() + 1e-9)).astype(np.float32)


#: the scenes of :func:`scene_cycle`, in order, each :data:`SCENE_S` long
SCENE_KINDS = ("static", "pan", "motion", "static", "pan")
SCENE_S = 4.0


def scene_cycle(duration_s: float) -> list[tuple[str, float]]:
    """Scenes for a clip of ``duration_s`` seconds: :data:`SCENE_KINDS` of :data:`SCENE_S` each,
    cycled, the last one cut short to end at ``duration_s``."""
    scenes: list[tuple[str, float]] = []
    t = 0.0
    while duration_s - t > 1e-9:
        d = min(SCENE_S, duration_s - t)
        scenes.append((SCENE_KINDS[len(scenes) % len(SCENE_KINDS)], d))
        t += d
    return scenes


def make_clip(
    path: str | os.PathLike[str],
    *,
    scenes: Sequence[tuple[str, float]] = (("static", 4), ("pan", 4), ("motion", 4), ("static", 4), ("pan", 4)),
    speech: Sequence[tuple[float, float]] | None = None,
    width: int = 640,
    height: int = 360,
    fps: int = 25,
    video: bool = True,
    audio: bool = True,
    sample_rate_hz: int = 16000,
    channels: int = 1,
    video_codec: str = "libx264",
    audio_codec: str = "aac",
    seed: int = 0,
) -> ClipInfo:
    """Write a clip of the given scenes (kind, seconds) with speech bursts at ``speech`` (start, end)
    seconds, silence elsewhere. By default speech alternates 2 s on, 1.5 s off. Returns the truth."""
    path = os.fspath(path)
    rng = np.random.default_rng(seed)
    duration = float(sum(d for _, d in scenes))
    if speech is None:
        speech, t = [], 0.5
        while t + 2.0 <= duration:
            speech.append((t, t + 2.0))
            t += 3.5
    info = ClipInfo(path=path, duration_s=duration, speech=list(speech), fps=fps, sample_rate_hz=sample_rate_hz)
    t = 0.0
    for kind, d in scenes:
        info.scenes.append(Scene(kind, t, t + d))
        t += d

    options = {"movflags": "+faststart"} if path.endswith(".mp4") else {}
    with av.open(path, "w", options=options) as out:
        vs = as_ = None
        if video:
            # video_codec is a runtime str, so the stubs give the union of every stream kind
            vs = cast(av.VideoStream, out.add_stream(video_codec, rate=fps))
            vs.width, vs.height, vs.pix_fmt = width, height, "yuv420p"
            if video_codec == "libx264":
                vs.options = {"preset": "ultrafast", "tune": "zerolatency", "g": str(2 * fps)}
        if audio:
            as_ = cast(av.AudioStream, out.add_stream(audio_codec, rate=sample_rate_hz))
            as_.layout = "stereo" if channels == 2 else ("5.1" if channels == 6 else "mono")
        if vs is not None:
            for kind, d in scenes:
                for arr in _frames(kind, int(round(d * fps)), rng, height, width):
                    frame = av.VideoFrame.from_ndarray(arr, format="rgb24")
                    for pkt in vs.encode(frame):
                        out.mux(pkt)
            for pkt in vs.encode(None):
                out.mux(pkt)
        if as_ is not None:
            n = int(duration * sample_rate_hz)
            mono = rng.normal(0, 1e-4, n).astype(np.float32)  # near-silence, not digital zero
            for s0, s1 in speech:
                a, b = int(s0 * sample_rate_hz), min(n, int(s1 * sample_rate_hz))
                if b > a:
                    mono[a:b] += speech_like((b - a) / sample_rate_hz, sample_rate_hz, rng)[: b - a]
            planar = np.repeat(mono[None, :], channels, axis=0)
            step = 1024
            for i in range(0, n, step):
                block = np.ascontiguousarray(planar[:, i:i + step])
                aframe = av.AudioFrame.from_ndarray(block, format="fltp", layout=as_.layout.name)
                aframe.sample_rate = sample_rate_hz
                aframe.pts = i
                for pkt in as_.encode(aframe):
                    out.mux(pkt)
            for pkt in as_.encode(None):
                out.mux(pkt)
    return info

"""The file source: any container and codec FFmpeg reads, through PyAV.

Video is sampled to a target fps and scaled inside FFmpeg by one long-lived ``VideoReformatter``
(a per-frame ``frame.reformat()`` would build a new swscale context every time, 30–40 % slower), with
threaded decode. Audio is decoded packet by packet, so a corrupt packet is skipped and counted instead
of ending the input, and resampled to mono at ``sample_rate_hz`` by one long-lived resampler. That
machinery is shared with the live sources: :mod:`streamzip.sources._decode`.

Times are seconds from the container's start, taken from pts (missing pts are estimated from the
previous frame, pts that go backwards are clamped and counted), so audio and video share one clock.
``lavfi:GRAPH`` inputs open FFmpeg's synthetic sources (``lavfi:testsrc2=size=320x240:rate=25:duration=5``,
several outputs with ``[out0]``/``[out1]`` labels).

PyAV is imported when an input is opened, not with this module (which ``import streamzip`` loads):
without it, opening an input is a :class:`~streamzip.errors.DependencyError` that names the fix.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from streamzip.config import Config
from streamzip.errors import CorruptMediaError, InputNotFoundError, NoStreamError, NotMediaError
from streamzip.packets import End, Packet
from streamzip.sources._names import display_name
from streamzip.stats import SourceStats

if TYPE_CHECKING:
    import av

    from streamzip.sources._decode import AudioCollector, VideoSampler

__all__ = ["DecodeConfig", "FileSource", "SourceStats"]

LAVFI_PREFIX = "lavfi:"
# Demuxers that accept any text file (ANSI art, subtitles): never what a user means as media.
_TEXT_FORMATS = {"tty", "srt", "ass", "webvtt", "subviewer", "subviewer1", "microdvd", "jacosub", "sami",
                 "realtext", "mpl2", "pjs", "stl", "vplayer", "lrc", "aqtitle"}


@dataclass(frozen=True)
class DecodeConfig(Config):
    # 2 fps: enough to follow scene changes; redundancy merging does the rest.
    fps: float = 2.0
    # 224×224: the input size of most CLIP/SigLIP-style towers.
    width: int = 224
    height: int = 224
    # "auto": decode what the file has among what the pipeline needs; "both": require both.
    streams: Literal["auto", "video", "audio", "both"] = "auto"
    # 16 kHz mono: what speech VADs and audio encoders take.
    sample_rate_hz: int = 16000
    # Select a span of the input; None = to the end.
    start_s: float = 0.0
    end_s: float | None = None
    # Frames per packet: batches keep per-packet overhead (≈1 ms per actor call) small.
    batch_frames: int = 8
    # Audio per packet.
    audio_chunk_s: float = 1.0
    # Decoder threads; 0 = FFmpeg's choice. 2 fits this project's 2-core default machine.
    threads: int = 2
    # swscale's fast bilinear: ~2x cheaper than bilinear when shrinking 720p to 224, same tokens' use.
    interpolation: Literal["FAST_BILINEAR", "BILINEAR", "BICUBIC", "AREA", "LANCZOS"] = "FAST_BILINEAR"

    def check(self):  # type: ignore[no-untyped-def]
        if not 0 < self.fps <= 240:
            yield "fps", f"must be in (0, 240], got {self.fps}"
        for name in ("width", "height"):
            v = getattr(self, name)
            if not 1 <= v <= 8192:
                yield name, f"must be in [1, 8192], got {v}"
        if self.sample_rate_hz not in (8000, 16000, 32000, 48000):
            yield "sample_rate_hz", f"must be one of 8000, 16000, 32000, 48000, got {self.sample_rate_hz}"
        if self.start_s < 0:
            yield "start_s", f"must be >= 0, got {self.start_s}"
        if self.end_s is not None and self.end_s <= self.start_s:
            yield "end_s", f"must be > start_s ({self.start_s}), got {self.end_s}"
        if not 1 <= self.batch_frames <= 1024:
            yield "batch_frames", f"must be in [1, 1024], got {self.batch_frames}"
        if not 0.01 <= self.audio_chunk_s <= 60:
            yield "audio_chunk_s", f"must be in [0.01, 60], got {self.audio_chunk_s}"
        if not 0 <= self.threads <= 64:
            yield "threads", f"must be in [0, 64], got {self.threads}"


class FileSource:
    """Decode one input into packets: :class:`VideoFrames`, :class:`AudioChunk`, then :class:`End`.

    Args:
        path: a file path, or ``lavfi:GRAPH`` for FFmpeg's synthetic sources.
        config: decoding options.
        stream: the stream id packets carry (default: the input's file name).
        want_video / want_audio: which modalities the pipeline uses.
    """

    def __init__(self, path: str | os.PathLike[str], config: DecodeConfig | None = None, *,
                 stream: str | None = None, want_video: bool = True, want_audio: bool = True) -> None:
        self.path = os.fspath(path)
        self.config = config or DecodeConfig()
        self.name = display_name(self.path)
        self.stream = stream or self.name
        self.want_video = want_video and self.config.streams in ("auto", "video", "both")
        self.want_audio = want_audio and self.config.streams in ("auto", "audio", "both")
        self.stats = SourceStats()

    # -- opening ------------------------------------------------------------------------------
    def _open(self) -> av.container.InputContainer:
        from streamzip._av import av

        path = self.path
        if path.startswith(LAVFI_PREFIX):
            try:
                return av.open(path[len(LAVFI_PREFIX):], format="lavfi")
            except av.error.FFmpegError as err:
                raise NotMediaError(f"FFmpeg rejected the lavfi graph: {err}", input=self.name,
                                    stage="decode", fix="check the filter graph syntax") from err
        if not os.path.exists(path):
            raise InputNotFoundError("no such file", input=self.name, stage="decode",
                                     fix="check the path; relative paths are resolved from the working folder")
        if os.path.isdir(path):
            raise NotMediaError("this is a folder, not a media file", input=self.name, stage="decode",
                                fix="pass the files inside it (streamzip batch takes folders)")
        if os.path.getsize(path) == 0:
            raise NotMediaError("the file is empty (0 bytes)", input=self.name, stage="decode",
                                fix="re-copy or re-record the file")
        try:
            container = av.open(path, metadata_errors="ignore")
        except av.error.FFmpegError as err:
            raise NotMediaError(f"FFmpeg cannot read this as media ({err.strerror or err})",
                                input=self.name, stage="decode",
                                fix="check that the file is a complete audio/video file") from err
        if container.format.name in _TEXT_FORMATS:
            container.close()
            raise NotMediaError(f"this is text, not media (FFmpeg would only render it as {container.format.name!r})",
                                input=self.name, stage="decode", fix="pass an audio or video file")
        return container

    def _pick_streams(self, container: av.container.InputContainer):  # type: ignore[no-untyped-def]
        vids = [s for s in container.streams.video if s.codec_context is not None]
        auds = [s for s in container.streams.audio if s.codec_context is not None]
        v = vids[0] if (vids and self.want_video) else None
        a = auds[0] if (auds and self.want_audio) else None
        have = ", ".join(f"{s.type}:{s.codec_context.name if s.codec_context is not None else 'unknown codec'}"
                         for s in container.streams if s.type in ("video", "audio")) or "none"
        needed = []
        if self.config.streams in ("video", "both") and v is None:
            needed.append("video")
        if self.config.streams in ("audio", "both") and a is None:
            needed.append("audio")
        if needed or (v is None and a is None):
            what = " and ".join(needed) if needed else " or ".join(
                m for m, w in (("video", self.want_video), ("audio", self.want_audio)) if w) or "any"
            raise NoStreamError(f"no {what} stream (the input has: {have})", input=self.name, stage="decode",
                                fix="give an input with that stream, or a pipeline for the streams it has")
        return v, a

    # -- decoding -----------------------------------------------------------------------------
    def __iter__(self) -> Iterator[Packet]:
        container = self._open()
        try:
            yield from self._decode(container)
        finally:
            container.close()

    def _decode(self, container: av.container.InputContainer) -> Iterator[Packet]:
        from streamzip._av import av
        from streamzip.sources._decode import AudioCollector, VideoSampler

        cfg = self.config
        vstream, astream = self._pick_streams(container)
        self.stats.streams = [s.type for s in (vstream, astream) if s is not None]
        origin = (container.start_time or 0) / 1e6 if container.start_time is not None else 0.0
        if vstream is not None:
            vstream.thread_type = "AUTO"
            vstream.codec_context.thread_count = cfg.threads
        if cfg.start_s > 0:
            try:
                container.seek(int((cfg.start_s + origin) * 1e6), backward=True)
            except av.error.FFmpegError:
                pass  # not seekable: decode from the start and drop what comes before start_s
        rate = float(vstream.average_rate) if vstream is not None and vstream.average_rate else None
        video = (VideoSampler(cfg, self.stats, self.stream, origin=origin, source_rate=rate)
                 if vstream is not None else None)
        audio = AudioCollector(cfg, self.stats, self.stream, origin=origin) if astream is not None else None
        demux = container.demux([s for s in (vstream, astream) if s is not None])
        produced = False
        while True:
            try:
                packet = next(demux)
            except StopIteration:
                break
            except av.error.FFmpegError as err:
                # A read error mid-file: a truncated or damaged container. Keep what decoded.
                self.stats.truncated = True
                if not produced and not (video and video.pending) and not (audio and audio.pending):
                    raise CorruptMediaError(f"the container is damaged and nothing decoded ({err})",
                                            input=self.name, stage="decode",
                                            fix="re-encode or re-download the file") from err
                break
            if video is not None and packet.stream is vstream:
                out = video.feed(packet)
            elif audio is not None and packet.stream is astream:
                out = audio.feed(packet)
            else:
                continue
            for p in out:
                produced = True
                yield p
            if self._past_end(video, audio):
                break
        for part in (video, audio):
            if part is not None:
                for p in part.finish():
                    produced = True
                    yield p
        if not produced and self.stats.corrupt_packets:
            raise CorruptMediaError(f"every packet failed to decode ({self.stats.corrupt_packets} corrupt)",
                                    input=self.name, stage="decode", fix="re-encode the file")
        if not produced and cfg.start_s == 0 and cfg.end_s is None:
            # An empty output would pass for a finished input: nothing decoded is an error.
            raise CorruptMediaError("nothing decoded: no frame or audio sample came out of the file (cut short, "
                                    "or packets that are not what its header announces)",
                                    input=self.name, stage="decode", fix="re-encode or re-copy the file")
        yield End(self.stream)

    def _past_end(self, video: VideoSampler | None, audio: AudioCollector | None) -> bool:
        end = self.config.end_s
        if end is None:
            return False
        return all(p is None or p.last_t >= end for p in (video, audio))

"""A broken-input corpus, generated on the spot (PyAV, FFmpeg's encoders, byte surgery): never downloaded.

:data:`CASES` lists every case with what the engine must make of it under the ``patch_only``
pipeline (video only) and the ``default`` pipeline (video and audio): tokens for the decodable part,
or a given :class:`~streamzip.errors.InputError` subclass whose message names the file. ``EITHER``
(tokens, or any InputError naming the file) is kept for the cuts where how much survives depends on
where the cut falls, not on the engine. :func:`build_corpus` writes them all into a folder.

The media are tiny (a few seconds at 96x64, the 8K case two frames) so that the corpus is cheap.
Run ``python tests/hardening/corpus.py [FOLDER]`` to write it and look at it by hand.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from streamzip.errors import CorruptMediaError, InputError, InputNotFoundError, NoStreamError, NotMediaError
from streamzip.synthetic import make_clip

__all__ = ["CASES", "EITHER", "TOKENS", "Case", "build_corpus", "good_clips"]

TOKENS = "tokens"
EITHER = "either"
#: an expectation: TOKENS, EITHER, or the InputError subclass(es) the input must raise.
Expect = str | type[InputError] | tuple[type[InputError], ...]

W, H, FPS, SECONDS = 96, 64, 10, 3


class Bases:
    """Valid clips that cases are cut from, made once per corpus (in a work folder)."""

    def __init__(self, work: Path) -> None:
        self.work = work
        self._cache: dict[str, bytes] = {}

    def clip(self, ext: str) -> bytes:
        """4 s of H.264 + AAC (pan then motion, a speech-like burst at 0.5-2.5 s) in container ``ext``."""
        if ext not in self._cache:
            info = make_clip(self.work / f"base.{ext}", scenes=(("pan", 2), ("motion", 2)), width=W, height=H,
                             fps=FPS, speech=[(0.5, 2.5)], seed=7)
            self._cache[ext] = Path(info.path).read_bytes()
        return self._cache[ext]


@dataclass(frozen=True)
class Case:
    """One corpus file and what each pipeline must make of it."""

    name: str
    make: Callable[[Path, Bases], object] | None  # writes the file at the path given; None: nothing there
    patch_only: Expect
    default: Expect
    #: the media seconds the file really holds: tokens must not claim more (metadata that lies).
    max_media_s: float | None = None
    #: the video tokens must keep time order (pts that jump around).
    ordered: bool = False
    #: at least this many frames must be sampled at 2 fps (decodable content must not be dropped).
    min_frames: int = 0
    #: the default pipeline must give audio tokens.
    audio: bool = False

    def expect(self, pipeline: str) -> Expect:
        return self.patch_only if pipeline == "patch_only" else self.default


# -- writers -------------------------------------------------------------------------------------
def _pattern(i: int, h: int, w: int) -> np.ndarray:
    """A cheap moving gradient (no float textures: the 8K case must stay cheap), uint8 (h, w, 3)."""
    x = (np.arange(w, dtype=np.uint16)[None, :] * 3 + i * 7) % 256
    y = (np.arange(h, dtype=np.uint16)[:, None] * 5 + i * 3) % 256
    img = np.empty((h, w, 3), np.uint8)
    img[..., 0] = x
    img[..., 1] = y
    img[..., 2] = (x + y) // 2
    return img


def write_video(path: Path, *, width: int = W, height: int = H, frames: int = FPS * SECONDS, fps: int = FPS,
                codec: str = "libx264", pix_fmt: str = "yuv420p", pts: list[int] | None = None,
                rotation: int | None = None, audio_rate: int | None = None, audio_layout: str = "mono",
                data_stream: bool = False, fmt: str | None = None, options: dict[str, str] | None = None) -> Path:
    """A video (optionally with AAC audio and a KLV data stream), frame ``i`` at ``pts[i]`` / ``fps`` s."""
    times = pts if pts is not None else list(range(frames))
    with av.open(str(path), "w", format=fmt, options=options or {}) as out:
        v = out.add_stream(codec, rate=fps)
        v.width, v.height, v.pix_fmt = width, height, pix_fmt
        v.time_base = Fraction(1, fps)
        if codec == "libx264":
            v.options = {"preset": "ultrafast", "tune": "zerolatency"}
        if rotation is not None:
            v.set_display_rotation(rotation)
        a = out.add_stream("aac", rate=audio_rate) if audio_rate else None
        if a is not None:
            a.layout = audio_layout
        d = out.add_data_stream("klv") if data_stream else None
        for i, t in enumerate(times):
            frame = av.VideoFrame.from_ndarray(_pattern(i, height, width), format="rgb24")
            frame.pts = t
            for pkt in v.encode(frame):
                out.mux(pkt)
            if d is not None and i % 5 == 0:
                pkt = av.Packet(b"\x06\x0e\x2b\x34\x02\x0b\x01\x01" + bytes(16))
                pkt.stream, pkt.time_base = d, Fraction(1, fps)
                pkt.pts = pkt.dts = t
                out.mux(pkt)
        for pkt in v.encode(None):
            out.mux(pkt)
        if a is not None:
            _write_tone(out, a, audio_rate, (max(times) + 1) / fps)  # type: ignore[arg-type]
    return path


def _write_tone(out: av.container.OutputContainer, stream: av.AudioStream, rate: int, seconds: float,
                pts_offset_s: float = 0.0) -> None:
    n = int(rate * seconds)
    t = np.arange(n) / rate
    tone = (0.2 * np.sin(2 * np.pi * 440 * t) * (0.5 + 0.5 * np.sin(2 * np.pi * 2 * t))).astype(np.float32)
    channels = stream.layout.nb_channels
    planar = np.repeat(tone[None, :], channels, axis=0)
    for i in range(0, n, 1024):
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(planar[:, i:i + 1024]), format="fltp",
                                           layout=stream.layout.name)
        frame.sample_rate = rate
        frame.pts = i + int(pts_offset_s * rate)
        for pkt in stream.encode(frame):
            out.mux(pkt)
    for pkt in stream.encode(None):
        out.mux(pkt)


def _pcm_stream(out: av.container.OutputContainer) -> av.AudioStream:
    stream = out.add_stream("pcm_s16le", rate=48000)
    stream.layout = "stereo"
    return stream


def _ts_segment(path: Path, start_s: float, seconds: float, seed: int) -> bytes:
    """An MPEG-TS segment (H.264 + AAC) whose clock starts at ``start_s``."""
    with av.open(str(path), "w", format="mpegts") as out:
        v = out.add_stream("libx264", rate=FPS)
        v.width, v.height, v.pix_fmt = W, H, "yuv420p"
        v.time_base = Fraction(1, FPS)
        v.options = {"preset": "ultrafast", "tune": "zerolatency"}
        a = out.add_stream("aac", rate=16000)
        a.layout = "mono"
        for i in range(int(seconds * FPS)):
            frame = av.VideoFrame.from_ndarray(_pattern(i + seed * 50, H, W), format="rgb24")
            frame.pts = i + int(start_s * FPS)
            for pkt in v.encode(frame):
                out.mux(pkt)
        for pkt in v.encode(None):
            out.mux(pkt)
        _write_tone(out, a, 16000, seconds, pts_offset_s=start_s)
    data = path.read_bytes()
    path.unlink()
    return data


def _subtitle_template(folder: Path) -> Path:
    srt = folder / "_template.srt"
    srt.write_text("1\n00:00:00,000 --> 00:00:00,800\nhello\n\n2\n00:00:01,000 --> 00:00:02,000\nworld\n")
    return srt


def write_with_subtitles(path: Path, folder: Path, *, video: bool) -> Path:
    """A Matroska file with a subtitle stream and an attachment (and an H.264 stream when ``video``)."""
    srt_path = _subtitle_template(folder)
    with av.open(str(srt_path)) as srt, av.open(str(path), "w") as out:
        v = None
        if video:
            v = out.add_stream("libx264", rate=FPS)
            v.width, v.height, v.pix_fmt = W, H, "yuv420p"
            v.options = {"preset": "ultrafast"}
        sub = out.add_stream_from_template(srt.streams[0])
        out.add_attachment("notes.txt", "text/plain", b"an attachment, not media\n")
        if v is not None:
            for i in range(FPS * 2):
                for pkt in v.encode(av.VideoFrame.from_ndarray(_pattern(i, H, W), format="rgb24")):
                    out.mux(pkt)
            for pkt in v.encode(None):
                out.mux(pkt)
        for pkt in srt.demux(srt.streams[0]):
            if pkt.dts is None:
                continue
            pkt.stream = sub
            out.mux(pkt)
    srt_path.unlink()
    return path


def write_data_only(path: Path) -> Path:
    """An MPEG-TS holding nothing but a KLV data stream."""
    with av.open(str(path), "w", format="mpegts") as out:
        d = out.add_data_stream("klv")
        for i in range(30):
            pkt = av.Packet(b"\x06\x0e\x2b\x34\x02\x0b\x01\x01" + bytes(32))
            pkt.stream, pkt.time_base = d, Fraction(1, 90000)
            pkt.pts = pkt.dts = i * 9000
            out.mux(pkt)
    return path


def write_garbage_body(path: Path, seed: int) -> Path:
    """A valid Matroska header announcing H.264 (and AAC), whose packets are random bytes."""
    rng = np.random.default_rng(seed)
    with av.open(str(path), "w") as out:
        v = out.add_stream("h264", rate=FPS)
        v.width, v.height = W, H
        for i in range(FPS * 2):
            pkt = av.Packet(rng.integers(0, 256, 600, dtype=np.uint8).tobytes())
            pkt.stream, pkt.time_base = v, Fraction(1, FPS)
            pkt.pts = pkt.dts = i
            out.mux(pkt)
    return path


# -- byte surgery --------------------------------------------------------------------------------
def lie_about_duration_flv(data: bytes, seconds: float) -> bytes:
    """Rewrite the ``duration`` of an FLV's onMetaData (an AMF number): FFmpeg believes it."""
    buf = bytearray(data)
    i = buf.find(b"duration")
    assert buf[i + 8] == 0, "an AMF number follows"
    buf[i + 9:i + 17] = struct.pack(">d", seconds)
    return bytes(buf)


def lie_about_size_wav(data: bytes) -> bytes:
    """Claim the largest RIFF and ``data`` chunk sizes a WAV header can hold (6 hours of 48 kHz s16 stereo)."""
    buf = bytearray(data)
    buf[4:8] = struct.pack("<I", 0xFFFFFFF0)
    i = buf.find(b"data", 12)
    buf[i + 4:i + 8] = struct.pack("<I", 0xFFFFFFE0)
    return bytes(buf)


def _ebml_vint(buf: bytes | bytearray, i: int) -> tuple[int, int]:
    """(value, length) of the EBML variable-size integer at ``buf[i]``."""
    first = buf[i]
    length = 1
    while length <= 8 and not first & (0x80 >> (length - 1)):
        length += 1
    value = first & (0xFF >> length)
    for b in buf[i + 1:i + length]:
        value = (value << 8) | b
    return value, length


def lie_about_duration_mkv(data: bytes, seconds: float) -> bytes:
    """Rewrite the Matroska Segment Info ``Duration`` (in TimecodeScale units, 1 ms by default)."""
    buf = bytearray(data)
    i = buf.find(b"\x44\x89")
    size, n = _ebml_vint(buf, i + 2)
    at = i + 2 + n
    if size == 8:
        buf[at:at + 8] = struct.pack(">d", seconds * 1000)
    else:
        buf[at:at + 4] = struct.pack(">f", seconds * 1000)
    return bytes(buf)


def jumble_mkv_clusters(data: bytes, timecodes_ms: list[int]) -> bytes:
    """Give the Matroska clusters, in file order, the ``timecodes_ms`` given (pts that jump around)."""
    buf = bytearray(data)
    i, k = 0, 0
    while k < len(timecodes_ms):
        i = buf.find(b"\x1f\x43\xb6\x75", i)
        if i < 0:
            break
        _, n = _ebml_vint(buf, i + 4)
        tc = i + 4 + n
        if buf[tc] == 0xBF:  # a CRC-32 element first (written with write_crc32=0 it is absent)
            tc += 6
        assert buf[tc] == 0xE7, "a cluster starts with its Timecode"
        size, m = _ebml_vint(buf, tc + 1)
        value = timecodes_ms[k]
        buf[tc + 1 + m:tc + 1 + m + size] = value.to_bytes(size, "big") if value < 256 ** size else b"\xff" * size
        i, k = tc, k + 1
    assert k >= 3, f"expected several clusters, found {k}"
    return bytes(buf)


def _garble(data: bytes, at: float, length: int, seed: int) -> bytes:
    buf = bytearray(data)
    mid = int(len(buf) * at)
    buf[mid:mid + length] = np.random.default_rng(seed).integers(0, 256, length, dtype=np.uint8).tobytes()
    return bytes(buf)


# -- the corpus ----------------------------------------------------------------------------------
def _bytes(fn: Callable[[Bases], bytes]) -> Callable[[Path, Bases], None]:
    return lambda path, bases: path.write_bytes(fn(bases))


def _truncated(ext: str, frac: float) -> Callable[[Path, Bases], None]:
    return _bytes(lambda b: b.clip(ext)[: int(len(b.clip(ext)) * frac)])


def _random(n: int, seed: int) -> Callable[[Path, Bases], None]:
    return _bytes(lambda b: np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8).tobytes())


def _audio_clip(rate: int, channels: int) -> Callable[[Path, Bases], None]:
    return lambda path, b: make_clip(path, scenes=(("static", 3),), video=False, sample_rate_hz=rate,
                                     channels=channels, speech=[(0.5, 2.5)])


def _flv_lies(path: Path, b: Bases) -> None:
    flv = write_video(b.work / "lies.flv", audio_rate=16000, fmt="flv")
    path.write_bytes(lie_about_duration_flv(flv.read_bytes(), 36_000.0))


def _wav_lies(path: Path, b: Bases) -> None:
    wav = b.work / "tone.wav"
    with av.open(str(wav), "w") as out:
        _write_tone(out, _pcm_stream(out), 48000, 3.0)
    path.write_bytes(lie_about_size_wav(wav.read_bytes()))


def _ts_jumps(path: Path, b: Bases) -> None:
    # Four 1.5 s segments whose clocks start at 0, 40, 1 and 3 s: forward 38 s, back 40 s, on 0.5 s.
    segs = [_ts_segment(b.work / f"seg{i}.ts", start, 1.5, seed=i) for i, start in enumerate((0.0, 40.0, 1.0, 3.0))]
    path.write_bytes(b"".join(segs))


def _mkv_jumps(path: Path, b: Bases) -> None:
    # 4 s of MJPEG in 0.4 s clusters whose timecodes go 0, 0.4, 30, 0.8, 0.1, 1.2, 60, 1.6, 2.0 s.
    mkv = write_video(b.work / "clusters.mkv", frames=40, codec="mjpeg", pix_fmt="yuvj420p",
                      options={"cluster_time_limit": "400", "write_crc32": "0"})
    path.write_bytes(jumble_mkv_clusters(mkv.read_bytes(), [0, 400, 30_000, 800, 100, 1200, 60_000, 1600, 2000]))


_VFR_PTS = [0, *np.cumsum(np.random.default_rng(3).integers(1, 12, 30)).tolist()]  # 10-110 ms apart, 100 Hz clock

CASES: list[Case] = [
    # Truncated at several offsets: what decoded stays, or a typed error when nothing could.
    Case("truncated_05pct.ts", _truncated("ts", 0.05), EITHER, EITHER, max_media_s=4.5),
    Case("truncated_40pct.ts", _truncated("ts", 0.4), TOKENS, TOKENS, max_media_s=4.5, min_frames=3),
    Case("truncated_80pct.ts", _truncated("ts", 0.8), TOKENS, TOKENS, max_media_s=4.5, min_frames=6),
    Case("truncated_02pct.mp4", _truncated("mp4", 0.02), EITHER, EITHER, max_media_s=4.5),
    Case("truncated_50pct.mp4", _truncated("mp4", 0.5), TOKENS, TOKENS, max_media_s=4.5, min_frames=3),
    Case("truncated_90pct.mp4", _truncated("mp4", 0.9), TOKENS, TOKENS, max_media_s=4.5, min_frames=6),
    Case("truncated_03pct.mkv", _truncated("mkv", 0.03), EITHER, EITHER, max_media_s=4.5),
    Case("truncated_50pct.mkv", _truncated("mkv", 0.5), TOKENS, TOKENS, max_media_s=4.5, min_frames=3),
    # The index (moov) at the end of a .mov, cut off: no track can be found.
    Case("truncated_no_index.mov", _truncated("mov", 0.9), NotMediaError, NotMediaError),
    Case("header_only.mp4", _bytes(lambda b: b.clip("mp4")[:64]), (NotMediaError, NoStreamError),
         (NotMediaError, NoStreamError)),
    # Not media at all.
    Case("random_bytes.mp4", _random(20_000, seed=0), NotMediaError, NotMediaError),
    Case("random_tiny.bin", _random(7, seed=1), NotMediaError, NotMediaError),
    Case("zero_bytes.mp4", _bytes(lambda b: b""), NotMediaError, NotMediaError),
    Case("all_nul.mkv", _bytes(lambda b: bytes(65_536)), NotMediaError, NotMediaError),
    Case("text_named.mp4", _bytes(lambda b: b"a shopping list, not a video\n" * 50), NotMediaError, NotMediaError),
    # A valid header over garbage: nothing decodes, which is an error, never an empty success.
    Case("garbage_body.mkv", lambda path, b: write_garbage_body(path, seed=1), CorruptMediaError, CorruptMediaError),
    # A valid MP4 index over an mdat two-thirds random: a few frames may survive.
    Case("garbage_mdat.mp4", _bytes(lambda b: _garble(b.clip("mp4"), 0.3, int(len(b.clip("mp4")) * 0.65), seed=2)),
         EITHER, EITHER, max_media_s=4.5),
    # Wrong or no extension: the container is probed, not guessed from the name.
    Case("ts_named.mp4", _bytes(lambda b: b.clip("ts")), TOKENS, TOKENS, min_frames=8, audio=True),
    Case("mkv_named.wav", _bytes(lambda b: b.clip("mkv")), TOKENS, TOKENS, min_frames=8, audio=True),
    Case("no_extension", _bytes(lambda b: b.clip("mp4")), TOKENS, TOKENS, min_frames=8, audio=True),
    # Streams missing, or streams that are not audio or video.
    Case("audio_only.m4a", _audio_clip(16000, 1), NoStreamError, TOKENS, audio=True),
    Case("video_only.mp4", lambda path, b: write_video(path), TOKENS, TOKENS, min_frames=6),
    Case("data_only.ts", lambda path, b: write_data_only(path), NoStreamError, NoStreamError),
    Case("subtitle_only.mkv", lambda path, b: write_with_subtitles(path, b.work, video=False),
         NoStreamError, NoStreamError),
    Case("extra_subtitle_attachment.mkv", lambda path, b: write_with_subtitles(path, b.work, video=True),
         TOKENS, TOKENS, min_frames=4),
    Case("extra_data_stream.ts", lambda path, b: write_video(path, audio_rate=16000, data_stream=True, fmt="mpegts"),
         TOKENS, TOKENS, min_frames=6, audio=True),
    # A video codec FFmpeg does not know (the MP4 sample entry renamed): the audio is still usable.
    Case("unknown_video_codec.mp4", _bytes(lambda b: b.clip("mp4").replace(b"avc1", b"zzzz")), NoStreamError, TOKENS,
         audio=True),
    # Frame rates, sizes, pixel formats, orientation.
    Case("variable_frame_rate.mkv", lambda path, b: write_video(path, fps=100, pts=_VFR_PTS), TOKENS, TOKENS,
         min_frames=4),
    Case("one_by_one.mkv", lambda path, b: write_video(path, width=1, height=1, pix_fmt="yuv444p", frames=20),
         TOKENS, TOKENS, min_frames=4),
    Case("eight_k.mp4", lambda path, b: write_video(path, width=7680, height=4320, frames=2), TOKENS, TOKENS,
         min_frames=1),
    Case("rotated_90.mp4", lambda path, b: write_video(path, rotation=90, audio_rate=16000), TOKENS, TOKENS,
         min_frames=6, audio=True),
    Case("ten_bit.mp4", lambda path, b: write_video(path, pix_fmt="yuv420p10le"), TOKENS, TOKENS, min_frames=6),
    Case("odd_size_33x17.mkv", lambda path, b: write_video(path, width=33, height=17, pix_fmt="yuv444p"),
         TOKENS, TOKENS, min_frames=6),
    Case("odd_size_35x19_ffv1.mkv", lambda path, b: write_video(path, width=35, height=19, codec="ffv1", frames=20),
         TOKENS, TOKENS, min_frames=4),
    # Metadata that lies (a 3-4 s file claiming 10 hours): tokens cover the seconds that exist.
    Case("duration_lies.flv", _flv_lies, TOKENS, TOKENS, max_media_s=3.6, min_frames=6, audio=True),
    Case("duration_lies.mkv", _bytes(lambda b: lie_about_duration_mkv(b.clip("mkv"), 36_000.0)), TOKENS, TOKENS,
         max_media_s=4.6, min_frames=8, audio=True),
    Case("size_lies.wav", _wav_lies, NoStreamError, TOKENS, max_media_s=3.6, audio=True),
    # Corrupt packets mid-stream: skipped and counted; the rest of the file is kept.
    Case("corrupt_mid.ts", _bytes(lambda b: _garble(b.clip("ts"), 0.5, 3000, seed=4)), TOKENS, TOKENS,
         min_frames=6, audio=True),
    Case("corrupt_mid.mkv", _bytes(lambda b: _garble(b.clip("mkv"), 0.5, 3000, seed=5)), TOKENS, TOKENS,
         min_frames=3, audio=True),
    Case("corrupt_mid.mp4", _bytes(lambda b: _garble(b.clip("mp4"), 0.6, 3000, seed=6)), TOKENS, TOKENS,
         min_frames=6, audio=True),
    # pts jumping forwards and backwards: TS segments spliced out of order (a broken recorder, a bad
    # cut), Matroska clusters with rewritten timecodes. Every second of content is kept, in order.
    Case("pts_jumps.ts", _ts_jumps, TOKENS, TOKENS, ordered=True, min_frames=10, audio=True),
    Case("pts_jumps.mkv", _mkv_jumps, TOKENS, TOKENS, ordered=True, min_frames=7),
    # Audio shapes.
    Case("six_channel.mp4", lambda path, b: write_video(path, audio_rate=48000, audio_layout="5.1"), TOKENS, TOKENS,
         min_frames=6, audio=True),
    Case("audio_8khz.mp4", lambda path, b: write_video(path, audio_rate=8000), TOKENS, TOKENS, min_frames=6,
         audio=True),
    Case("audio_only_8khz_6ch.m4a", _audio_clip(8000, 6), NoStreamError, TOKENS, audio=True),
    # Not files at all.
    Case("a_folder.mp4", lambda path, b: path.mkdir(), NotMediaError, NotMediaError),
    Case("missing.mp4", None, InputNotFoundError, InputNotFoundError),
]


def build_corpus(folder: Path) -> dict[str, Path]:
    """Write every case of :data:`CASES` into ``folder``; returns name -> path (``missing.mp4`` is not
    written). Bases and temporary files stay in ``folder/.work`` (hidden: not an input)."""
    folder.mkdir(parents=True, exist_ok=True)
    bases = Bases(folder / ".work")
    bases.work.mkdir(exist_ok=True)
    paths = {}
    for case in CASES:
        path = folder / case.name
        if case.make is not None:
            case.make(path, bases)
            assert path.exists(), case.name
        paths[case.name] = path
    return paths


def good_clips(folder: Path, n: int = 3) -> list[Path]:
    """``n`` valid, different clips (H.264 + AAC, a speech-like burst)."""
    folder.mkdir(parents=True, exist_ok=True)
    return [Path(make_clip(folder / f"good_{i}.mp4", scenes=(("pan", 2), ("motion", 2)), width=W, height=H, fps=FPS,
                           speech=[(0.5, 2.5)], seed=100 + i).path) for i in range(n)]


if __name__ == "__main__":  # pragma: no cover - look at the corpus by hand
    import sys
    import tempfile

    target = Path(sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp(prefix="corpus-"))
    built = build_corpus(target)
    for c in CASES:
        p = built[c.name]
        size = os.path.getsize(p) if p.is_file() else -1
        show = [getattr(e, "__name__", e) if not isinstance(e, tuple) else "|".join(x.__name__ for x in e)
                for e in (c.patch_only, c.default)]
        print(f"{c.name:32s} {size:>9d}  patch_only={show[0]}  default={show[1]}")
    print(f"{len(CASES)} cases in {target}")

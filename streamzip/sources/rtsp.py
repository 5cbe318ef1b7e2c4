"""RTSP cameras through PyAV: a source that never ends, reconnects, and reports what it lost.

What it does, and why (the measurements are in ``research/live.md``):

- **Transport and timeouts.** TCP interleaving by default (UDP loses packets on real networks). Two
  timeouts guard every read: FFmpeg's ``timeout`` socket option (µs; FFmpeg 5 renamed ``stimeout``,
  which is now silently ignored) and PyAV's ``timeout=(open_s, read_s)`` interrupt callback. Without
  them a camera that stops sending blocks ``demux()`` forever. PyAV's read timeout fires after twice
  the armed value (measured: 1 s → 2.0 s, over TCP and UDP alike), so it is armed with half of
  ``read_timeout_s``: a stall is then detected ``read_timeout_s`` after the last packet.
- **Low-latency probing.** ``analyzeduration``/``probesize`` of 0.5 s / 500 kB open a live mount in
  ~0.6 s instead of ~1.2 s. ``fflags=nobuffer`` is *not* set: it throws away the first GOP.
- **Watchdog.** Besides the read timeout (nothing arrives), the reader checks on every packet that
  each wanted stream still decodes frames (``no_frames_s``) and that their pts still advance
  (``frozen_s``: a camera re-sending one frame). Either one ends the connection and reconnects.
- **Reconnects.** A live URL that ends is a server that went away: the source reconnects with
  exponential backoff (``backoff_initial_s`` doubling to ``backoff_max_s``), forever unless
  ``max_retries`` is set. After each outage it emits a :class:`~streamzip.packets.Gap` with the stream
  time lost, before the first packet of the new connection. Stream time stays continuous: a new
  connection starts where the last one stopped plus the outage as measured on this machine.
- **Clocks.** pts restart at every connection, and can jump back when a server restarts shared media:
  each connection maps pts to stream time with its own offset, re-based (and counted) when pts jump
  back or run ahead of the wall clock by more than ``pts_jump_s``. Capture wall times come from the
  server's RTCP sender reports (``container.start_time_realtime``) when they are sane (within
  ``max_clock_skew_s`` of arrival: camera clocks are often wrong), else from arrival times;
  :meth:`RtspSource.wall_time` maps stream time to them.
- **Falling behind.** When decoding is slower than the camera, packets pile up in socket buffers and
  latency grows without bound (PyAV #956). The reader measures its backlog from pts against arrival
  times and, past ``max_lag_s``, skips video packets (demuxed, not decoded) up to a keyframe; skipped
  packets are counted. Slow *stages* are the runtime's business: it drops the oldest queued packets.
- **Threads.** The source is iterated in one thread (the runtime's reader thread), which opens and
  closes its own containers; :meth:`RtspSource.close` only sets a flag that the reader checks between
  packets (closing a container while another thread is inside ``demux()`` is a use-after-free).
- **Credentials** in the URL reach FFmpeg and nothing else: names, logs, events and errors use the
  redacted URL (``rtsp://***@host/path``), and FFmpeg's own error text (which embeds the URL) is never
  passed on.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import threading
import time
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import quote, urlsplit, urlunsplit

from streamzip._av import av
from streamzip.config import Config
from streamzip.errors import InputError, NoStreamError, StreamzipError
from streamzip.packets import AUDIO, VIDEO, End, Gap, Packet
from streamzip.sources._decode import AudioCollector, VideoSampler
from streamzip.sources._live import LiveStats, WallClock
from streamzip.sources._names import display_name, redact, stream_name
from streamzip.sources.file import DecodeConfig

__all__ = [
    "RtspConfig",
    "RtspError",
    "RtspSource",
    "SourceUnreachableError",
    "StreamAuthError",
    "StreamNotFoundError",
    "StreamTimeoutError",
    "with_credentials",
]

log = logging.getLogger(__name__)

SCHEMES = ("rtsp", "rtsps")


# -- errors -------------------------------------------------------------------------------------
class RtspError(InputError):
    """An RTSP input cannot be read (the base of the errors below)."""


class StreamNotFoundError(RtspError, LookupError):
    """The server answered, but has no stream at that path (404)."""


class StreamAuthError(RtspError, PermissionError):
    """The server wants other credentials (401/403)."""


class SourceUnreachableError(RtspError, ConnectionError):
    """Nothing answers at that host and port (refused, no route, unknown host)."""


class StreamTimeoutError(RtspError, TimeoutError):
    """The server accepted the connection but did not answer in time."""


# -- config -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RtspConfig(Config):
    # TCP: UDP loses packets on real networks ("max delay reached"), and TCP passes firewalls.
    transport: Literal["tcp", "udp", "prefer_tcp"] = "tcp"
    # 5 s to connect, describe, set up and probe: a camera on a LAN needs well under 1 s.
    open_timeout_s: float = 5.0
    # 4 s without a packet is a stall: even a 1 fps camera sends several packets in that time.
    read_timeout_s: float = 4.0
    # 0.5 s / 500 kB of probing: opens a live mount in ~0.6 s (vs ~1.2 s), streams still detected.
    probe_s: float = 0.5
    probesize_bytes: int = 500_000
    # 10 s of packets without a decoded frame of a wanted stream: broken; longer than any sane GOP.
    no_frames_s: float = 10.0
    # 10 s of frames whose pts do not advance: a frozen encoder re-sending one picture.
    frozen_s: float = 10.0
    # 0.25 s doubling to 1.5 s: a server that is back is found within 1.5 s (+ the open), unhammered.
    backoff_initial_s: float = 0.25
    backoff_max_s: float = 1.5
    # None = forever (a rebooting camera comes back); n = give up after n failed attempts in a row.
    max_retries: int | None = None
    # A live URL that ends is a server that went away: reconnect (False: end the stream with it).
    reconnect_on_end: bool = True
    # pts moving back, or ahead of the wall clock, by more than this re-bases the stream clock.
    pts_jump_s: float = 1.0
    # The server's RTCP clock is trusted within this distance of arrival time (camera clocks drift).
    max_clock_skew_s: float = 5.0
    # A reader this far behind real time (decode slower than the camera) skips video to a keyframe
    # that arrives with half the backlog: latency stays bounded; None = never skip.
    max_lag_s: float | None = 3.0
    # 1 frame per packet: a window closes as soon as the next window's first frame is decoded.
    batch_frames: int = 1
    # 0.5 s audio packets: half the file default, for latency.
    audio_chunk_s: float = 0.5
    # Stop after this much stream time; None = until closed.
    max_duration_s: float | None = None

    def check(self) -> Iterator[tuple[str, str]]:
        for name in ("open_timeout_s", "read_timeout_s", "no_frames_s", "frozen_s", "backoff_initial_s",
                     "backoff_max_s", "pts_jump_s", "max_clock_skew_s"):
            v = getattr(self, name)
            if not (0 < v <= 3600 and math.isfinite(v)):
                yield name, f"must be in (0, 3600] seconds, got {v}"
        if not 0 <= self.probe_s <= 30:
            yield "probe_s", f"must be in [0, 30] seconds, got {self.probe_s}"
        if not 32 <= self.probesize_bytes <= 50_000_000:
            yield "probesize_bytes", f"must be in [32, 50000000], got {self.probesize_bytes}"
        if self.backoff_max_s < self.backoff_initial_s:
            yield "backoff_max_s", f"must be >= backoff_initial_s ({self.backoff_initial_s}), got {self.backoff_max_s}"
        if self.max_retries is not None and self.max_retries < 0:
            yield "max_retries", f"must be >= 0 or null (forever), got {self.max_retries}"
        if not 1 <= self.batch_frames <= 1024:
            yield "batch_frames", f"must be in [1, 1024], got {self.batch_frames}"
        if not 0.01 <= self.audio_chunk_s <= 60:
            yield "audio_chunk_s", f"must be in [0.01, 60], got {self.audio_chunk_s}"
        if self.max_duration_s is not None and not self.max_duration_s > 0:
            yield "max_duration_s", f"must be > 0 or null, got {self.max_duration_s}"
        if self.max_lag_s is not None and not 0 < self.max_lag_s <= 3600:
            yield "max_lag_s", f"must be in (0, 3600] seconds or null, got {self.max_lag_s}"


def with_credentials(url: str, username: str | None, password: str | None) -> str:
    """``url`` with ``username:password@`` added, unless it already carries credentials."""
    parts = urlsplit(url)
    if not username or parts.username:
        return url
    userinfo = quote(username, safe="") + (f":{quote(password, safe='')}" if password else "")
    return urlunsplit((parts.scheme, f"{userinfo}@{parts.netloc}", parts.path, parts.query, parts.fragment))


class _Stall(Exception):
    """The watchdog gave up on a connection."""


Opener = Callable[..., Any]


# -- the source ---------------------------------------------------------------------------------
class RtspSource:
    """Decode an RTSP camera into packets, reconnecting forever (or ``max_retries`` times).

    Args:
        url: ``rtsp://[user:password@]host[:port]/path`` (``rtsps://`` for TLS).
        decode: sampling and sizes (the pipeline's :class:`DecodeConfig`); its ``batch_frames`` and
            ``audio_chunk_s`` are replaced by the live ones of ``config``, its selection ignored.
        config: :class:`RtspConfig`.
        stream: the stream id packets carry (default: the URL's last path part).
        want_video / want_audio: which modalities the pipeline uses.
        opener: ``av.open`` (tests pass a fake with the same signature).

    Iterating yields :class:`VideoFrames`, :class:`AudioChunk` and :class:`Gap` packets until
    :meth:`close` is called (or ``max_duration_s`` passes), then :class:`End`. When ``max_retries``
    failures in a row are exceeded it raises the last :class:`RtspError`.
    """

    def __init__(self, url: str, decode: DecodeConfig | None = None, config: RtspConfig | None = None, *,
                 stream: str | None = None, want_video: bool = True, want_audio: bool = True,
                 opener: Opener | None = None) -> None:
        parts = urlsplit(url)
        if parts.scheme.lower() not in SCHEMES or not parts.hostname:
            raise InputError(f"not an RTSP URL: {display_name(url)!r}", input=display_name(url), stage="source",
                             fix="give rtsp://[user:password@]host[:port]/path")
        self._url = url
        self.name = display_name(url)
        self.stream = stream or stream_name(url)
        self.config = config or RtspConfig()
        base = decode or DecodeConfig()
        self.decode = dataclasses.replace(base, start_s=0.0, end_s=None, batch_frames=self.config.batch_frames,
                                          audio_chunk_s=self.config.audio_chunk_s)
        self.want_video = want_video and self.decode.streams in ("auto", "video", "both")
        self.want_audio = want_audio and self.decode.streams in ("auto", "audio", "both")
        self.stats = LiveStats()
        self.clock = WallClock()
        self._opener = opener or av.open
        self._stop = threading.Event()
        self._host = parts.hostname + (f":{parts.port}" if parts.port else "")
        # State that crosses connections.
        self._last_t: float | None = None  # stream time of the last frame seen
        self._last_mono: float | None = None  # when it arrived
        self._gap_from: float | None = None  # stream time where the current outage began
        self._lost_reason = ""

    # -- control ------------------------------------------------------------------------------
    def close(self) -> None:
        """Ask the reader to stop: it finishes the packet at hand (at most ``read_timeout_s`` when
        blocked), closes its container and yields :class:`End`. Safe from any thread."""
        self._stop.set()

    @property
    def closed(self) -> bool:
        return self._stop.is_set()

    def wall_time(self, t: float) -> float | None:
        """Capture wall time (Unix seconds) of stream time ``t``; None before the first frame."""
        return self.clock.wall_time(t)

    # -- opening ------------------------------------------------------------------------------
    def _options(self) -> dict[str, str]:
        cfg = self.config
        opts = {"timeout": str(int(cfg.read_timeout_s * 1e6)),  # µs, socket I/O (not the dead 'stimeout')
                "analyzeduration": str(int(cfg.probe_s * 1e6)), "probesize": str(cfg.probesize_bytes)}
        if cfg.transport == "prefer_tcp":
            opts["rtsp_flags"] = "prefer_tcp"
        else:
            opts["rtsp_transport"] = cfg.transport
        if self.want_video and not self.want_audio:
            opts["allowed_media_types"] = "video"
        elif self.want_audio and not self.want_video:
            opts["allowed_media_types"] = "audio"
        return opts

    def _open(self) -> Any:
        cfg = self.config
        t0 = time.monotonic()
        try:
            # PyAV's read timeout fires at twice the armed value (see the module docstring).
            return self._opener(self._url, options=self._options(),
                                timeout=(cfg.open_timeout_s, cfg.read_timeout_s / 2))
        except av.error.FFmpegError as err:
            # FFmpeg's text embeds the URL (and its credentials): never chain or repeat it.
            raise self._open_error(err, time.monotonic() - t0) from None
        except OSError as err:
            raise SourceUnreachableError(f"cannot reach {self._host} ({redact(err.strerror or type(err).__name__)})",
                                         input=self.name, stage="source",
                                         fix="check the host name and the network") from None

    def _open_error(self, err: av.error.FFmpegError, elapsed_s: float = 0.0) -> RtspError:
        what = redact(err.strerror or type(err).__name__)
        path = urlsplit(self._url).path or "/"
        kw: dict[str, Any] = {"input": self.name, "stage": "source"}
        if isinstance(err, av.error.HTTPNotFoundError):
            return StreamNotFoundError(f"the RTSP server at {self._host} has no stream at path {path!r} ({what})",
                                       fix="check the path after host:port (the camera's manual or web page "
                                           "lists its stream paths)", **kw)
        if isinstance(err, (av.error.HTTPUnauthorizedError, av.error.HTTPForbiddenError)):
            given = "the credentials given were refused" if urlsplit(self._url).username else "it needs credentials"
            return StreamAuthError(f"the RTSP server at {self._host} refused access: {given} ({what})",
                                   fix="give user:password in the URL (rtsp://user:password@host/path) or set "
                                       "STREAMZIP_RTSP_USERNAME and STREAMZIP_RTSP_PASSWORD", **kw)
        if isinstance(err, av.error.ConnectionRefusedError):
            return SourceUnreachableError(f"connection refused by {self._host}: nothing listens there ({what})",
                                          fix="check the host and port (RTSP's default port is 554) and that the "
                                              "camera or server is running", **kw)
        # A server that accepts the connection but never answers: the socket timeout surfaces as
        # "invalid data" (or EOF) from the RTSP handshake, after the read timeout.
        silent = isinstance(err, (av.error.InvalidDataError, av.error.EOFError)) and \
            elapsed_s >= 0.9 * min(self.config.read_timeout_s, self.config.open_timeout_s)
        if silent or isinstance(err, (av.error.TimeoutError, av.error.ExitError)):
            return StreamTimeoutError(f"{self._host} accepted the connection but did not answer within "
                                      f"{elapsed_s:.1f} s ({what})",
                                      fix="check that the camera is up and not overloaded; raise open_timeout_s "
                                          "for slow links", **kw)
        if isinstance(err, (av.error.OSError, av.error.ConnectionResetError, av.error.ConnectionAbortedError)):
            return SourceUnreachableError(f"cannot reach {self._host} ({what})",
                                          fix="check the host, the port and the network", **kw)
        return RtspError(f"cannot open the RTSP stream ({type(err).__name__}: {what})",
                         fix="check the URL and that it plays in another client (ffplay, VLC)", **kw)

    # -- the reader loop ----------------------------------------------------------------------
    def __iter__(self) -> Iterator[Packet]:
        cfg = self.config
        failures = 0
        delay = cfg.backoff_initial_s
        while not self._stop.is_set():
            self.stats.state = "connecting" if not self.stats.connects else "reconnecting"
            t_open = time.monotonic()
            try:
                container = self._open()
            except RtspError as err:
                failures += 1
                self.stats.open_failures += 1
                self.stats.last_error = str(err)
                self.stats.event("open_failed", error=err.message, attempt=failures)
                if cfg.max_retries is not None and failures > cfg.max_retries:
                    self.stats.state = "failed"
                    log.error("%s: giving up after %d failed attempts: %s", self.name, failures, err.message)
                    raise
                # The same failure again and again (a camera off for hours): warn at 1, 2, 4, 8… attempts.
                level = logging.WARNING if failures & (failures - 1) == 0 else logging.DEBUG
                log.log(level, "%s: %s; retry %d in %.2g s", self.name, err.message, failures, delay)
                if self._stop.wait(delay):
                    break
                delay = min(delay * 2, cfg.backoff_max_s)
                continue
            session = _Session(self, container, t_open)
            try:
                outcome = yield from session.run()
            except StreamzipError as err:  # the camera lacks a stream the pipeline needs: permanent
                self.stats.state, self.stats.last_error = "failed", str(err)
                raise
            finally:
                container.close()  # in this thread, the one that opened it
            yield from session.finish()
            if session.frames:
                failures, delay = 0, cfg.backoff_initial_s
            else:
                failures += 1
            if outcome == "stopped":
                break
            self._begin_outage(outcome)
            if outcome == "ended" and not cfg.reconnect_on_end:
                break
            if cfg.max_retries is not None and failures > cfg.max_retries:
                self.stats.state = "failed"
                raise RtspError(f"the stream keeps failing without a frame ({outcome}) after {failures} attempts",
                                input=self.name, stage="source", fix="check that the stream plays in another "
                                                                     "client (ffplay, VLC)")
            log.warning("%s: %s; reconnecting in %.2g s", self.name, self._lost_reason, delay)
            self.stats.state = "reconnecting"
            if self._stop.wait(delay):
                break
            delay = min(delay * 2, cfg.backoff_max_s)
        self.stats.state = "stopped"
        yield End(self.stream)

    def _begin_outage(self, outcome: str) -> None:
        if self._gap_from is None and self._last_t is not None:
            self._gap_from = self.stats.duration_s
        self.stats.event("lost", reason=self._lost_reason, outcome=outcome)

    # -- called by the session ----------------------------------------------------------------
    def _anchor(self, now_mono: float) -> tuple[float, Gap | None]:
        """Stream time of a new connection's first frame, and the gap its outage left."""
        if self._last_t is None or self._last_mono is None:
            return 0.0, None
        end = self.stats.duration_s
        base = max(end, self._last_t + (now_mono - self._last_mono))
        gap = None
        start = self._gap_from if self._gap_from is not None else end
        if base > start + 1e-6:
            gap = Gap(self.stream, start, base, reason=self._lost_reason)
            self.stats.gaps += 1
            self.stats.gap_s += base - start
        self._gap_from = None
        return base, gap


class _Session:
    """One connection: picks the streams, decodes, watches, maps pts to stream time."""

    def __init__(self, src: RtspSource, container: Any, t_open: float) -> None:
        self.src, self.container, self.cfg = src, container, src.config
        self.t_open = t_open
        self.frames = 0
        self.video: _LiveVideo | None = None
        self.audio: _LiveAudio | None = None
        self.vstream: Any = None
        self.astream: Any = None
        self.clock: _PtsClock | None = None
        self.gap: Gap | None = None
        self.sender_ok: bool | None = None  # whether the server's RTCP clock is trusted
        self.best_delay: float | None = None  # least (arrival - pts) seen: the delay with no backlog
        self.last_pkt_pts: float | None = None
        self.skipping = False  # catching up: video not decoded until a keyframe
        self.last_frame: dict[str, float] = {}
        self.last_advance: dict[str, float] = {}
        self.last_pts: dict[str, float] = {}

    def _pick(self) -> None:
        src, c = self.src, self.container
        vids = [s for s in c.streams.video if s.codec_context is not None]
        auds = [s for s in c.streams.audio if s.codec_context is not None]
        self.vstream = vids[0] if (vids and src.want_video) else None
        self.astream = auds[0] if (auds and src.want_audio) else None
        if self.vstream is None and self.astream is None:
            have = ", ".join(f"{s.type}:{s.codec_context.name}" for s in c.streams
                             if s.type in ("video", "audio") and s.codec_context is not None) or "none"
            want = " or ".join(m for m, w in (("video", src.want_video), ("audio", src.want_audio)) if w)
            raise NoStreamError(f"the camera sends no {want} stream (it has: {have})", input=src.name,
                                stage="source", fix="use a pipeline for the streams the camera sends")
        cfg, stats = src.decode, src.stats
        stats.streams = [s.type for s in (self.vstream, self.astream) if s is not None]
        if self.vstream is not None:
            self.vstream.thread_type = "AUTO"
            self.vstream.codec_context.thread_count = cfg.threads
            rate = float(self.vstream.average_rate) if self.vstream.average_rate else None
            self.video = _LiveVideo(cfg, stats, src.stream, source_rate=rate, session=self)
        if self.astream is not None:
            self.audio = _LiveAudio(cfg, stats, src.stream, session=self)
        now = time.monotonic()
        for m in stats.streams:
            self.last_frame[m] = self.last_advance[m] = now

    def run(self) -> Generator[Packet, None, str]:
        src, stats = self.src, self.src.stats
        self._pick()
        stats.connects += 1
        if stats.connects > 1:
            stats.reconnects += 1
        stats.state = "connected"
        stats.last_error = None
        desc = ", ".join(f"{s.type} {s.codec_context.name}" for s in (self.vstream, self.astream) if s is not None)
        open_s = time.monotonic() - self.t_open
        stats.event("connected", open_s=round(open_s, 3), streams=desc)
        log.info("%s: connected (%s, %s) in %.2f s", src.name, self.cfg.transport, desc, open_s)
        streams = [s for s in (self.vstream, self.astream) if s is not None]
        demux = self.container.demux(streams)
        while True:
            if src._stop.is_set():
                return "stopped"
            try:
                packet = next(demux)
            except StopIteration:
                src._lost_reason = "the server ended the stream"
                return "ended"
            except av.error.FFmpegError as err:
                if isinstance(err, (av.error.ExitError, av.error.TimeoutError)):
                    stats.stalls += 1
                    src._lost_reason = f"no data for {self.cfg.read_timeout_s:g} s (read timeout)"
                    stats.event("stalled", reason=src._lost_reason)
                    return "stalled"
                src._lost_reason = f"read error ({type(err).__name__}: {redact(err.strerror or '')})"
                return "error"
            if packet.stream is self.vstream and self.video is not None:
                if self._behind(packet):
                    stats.skipped_packets += 1
                    continue
                out = self.video.feed(packet)
            elif packet.stream is self.astream and self.audio is not None:
                out = self.audio.feed(packet)
            else:
                continue
            if self.gap is not None and out:
                yield self.gap
                self.gap = None
            yield from out
            try:
                self._watch()
            except _Stall as why:
                stats.stalls += 1
                src._lost_reason = str(why)
                stats.event("stalled", reason=src._lost_reason)
                return "stalled"
            limit = self.cfg.max_duration_s
            if limit is not None and stats.duration_s >= limit:
                return "stopped"

    def finish(self) -> list[Packet]:
        out: list[Packet] = []
        for part in (self.video, self.audio):
            if part is not None:
                out.extend(part.finish())
        if self.gap is not None:
            if out:
                out.insert(0, self.gap)
            else:  # nothing came through this connection: the outage goes on
                self.src._gap_from = self.gap.start_s
                self.src.stats.gaps -= 1
                self.src.stats.gap_s -= self.gap.end_s - self.gap.start_s
            self.gap = None
        return out

    # -- clock and watchdog -------------------------------------------------------------------
    def frame_seen(self, modality: str, raw: float | None, t: float) -> None:
        """Book-keeping for every decoded frame: watchdog times, wall clock, stream end."""
        src = self.src
        now = time.monotonic()
        self.frames += 1
        self.last_frame[modality] = now
        if raw is not None:
            prev = self.last_pts.get(modality)
            if prev is None or raw > prev:
                self.last_advance[modality] = now
            self.last_pts[modality] = raw
        if src._last_t is None or t > src._last_t:  # frozen frames do not move the stream on: an outage
            src._last_t, src._last_mono = t, now
        wall = time.time()
        srt = getattr(self.container, "start_time_realtime", None)
        if srt and raw is not None:
            sender = srt / 1e6 + raw
            if self.sender_ok is None:
                # Judged once per connection, on the first report: later, a growing difference is this
                # reader falling behind (which the clock must show), not the server's clock.
                self.sender_ok = abs(sender - wall) <= self.cfg.max_clock_skew_s
                if not self.sender_ok:
                    log.warning("%s: the server's clock is %.1f s off this machine's; using arrival times",
                                src.name, sender - wall)
                    src.stats.event("clock_skew", offset_s=round(sender - wall, 3))
            if self.sender_ok:
                src.clock.observe(t, sender, exact=True)
                src.stats.clock = "sender"
                return
            src.stats.clock = "arrival (server clock off)"
        elif src.stats.clock is None:
            src.stats.clock = "arrival"
        src.clock.observe(t, wall, exact=False)

    def stream_time(self, modality: str, raw: float | None, step_s: float) -> float | None:
        """Stream time of a frame with pts ``raw`` seconds (None: unknown)."""
        if self.clock is None:
            base, gap = self.src._anchor(time.monotonic())
            start = self.container.start_time
            origin = start / 1e6 if start is not None else (raw if raw is not None else 0.0)
            self.clock = _PtsClock(base, origin, self.cfg.pts_jump_s)
            self.gap = gap
            self.src.clock.new_segment()
        if raw is None:
            return None
        t, rebased = self.clock.map(modality, raw, time.monotonic(), step_s)
        if rebased:
            self.src.stats.pts_rebased += 1
            self.src.stats.event("pts_rebased", modality=modality)
            self.src.clock.new_segment()
        return t

    def _behind(self, packet: Any) -> bool:
        """Whether to skip this video packet because the reader fell behind real time.

        The backlog is how much later than the least delayed packet of the connection this one
        arrives, relative to its pts (no clock needed). Past ``max_lag_s``, video is skipped (demuxed,
        not decoded: cheap) up to a keyframe that arrives with less than half that backlog."""
        limit = self.cfg.max_lag_s
        if limit is None:
            return False
        if packet.pts is not None and packet.time_base is not None:
            pts_s = packet.pts * float(packet.time_base)
            if self.last_pkt_pts is not None and self.last_pkt_pts - pts_s > self.cfg.pts_jump_s:
                self.best_delay = None  # the server restarted its clock: start over
            now = time.monotonic()
            if self.last_pkt_pts is None or pts_s > self.last_pkt_pts:
                self.last_advance[VIDEO] = now  # the frozen-pts watchdog also sees packets not decoded
            self.last_pkt_pts = pts_s
            delay = now - pts_s
            if self.best_delay is None or delay < self.best_delay:
                self.best_delay = delay
            lag = delay - self.best_delay
            self.src.stats.lag_s = lag
        else:
            lag = self.src.stats.lag_s
        if not self.skipping:
            if lag <= limit:
                return False
            self.skipping = True
            self.src.stats.catch_ups += 1
            self.src.stats.event("catch_up", lag_s=round(lag, 3))
            log.warning("%s: %.1f s behind real time: skipping video to a keyframe", self.src.name, lag)
        if packet.is_keyframe and lag < limit / 2:
            self.skipping = False
            return False
        return True

    def _watch(self) -> None:
        now = time.monotonic()
        for m in self.last_frame:
            idle = now - self.last_frame[m]
            if idle > self.cfg.no_frames_s:
                raise _Stall(f"no {m} frame decoded for {idle:.1f} s")
            frozen = now - self.last_advance[m]
            if frozen > self.cfg.frozen_s:
                raise _Stall(f"{m} pts frozen for {frozen:.1f} s")


class _PtsClock:
    """Maps one connection's pts (seconds) to stream time, per modality, re-basing on jumps."""

    def __init__(self, base_t: float, origin_s: float, jump_s: float) -> None:
        self.base_t, self.origin_s, self.jump_s = base_t, origin_s, jump_s
        self.offset: dict[str, float] = {}
        self.last: dict[str, tuple[float, float, float]] = {}  # modality -> (raw, t, mono)

    def map(self, modality: str, raw: float, now_mono: float, step_s: float) -> tuple[float, bool]:
        off = self.offset.setdefault(modality, self.base_t - self.origin_s)
        rebased = False
        prev = self.last.get(modality)
        if prev is not None:
            p_raw, p_t, p_mono = prev
            elapsed = now_mono - p_mono
            if p_raw - raw > self.jump_s:  # back: the server restarted its clock
                off, rebased = p_t + step_s - raw, True
            elif (raw - p_raw) - elapsed > self.jump_s:  # ahead of the wall clock
                off, rebased = p_t + max(elapsed, step_s) - raw, True
            self.offset[modality] = off
        t = raw + off
        self.last[modality] = (raw, t, now_mono)
        return t, rebased


class _LiveVideo(VideoSampler):
    def __init__(self, *args: Any, session: _Session, source_rate: float | None = None, **kw: Any) -> None:
        super().__init__(*args, source_rate=source_rate, **kw)
        self.session = session
        # The time one source frame stands for: estimates a missing pts, steps a re-based clock.
        self.rate_step = 1.0 / source_rate if source_rate and 1.0 <= source_rate <= 240.0 else 1.0 / 25.0

    def frame_time(self, frame: av.VideoFrame) -> float:
        raw = self.pts_seconds(frame)
        t = self.session.stream_time(VIDEO, raw, self.rate_step)
        if t is None or math.isnan(t):
            self.stats.pts_fixed += 1
            t = (self.last_t + self.rate_step) if self.last_t > -math.inf else self.session.clock.base_t  # type: ignore[union-attr]
        elif t < self.last_t:
            self.stats.pts_fixed += 1
            t = self.last_t
        self.session.frame_seen(VIDEO, raw, t)
        return t


class _LiveAudio(AudioCollector):
    def __init__(self, *args: Any, session: _Session, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.session = session

    def frame_time(self, frame: av.AudioFrame) -> float | None:
        raw = None
        if frame.pts is not None and frame.time_base is not None:
            raw = float(frame.pts * frame.time_base)
        step = frame.samples / frame.sample_rate if frame.sample_rate else 0.02
        t = self.session.stream_time(AUDIO, raw, step)
        if t is None:  # no pts: right after the previous frame, or at the connection's start
            nxt = self.next_t
            t_seen = nxt if nxt is not None else self.session.clock.base_t  # type: ignore[union-attr]
            t = None if nxt is not None else t_seen
        else:
            t_seen = t
        self.session.frame_seen(AUDIO, raw, t_seen)
        return t

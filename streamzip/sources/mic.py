"""Microphones: an ALSA device through PyAV, or any PortAudio device through ``sounddevice``.

Both backends yield the packets a file gives (:class:`~streamzip.packets.AudioChunk`, mono at the
pipeline's ``sample_rate_hz``, through the same resampler and chunker as files:
:class:`~streamzip.sources._decode.AudioCollector`), plus a :class:`~streamzip.packets.Gap` where
samples were lost (a device overrun, a reopen), and :class:`~streamzip.packets.End` once closed.

- **alsa** (default; no extra needed): ``av.open(device, format="alsa")``. The PyAV wheel bundles its
  own libasound, which looks for its configuration under the wheel's build prefix and so finds none of
  the system's plugins ("Unknown PCM pulse"). :func:`alsa_environment` points it at the system's
  ``alsa.conf`` and plugin folder (``ALSA_CONFIG_PATH``, ``ALSA_PLUGIN_DIR``) unless they are set
  already; with Debian's ``libasound2-plugins``, ``pulse`` and ``pulse:SOURCE`` then reach PulseAudio
  (or PipeWire's Pulse server). The wheel has no ``pulse`` input format of its own. Frame pts are
  wall-clock µs, so capture times come from the device. Opening takes 1.3–1.9 s (ALSA plugin setup).
- **sounddevice** (``pip install 'streamzip[live]'`` and Debian's ``libportaudio2``): opens in
  milliseconds; capture times are arrival times. ``pulse:SOURCE`` sets ``PULSE_SOURCE`` for the
  process (PortAudio only lists ALSA's plain ``pulse`` device).

Stream time counts samples (the device's clock), not timestamps, which jitter by milliseconds: a new
chunk and a :class:`Gap` start only where the timestamps show a hole longer than ``max_hole_s``.
:meth:`MicSource.close` only asks the reader to stop; the device is closed by the thread that opened it.

Losing the device. A read that fails or ends, or no samples for ``read_timeout_s``, ends the
connection: the audio held is delivered, the source waits ``backoff_s`` (doubling after each failed
reopen, up to ``backoff_max_s``) and reopens, and once samples
come again it yields a ``Gap`` ("device reopened") over the time away (between the arrivals of the
blocks either side, so stream time keeps pace with the wall clock) and goes on; ``max_retries`` failures in a row end it with a
:class:`MicError`. Seen with the ALSA pulse plugin: a PulseAudio server that dies fails the read at
once (EIO) and each reopen at once (connection refused) until it is back; a server that hangs
(SIGSTOP) blocks the plugin's open and read for as long as it hangs, deaf to PyAV's timeouts. So the
ALSA device is opened, read and closed in a thread of its own (:meth:`MicSource._pump`) that hands
frames over a queue: the source waits with its own timeouts, gives up on a hung call, and stops on
:meth:`~MicSource.close` at once. A pump stuck in a hung call closes its device and ends when the call
returns; meanwhile no other is started (a reopen fails as "still hangs"), so a hung server costs at
most one thread.
"""

from __future__ import annotations

import dataclasses
import glob
import logging
import math
import os
import queue
import threading
import time
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from streamzip._av import av
from streamzip.config import Config
from streamzip.errors import DependencyError, InputError
from streamzip.packets import End, Gap, Packet
from streamzip.sources._decode import AudioCollector
from streamzip.sources._live import LiveStats, WallClock
from streamzip.sources.file import DecodeConfig

__all__ = ["MicConfig", "MicError", "MicSource", "alsa_environment", "parse_mic"]

log = logging.getLogger(__name__)

#: Where Debian-like systems keep ALSA's configuration and plugins.
ALSA_CONF = "/usr/share/alsa/alsa.conf"
ALSA_PLUGIN_GLOBS = ("/usr/lib/*-linux-gnu*/alsa-lib", "/usr/lib64/alsa-lib", "/usr/lib/alsa-lib")
#: Blocks held between a device's reader and the source (ALSA hands over 8 ms blocks, PortAudio 20 ms).
QUEUE_BLOCKS = 1000
_OPENED, _ENDED, _TIMEOUT = object(), object(), object()  # what the ALSA reader hands over besides blocks


class MicError(InputError):
    """A microphone cannot be opened or read."""


@dataclass(frozen=True)
class MicConfig(Config):
    # alsa: through PyAV, no extra package; sounddevice: PortAudio, opens faster (needs the live extra).
    backend: Literal["alsa", "sounddevice"] = "alsa"
    # "default": the system's default input; "pulse:SOURCE" picks a PulseAudio source; "hw:0" a card.
    device: str = "default"
    # Ask the device for the pipeline's rate (16 kHz): no resampling on our side.
    capture_rate_hz: int = 16000
    channels: int = 1
    # 0.5 s packets: latency without per-packet overhead.
    chunk_s: float = 0.5
    # Opening ALSA through the pulse plugin takes up to ~2 s.
    open_timeout_s: float = 5.0
    # No samples for 2 s: the device stalled (unplugged, server gone): reopen.
    read_timeout_s: float = 2.0
    # Timestamps ahead of the sample count by more than this: samples were lost, report a gap.
    max_hole_s: float = 0.1
    # Reopen attempts in a row before giving up; None = forever.
    max_retries: int | None = 5
    # 0.5 s doubling to 2 s: the default 5 reopens wait for a device (or its sound server restarting)
    # for 7.5 s, unhammered; a device missing from the start is reported as soon.
    backoff_s: float = 0.5
    backoff_max_s: float = 2.0
    # Stop after this much stream time; None = until closed.
    max_duration_s: float | None = None

    def check(self) -> Iterator[tuple[str, str]]:
        if not 4000 <= self.capture_rate_hz <= 192000:
            yield "capture_rate_hz", f"must be in [4000, 192000], got {self.capture_rate_hz}"
        if not 1 <= self.channels <= 32:
            yield "channels", f"must be in [1, 32], got {self.channels}"
        if not 0.01 <= self.chunk_s <= 60:
            yield "chunk_s", f"must be in [0.01, 60], got {self.chunk_s}"
        for name in ("open_timeout_s", "read_timeout_s", "max_hole_s", "backoff_s", "backoff_max_s"):
            v = getattr(self, name)
            if not (0 < v <= 3600 and math.isfinite(v)):
                yield name, f"must be in (0, 3600] seconds, got {v}"
        if self.backoff_max_s < self.backoff_s:
            yield "backoff_max_s", f"must be >= backoff_s ({self.backoff_s}), got {self.backoff_max_s}"
        if self.max_retries is not None and self.max_retries < 0:
            yield "max_retries", f"must be >= 0 or null (forever), got {self.max_retries}"
        if self.max_duration_s is not None and not self.max_duration_s > 0:
            yield "max_duration_s", f"must be > 0 or null, got {self.max_duration_s}"


def alsa_environment() -> dict[str, str]:
    """Point the wheel's bundled libasound at the system's ALSA config and plugins (process-wide,
    only where unset and present). Returns what it set."""
    done: dict[str, str] = {}
    if "ALSA_CONFIG_PATH" not in os.environ and os.path.exists(ALSA_CONF):
        os.environ["ALSA_CONFIG_PATH"] = done["ALSA_CONFIG_PATH"] = ALSA_CONF
    if "ALSA_PLUGIN_DIR" not in os.environ:
        for pattern in ALSA_PLUGIN_GLOBS:
            found = sorted(glob.glob(pattern))
            if found:
                os.environ["ALSA_PLUGIN_DIR"] = done["ALSA_PLUGIN_DIR"] = found[0]
                break
    if done:
        log.debug("ALSA environment for the bundled libasound: %s", done)
    return done


def parse_mic(spec: str) -> tuple[str, str] | None:
    """``mic``, ``mic:DEVICE``, ``alsa:DEVICE``, ``sounddevice:DEVICE`` → (backend, device); else None."""
    head, sep, tail = spec.partition(":")
    if head == "mic":
        return "alsa", tail or "default"
    if head in ("alsa", "sounddevice") and sep:
        return head, tail or "default"
    return None


class MicSource:
    """Decode a microphone into :class:`AudioChunk` packets until closed.

    Args:
        device: overrides ``config.device``.
        decode: the pipeline's :class:`DecodeConfig` (``sample_rate_hz``).
        config: :class:`MicConfig`.
        stream: the stream id (default ``mic``).
    """

    def __init__(self, device: str | None = None, decode: DecodeConfig | None = None,
                 config: MicConfig | None = None, *, stream: str | None = None) -> None:
        cfg = config or MicConfig()
        if device is not None:
            cfg = dataclasses.replace(cfg, device=device)
        self.config = cfg
        self.decode = dataclasses.replace(decode or DecodeConfig(), start_s=0.0, end_s=None,
                                          audio_chunk_s=cfg.chunk_s)
        self.name = f"{cfg.backend}:{cfg.device}"
        self.stream = stream or "mic"
        self.stats = LiveStats()
        self.clock = WallClock()
        self._stop = threading.Event()
        self._t = 0.0  # stream time of the next sample (the sample count)
        self._resync = True  # the next block starts a new chunk at self._t (start, after a gap)
        self._pump_thread: threading.Thread | None = None  # the ALSA reader thread (see _pump)
        self._pump_since = 0.0  # when it last opened or handed over a block

    def close(self) -> None:
        """Ask the reader to stop (it closes the device in its own thread). Safe from any thread."""
        self._stop.set()

    def wall_time(self, t: float) -> float | None:
        """Capture wall time (Unix seconds) of stream time ``t``."""
        return self.clock.wall_time(t)

    def __iter__(self) -> Iterator[Packet]:
        cfg = self.config
        failures = 0
        delay = cfg.backoff_s  # the wait before the next reopen
        gap_from: float | None = None  # stream time where the current outage began
        last_mono = 0.0  # when the last block arrived
        while not self._stop.is_set():
            self.stats.state = "connecting" if not self.stats.connects else "reconnecting"
            collector = AudioCollector(self.decode, self.stats, self.stream)
            opened = False
            reader = self._alsa() if cfg.backend == "alsa" else self._sounddevice()
            try:
                for samples_or_frame, stamp in reader:
                    now = time.monotonic()
                    if not opened:
                        opened = True
                        failures, delay = 0, cfg.backoff_s
                        self.stats.connects += 1
                        self.stats.reconnects = self.stats.connects - 1
                        self.stats.state = "connected"
                        self.stats.event("connected", device=cfg.device, backend=cfg.backend)
                        if gap_from is not None:  # samples lost while away: the time it took
                            self._t = self._resume_at(gap_from, now - last_mono, samples_or_frame)
                            yield self._gap(gap_from, self._t, "device reopened")
                            gap_from = None
                            self._resync = True
                            self.clock.new_segment()
                    last_mono = now
                    yield from self._take(collector, samples_or_frame, stamp)
                    if self._stop.is_set() or (cfg.max_duration_s is not None and self._t >= cfg.max_duration_s):
                        self._stop.set()
                        break
                else:
                    if not self._stop.is_set():
                        raise MicError("the device stopped delivering samples", input=self.name, stage="source",
                                       fix="check that the device is still there")
            except MicError as err:
                failures += 1
                if not opened:
                    self.stats.open_failures += 1
                self.stats.last_error = str(err)
                self.stats.event("lost" if opened else "open_failed", error=err.message, attempt=failures)
                yield from collector.finish()  # the audio before the loss is delivered, whatever comes next
                if gap_from is None and self.stats.connects:
                    gap_from = self._t
                if cfg.max_retries is not None and failures > cfg.max_retries:
                    self.stats.state = "failed"
                    if not self.stats.connects:
                        raise
                    raise MicError(f"the device went away and did not come back after {failures - 1} reopen "
                                   f"attempt(s) ({err.message})", input=self.name, stage="source",
                                   fix="check that the device and its sound server are up; to wait longer "
                                       "for it raise max_retries (null: forever) or backoff_max_s") from None
                log.warning("%s: %s; reopening in %.2g s", self.name, err.message, delay)
                if self._stop.wait(delay):
                    break
                delay = min(delay * 2, cfg.backoff_max_s)
                continue
            finally:
                reader.close()  # at once, not when collected: it closes the device (ALSA: ends its thread)
            yield from collector.finish()
        self.stats.state = "stopped"
        yield End(self.stream)

    @staticmethod
    def _resume_at(gap_from: float, away_s: float, frame: Any) -> float:
        """Stream time of the first block after an outage that began at ``gap_from``, the blocks either
        side of it having arrived ``away_s`` apart. Arrival times, not the ALSA stamps: those of a new
        connection run up to 0.7 s early for its first second (measured through the pulse plugin)."""
        return gap_from + max(0.0, away_s - frame.samples / frame.sample_rate)

    def _gap(self, start: float, end: float, reason: str) -> Gap:
        self.stats.gaps += 1
        self.stats.gap_s += end - start
        self.stats.event("gap", start_s=start, end_s=end)
        return Gap(self.stream, start, end, reason=reason)

    def _take(self, collector: AudioCollector, item: Any, stamp_s: float | None) -> Iterator[Packet]:
        """Add one block (an ``av.AudioFrame``, at the capture rate) whose first sample was captured
        at wall time ``stamp_s`` (None: unknown)."""
        frame: av.AudioFrame = item
        duration = frame.samples / frame.sample_rate
        exact = self.config.backend == "alsa"  # ALSA stamps are capture times; PortAudio's here are arrivals
        if stamp_s is not None:
            wall_now = self.clock.wall_time(self._t)
            # Not at a connection's first block: stamps are not comparable across connections.
            if exact and not self._resync and wall_now is not None and stamp_s - wall_now > self.config.max_hole_s:
                # Samples were lost (an overrun): stream time follows the device's timestamps.
                end = self._t + (stamp_s - wall_now)
                yield from collector.finish()
                # finish() flushed the resampler, which then fails every frame: give it a fresh one.
                collector.resampler = av.AudioResampler(format="flt", layout="mono", rate=collector.rate)
                yield self._gap(self._t, end, "samples lost (device overrun)")
                self._t = end
                self._resync = True
                self.clock.new_segment()
            self.clock.observe(self._t, stamp_s, exact=exact)
            self.stats.clock = "sender" if exact else "arrival"
        t, self._resync = (self._t if self._resync else None), False
        yield from collector.add_frame(frame, t)
        self._t += duration

    # -- backends -----------------------------------------------------------------------------
    def _wait(self, blocks: queue.Queue[Any], timeout_s: float) -> Any:
        """The next item of ``blocks``; None once closed; ``_TIMEOUT`` after ``timeout_s`` without one."""
        deadline = time.monotonic() + timeout_s
        while not self._stop.is_set():
            try:
                return blocks.get(timeout=max(0.0, min(0.05, deadline - time.monotonic())))
            except queue.Empty:
                if time.monotonic() >= deadline:
                    return _TIMEOUT
        return None

    def _alsa(self) -> Generator[tuple[Any, float | None], None, None]:
        cfg = self.config
        if self._pump_thread is not None and self._pump_thread.is_alive():
            hung = time.monotonic() - self._pump_since
            raise MicError(f"the ALSA device {cfg.device!r} still hangs (a call into it has not returned for "
                           f"{hung:.1f} s)", input=self.name, stage="source",
                           fix="check that its sound server answers (`pactl info` for PulseAudio)")
        blocks: queue.Queue[Any] = queue.Queue(maxsize=QUEUE_BLOCKS)
        quit_ = threading.Event()
        self._pump_thread = threading.Thread(target=self._pump, args=(blocks, quit_), daemon=True,
                                             name=f"streamzip-mic-{self.stream}")
        self._pump_since = t_open = time.monotonic()
        self._pump_thread.start()
        hung = False
        try:
            item = self._wait(blocks, cfg.open_timeout_s)
            if item is _TIMEOUT:
                hung = True
                raise MicError(f"the ALSA device {cfg.device!r} did not open within {cfg.open_timeout_s:g} s",
                               input=self.name, stage="source",
                               fix="check that its sound server answers (`pactl info` for PulseAudio); raise "
                                   "open_timeout_s if it is only slow")
            if isinstance(item, MicError):
                raise item
            if item is None:
                return
            self.stats.streams = ["audio"]
            log.info("%s: opened in %.2f s", self.name, time.monotonic() - t_open)
            while True:
                item = self._wait(blocks, cfg.read_timeout_s)
                if item is _TIMEOUT:
                    hung = True
                    self.stats.stalls += 1
                    raise MicError(f"no samples for {cfg.read_timeout_s:g} s (the device or its sound server "
                                   f"hangs)", input=self.name, stage="source",
                                   fix="check that the device and its sound server are still up")
                if isinstance(item, MicError):
                    raise item
                if item is None or item is _ENDED:
                    return
                self._pump_since = time.monotonic()
                yield item
        finally:
            quit_.set()
            self._pump_thread.join(0.0 if hung else 1.0)  # it ends within a block unless a call hangs

    def _pump(self, blocks: queue.Queue[Any], quit_: threading.Event) -> None:
        """Open, read and close the ALSA device (in this thread only), handing over ``_OPENED``, then
        ``(frame, stamp)`` blocks, then ``_ENDED`` or a :class:`MicError`; stops once ``quit_`` is set."""
        cfg = self.config

        def put(item: Any) -> bool:
            while not quit_.is_set():
                try:
                    blocks.put(item, timeout=0.1)
                    return True
                except queue.Full:
                    continue
            return False

        alsa_environment()
        opts = {"sample_rate": str(cfg.capture_rate_hz), "channels": str(cfg.channels)}
        try:
            container = av.open(cfg.device, format="alsa", options=opts,
                                timeout=(cfg.open_timeout_s, cfg.read_timeout_s / 2))
        except av.error.FFmpegError as err:
            put(MicError(f"cannot open the ALSA device {cfg.device!r} ({err.strerror or type(err).__name__})",
                         input=self.name, stage="source",
                         fix="list the devices with `arecord -L`; for PulseAudio/PipeWire use 'pulse' or "
                             "'pulse:SOURCE' (Debian package libasound2-plugins)"))
            return
        try:
            if not put(_OPENED):
                return
            stream = container.streams.audio[0]
            for packet in container.demux(stream):
                if quit_.is_set():
                    return
                try:
                    frames = packet.decode()
                except av.error.FFmpegError:
                    self.stats.corrupt_packets += 1
                    continue
                for frame in frames:
                    stamp = float(frame.pts * frame.time_base) if frame.pts is not None and frame.time_base else None
                    if not put((frame, stamp)):
                        return
            put(_ENDED)
        except av.error.FFmpegError as err:
            put(MicError(f"the ALSA device stopped ({err.strerror or type(err).__name__})", input=self.name,
                         stage="source", fix="check that the device and its sound server are still up"))
        finally:
            container.close()

    def _sounddevice(self) -> Generator[tuple[Any, float | None], None, None]:
        cfg = self.config
        try:
            import sounddevice as sd
        except (ImportError, OSError) as err:
            raise DependencyError(f"the sounddevice backend needs the 'sounddevice' package and PortAudio ({err})",
                                  stage="source", fix="pip install 'streamzip[live]' and apt-get install "
                                                      "libportaudio2, or use backend 'alsa'") from None
        blocks: queue.Queue[tuple[np.ndarray, float]] = queue.Queue(maxsize=QUEUE_BLOCKS)
        overflows = [0]

        def callback(indata: np.ndarray, frames: int, time_info: Any, status: Any) -> None:
            if status.input_overflow:
                overflows[0] += 1
            try:
                blocks.put_nowait((indata.copy(), time.time() - frames / cfg.capture_rate_hz))
            except queue.Full:
                overflows[0] += 1

        device: Any = cfg.device
        if device.isdigit():
            device = int(device)
        elif device == "default":
            device = None
        elif device.startswith("pulse:"):
            # PortAudio lists ALSA's "pulse" device only; the plugin reads the source from the
            # environment (process-wide: one PulseAudio source per process on this backend).
            os.environ["PULSE_SOURCE"] = device.split(":", 1)[1]
            device = "pulse"
        try:
            stream = sd.InputStream(device=device, samplerate=cfg.capture_rate_hz, channels=cfg.channels,
                                    dtype="float32", blocksize=int(cfg.capture_rate_hz * 0.02), callback=callback)
            stream.start()
        except Exception as err:  # noqa: BLE001 - PortAudioError, ValueError for an unknown device
            raise MicError(f"cannot open the PortAudio device {cfg.device!r} ({err})", input=self.name,
                           stage="source", fix="list the devices with `python -m sounddevice`") from None
        self.stats.streams = ["audio"]
        try:
            layout = "mono" if cfg.channels == 1 else ("stereo" if cfg.channels == 2 else None)
            while not self._stop.is_set():
                got = self._wait(blocks, cfg.read_timeout_s)
                if got is None:
                    return
                if got is _TIMEOUT:
                    self.stats.stalls += 1
                    raise MicError(f"no samples for {cfg.read_timeout_s:g} s", input=self.name, stage="source",
                                   fix="check that the device is still there")
                data, stamp = got
                if layout is None:
                    data = data.mean(axis=1, keepdims=True)
                frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(data.reshape(1, -1)), format="flt",
                                                   layout=layout or "mono")
                frame.sample_rate = cfg.capture_rate_hz
                yield frame, stamp
        finally:
            stream.stop()
            stream.close()
            self.stats.corrupt_packets += overflows[0]

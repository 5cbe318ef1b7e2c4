"""The microphone losing its device, on a private PulseAudio server the tests kill, freeze and restart.

What the ALSA pulse plugin does (measured, and what these tests cover): a server that dies fails the
read at once (EIO) and every reopen at once (connection refused) until it is back; a server that
hangs (SIGSTOP) blocks the plugin's open and read for as long as it hangs, whatever PyAV's timeouts,
so the source reads ALSA in a thread of its own and times the reads itself.
"""

from __future__ import annotations

import os
import threading
import time
import wave
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from _live_helpers import LiveRun, Tap, wait_until

from streamzip.errors import InputError
from streamzip.live import serve
from streamzip.packets import AudioChunk, End, Gap, Tokens
from streamzip.pipeline import Pipeline
from streamzip.sources._decode import AudioCollector
from streamzip.sources.mic import MicConfig, MicError, MicSource
from streamzip.sources.rtsp import RtspConfig

pytestmark = pytest.mark.timeout(90)

PIPE = Pipeline("mic-faults", decode={"sample_rate_hz": 16000}).add("fbank_encoder")


def mic_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("streamzip-mic-")]


def open_fds() -> dict[str, str]:
    """This process's open file descriptors: number -> what it points at."""
    out = {}
    for fd in os.listdir("/proc/self/fd"):
        try:
            out[fd] = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            pass  # closed meanwhile (the listing's own descriptor)
    return out


def new_fds(before: dict[str, str]) -> list[str]:
    """What the descriptors opened since ``before`` point at."""
    return sorted(t for fd, t in open_fds().items() if before.get(fd) != t)


def timeline(packets: list[object]) -> list[AudioChunk | Gap]:
    return [p for p in packets if isinstance(p, (AudioChunk, Gap))]


def assert_contiguous(packets: list[AudioChunk | Gap]) -> None:
    """Stream time never goes back and has no hole: each packet starts where the last one ended."""
    assert all(p.end_s >= p.start_s for p in packets)
    assert all(abs(a.end_s - b.start_s) < 1e-6 for a, b in zip(packets, packets[1:])), \
        [(type(p).__name__, p.start_s, p.end_s) for p in packets]


def clock_offset(tap: Tap, chunks: list[AudioChunk]) -> float:
    """Arrival time less stream time of the chunks' ends, at its least (arrivals are only ever late)."""
    arrived = {id(p): t for p, t in zip(tap.seen, tap.arrived)}
    return min(arrived[id(c)] - c.end_s for c in chunks)


def tone(path: Path, seconds: float, hz: float = 1000.0, rate: int = 16000) -> Path:
    t = np.arange(int(seconds * rate)) / rate
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes((0.5 * 32767 * np.sin(2 * np.pi * hz * t)).astype(np.int16).tobytes())
    return path


def events(src: MicSource) -> list[str]:
    return [e.kind for e in src.stats.events]


def start_mic(config: MicConfig, heard_s: float) -> tuple[MicSource, Tap, LiveRun]:
    """``pulse:vmic`` run live through the local runtime, once it has delivered ``heard_s`` of audio."""
    src = MicSource("pulse:vmic", PIPE.decode, config)
    tap = Tap(src)
    run = LiveRun(PIPE, tap).start()
    assert run.wait_for(lambda r: src.stats.duration_s >= heard_s, 30), run.error
    return src, tap, run


def test_sound_server_killed_and_restarted_reopens_with_one_gap_over_the_time_away(own_pulse, tmp_path) -> None:  # type: ignore[no-untyped-def]
    threads = len(mic_threads())
    src, tap, run = start_mic(MicConfig(backoff_s=0.2, backoff_max_s=0.2, max_retries=100), 1.5)
    own_pulse.kill()
    killed = time.monotonic()
    # The read fails at once (EIO): the source reports the loss and keeps trying to reopen.
    assert run.wait_for(lambda r: "lost" in events(src) and "open_failed" in events(src), 10), events(src)
    assert src.stats.state in ("reconnecting", "connecting") and src.stats.connects == 1
    wait_until(lambda: time.monotonic() - killed >= 1.5, 5)  # away for 1.5 s (not an assertion)
    own_pulse.start()
    back = time.monotonic()
    assert run.wait_for(lambda r: src.stats.reconnects == 1, 30), (run.error, events(src))
    player = own_pulse.play(tone(tmp_path / "tone.wav", 1.5))  # the reopened device really records
    player.wait(30)
    gap_end = next(p.end_s for p in tap.seen if isinstance(p, Gap))
    assert run.wait_for(lambda r: src.stats.duration_s >= gap_end + 2.0, 30), run.error
    run.stop()
    assert run.error is None and isinstance(tap.seen[-1], End) and src.stats.state == "stopped"

    gaps = [p for p in tap.seen if isinstance(p, Gap)]
    assert [g.reason for g in gaps] == ["device reopened"]
    gap = gaps[0]
    packets = timeline(tap.seen)
    assert_contiguous(packets)
    before = [p for p in packets if isinstance(p, AudioChunk) and p.end_s <= gap.start_s]
    after = [p for p in packets if isinstance(p, AudioChunk) and p.start_s >= gap.end_s]
    assert before and len(after) >= 4
    assert before[-1].end_s == pytest.approx(gap.start_s) and after[0].start_s == pytest.approx(gap.end_s)
    # The gap spans the time away: at least while the server was gone, at most until the reopened
    # device's first samples arrived; and stream time keeps pace with the wall clock across it.
    lost_at = next(e.mono_s for e in src.stats.events if e.kind == "lost")
    reconnected_at = [e.mono_s for e in src.stats.events if e.kind == "connected"][1]
    assert back - killed - 0.3 < gap.end_s - gap.start_s < reconnected_at - lost_at + 0.3
    assert clock_offset(tap, after) == pytest.approx(clock_offset(tap, before), abs=0.25)
    assert float(torch.cat([c.samples for c in after]).abs().max()) > 0.2  # it heard the tone
    # Tokens come after the gap, in time order, none inside it.
    tokens = [p for _, p in run.outputs if isinstance(p, Tokens)]
    t0 = torch.cat([p.t0 for p in tokens])
    assert bool((t0[1:] >= t0[:-1]).all()) and float(t0.max()) > gap.end_s
    assert not bool(((t0 > gap.start_s + 1e-6) & (t0 < gap.end_s - 1e-6)).any())
    stats = src.stats
    assert (stats.connects, stats.reconnects, stats.gaps) == (2, 1, 1)
    assert stats.gap_s == pytest.approx(gap.end_s - gap.start_s) and stats.open_failures >= 1
    kinds = events(src)
    assert kinds[0] == "connected" and kinds[-2:] == ["connected", "gap"] and "lost" in kinds
    # The device was closed in its own thread, which ended. (Descriptors are not counted here: after
    # the rest of the suite, sockets opened elsewhere in the shared test process show up meanwhile;
    # the never-comes-back test below counts them.)
    assert wait_until(lambda: len(mic_threads()) == threads, 10), mic_threads()


def test_a_hung_sound_server_is_detected_by_the_read_timeout_and_close_does_not_wait_for_it(own_pulse) -> None:  # type: ignore[no-untyped-def]
    threads = len(mic_threads())
    src, tap, run = start_mic(MicConfig(read_timeout_s=1.0, backoff_s=0.2, backoff_max_s=0.2, max_retries=None), 1.0)
    own_pulse.freeze()
    frozen = time.monotonic()
    # The plugin's read blocks while the server hangs; the source's own timeout sees it.
    assert run.wait_for(lambda r: "lost" in events(src), 10), events(src)
    assert src.stats.stalls == 1 and src.stats.last_error is not None and "no samples for 1 s" in src.stats.last_error
    lost = next(e for e in src.stats.events if e.kind == "lost")
    assert lost.mono_s - frozen < 5.0  # within the read timeout, plus a loaded machine's slack
    # Reopening while the hung call has not returned starts no other thread: it fails at once.
    assert run.wait_for(lambda r: src.stats.open_failures >= 2, 10), events(src)
    assert "still hangs" in (src.stats.last_error or "") and len(mic_threads()) <= threads + 1
    own_pulse.thaw()
    thawed = time.monotonic()
    assert run.wait_for(lambda r: src.stats.reconnects == 1 and src.stats.gaps == 1, 30), (run.error, events(src))
    gap = next(p for p in tap.seen if isinstance(p, Gap))
    assert gap.reason == "device reopened" and gap.end_s - gap.start_s > thawed - frozen - 0.3
    assert_contiguous(timeline(tap.seen))
    # Hang it again and stop the run meanwhile: the run ends at once with what it had.
    assert run.wait_for(lambda r: src.stats.duration_s >= gap.end_s + 0.5, 30), run.error
    own_pulse.freeze()
    try:
        assert run.wait_for(lambda r: src.stats.stalls == 2, 10), events(src)
        t = time.monotonic()
        run.stop(10)
        assert time.monotonic() - t < 5.0
    finally:
        own_pulse.thaw()
    assert run.error is None and isinstance(tap.seen[-1], End) and src.stats.state == "stopped"
    # The thread stuck in the hung call closed its device and ended once the server answered.
    assert wait_until(lambda: len(mic_threads()) == threads, 15), mic_threads()


def test_a_device_that_never_comes_back_is_a_clear_error_after_the_audio_it_gave(own_pulse) -> None:  # type: ignore[no-untyped-def]
    fds, threads = open_fds(), len(mic_threads())
    src, tap, run = start_mic(MicConfig(backoff_s=0.15, max_retries=2), 1.2)
    own_pulse.kill()
    run.thread.join(30)
    assert not run.thread.is_alive()
    err = run.error
    assert isinstance(err, MicError) and isinstance(err, InputError)
    message = str(err)
    assert "the device went away and did not come back after 2 reopen attempt(s)" in message
    assert "input 'alsa:pulse:vmic'" in message and "stage 'source'" in message
    assert "Fix: check that the device and its sound server are up" in message and "max_retries" in message
    assert src.stats.state == "failed" and src.stats.open_failures == 2 and src.stats.gaps == 0
    # The waits before the reopens double (0.15 s, then 0.3 s): the refused opens themselves are quick.
    lost, *reopens = [e for e in src.stats.events if e.kind in ("lost", "open_failed")]
    assert lost.kind == "lost" and [e.kind for e in reopens] == ["open_failed", "open_failed"]
    first, second = reopens[0].mono_s - lost.mono_s, reopens[1].mono_s - reopens[0].mono_s
    assert first >= 0.15 and second >= 0.3 and second > first + 0.1, (first, second)
    # Every sample read before the loss was delivered (the partial chunk held at the loss included),
    # and all of it made tokens: the runtime flushes its stages when the source fails (the encoder's
    # open stretch, the last partial chunk, included), then raises the source's error.
    chunks = [p for p in tap.seen if isinstance(p, AudioChunk)]
    assert len(chunks) >= 3 and not [p for p in tap.seen if isinstance(p, (Gap, End))]
    assert_contiguous(chunks)
    assert chunks[-1].end_s == pytest.approx(src.stats.duration_s) and chunks[-1].end_s >= 1.2
    tokens = [p for _, p in run.outputs if isinstance(p, Tokens)]
    assert tokens and float(torch.cat([p.t1 for p in tokens]).max()) >= chunks[-1].end_s - 0.05
    # No thread left, and no descriptor per connection attempt (3 here: 1 connect, 2 refused reopens;
    # one or two opened meanwhile by the shared test process are not the mic's).
    assert wait_until(lambda: len(mic_threads()) == threads and len(new_fds(fds)) < 3, 10), (mic_threads(), new_fds(fds))


def test_a_failing_microphone_fails_alone_on_the_live_endpoint(own_pulse, rtsp_server, live_pipeline) -> None:  # type: ignore[no-untyped-def]
    server = serve(live_pipeline, [rtsp_server.url("/cam1"), "mic:pulse:vmic"], port=0,
                   rtsp=RtspConfig(read_timeout_s=2.0), mic=MicConfig(backoff_s=0.1, backoff_max_s=0.1, max_retries=1))
    try:
        cam, mic = server.streams["cam1"], server.streams["mic"]
        assert wait_until(lambda: mic.windows.get("audio", 0) >= 1 and cam.windows.get("video", 0) >= 1, 40), \
            (cam.status, mic.status, mic.error)
        own_pulse.kill()
        assert wait_until(lambda: mic.status == "failed", 30), mic.status
        code, health = server.health()
        assert code == 503 and health["status"] == "failed"
        assert health["streams"]["mic"]["status"] == "failed" and health["streams"]["cam1"]["status"] == "running"
        assert "did not come back" in (mic.error or "") and "input 'alsa:pulse:vmic'" in (mic.error or "")
        seen = cam.windows["video"]
        assert wait_until(lambda: cam.windows["video"] >= seen + 2, 30)  # the camera goes on
    finally:
        results = server.stop()
    by_input = {r.stream: r for r in results}
    assert by_input["cam1"].ok and by_input["cam1"].tokens_out > 0
    assert not by_input["mic"].ok and "did not come back" in (by_input["mic"].error or "")
    assert by_input["mic"].tokens_out > 0  # the audio it had before


def test_capture_stamps_that_jump_ahead_are_a_gap_and_jitter_is_not() -> None:
    """The overrun path, fed by hand: a real ALSA overrun could not be caused through PulseAudio (a
    reader that stopped pulling for 15 s lost nothing: the server buffers), so this gives ``_take``
    what the ALSA demuxer gives: 8 ms s16 mono frames at 16 kHz with wall-clock capture stamps,
    jittering by up to 3 ms, then 0.5 s of samples missing."""
    src = MicSource("hw:0", None, MicConfig())
    collector = AudioCollector(src.decode, src.stats, src.stream)
    rng = np.random.default_rng(0)
    out: list[object] = []
    wall, n = 1.7e9, 128
    for i in range(250):  # 2 s
        if i == 125:
            wall += 0.5  # the device dropped 0.5 s of samples
        frame = av.AudioFrame.from_ndarray(np.full((1, n), 1000, np.int16), format="s16", layout="mono")
        frame.sample_rate = 16000
        out += src._take(collector, frame, wall + float(rng.uniform(-0.003, 0.003)))
        wall += n / 16000
    out += collector.finish()
    gaps = [p for p in out if isinstance(p, Gap)]
    assert [(g.reason, round(g.start_s, 3)) for g in gaps] == [("samples lost (device overrun)", 1.0)]
    assert gaps[0].end_s - gaps[0].start_s == pytest.approx(0.5, abs=0.01)
    packets = timeline(out)
    assert_contiguous(packets)
    chunks = [p for p in packets if isinstance(p, AudioChunk)]
    # Stream time counts samples: 2 s of them, plus the gap.
    assert sum(c.samples.numel() for c in chunks) == 250 * n
    assert chunks[-1].end_s == pytest.approx(2.0 + gaps[0].end_s - gaps[0].start_s)
    assert src.stats.corrupt_packets == 0 and src.stats.audio_samples == 250 * n
    assert src.stats.gaps == 1 and src.stats.gap_s == pytest.approx(gaps[0].end_s - gaps[0].start_s)
    assert src.wall_time(chunks[-1].end_s) == pytest.approx(wall, abs=0.01)

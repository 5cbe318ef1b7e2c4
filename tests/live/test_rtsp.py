"""The RTSP source against a real GStreamer RTSP server: a normal stream, the server killed and
restarted, frozen with SIGSTOP, a wrong path, a refused connection; and (with a scripted container
in place of PyAV's, the only way to make pts freeze or jump on cue) the pts watchdog and re-basing."""

from __future__ import annotations

import logging
import threading
import time
from fractions import Fraction
from types import SimpleNamespace

import av
import numpy as np
import pytest
import torch
from _live_helpers import free_port, wait_until

from streamzip.errors import InputError
from streamzip.packets import AudioChunk, End, Gap, Tokens, VideoFrames
from streamzip.sources.file import DecodeConfig
from streamzip.sources.rtsp import (
    RtspConfig,
    RtspSource,
    SourceUnreachableError,
    StreamNotFoundError,
)

pytestmark = pytest.mark.timeout(90)


class Tap:
    """Wraps a source and keeps what it yields, with arrival wall times (the runtime sees the same)."""

    def __init__(self, source: RtspSource) -> None:
        self.source = source
        self.name, self.stream, self.stats = source.name, source.stream, source.stats
        self.seen: list[tuple[float, object]] = []

    def __iter__(self):  # type: ignore[no-untyped-def]
        for p in self.source:
            self.seen.append((time.time(), p))
            yield p

    def close(self) -> None:
        self.source.close()

    def wall_time(self, t: float) -> float | None:
        return self.source.wall_time(t)

    def of(self, kind: type) -> list:  # type: ignore[type-arg]
        return [p for _, p in self.seen if isinstance(p, kind)]


def events(src: RtspSource, kind: str) -> list:  # type: ignore[type-arg]
    return [e for e in list(src.stats.events) if e.kind == kind]  # list(): a snapshot, the reader appends


def test_normal_stream_frames_audio_clock_and_tokens(rtsp_server, live_pipeline, live_run) -> None:  # type: ignore[no-untyped-def]
    src = RtspSource(rtsp_server.url("/file"), live_pipeline.decode, RtspConfig(max_duration_s=5.0))
    tap = Tap(src)
    run = live_run(live_pipeline, tap)
    run.thread.join(30)
    assert run.error is None and not run.thread.is_alive()
    video, audio = tap.of(VideoFrames), tap.of(AudioChunk)
    # Video sampled to 2 fps, scaled to the pipeline's size, one frame per packet (live latency).
    times = torch.cat([v.pts_s for v in video])
    assert 9 <= len(times) <= 11 and all(v.num_frames == 1 for v in video)
    assert video[0].frames.shape[1:] == (112, 112, 3) and video[0].frames.dtype == torch.uint8
    steps = times[1:] - times[:-1]
    assert bool((steps > 0.4).all()) and bool((steps < 0.6).all())
    # Audio as from a file: 16 kHz mono, contiguous chunks, 5 s of it.
    assert all(a.sample_rate_hz == 16000 and a.samples.dim() == 1 for a in audio)
    assert all(abs(a.end_s - b.start_s) < 1e-6 for a, b in zip(audio, audio[1:]))
    assert abs(sum(a.duration_s for a in audio) - 5.0) < 0.3
    assert not tap.of(Gap) and isinstance(tap.seen[-1][1], End)
    # Capture times from the server's RTCP sender reports: close behind arrival.
    assert src.stats.clock == "sender"
    arrival, last = next((w, p) for w, p in reversed(tap.seen) if isinstance(p, VideoFrames))
    lag = arrival - src.wall_time(float(last.pts_s[0]))
    assert 0.0 <= lag < 0.5
    # Tokens: windows of both modalities, and a memory within its budget.
    windows = run.packets("window", "video")
    assert [w.meta["window"] for w in windows][:2] == [0, 1]
    assert {w.modality for w in run.packets("window")} == {"video", "audio"}
    assert all(m.num_tokens <= 64 for m in run.packets("memory"))
    assert src.stats.connects == 1 and src.stats.stalls == 0


def test_server_killed_and_restarted_reconnects_emits_a_gap_and_keeps_memory(own_rtsp_server, live_pipeline,  # type: ignore[no-untyped-def]
                                                                           live_run) -> None:
    server = own_rtsp_server
    src = RtspSource(server.url("/live"), live_pipeline.decode, RtspConfig(read_timeout_s=2.0))
    tap = Tap(src)
    run = live_run(live_pipeline, tap)
    assert run.wait_for(lambda r: len(r.packets("window", "video")) >= 1, 20), run.error
    server.kill()
    killed_at = src.stats.duration_s
    t_kill = time.monotonic()
    time.sleep(2.0)
    server.start()
    assert wait_until(lambda: src.stats.reconnects >= 1, 10), src.stats.to_dict()
    back = events(src, "connected")[-1].mono_s
    assert back - server.ready_mono <= 3.0  # reconnected within 3 s of the server's return
    assert run.wait_for(lambda r: any(isinstance(p, Gap) for p in r.packets())
                        and len([w for w in r.packets("window", "video") if w.meta["window_start_s"] > killed_at]) >= 2,
                        20), run.error
    gaps = [p for p in run.packets() if isinstance(p, Gap)]
    assert len(gaps) == 1 and gaps[0] is tap.of(Gap)[0]  # the gap went through every stage
    gap = gaps[0]
    assert abs(gap.start_s - killed_at) < 0.6
    outage = back - t_kill
    assert outage - 1.0 < gap.end_s - gap.start_s < outage + 1.0
    assert "ended" in gap.reason
    # Tokens go on after the gap with fresh ids, after every id seen before it.
    windows = run.packets("window", "video")
    before = [w for w in windows if w.meta["window_end_s"] <= gap.start_s + 1e-6]
    after = [w for w in windows if w.meta["window_start_s"] >= gap.end_s - 2.0 and w.t0.numel()
             and float(w.t0.min()) >= gap.end_s]
    assert before and after
    assert int(max(w.src.max() for w in before)) < int(min(w.src.min() for w in after))
    # The memory survived: after the gap it still holds tokens from before it, and its coverage has two spans.
    memory = [m for m in run.packets("memory", "video") if m.meta["window_start_s"] >= gap.end_s - 2.0][-1]
    assert float(memory.t0.min()) < gap.start_s
    spans = memory.meta["covered_s"]
    assert len(spans) == 2 and spans[0][0] == 0.0 and spans[1][0] >= gap.end_s - 2.0
    assert src.stats.gaps == 1 and src.stats.open_failures >= 1


def test_frozen_server_is_detected_within_twice_the_read_timeout(own_rtsp_server, live_pipeline) -> None:  # type: ignore[no-untyped-def]
    server = own_rtsp_server
    read_timeout_s = 1.0
    src = RtspSource(server.url("/live"), live_pipeline.decode,
                     RtspConfig(read_timeout_s=read_timeout_s, open_timeout_s=2.0))
    seen: list[object] = []
    reader = threading.Thread(target=lambda: seen.extend(src), daemon=True)
    reader.start()
    try:
        assert wait_until(lambda: any(isinstance(p, VideoFrames) for p in seen), 15)
        server.freeze()
        t_freeze = time.monotonic()
        assert wait_until(lambda: events(src, "stalled"), 2 * read_timeout_s + 1.0)
        detected = events(src, "stalled")[0].mono_s - t_freeze
        assert detected <= 2 * read_timeout_s
        assert "read timeout" in events(src, "stalled")[0].detail["reason"]
        time.sleep(1.0)
        server.thaw()
        assert wait_until(lambda: src.stats.reconnects >= 1, 15), src.stats.to_dict()
        assert wait_until(lambda: any(isinstance(p, Gap) for p in seen), 10)
    finally:
        server.thaw()
        src.close()
        reader.join(15)
    gap = next(p for p in seen if isinstance(p, Gap))
    t_after = [float(p.pts_s[0]) for p in seen if isinstance(p, VideoFrames) and p.start_s >= gap.end_s]
    assert t_after and gap.end_s - gap.start_s > 1.0
    assert src.stats.stalls >= 1


def test_wrong_path_is_a_clear_error_after_retries(rtsp_server, caplog) -> None:  # type: ignore[no-untyped-def]
    url = rtsp_server.url("/no-such-camera", "viewer:hunter2pass")
    src = RtspSource(url, config=RtspConfig(max_retries=2, backoff_initial_s=0.05, backoff_max_s=0.1))
    with caplog.at_level(logging.DEBUG), pytest.raises(StreamNotFoundError) as info:
        list(src)
    err = info.value
    assert isinstance(err, InputError) and isinstance(err, LookupError)
    text = str(err)
    redacted = f"rtsp://***@127.0.0.1:{rtsp_server.port}/no-such-camera"
    assert redacted in text and "'/no-such-camera'" in text and "404" in text and "Fix: check the path" in text
    assert src.stats.open_failures == 3  # the first attempt and 2 retries
    retries = [r for r in caplog.records if "retry" in r.getMessage()]
    assert [r.levelname for r in retries] == ["WARNING", "WARNING"]
    for blob in (text, caplog.text, repr(err), str(src.stats.to_dict())):
        assert "hunter2pass" not in blob and "viewer" not in blob


def test_refused_connection_is_a_clear_error_after_retries(caplog) -> None:  # type: ignore[no-untyped-def]
    port = free_port()  # nothing listens there
    src = RtspSource(f"rtsp://127.0.0.1:{port}/cam", config=RtspConfig(max_retries=3, backoff_initial_s=0.1,
                                                                        backoff_max_s=0.2))
    t0 = time.monotonic()
    with caplog.at_level(logging.DEBUG), pytest.raises(SourceUnreachableError) as info:
        list(src)
    elapsed = time.monotonic() - t0
    err = info.value
    assert isinstance(err, InputError) and isinstance(err, ConnectionError)
    assert f"connection refused by 127.0.0.1:{port}" in str(err) and "Fix: check the host and port" in str(err)
    assert src.stats.open_failures == 4 and src.stats.state == "failed"
    assert elapsed >= 0.1 + 0.2 + 0.2  # it waited between the attempts
    retries = [r.levelname for r in caplog.records if "retry" in r.getMessage()]
    assert retries == ["WARNING", "WARNING", "DEBUG"]  # repeats are quieter: warnings at 1, 2, 4, 8… attempts


# -- scripted containers: pts that freeze or jump -------------------------------------------------
class _Container:
    """What RtspSource uses of a PyAV container, playing scripted video pts at a set pace."""

    def __init__(self, pts_s: list[float], pace_s: float | list[float] = 0.005) -> None:
        ctx = SimpleNamespace(name="h264", thread_count=0)
        self.vstream = SimpleNamespace(type="video", codec_context=ctx, average_rate=Fraction(25), thread_type=None)
        self.streams = SimpleNamespace(video=[self.vstream], audio=[])
        self.start_time, self.start_time_realtime = 0, None
        self.pts_s, self.pace_s = pts_s, pace_s
        self.closed = False
        self.decodes = True  # False: packets arrive but never decode into a frame
        self.threads = {threading.get_ident()}  # the thread that opened it, then the one that closes it

    def demux(self, streams):  # type: ignore[no-untyped-def]
        image = np.zeros((16, 16, 3), np.uint8)
        for i, t in enumerate(self.pts_s):
            time.sleep(self.pace_s[i] if isinstance(self.pace_s, list) else self.pace_s)
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts, frame.time_base = round(t * 90000), Fraction(1, 90000)
            yield SimpleNamespace(stream=self.vstream, decode=lambda f=frame: [f] if self.decodes else [], pts=frame.pts,
                                  time_base=frame.time_base, is_keyframe=i % 10 == 0)  # a 10-frame GOP

    def close(self) -> None:
        self.closed = True
        self.threads.add(threading.get_ident())


def scripted(*containers: _Container, **config: float) -> tuple[RtspSource, list[object]]:
    queue = list(containers)
    src: RtspSource

    def opener(url, options, timeout):  # type: ignore[no-untyped-def]
        # TCP, FFmpeg's socket timeout in µs (not the ignored 'stimeout'), short probing, PyAV's timeouts.
        assert options["rtsp_transport"] == "tcp" and "stimeout" not in options
        assert options["timeout"] == "4000000" and options["analyzeduration"] == "500000"
        assert options["probesize"] == "500000" and options["allowed_media_types"] == "video"
        assert timeout == (5.0, 2.0)  # PyAV fires at twice the armed read timeout: 4 s
        if not queue:
            src.close()
            return _Container([])
        c = queue.pop(0)
        c.threads = {threading.get_ident()}
        return c

    src = RtspSource("rtsp://127.0.0.1:1/scripted", DecodeConfig(fps=25, width=16, height=16),
                     RtspConfig(frozen_s=0.3, backoff_initial_s=0.01, backoff_max_s=0.01, **config),
                     want_audio=False, opener=opener)
    return src, list(src)


def test_frozen_pts_trip_the_watchdog_and_reconnect() -> None:
    first = _Container([i * 0.04 for i in range(10)] + [0.36] * 200, pace_s=0.005)
    second = _Container([i * 0.04 for i in range(10)])
    src, packets = scripted(first, second)
    stalled = events(src, "stalled")
    assert stalled and "video pts frozen" in stalled[0].detail["reason"]
    assert first.closed and second.closed and src.stats.connects == 3  # + the empty one ending the script
    assert len(first.threads) == 1 and len(second.threads) == 1  # closed by the thread that opened it
    assert src.stats.clock == "arrival"  # no RTCP reports: capture times are arrival times
    gaps = [p for p in packets if isinstance(p, Gap)]
    assert len(gaps) == 1 and "frozen" in gaps[0].reason
    times = torch.cat([p.pts_s for p in packets if isinstance(p, VideoFrames)])
    assert bool((times[1:] >= times[:-1]).all())
    assert float(times[-1]) > gaps[0].end_s  # the second connection's frames come after the gap


def test_pts_jumping_back_are_rebased_and_stream_time_goes_on() -> None:
    pts = [i * 0.04 for i in range(50)] + [i * 0.04 for i in range(25)]  # the server restarted its clock
    src, packets = scripted(_Container(pts, pace_s=0.002))
    times = torch.cat([p.pts_s for p in packets if isinstance(p, VideoFrames)])
    assert src.stats.pts_rebased == 1 and not [p for p in packets if isinstance(p, Gap)]
    assert bool((times[1:] > times[:-1]).all())
    assert abs(float(times[-1]) - 74 * 0.04) < 0.05  # 75 frames, continuous: no time lost or doubled
    assert isinstance(packets[-1], End) and not [p for p in packets if isinstance(p, Tokens)]


def test_a_reader_behind_real_time_skips_to_a_keyframe_and_catches_up() -> None:
    # 20 packets arrive slower than real time (the backlog grows 20 ms a packet), then the buffered
    # rest arrives at once: past 0.2 s behind, video is skipped until a keyframe with < 0.1 s of backlog.
    pts = [i * 0.04 for i in range(60)]
    src, packets = scripted(_Container(pts, pace_s=[0.06] * 20 + [0.0] * 40), max_lag_s=0.2)
    assert src.stats.catch_ups == 1 and 0 < src.stats.skipped_packets < 40
    assert events(src, "catch_up")[0].detail["lag_s"] > 0.2
    times = torch.cat([p.pts_s for p in packets if isinstance(p, VideoFrames)])
    assert bool((times[1:] > times[:-1]).all())
    skipped = src.stats.skipped_packets
    assert src.stats.frames_decoded == 60 - skipped and float(times[-1]) == pytest.approx(59 * 0.04, abs=1e-6)
    # decoding resumed on a keyframe (a multiple of 10 frames), after the hole the skipped packets left
    hole = int(((times[1:] - times[:-1]) > 0.05).nonzero()[0, 0])
    assert round(float(times[hole + 1]) / 0.04) % 10 == 0


def test_packets_that_never_decode_trip_the_no_frames_watchdog() -> None:
    broken = _Container([i * 0.04 for i in range(200)], pace_s=0.005)
    broken.decodes = False
    src, packets = scripted(broken, _Container([i * 0.04 for i in range(10)]), no_frames_s=0.3)
    stalled = events(src, "stalled")
    assert stalled and "no video frame decoded" in stalled[0].detail["reason"]
    assert src.stats.connects == 3 and any(isinstance(p, VideoFrames) for p in packets)

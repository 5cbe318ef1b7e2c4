"""The PyAV file source on real generated media: sampling, selection, resampling, broken inputs."""

from __future__ import annotations

import os
from fractions import Fraction

import av
import numpy as np
import pytest
import torch

from streamzip.errors import CorruptMediaError, InputError, InputNotFoundError, NoStreamError, NotMediaError
from streamzip.packets import AudioChunk, End, VideoFrames
from streamzip.sources import DecodeConfig, FileSource
from streamzip.synthetic import make_clip


def decode(path, **cfg):  # type: ignore[no-untyped-def]
    src = FileSource(path, DecodeConfig(**cfg))
    packets = list(src)
    video = [p for p in packets if isinstance(p, VideoFrames)]
    audio = [p for p in packets if isinstance(p, AudioChunk)]
    assert isinstance(packets[-1], End)
    return src, video, audio


def test_video_sampled_to_target_fps_and_scaled(clip) -> None:  # type: ignore[no-untyped-def]
    src, video, _ = decode(clip.path, fps=2, width=112, height=64)
    times = torch.cat([v.pts_s for v in video])
    assert len(times) == 40
    assert video[0].frames.shape[1:] == (64, 112, 3) and video[0].frames.dtype == torch.uint8
    gaps = times[1:] - times[:-1]
    assert bool((gaps > 0.4).all()) and bool((gaps < 0.6).all())
    assert src.stats.frames_decoded == 500 and src.stats.frames_sampled == 40


def test_batches_hold_at_most_batch_frames(clip) -> None:  # type: ignore[no-untyped-def]
    _, video, _ = decode(clip.path, fps=4, batch_frames=3)
    assert max(v.num_frames for v in video) == 3 and sum(v.num_frames for v in video) == 80


def test_audio_is_mono_16k_with_stream_times(clip) -> None:  # type: ignore[no-untyped-def]
    _, _, audio = decode(clip.path)
    assert all(a.sample_rate_hz == 16000 and a.samples.dim() == 1 for a in audio)
    for prev, nxt in zip(audio, audio[1:]):
        assert abs(prev.end_s - nxt.start_s) < 1e-6
    total = sum(a.duration_s for a in audio)
    assert abs(total - clip.duration_s) < 0.1
    # Loud where the clip speaks, quiet elsewhere: times are true to the file.
    samples = torch.cat([a.samples for a in audio])
    s0, s1 = clip.speech[1]
    start = audio[0].start_s
    loud = samples[int((s0 + 0.2 - start) * 16000):int((s1 - 0.2 - start) * 16000)].abs().mean()
    quiet = samples[int((s1 + 0.3 - start) * 16000):int((s1 + 1.2 - start) * 16000)].abs().mean()
    assert loud > 20 * quiet


def test_start_and_end_selection(clip) -> None:  # type: ignore[no-untyped-def]
    _, video, audio = decode(clip.path, start_s=5.0, end_s=9.5)
    times = torch.cat([v.pts_s for v in video])
    assert float(times.min()) >= 4.97 and float(times.max()) < 9.5
    assert len(times) == 9
    assert audio[0].start_s >= 4.99 and abs(audio[-1].end_s - 9.5) < 0.01


@pytest.mark.parametrize(("rate", "channels"), [(8000, 1), (44100, 2), (48000, 6)])
def test_audio_rates_and_channels_become_16k_mono(tmp_path, rate, channels) -> None:  # type: ignore[no-untyped-def]
    info = make_clip(tmp_path / f"a{rate}.mp4", scenes=(("static", 3),), video=False, sample_rate_hz=rate,
                     channels=channels)
    _, video, audio = decode(info.path)
    assert video == []
    assert all(a.sample_rate_hz == 16000 and a.samples.dim() == 1 for a in audio)
    assert abs(sum(a.duration_s for a in audio) - 3.0) < 0.1


def test_audio_only_file_with_a_video_pipeline_is_no_stream(tmp_path) -> None:  # type: ignore[no-untyped-def]
    info = make_clip(tmp_path / "a.m4a", scenes=(("static", 2),), video=False)
    with pytest.raises(NoStreamError, match="no video stream .*audio:aac") as err:
        list(FileSource(info.path, want_audio=False))
    assert "a.m4a" in str(err.value) and "Fix:" in str(err.value)


def test_video_only_file_when_both_are_required(tmp_path) -> None:  # type: ignore[no-untyped-def]
    info = make_clip(tmp_path / "v.mp4", scenes=(("static", 2),), audio=False, width=64, height=64)
    with pytest.raises(NoStreamError, match="no audio stream"):
        list(FileSource(info.path, DecodeConfig(streams="both")))
    _, video, audio = decode(info.path)  # auto: decode what there is
    assert video and not audio


def test_missing_empty_and_non_media_inputs(tmp_path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(InputNotFoundError):
        list(FileSource(tmp_path / "nope.mp4"))
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    with pytest.raises(NotMediaError, match="empty"):
        list(FileSource(empty))
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(np.random.default_rng(0).integers(0, 256, 20000, dtype=np.uint8).tobytes())
    with pytest.raises(NotMediaError, match="junk.mp4"):
        list(FileSource(junk))
    text = tmp_path / "notes.txt"
    text.write_text("hello, this is not a video\n" * 100)
    with pytest.raises(InputError):
        list(FileSource(text))
    with pytest.raises(NotMediaError, match="folder"):
        list(FileSource(tmp_path))


@pytest.mark.parametrize("fraction", [0.3, 0.7])
def test_truncated_file_gives_the_decodable_part(tmp_path, fraction) -> None:  # type: ignore[no-untyped-def]
    info = make_clip(tmp_path / "t.ts", scenes=(("pan", 6),), width=160, height=120)
    data = open(info.path, "rb").read()
    cut = tmp_path / "cut.ts"
    cut.write_bytes(data[: int(len(data) * fraction)])
    _, video, audio = decode(cut)
    frames = sum(v.num_frames for v in video)
    assert 0 < frames < 12
    assert frames >= int(12 * fraction) - 3


def test_truncated_mp4_is_decoded_or_a_typed_error(tmp_path) -> None:  # type: ignore[no-untyped-def]
    info = make_clip(tmp_path / "t.mp4", scenes=(("pan", 4),), width=160, height=120)
    data = open(info.path, "rb").read()
    for frac in (0.01, 0.5):
        cut = tmp_path / f"cut{frac}.mp4"
        cut.write_bytes(data[: int(len(data) * frac)])
        try:
            decode(cut)
        except InputError as err:
            assert "cut" in str(err)


def test_corrupt_packets_mid_file_are_skipped_and_counted(tmp_path) -> None:  # type: ignore[no-untyped-def]
    info = make_clip(tmp_path / "c.ts", scenes=(("pan", 8),), width=160, height=120)
    data = bytearray(open(info.path, "rb").read())
    rng = np.random.default_rng(1)
    mid = len(data) // 2
    data[mid:mid + 4000] = rng.integers(0, 256, 4000, dtype=np.uint8).tobytes()
    bad = tmp_path / "bad.ts"
    bad.write_bytes(bytes(data))
    src, video, audio = decode(bad)
    frames = sum(v.num_frames for v in video)
    times = torch.cat([v.pts_s for v in video])
    assert frames >= 13  # of 16: the rest of the file is kept
    assert float(times.max()) > 7.0
    assert sum(a.duration_s for a in audio) > 6.0


def test_lavfi_synthetic_source() -> None:
    src, video, audio = decode("lavfi:testsrc2=size=160x120:rate=10:duration=2[out0];sine=f=440:d=2[out1]",
                               width=64, height=64)
    assert sum(v.num_frames for v in video) == 4 and abs(sum(a.duration_s for a in audio) - 2.0) < 0.05
    with pytest.raises(NotMediaError, match="lavfi"):
        list(FileSource("lavfi:nosuchfilter=1"))


def test_all_corrupt_is_an_error_not_silence(tmp_path) -> None:  # type: ignore[no-untyped-def]
    # A valid container header whose packets are garbage.
    path = tmp_path / "g.mkv"
    with av.open(str(path), "w") as out:
        s = out.add_stream("h264", rate=10)
        s.width = s.height = 64
        for i in range(5):
            pkt = av.Packet(os.urandom(500))
            pkt.stream = s
            pkt.pts = pkt.dts = i
            pkt.time_base = Fraction(1, 10)
            out.mux(pkt)
    try:
        _, video, _ = decode(path)
        assert sum(v.num_frames for v in video) == 0
    except (CorruptMediaError, NotMediaError):
        pass


def test_a_source_failing_midway_flushes_the_stages_then_raises() -> None:
    """A source that fails mid-stream costs nothing it delivered: the stages flush (the open window
    comes out, as if the source had ended there), then the source's error is raised, with no End."""
    from _cut_source import INPUT, PIPELINE, CutSource

    from streamzip.packets import Tokens
    from streamzip.runtime.local import LocalRuntime
    from streamzip.stats import InputResult

    def run(fail: bool) -> tuple[list[object], InputResult]:
        result = InputResult(input="cut", stream="cut")
        out: list[object] = []
        try:
            for p in LocalRuntime().run_source(PIPELINE, CutSource(result, keep=5, fail=fail), result):
                out.append(p)
        except CorruptMediaError as err:
            assert fail and err.input == INPUT and err.stage == "source" and "re-encode" in str(err)
            return out, result
        assert not fail, "the source's error was not raised"
        return out, result

    ended, ended_result = run(fail=False)
    failed, failed_result = run(fail=True)
    assert isinstance(ended[-1], End) and not any(isinstance(p, End) for p in failed)
    assert len(failed) == len(ended) - 1
    for a, b in zip(failed, ended):
        assert isinstance(a, Tokens) and isinstance(b, Tokens)
        assert torch.equal(a.data, b.data) and torch.equal(a.t0, b.t0) and torch.equal(a.t1, b.t1)
    # The window from 2 s was still open when the source stopped (5 frames: 0 to 2 s): only the
    # flush let its tokens out.
    last = [p for p in failed if isinstance(p, Tokens)][-1]
    assert float(last.t0.min()) >= 2.0 and last.num_tokens > 0
    assert failed_result.tokens_out == ended_result.tokens_out > 0

"""The default pipeline end to end on a generated clip with known scenes and speech."""

from __future__ import annotations

import pytest
import torch

import streamzip
from streamzip.job import run_job
from streamzip.pipeline import load_pipeline


@pytest.fixture(scope="module")
def default_run(clip, tmp_path_factory):  # type: ignore[no-untyped-def]
    out = tmp_path_factory.mktemp("e2e")
    [result] = run_job(load_pipeline("default"), [clip.path], out, runtime="local")
    assert result.ok, result.error
    return result, streamzip.load(result.output)


def test_summary_reports_reduction_and_fidelity(default_run) -> None:  # type: ignore[no-untyped-def]
    result, _ = default_run
    assert result.frames == 40 and result.media_s == pytest.approx(20.0, abs=0.1)
    assert result.reduction is not None and result.reduction > 0.8
    assert result.fidelity is not None and result.fidelity > 0.9


def test_every_window_holds_its_budget_and_covers_its_span(default_run) -> None:  # type: ignore[no-untyped-def]
    _, out = default_run
    for group, budget in (("window/video", 128), ("window/audio", 64)):
        packets = out.packets(group)
        assert [p.meta["window"] for p in packets] == list(range(5))
        for p in packets:
            assert p.num_tokens <= budget
            start, end = p.meta["window_start_s"], p.meta["window_end_s"]
            assert bool((p.t0 >= start - 1e-6).all()) and bool((p.t0 < end).all())
            assert bool((p.t0[1:] >= p.t0[:-1]).all())


def test_sizes_conserved_and_every_original_represented_once(default_run) -> None:  # type: ignore[no-untyped-def]
    _, out = default_run
    video = out.tokens("window/video")
    assert int(video.size.sum()) == 40 * 196
    assert sorted(video.src.tolist()) == list(range(40 * 196))
    assert bool((video.assignment >= 0).all())
    # Each original's representative covers its time.
    orig_t = (video.src // 196).to(torch.float64) * 0.5
    rep = video.assignment
    assert bool((video.t0[rep] <= orig_t + 0.03).all()) and bool((video.t1[rep] >= orig_t + 0.47).all())


def test_silence_is_dropped_and_speech_kept(default_run, clip) -> None:  # type: ignore[no-untyped-def]
    result, out = default_run
    segments = result.reports["vad"]["speech_segments"]
    for s0, s1 in clip.speech:  # every planted burst is inside a detected segment
        assert any(a <= s0 + 0.05 and b >= s1 - 0.05 for a, b in segments), (s0, s1, segments)
    audio = out.tokens("window/audio")
    mid = (audio.t0 + audio.t1) / 2
    in_speech = torch.zeros_like(mid, dtype=torch.bool)
    for a, b in segments:
        in_speech |= (mid >= a) & (mid <= b)
    assert bool(in_speech.all())
    speech_s = sum(b - a for a, b in clip.speech)
    assert float((audio.t1 - audio.t0).sum()) < 1.6 * speech_s  # most of the silence is gone


def test_memory_stays_within_its_budget(default_run) -> None:  # type: ignore[no-untyped-def]
    _, out = default_run
    video = out.packets("memory/video")
    audio = out.packets("memory/audio")
    assert video and audio
    assert video[-1].num_tokens + audio[-1].num_tokens <= 256
    assert float(video[-1].t0.min()) == pytest.approx(0.0, abs=1e-6)  # the start is still represented
    assert float(video[-1].t1.max()) == pytest.approx(20.0, abs=0.6)

"""The VAD operator: smoothing rule, streaming exactness, times, backends, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from streamzip.errors import ConfigError, InputError
from streamzip.operators.vad import VAD, Hangover, VADConfig, smooth_decisions
from streamzip.packets import AudioChunk, Gap
from streamzip.registry import get
from streamzip.synthetic import speech_like

# -- helpers -------------------------------------------------------------------------------------

def burst_audio(rate: int, *, lead_s: float = 1.0, speech_s: float = 1.5, tail_s: float = 1.0,
                seed: int = 0) -> tuple[torch.Tensor, tuple[float, float]]:
    """Quiet noise, a speech-like burst, quiet noise; returns the audio and the burst's (start, end)."""
    rng = np.random.default_rng(seed)
    lead = rng.normal(0, 1e-4, int(lead_s * rate)).astype(np.float32)
    tail = rng.normal(0, 1e-4, int(tail_s * rate)).astype(np.float32)
    burst = speech_like(speech_s, rate, rng)
    return torch.from_numpy(np.concatenate([lead, burst, tail])), (lead_s, lead_s + speech_s)


def run_vad(op: VAD, audio: torch.Tensor, rate: int, chunk: int, start_s: float = 0.0) -> list[AudioChunk]:
    out: list[AudioChunk] = []
    for i in range(0, audio.numel(), chunk):
        out += op.process(AudioChunk("s", audio[i:i + chunk], rate, start_s + i / rate))  # type: ignore[arg-type]
    out += op.flush()  # type: ignore[arg-type]
    return out


def kept_mask(chunks: list[AudioChunk], n: int, rate: int, start_s: float = 0.0) -> np.ndarray:
    mask = np.zeros(n, bool)
    for c in chunks:
        s = round((c.start_s - start_s) * rate)
        assert not mask[s:s + c.num_samples].any(), "speech emitted twice"
        mask[s:s + c.num_samples] = True
    return mask


def joined(chunks: list[AudioChunk]) -> list[tuple[float, torch.Tensor]]:
    """Chunks joined where contiguous: [(start_s, samples)], independent of how they were cut."""
    out: list[tuple[float, torch.Tensor]] = []
    for c in chunks:
        if out and abs(out[-1][0] + out[-1][1].numel() / c.sample_rate_hz - c.start_s) < 0.5 / c.sample_rate_hz:
            out[-1] = (out[-1][0], torch.cat([out[-1][1], c.samples]))
        else:
            out.append((c.start_s, c.samples))
    return out


def same_output(a: list[AudioChunk], b: list[AudioChunk]) -> bool:
    ja, jb = joined(a), joined(b)
    return len(ja) == len(jb) and all(abs(x[0] - y[0]) < 1e-9 and torch.equal(x[1], y[1]) for x, y in zip(ja, jb))


# -- the smoothing rule --------------------------------------------------------------------------

def test_smooth_decisions_hand_made() -> None:
    d = [0, 0, 1, 1, 1, 0, 0, 0, 0, 0, 0, 1, 0, 0, 1, 1, 0, 0]
    # min_speech 2 drops the lone frame 11; padding 1 widens (2,5)->(1,6) and (14,16)->(13,17);
    # the gap 6..13 is 7 frames >= min_silence 3, so two segments.
    assert smooth_decisions([bool(x) for x in d], min_speech=2, padding=1, min_silence=3) == [(1, 6), (13, 17)]
    # with min_silence 8 the gap is filled
    assert smooth_decisions([bool(x) for x in d], min_speech=2, padding=1, min_silence=8) == [(1, 17)]
    # padding is clipped to the sequence
    assert smooth_decisions([True, True], min_speech=1, padding=5, min_silence=0) == [(0, 2)]
    assert smooth_decisions([], min_speech=1, padding=1, min_silence=1) == []


@settings(max_examples=200, deadline=None)
@given(st.lists(st.booleans(), max_size=120), st.integers(1, 5), st.integers(0, 6), st.integers(0, 8))
def test_hangover_streams_the_rule_and_final_frames_never_change(
        decisions: list[bool], min_speech: int, padding: int, min_silence: int) -> None:
    expected = smooth_decisions(decisions, min_speech=min_speech, padding=padding, min_silence=min_silence)

    def mask(segs: list[tuple[int, int]], upto: int) -> list[bool]:
        m = [False] * upto
        for a, b in segs:
            for i in range(a, min(b, upto)):
                m[i] = True
        return m

    h = Hangover(min_speech=min_speech, padding=padding, min_silence=min_silence)
    last = 0
    for d in decisions:
        h.push(d)
        upto = h.final_upto()
        assert upto >= last and upto <= h.num_frames
        last = upto
        assert mask(h.segments(), upto) == mask(expected, upto)
    h.finish()
    assert h.segments() == expected


# -- the operator on synthetic audio -------------------------------------------------------------

def test_registered() -> None:
    assert get("vad").cls is VAD


def test_burst_kept_with_true_times_silence_dropped() -> None:
    rate = 16000
    audio, (a, b) = burst_audio(rate)
    op = VAD()
    chunks = run_vad(op, audio, rate, 4000, start_s=10.0)
    mask = kept_mask(chunks, audio.numel(), rate, start_s=10.0)
    t = np.arange(audio.numel()) / rate
    speech = (t >= a) & (t < b)
    assert mask[speech].mean() >= 0.95
    # padding is 200 ms; webrtcvad adds its own hangover of a few frames at the end
    assert mask[t < a - 0.3].sum() == 0 and mask[t >= b + 0.45].sum() == 0
    for c in chunks:  # the emitted samples are the input's, at their true times
        s = round((c.start_s - 10.0) * rate)
        assert torch.equal(c.samples, audio[s:s + c.num_samples])
    assert len(op.segments) == 1
    s0, s1 = op.segments[0]
    assert 10.0 + a - 0.3 <= s0 <= 10.0 + a + 0.05 and 10.0 + b - 0.05 <= s1 <= 10.0 + b + 0.45
    assert op.speech_s == pytest.approx(mask.sum() / rate)
    assert op.speech_s + op.silence_s == pytest.approx(audio.numel() / rate)


@pytest.mark.parametrize("backend", ["webrtc", "silero"])
@pytest.mark.parametrize("rate", [16000, 44100])
def test_result_independent_of_chunking(backend: str, rate: int) -> None:
    audio, _ = burst_audio(rate, lead_s=0.7, speech_s=1.0, tail_s=0.6, seed=1)
    cfg = VADConfig(backend=backend)  # type: ignore[arg-type]
    runs = []
    for chunk in (97, 1234, audio.numel()):
        op = VAD(cfg)
        runs.append((run_vad(op, audio, rate, chunk), op.segments))
    assert runs[0][0], "the burst should be found"
    for chunks, segs in runs[1:]:
        assert same_output(runs[0][0], chunks)
        assert segs == runs[0][1]


@pytest.mark.parametrize("rate", [8000, 44100, 48000, 22050])
def test_other_sample_rates(rate: int) -> None:
    audio, (a, b) = burst_audio(rate, seed=2)
    for backend in ("webrtc", "silero"):
        op = VAD(VADConfig(backend=backend))  # type: ignore[arg-type]
        chunks = run_vad(op, audio, rate, rate // 2)
        assert all(c.sample_rate_hz == rate for c in chunks)  # the input's own samples come out
        mask = kept_mask(chunks, audio.numel(), rate)
        t = np.arange(audio.numel()) / rate
        assert mask[(t >= a) & (t < b)].mean() >= 0.9, backend
        assert mask[t < a - 0.35].sum() == 0, backend


def test_all_silence_gives_nothing() -> None:
    rate = 16000
    for audio in (torch.zeros(3 * rate), torch.from_numpy(np.random.default_rng(0).normal(0, 1e-4, 3 * rate)
                                                          .astype(np.float32))):
        for backend in ("webrtc", "silero"):
            op = VAD(VADConfig(backend=backend))  # type: ignore[arg-type]
            assert run_vad(op, audio, rate, 1000) == []
            assert op.segments == [] and op.silence_s == pytest.approx(3.0)


def test_clip_shorter_than_one_frame() -> None:
    rate = 16000
    rng = np.random.default_rng(3)
    for audio in (torch.zeros(80), torch.from_numpy(speech_like(0.015, rate, rng))):
        op = VAD()
        out = run_vad(op, audio, rate, 1000, start_s=2.0)
        # either nothing or the clip itself, at its own time: never more, never shifted
        assert out == [] or (len(out) == 1 and out[0].start_s == 2.0 and torch.equal(out[0].samples, audio))
        assert op.speech_s + op.silence_s == pytest.approx(audio.numel() / rate)
    assert VAD().process(AudioChunk("s", torch.zeros(0), rate, 0.0)) == []


def test_discontinuous_chunks_and_gaps_close_segments() -> None:
    rate = 16000
    rng = np.random.default_rng(4)
    burst = torch.from_numpy(speech_like(1.0, rate, rng))
    op = VAD()
    out = op.process(AudioChunk("s", burst, rate, 0.0))
    out += op.process(AudioChunk("s", burst, rate, 5.0))  # 4 s later: a new stretch
    gap = Gap("s", 6.0, 7.0)
    after_gap = op.on_gap(gap)
    assert after_gap[-1] is gap
    out += after_gap[:-1] + op.process(AudioChunk("s", burst, rate, 7.0)) + op.flush()
    segs = op.segments
    assert len(segs) == 3
    for (s0, s1), start in zip(segs, (0.0, 5.0, 7.0)):
        assert start <= s0 < start + 0.1 and start + 0.9 < s1 <= start + 1.0 + 1e-9
    assert all(isinstance(c, AudioChunk) for c in out)
    assert op.drain_segments() == segs and op.segments == []


def test_speech_segments_include_the_open_one() -> None:
    rate = 16000
    burst = torch.from_numpy(speech_like(2.0, rate, np.random.default_rng(5)))
    op = VAD()
    op.process(AudioChunk("s", burst, rate, 1.0))
    assert op.segments == [] and len(op.speech_segments()) == 1
    assert op.speech_segments()[0][0] == pytest.approx(1.0, abs=0.05)


@pytest.mark.parametrize("backend", ["webrtc", "silero"])
def test_snapshot_restore(backend: str) -> None:
    rate = 16000
    audio, _ = burst_audio(rate, seed=6)
    cfg = VADConfig(backend=backend)  # type: ignore[arg-type]
    whole = run_vad(VAD(cfg), audio, rate, 1600)
    op = VAD(cfg)
    half = 17 * 1600
    first = []
    for i in range(0, half, 1600):
        first += op.process(AudioChunk("s", audio[i:i + 1600], rate, i / rate))
    snap = op.snapshot()
    op2 = VAD(cfg)
    op2.restore(snap)
    rest = []
    for i in range(half, audio.numel(), 1600):
        rest += op2.process(AudioChunk("s", audio[i:i + 1600], rate, i / rate))
    rest += op2.flush()
    if backend == "silero":  # silero's state is saved exactly
        assert same_output(whole, first + rest)
    else:  # webrtcvad restarts fresh: same times, at most a few frames' difference
        m1 = kept_mask(whole, audio.numel(), rate)
        m2 = kept_mask(first + rest, audio.numel(), rate)
        assert (m1 != m2).mean() < 0.02


# -- bad input -----------------------------------------------------------------------------------

def test_multichannel_and_bad_samples_are_input_errors() -> None:
    op = VAD()
    with pytest.raises(InputError, match="mono"):
        op.process(AudioChunk("s", torch.zeros(2, 1600), 16000, 0.0))
    with pytest.raises(InputError, match="float"):
        op.process(AudioChunk("s", torch.zeros(1600, dtype=torch.int16), 16000, 0.0))
    bad = torch.zeros(1600)
    bad[10] = float("nan")
    with pytest.raises(InputError, match="NaN"):
        op.process(AudioChunk("s", bad, 16000, 0.0))
    with pytest.raises(InputError, match="sample_rate_hz"):
        op.process(AudioChunk("s", torch.zeros(1600), 0, 0.0))


def test_config_is_checked() -> None:
    with pytest.raises(ConfigError) as err:
        VADConfig.from_mapping({"aggressiveness": 5, "frame_ms": 25, "padding_ms": -1})
    text = str(err.value)
    assert "aggressiveness" in text and "frame_ms" in text and "padding_ms" in text
    with pytest.raises(ConfigError, match="backend"):
        VADConfig.from_mapping({"backend": "nope"})

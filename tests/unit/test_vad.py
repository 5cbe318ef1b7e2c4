"""The VAD operator: smoothing rule, streaming exactness, times, backends, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from streamzip.errors import ConfigError, InputError
from streamzip.operators.vad import _RESET_S, _WARM_S, VAD, Hangover, VADConfig, _WebrtcBackend, smooth_decisions
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
    plain = VAD(cfg)
    whole = run_vad(plain, audio, rate, 1600)
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
    assert same_output(whole, first + rest)  # both backends restore exactly
    assert op2.segments == plain.segments


def talk(rate: int, seconds: float, seed: int) -> torch.Tensor:
    """Speech-like bursts (0.3-2.5 s) and pauses (0.2-2.5 s) over a steady noise floor (-60 dBFS)."""
    rng = np.random.default_rng(seed)
    parts, n = [], 0
    while n < seconds * rate:
        pause = np.zeros(int(rng.uniform(0.2, 2.5) * rate), np.float32)
        burst = speech_like(float(rng.uniform(0.3, 2.5)), rate, rng) * np.float32(rng.uniform(0.1, 1.0))
        parts += [pause, burst]
        n += pause.size + burst.size
    audio = np.concatenate(parts)[: int(seconds * rate)]
    return torch.from_numpy(audio + rng.normal(0, 1e-3, audio.size).astype(np.float32))


def packets(audio: torch.Tensor, rate: int, chunk: int) -> list[AudioChunk]:
    return [AudioChunk("s", audio[i:i + chunk], rate, i / rate) for i in range(0, audio.numel(), chunk)]


@pytest.mark.parametrize("rate", [16000, 44100])
def test_webrtc_restored_after_any_packet_ends_like_the_undisturbed_run(rate: int) -> None:
    """A fresh operator restored from the snapshot taken after packet k, fed the packets after k,
    gives what the undisturbed run gives, for every k: across the webrtcvad resets too (every
    _RESET_S), and whether or not snapshots were taken."""
    audio = talk(rate, 3.2 * _RESET_S, seed=11)
    cfg = VADConfig()
    plain = VAD(cfg)
    whole = run_vad(plain, audio, rate, audio.numel())  # one packet
    assert len(plain.segments) >= 8, "the audio should hold many segments"
    for chunk in (997, int(0.7 * rate)):  # neither divides a 30 ms frame
        op = VAD(cfg)
        assert same_output(whole, run_vad(op, audio, rate, chunk)) and op.segments == plain.segments
    pkts = packets(audio, rate, int(0.7 * rate) + 3)
    op = VAD(cfg)
    outs: list[list[AudioChunk]] = []
    snaps = []
    for p in pkts:
        outs.append(op.process(p))  # type: ignore[arg-type]
        snaps.append(op.snapshot())
    tail = op.flush()
    assert same_output(whole, [c for o in outs for c in o] + tail)  # snapshots change nothing
    for k, snap in enumerate(snaps):
        again = VAD(cfg)
        again.restore(snap)
        rest = [c for p in pkts[k + 1:] for c in again.process(p)] + again.flush()
        assert same_output(whole, [c for o in outs[:k + 1] for c in o] + rest), f"restored after packet {k}"
        assert again.segments == plain.segments, f"restored after packet {k}"


def test_webrtc_decisions_depend_on_a_bounded_past() -> None:
    """Two streams that differ only before the warm-up of a reset get the same decisions from that
    reset on: the webrtcvad is a function of the frames since its warm-up began, which a snapshot holds."""
    rate, frame_ms = 16000, 30
    frame_len = rate * frame_ms // 1000
    reset = round(_RESET_S * 1000 / frame_ms)  # the first reset, in frames
    cut = (reset - round(_WARM_S * 1000 / frame_ms)) * frame_len  # where its warm-up begins
    a = talk(rate, 2.5 * _RESET_S, seed=12)
    b = a.clone()
    b[:cut] = talk(rate, cut / rate, seed=13)
    decisions = []
    for x in (a, b):
        backend = _WebrtcBackend(rate, 2, frame_ms)
        n = x.numel() // frame_len
        decisions.append(backend.decide(x[: n * frame_len].reshape(n, frame_len)))
    assert decisions[0][:reset] != decisions[1][:reset]
    assert decisions[0][reset:] == decisions[1][reset:]


def test_webrtc_snapshot_stays_bounded_on_a_long_stream() -> None:
    rate = 16000
    op = VAD()
    chunk = rate // 2
    most = 0
    audio = talk(rate, 60.0, seed=14)
    for minute in range(10):  # ten minutes of one stretch
        for i in range(0, audio.numel(), chunk):
            op.process(AudioChunk("s", audio[i:i + chunk], rate, minute * 60.0 + i / rate))
            op.drain_segments()  # as an endless stream does
            state = op.state_dict()
            size = sum(v.numel() * v.element_size() for v in state.values() if isinstance(v, torch.Tensor))
            size += sum(v.numel() * v.element_size() for v in state["backend"].values()
                        if isinstance(v, torch.Tensor))
            most = max(most, size)
    assert op.state_dict()["backend"]["num_frames"] >= 599.0 / 0.03  # one stretch of ten minutes
    # the webrtc frames since the last reset's warm-up, plus a few seconds of undecided audio
    assert most <= (_RESET_S + _WARM_S) * rate * 2 + 4 * rate * 4


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

"""The fbank audio encoder: features, token times in stream time, streaming exactness, bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from streamzip.encoders.fbank import FbankEncoder, FbankEncoderConfig, fbank_frames, frames_to_tokens
from streamzip.errors import ConfigError, InputError
from streamzip.packets import AUDIO, AudioChunk, Gap, Tokens
from streamzip.registry import get
from streamzip.synthetic import speech_like
from streamzip.tokens import cat


def encode(audio: torch.Tensor, rate: int, chunk: int, *, start_s: float = 0.0,
           config: FbankEncoderConfig | None = None) -> Tokens:
    enc = FbankEncoder(config, stream="s")
    out = []
    for i in range(0, audio.numel(), chunk):
        out += enc.process(AudioChunk("s", audio[i:i + chunk], rate, start_s + i / rate))
    out += enc.flush()
    return cat(out, stream="s", modality=AUDIO, dim=enc.config.dim)  # type: ignore[arg-type]


def assert_same_tokens(a: Tokens, b: Tokens) -> None:
    for name in ("data", "t0", "t1", "size", "pos", "src", "assignment"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name


def speech(rate: int, seconds: float, seed: int = 0) -> torch.Tensor:
    return torch.from_numpy(speech_like(seconds, rate, np.random.default_rng(seed)))


def test_registered_as_audio_encoder() -> None:
    info = get("fbank_encoder")
    assert info.cls is FbankEncoder and info.kind == "encoder"
    assert FbankEncoder.produces == (AUDIO,) and FbankEncoder.accepts == (AudioChunk,)


def test_frames_to_tokens_stack_and_pool() -> None:
    frames = torch.arange(10, dtype=torch.float32).repeat_interleave(2).reshape(10, 2)  # frame j = [j, j]
    stacked = frames_to_tokens(frames, 4, "stack")
    assert stacked.shape == (3, 8)
    assert stacked[0].tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    assert stacked[2].tolist() == [8, 8, 9, 9, 9, 9, 9, 9]  # partial token: last frame repeated
    pooled = frames_to_tokens(frames, 4, "pool")
    assert pooled.tolist() == [[1.5, 1.5], [5.5, 5.5], [8.5, 8.5]]
    assert frames_to_tokens(frames[:0], 4, "stack").shape == (0, 8)


def test_tone_peaks_in_the_right_mel_bin() -> None:
    rate = 16000
    t = torch.arange(rate) / rate
    low = fbank_frames(0.3 * torch.sin(2 * math.pi * 300 * t), normalize="none")
    high = fbank_frames(0.3 * torch.sin(2 * math.pi * 3000 * t), normalize="none")
    assert low.shape == (1 + (rate - 400) // 160, 80)

    def mel(f: float) -> float:
        return 1127 * math.log(1 + f / 700)

    # Kaldi's 80 bins are evenly spaced on the mel scale between 20 Hz and 8 kHz.
    def expected_bin(f: float) -> float:
        return (mel(f) - mel(20)) / (mel(8000) - mel(20)) * 81 - 1

    for feats, f in ((low, 300), (high, 3000)):
        peak = int(feats.mean(0).argmax())
        assert abs(peak - expected_bin(f)) <= 1.5
    # per-frame normalisation removes the level: a quieter tone gives the same tokens
    a = fbank_frames(0.3 * torch.sin(2 * math.pi * 300 * t))
    b = fbank_frames(0.03 * torch.sin(2 * math.pi * 300 * t))
    assert torch.allclose(a, b, atol=0.1)  # float32 rounding in the near-empty top bins


def test_shapes_times_and_provenance() -> None:
    rate = 16000
    tokens = encode(speech(rate, 1.0), rate, 4000, start_s=10.0)
    # 98 frames of 10 ms -> 24 tokens of 4 frames and a partial one of 2
    assert tokens.num_tokens == 25 and tokens.dim == 320
    assert tokens.data.dtype == torch.float32 and tokens.t0.dtype == torch.float64
    assert torch.allclose(tokens.t0, 10.0 + 0.04 * torch.arange(25, dtype=torch.float64))
    assert torch.equal(tokens.t1[:-1], tokens.t0[1:])  # tokens tile the clock
    assert tokens.t1[-1].item() == pytest.approx(10.0 + 0.98)
    assert torch.equal(tokens.src, torch.arange(25)) and torch.equal(tokens.assignment, torch.arange(25))
    assert (tokens.pos == -1).all() and (tokens.size == 1).all()
    assert tokens.modality == AUDIO and tokens.stream == "s"
    tokens.check()


def test_pool_mode_and_other_rates_of_tokens() -> None:
    rate = 16000
    audio = speech(rate, 1.0)
    pooled = encode(audio, rate, 16000, config=FbankEncoderConfig(mode="pool"))
    assert pooled.dim == 80 and pooled.num_tokens == 25
    fast = encode(audio, rate, 16000, config=FbankEncoderConfig(tokens_per_s=50))
    assert fast.dim == 160 and fast.num_tokens == 49


@pytest.mark.parametrize("rate", [16000, 44100, 8000, 48000])
def test_tokens_independent_of_chunking(rate: int) -> None:
    audio = speech(rate, 1.3, seed=1)
    whole = encode(audio, rate, audio.numel())
    sizes = (1, 333) if rate == 16000 else (777,)
    for chunk in sizes:
        assert_same_tokens(whole, encode(audio, rate, chunk))


@pytest.mark.parametrize("rate", [8000, 44100, 48000])
def test_other_rates_resampled(rate: int) -> None:
    audio16 = speech(16000, 1.0, seed=2)
    # The same signal at another rate gives nearly the same features (and the same times).
    import torchaudio.functional as taf

    other = taf.resample(audio16, 16000, rate)
    a = encode(audio16, 16000, 16000)
    b = encode(other, rate, rate)
    assert a.num_tokens == b.num_tokens
    assert torch.allclose(a.t0, b.t0)
    if rate > 16000:  # no information lost: the features agree closely
        cos = torch.nn.functional.cosine_similarity(a.data, b.data, dim=1)
        assert cos[1:-1].min() > 0.95


def test_non_contiguous_chunks_start_fresh_and_never_join() -> None:
    rate = 16000
    audio = speech(rate, 0.5, seed=3)
    enc = FbankEncoder()
    out = enc.process(AudioChunk("s", audio, rate, 1.0))
    out += enc.process(AudioChunk("s", audio, rate, 3.0))  # silence removed between 1.5 and 3.0
    out += enc.flush()
    tokens = cat(out)
    first = tokens.t0 < 2.0
    assert int(first.sum()) == 12 and int((~first).sum()) == 12  # 48 frames each: 12 tokens, last partial
    assert tokens.t1[first].max().item() == pytest.approx(1.0 + 0.48)
    assert tokens.t0[~first].min().item() == pytest.approx(3.0)
    # the second stretch's tokens equal those of the same audio encoded alone: nothing carried over
    alone = encode(audio, rate, audio.numel(), start_s=3.0)
    assert torch.equal(tokens.data[~first], alone.data)
    assert torch.equal(tokens.src, torch.arange(24))  # ids keep running


def test_gap_and_flush_end_the_stretch() -> None:
    rate = 16000
    enc = FbankEncoder()
    assert enc.process(AudioChunk("s", speech(rate, 0.2), rate, 0.0)) == []  # under one block: pending
    gap = Gap("s", 0.2, 1.0)
    out = enc.on_gap(gap)
    assert out[-1] is gap and isinstance(out[0], Tokens) and out[0].num_tokens == 5
    assert enc.flush() == []


def test_short_clip_and_empty_chunk() -> None:
    rate = 16000
    enc = FbankEncoder()
    assert enc.process(AudioChunk("s", torch.zeros(0), rate, 0.0)) == []
    assert enc.process(AudioChunk("s", speech(rate, 0.02), rate, 0.0)) == []  # < one 25 ms window
    assert enc.flush() == []
    # exactly one window: one frame, one (partial) token
    enc.process(AudioChunk("s", speech(rate, 0.025), rate, 0.0))
    out = enc.flush()
    assert len(out) == 1 and out[0].num_tokens == 1  # type: ignore[union-attr]


def test_snapshot_restore_mid_stream() -> None:
    rate = 44100
    audio = speech(rate, 1.5, seed=4)
    whole = encode(audio, rate, 1000)
    enc = FbankEncoder(stream="s")
    out = []
    cut = 30 * 1000
    for i in range(0, cut, 1000):
        out += enc.process(AudioChunk("s", audio[i:i + 1000], rate, i / rate))
    enc2 = FbankEncoder(stream="s")
    enc2.restore(enc.snapshot())
    for i in range(cut, audio.numel(), 1000):
        out += enc2.process(AudioChunk("s", audio[i:i + 1000], rate, i / rate))
    out += enc2.flush()
    assert_same_tokens(whole, cat(out))


def test_bad_input_is_an_input_error() -> None:
    enc = FbankEncoder()
    with pytest.raises(InputError, match="mono"):
        enc.process(AudioChunk("s", torch.zeros(2, 16000), 16000, 0.0))
    with pytest.raises(InputError, match="float"):
        enc.process(AudioChunk("s", torch.zeros(16000, dtype=torch.int32), 16000, 0.0))
    bad = torch.zeros(16000)
    bad[5] = float("inf")
    with pytest.raises(InputError, match="NaN or inf"):
        enc.process(AudioChunk("s", bad, 16000, 0.0))
    with pytest.raises(InputError, match="sample_rate_hz"):
        enc.process(AudioChunk("s", torch.zeros(100), -16000, 0.0))


def test_config_is_checked() -> None:
    with pytest.raises(ConfigError, match="whole number"):
        FbankEncoderConfig(tokens_per_s=30.0)
    with pytest.raises(ConfigError, match="num_mel_bins"):
        FbankEncoderConfig(num_mel_bins=4)
    with pytest.raises(ConfigError, match="mode"):
        FbankEncoderConfig.from_mapping({"mode": "concat"})

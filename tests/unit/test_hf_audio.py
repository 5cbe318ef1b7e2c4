"""The ``hf_audio_encoder`` on tiny random-initialised Whisper models (offline): the tokens are the
model's own encoder states, at 50 per second, streamed independently of chunking, and bad models are
clear errors."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from streamzip import ConfigError, ModelError, Pipeline
from streamzip.encoders.hf_audio import HFAudioEncoder, HFAudioEncoderConfig
from streamzip.encoders.tiny import save_tiny_model
from streamzip.errors import InputError
from streamzip.packets import AUDIO, AudioChunk, Gap, Tokens
from streamzip.registry import get
from streamzip.runtime.local import LocalRuntime
from streamzip.synthetic import make_clip, speech_like
from streamzip.tokens import cat


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    return {
        "whisper": save_tiny_model("whisper", root / "whisper"),  # the real 30 s window
        # 100 positions: a 2 s window, cheap for the streaming tests (and the short-window path)
        "short": save_tiny_model("whisper", root / "short", max_source_positions=100),
        "mel128": save_tiny_model("whisper", root / "mel128", num_mel_bins=128, max_source_positions=50),
    }


def encoder(path: Path, **kw) -> HFAudioEncoder:  # type: ignore[no-untyped-def]
    """On the CPU in float32 (exact comparisons); tests/gpu checks the CUDA path."""
    return HFAudioEncoder(HFAudioEncoderConfig(model=str(path), **{"device": "cpu", **kw}), stream="s")


def speech(rate: int, seconds: float, seed: int = 0) -> torch.Tensor:
    return torch.from_numpy(speech_like(seconds, rate, np.random.default_rng(seed)))


def encode(enc: HFAudioEncoder, audio: torch.Tensor, rate: int, chunk: int, *, start_s: float = 0.0) -> Tokens:
    out = []
    for i in range(0, audio.numel(), chunk):
        out += enc.process(AudioChunk("s", audio[i:i + chunk], rate, start_s + i / rate))
    out += enc.flush()
    return cat(out, stream="s", modality=AUDIO, dim=enc.tower.dim)  # type: ignore[arg-type]


def assert_same_tokens(a: Tokens, b: Tokens) -> None:
    for name in ("data", "t0", "t1", "size", "pos", "src", "assignment"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name


def reference(path: Path, audio: torch.Tensor, *, mel_bins: int, window_s: int) -> torch.Tensor:
    """The model's own encoder states on WhisperFeatureExtractor's features of ``audio``."""
    from transformers import WhisperFeatureExtractor, WhisperModel

    fe = WhisperFeatureExtractor(feature_size=mel_bins, chunk_length=window_s)
    feats = fe(audio.numpy(), sampling_rate=16000, return_tensors="pt").input_features
    model = WhisperModel.from_pretrained(path).eval()
    with torch.no_grad():
        return model.encoder(feats).last_hidden_state[0]


def test_registered_as_audio_encoder() -> None:
    info = get("hf_audio_encoder")
    assert info.cls is HFAudioEncoder and info.kind == "encoder"
    assert HFAudioEncoder.produces == (AUDIO,) and HFAudioEncoder.accepts == (AudioChunk,)


@pytest.mark.parametrize("kind, mel_bins, window_s", [("whisper", 80, 30), ("mel128", 128, 1)])
def test_tokens_are_the_whisper_encoders_own_states(models, kind, mel_bins, window_s) -> None:  # type: ignore[no-untyped-def]
    audio = speech(16000, 0.83, seed=1)
    enc = encoder(models[kind])
    assert enc.tower.window_s == window_s and enc.tower.segment_s == window_s
    tokens = encode(enc, audio, 16000, audio.numel())
    want = reference(models[kind], audio, mel_bins=mel_bins, window_s=window_s)
    assert want.shape[0] == window_s * 50  # the window's positions, padding included
    n = math.ceil(audio.numel() / 320)  # 42: the real audio's tokens, the padding's dropped
    assert tokens.num_tokens == n and tokens.dim == 32
    torch.testing.assert_close(tokens.data, want[:n], rtol=1e-5, atol=1e-6)


def test_token_rate_times_and_provenance(models) -> None:  # type: ignore[no-untyped-def]
    audio = speech(16000, 1.01, seed=2)  # 16160 samples: 50 whole tokens and a 10 ms one
    tokens = encode(encoder(models["short"]), audio, 16000, 4000, start_s=10.0)
    assert tokens.num_tokens == 51
    assert tokens.data.dtype == torch.float32 and tokens.t0.dtype == torch.float64
    torch.testing.assert_close(tokens.t0, 10.0 + 0.02 * torch.arange(51, dtype=torch.float64))
    assert torch.equal(tokens.t1[:-1], tokens.t0[1:])  # tokens tile the clock
    assert tokens.t1[-1].item() == pytest.approx(11.01)  # the last ends with the audio
    assert torch.equal(tokens.src, torch.arange(51)) and torch.equal(tokens.assignment, torch.arange(51))
    assert (tokens.pos == -1).all() and (tokens.size == 1).all()
    assert tokens.stream == "s" and tokens.meta["token_s"] == pytest.approx(0.02)
    tokens.check()


def test_segments_are_cut_on_stream_time_from_the_stretch_start(models) -> None:  # type: ignore[no-untyped-def]
    audio = speech(16000, 4.5, seed=3)
    enc = encoder(models["short"])  # 2 s window: segments [0, 2), [2, 4), [4, 4.5)
    out = []
    for i in range(0, audio.numel(), 8000):
        out += enc.process(AudioChunk("s", audio[i:i + 8000], 16000, i / 16000))
    assert sum(p.num_tokens for p in out) == 200  # two complete segments came out while streaming
    out += enc.flush()
    tokens = cat(out)
    assert tokens.num_tokens == 225
    # each segment is the model's own output on that segment alone
    for k, (a, b) in enumerate([(0, 32000), (32000, 64000), (64000, 72000)]):
        want = reference(models["short"], audio[a:b], mel_bins=80, window_s=2)[: (b - a) // 320]
        torch.testing.assert_close(tokens.data[100 * k: 100 * k + want.shape[0]], want, rtol=1e-5, atol=1e-6)
    # a shorter segment_s: more segments, the same times, different tokens (less context)
    short = encode(encoder(models["short"], segment_s=0.5), audio, 16000, audio.numel())
    assert torch.equal(short.t0, tokens.t0) and not torch.allclose(short.data, tokens.data)
    head = encode(encoder(models["short"]), audio[:8000], 16000, 8000)
    torch.testing.assert_close(short.data[:25], head.data, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("rate, batch_size", [(16000, 1), (44100, 1), (16000, 2)])
def test_tokens_independent_of_chunking(models, rate, batch_size) -> None:  # type: ignore[no-untyped-def]
    audio = speech(rate, 4.3, seed=4)
    whole = encode(encoder(models["short"], batch_size=batch_size), audio, rate, audio.numel())
    assert whole.num_tokens == math.ceil(4.3 * 50)
    for chunk_s in (0.1, 1.7):
        chunked = encode(encoder(models["short"], batch_size=batch_size), audio, rate, round(chunk_s * rate))
        assert_same_tokens(whole, chunked)


def test_batches_are_fixed_groups_of_segments(models) -> None:  # type: ignore[no-untyped-def]
    audio = speech(16000, 4.3, seed=4)
    enc = encoder(models["short"], batch_size=2)
    shapes: list[tuple[int, ...]] = []
    enc.tower.encoder.register_forward_pre_hook(
        lambda _m, args, kw: shapes.append(tuple(kw.get("input_features", args[0] if args else None).shape)),
        with_kwargs=True)
    out = []
    for i in range(0, audio.numel(), 16000):
        got = enc.process(AudioChunk("s", audio[i:i + 16000], 16000, i / 16000))
        out += got
        # the first group (segments [0, 2 s) and [2, 4 s)) is encoded once both are complete
        assert (sum(p.num_tokens for p in out) == 200) == (i + 16000 >= 64000)
    out += enc.flush()
    assert shapes == [(2, 80, 200), (1, 80, 200)]  # one forward for two segments, then the rest
    # batching changes the tokens by float rounding at most
    single = encode(encoder(models["short"]), audio, 16000, audio.numel())
    torch.testing.assert_close(cat(out).data, single.data, rtol=1e-5, atol=1e-5)


def test_other_rates_are_resampled(models) -> None:  # type: ignore[no-untyped-def]
    import torchaudio.functional as taf

    audio16 = speech(16000, 1.5, seed=5)
    a = encode(encoder(models["short"]), audio16, 16000, 16000)
    b = encode(encoder(models["short"]), taf.resample(audio16, 16000, 48000), 48000, 48000)
    assert a.num_tokens == b.num_tokens == 75
    assert torch.allclose(a.t0, b.t0) and torch.allclose(a.t1, b.t1)
    cos = torch.nn.functional.cosine_similarity(a.data, b.data, dim=1)
    assert float(cos[1:-1].min()) > 0.95  # the same sound gives nearly the same tokens


def test_gap_flushes_the_pending_segment(models) -> None:  # type: ignore[no-untyped-def]
    enc = encoder(models["short"])
    audio = speech(16000, 0.5, seed=6)
    assert enc.process(AudioChunk("s", audio, 16000, 0.0)) == []  # under one segment: pending
    gap = Gap("s", 0.5, 1.0)
    out = enc.on_gap(gap)
    assert out[-1] is gap and isinstance(out[0], Tokens) and out[0].num_tokens == 25
    assert out[0].t1[-1].item() == pytest.approx(0.5)
    assert enc.flush() == []
    # after the gap a new stretch starts: its tokens equal the same audio encoded alone
    enc.process(AudioChunk("s", audio, 16000, 1.0))
    (after,) = enc.flush()
    alone = encode(encoder(models["short"]), audio, 16000, audio.numel(), start_s=1.0)
    assert torch.equal(after.data, alone.data) and torch.equal(after.t0, alone.t0)  # type: ignore[union-attr]
    assert torch.equal(after.src, torch.arange(25, 50))  # type: ignore[union-attr]


def test_non_contiguous_chunk_ends_the_stretch(models) -> None:  # type: ignore[no-untyped-def]
    enc = encoder(models["short"])
    audio = speech(16000, 0.5, seed=7)
    assert enc.process(AudioChunk("s", audio, 16000, 1.0)) == []
    (first,) = enc.process(AudioChunk("s", audio, 16000, 3.0))  # silence removed between 1.5 and 3.0
    assert first.num_tokens == 25 and first.t1.max().item() == pytest.approx(1.5)  # type: ignore[union-attr]
    (second,) = enc.flush()
    assert second.t0.min().item() == pytest.approx(3.0)  # type: ignore[union-attr]
    assert torch.equal(first.data, second.data)  # type: ignore[union-attr]  # nothing carried over


def test_snapshot_restore_mid_stream(models) -> None:  # type: ignore[no-untyped-def]
    rate, chunk = 44100, 4410
    audio = speech(rate, 3.0, seed=8)
    whole = encode(encoder(models["short"]), audio, rate, chunk)
    enc = encoder(models["short"])
    out = []
    cut = 25 * chunk  # 2.5 s: one segment out, half of the next pending, resampler mid-block
    for i in range(0, cut, chunk):
        out += enc.process(AudioChunk("s", audio[i:i + chunk], rate, i / rate))
    snap = enc.snapshot()
    assert snap["state"]["buf"].numel() > 0 and snap["state"]["segment"] == 1
    resumed = encoder(models["short"])
    resumed.restore(snap)
    for i in range(cut, audio.numel(), chunk):
        out += resumed.process(AudioChunk("s", audio[i:i + chunk], rate, i / rate))
    out += resumed.flush()
    assert_same_tokens(whole, cat(out))


def test_empty_and_bad_chunks(models) -> None:  # type: ignore[no-untyped-def]
    enc = encoder(models["short"])
    assert enc.process(AudioChunk("s", torch.zeros(0), 16000, 0.0)) == []
    assert enc.flush() == []
    with pytest.raises(InputError, match="mono"):
        enc.process(AudioChunk("s", torch.zeros(2, 16000), 16000, 0.0))
    with pytest.raises(InputError, match="float"):
        enc.process(AudioChunk("s", torch.zeros(16000, dtype=torch.int16), 16000, 0.0))


# -- bad models and options (what both hf encoders refuse: test_hf_loading.py) ----------------------

def test_other_speech_models_are_refused(tmp_path) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "hubert"}))
    with pytest.raises(ModelError, match=r"hubert speech model.*Whisper encoders only"):
        encoder(tmp_path)


def test_segment_longer_than_the_models_window(models) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ConfigError, match=r"window is 2 s.*max_source_positions 100"):
        encoder(models["short"], segment_s=5.0)
    assert encoder(models["short"], segment_s=2.0).tower.segment_samples == 32000


def test_segment_must_be_whole_tokens() -> None:
    with pytest.raises(ConfigError, match="whole number of 20 ms tokens"):
        HFAudioEncoderConfig(model="m", segment_s=0.03)


# -- in a pipeline -------------------------------------------------------------------------------

def test_pipeline_vad_whisper_atome_on_a_generated_clip(models, tmp_path) -> None:  # type: ignore[no-untyped-def]
    clip = make_clip(tmp_path / "speech.m4a", scenes=(("static", 6),), video=False,
                     speech=[(0.5, 2.5), (3.5, 5.5)])
    pipe = (Pipeline("whisper_speech").add("vad")
            .add("hf_audio_encoder", id="enc", model=str(models["whisper"]), device="cpu")
            .add("atome", threshold=None, max_tokens=30))
    rt = LocalRuntime()
    packets = [p for p in rt.run(pipe, [clip.path]) if isinstance(p, Tokens)]
    assert packets and all(p.modality == AUDIO and p.dim == 32 for p in packets)
    segments = rt.results[0].reports["vad"]["speech_segments"]
    for s0, s1 in clip.speech:  # every burst was kept
        assert any(a <= s0 + 0.05 and b >= s1 - 0.05 for a, b in segments), (s0, s1, segments)
    tokens = cat(packets)
    # sizes add up to the encoder's tokens: 50 per second of each speech stretch the VAD kept
    originals = sum(math.ceil(round((b - a) * 16000) / 320) for a, b in segments)
    assert int(tokens.size.sum()) == originals
    assert tokens.num_tokens < originals  # A-ToMe merged to its budget
    for p in packets:
        assert p.num_tokens <= 30
    mid = (tokens.t0 + tokens.t1) / 2
    assert all(any(a <= m <= b for a, b in segments) for m in mid.tolist())  # only speech, at its own time

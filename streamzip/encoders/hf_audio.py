"""The ``hf_audio_encoder``: the encoder of a Whisper model from ``transformers`` (by local folder or
cached id) as a streaming audio encoder, giving tokens at Whisper's native rate.

- **Tokens**: the encoder's last hidden state (``d_model`` dims, the states Whisper's decoder and the
  audio LLMs built on it — Qwen2-Audio, LLaVA-style audio projectors — read), one token per 20 ms:
  log-mel frames every 10 ms, halved by the encoder's stride-2 convolution (50 tokens/s).
- **Features**: computed as :class:`transformers.WhisperFeatureExtractor` computes them (its torch
  path, re-stated in :func:`whisper_log_mel`): 16 kHz audio, 400-point Hann STFT every 160 samples,
  ``config.num_mel_bins`` Slaney mel bins (80, or 128 for large-v3), ``log10``, clamped to 8 below the
  window's maximum, ``(x + 4) / 4``. The filter bank comes from a ``WhisperFeatureExtractor`` built
  from these parameters, so nothing is downloaded. Other input rates are resampled first
  (:class:`~streamzip.encoders._audio.BlockResampler`).
- **Windows and segments**: Whisper's encoder takes a fixed window, 30 s (3000 mel frames, 1500
  positions; ``2 · max_source_positions`` frames for a model with fewer positions) and is trained on
  shorter audio zero-padded to it. The stream is cut into segments of ``segment_s`` (default: the
  model's window, 30 s), each padded with zeros to the window and encoded; only the tokens of real
  audio leave (``ceil(samples / 320)`` of them), the padding's are dropped. Attention spans the
  window, so every forward costs the same whatever ``segment_s`` is: a short ``segment_s`` lowers the
  latency of a live stream (tokens come once a segment is complete) at ``window / segment_s`` times
  the compute, and gives each token less context. A ``segment_s`` longer than the model's window is
  a :class:`~streamzip.errors.ConfigError` naming the window.
- **Streaming**: segments are counted from the first sample of a stretch of contiguous audio, and
  go through the model in groups of ``batch_size`` consecutive segments (a group is encoded once it
  is complete), so the same audio cut into chunks differently gives the same forward passes and
  bit-identical tokens (checked by the tests on the CPU, and on an H200 in bfloat16). Batches are
  fixed this way, not by what happens to be ready, because kernels round differently for different
  batch sizes (oneDNN's convolutions on the CPU, cuBLAS on a GPU):
  encoding a backlog of 3 segments at once would not give the bits of 3 single passes. The price is
  latency: tokens come ``batch_size × segment_s`` after their audio, so the default is 1 (live), and a
  larger batch is for offline throughput on a GPU. A chunk that does not start where the previous one
  ended (silence removed by a VAD, a hole, another rate), a :class:`~streamzip.packets.Gap` or
  :meth:`~HFAudioEncoder.flush` ends the stretch: its complete segments and the unfinished one,
  padded, are encoded then.
- **Time**: token ``i`` of a segment starting at sample ``s`` of a stretch that starts at stream time
  ``origin`` covers ``[origin + (s + 320 i) / 16000, +20 ms)``; the last token of a partial segment ends
  where the audio ends. So tokens tile the clock, and silence a VAD removed never shifts them.
  ``pos`` is -1, ``size`` 1, and every token gets a fresh id (``src``) for provenance.
- **Device**: ``device: auto`` runs on CUDA when present, in bfloat16 (``dtype: auto``); float32 on the
  CPU. Tokens leave as float32 on the CPU.
- **Models**: only ``model_type: whisper`` (any size; a checkpoint of ``WhisperForConditionalGeneration``,
  ``WhisperModel`` or ``WhisperForAudioClassification``); the decoder is dropped after loading. A
  vision model, another speech model or a text model is a :class:`~streamzip.errors.ModelError`
  that says what to use instead; loading (folders, cache, ``download``, offline) is shared with
  ``hf_encoder`` (:mod:`streamzip.encoders._hf`).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

from streamzip.config import Config
from streamzip.devices import DTYPES, check_device, resolve_device, resolve_dtype
from streamzip.encoders._audio import STRETCH_RATE_HZ, StretchEncoder
from streamzip.encoders._hf import AUDIO_TYPES, VISION_TYPES, load_config, load_model, transformers_module
from streamzip.errors import ConfigError, ModelError, Problem
from streamzip.packets import Packet, Tokens
from streamzip.registry import register
from streamzip.tokens import cat

__all__ = ["HFAudioEncoder", "HFAudioEncoderConfig", "WhisperTower", "whisper_log_mel", "SAMPLE_RATE_HZ"]

#: Whisper's input rate; other inputs are resampled to it.
SAMPLE_RATE_HZ = STRETCH_RATE_HZ
_N_FFT = 400  # 25 ms
_HOP = 160  # 10 ms


@dataclass(frozen=True)
class HFAudioEncoderConfig(Config):
    # A local folder (save_pretrained) or a Hugging Face id already in the local cache.
    model: str = ""
    # Look the id up on the hub when it is not cached (never when HF_HUB_OFFLINE=1).
    download: bool = False
    # None: the model's window (30 s); shorter lowers live latency at window/segment_s times the compute.
    segment_s: float | None = None
    # Segments per forward pass, in fixed groups: 1 keeps live latency at one segment; 8 doubles GPU
    # throughput offline (H200, bf16: whisper-base-sized 5,200x -> 11,700x real time, large-sized 1,570x -> 3,080x).
    batch_size: int = 1
    # auto: CUDA when present. dtype auto: bfloat16 on a GPU, float32 on the CPU.
    device: str = "auto"
    dtype: str = "auto"

    def check(self) -> Iterator[tuple[str, str]]:
        if not self.model:
            yield "model", "give a Whisper model folder or a cached Hugging Face id (e.g. openai/whisper-base)"
        if self.segment_s is not None:
            k = self.segment_s * 50
            if not 0 < self.segment_s <= 30:
                yield "segment_s", f"must be in (0, 30] seconds (Whisper's window is 30 s), got {self.segment_s}"
            elif abs(k - round(k)) > 1e-6:
                yield "segment_s", (f"must be a whole number of 20 ms tokens, got {self.segment_s} s "
                                    f"({k:.3f} tokens); e.g. {max(round(k), 1) / 50:g}")
        if not 1 <= self.batch_size <= 1024:
            yield "batch_size", f"must be in [1, 1024], got {self.batch_size}"
        if (msg := check_device(self.device)) is not None:
            yield "device", msg
        if self.dtype not in DTYPES:
            yield "dtype", f"must be one of {', '.join(DTYPES)}, got {self.dtype!r}"


def whisper_log_mel(samples: torch.Tensor, mel_filters: torch.Tensor) -> torch.Tensor:
    """Whisper's log-mel features of ``(S,)`` float samples at 16 kHz, already padded to the window:
    ``(num_mel_bins, S // 160)`` float32, ``mel_filters`` being ``(num_mel_bins, 201)``.

    The torch path of ``WhisperFeatureExtractor`` for one waveform: a centred (reflect-padded) STFT,
    the last frame dropped, power spectrum, mel, ``log10`` floored at 1e-10, then at 8 below the
    window's maximum, then ``(x + 4) / 4``."""
    window = torch.hann_window(_N_FFT, device=samples.device)
    stft = torch.stft(samples.to(torch.float32), _N_FFT, _HOP, window=window, return_complex=True)
    power = (stft[..., :-1].abs() ** 2).contiguous()
    log_spec = torch.clamp(mel_filters @ power, min=1e-10).log10()
    log_spec = torch.maximum(log_spec, log_spec.max() - 8.0)
    return (log_spec + 4.0) / 4.0


class WhisperTower:
    """A loaded Whisper encoder, ready to encode segments of 16 kHz audio.

    :meth:`encode` is ``[(S_i,) samples, S_i ≤ window_samples] → [(ceil(S_i / token_samples), D)]``,
    float32 on the CPU, ``batch_size`` segments per forward pass. Separate from the stage so a
    benchmark or a notebook can use it bare.
    """

    def __init__(self, config: HFAudioEncoderConfig, *, stage: str = "hf_audio_encoder") -> None:
        tf = transformers_module(stage)
        self.config, self.stage = config, stage
        mcfg, name = load_config(config.model, stage=stage, download=config.download)
        mtype = getattr(mcfg, "model_type", "")
        if mtype in VISION_TYPES:
            raise ModelError(f"model {config.model!r} is a vision model ({mtype}), not a speech encoder",
                             stage=stage, fix="use it with hf_encoder for video; for audio give a Whisper "
                                              "model (e.g. openai/whisper-base)")
        if mtype in AUDIO_TYPES and mtype != "whisper":
            raise ModelError(f"model {config.model!r} is a {mtype} speech model; hf_audio_encoder reads "
                             "Whisper encoders only", stage=stage,
                             fix="give a Whisper model (model_type whisper, e.g. openai/whisper-base)")
        if mtype != "whisper":
            raise ModelError(f"model {config.model!r} holds no Whisper audio encoder (model_type {mtype!r})",
                             stage=stage, fix="give a Whisper model (model_type whisper, e.g. openai/whisper-base); "
                                              "for video use hf_encoder")
        self.device = resolve_device(config.device, field=f"{stage}.device")
        self.dtype = resolve_dtype(config.dtype, self.device, field=f"{stage}.dtype")
        # WhisperModel reads the encoder of every Whisper checkpoint; the decoder is dropped here.
        whole = load_model(tf.WhisperModel, name, stage=stage, download=config.download, dtype=self.dtype)
        self.encoder = whole.get_encoder().to(self.device).eval()
        del whole
        stride = int(self.encoder.conv1.stride[0]) * int(self.encoder.conv2.stride[0])
        self.num_mel_bins = int(mcfg.num_mel_bins)
        self.dim = int(mcfg.d_model)
        self.token_samples = _HOP * stride  # 320: 20 ms
        self.window_samples = int(mcfg.max_source_positions) * self.token_samples
        self.window_s = self.window_samples / SAMPLE_RATE_HZ
        if config.segment_s is None:
            self.segment_samples = self.window_samples
        else:
            self.segment_samples = round(config.segment_s * SAMPLE_RATE_HZ)
            if self.segment_samples > self.window_samples or self.segment_samples % self.token_samples:
                raise ConfigError([Problem(f"{stage}.segment_s", f"{config.segment_s:g} s does not fit model "
                                           f"{config.model!r}: its window is {self.window_s:g} s "
                                           f"(max_source_positions {mcfg.max_source_positions}) in tokens of "
                                           f"{self.token_samples / SAMPLE_RATE_HZ * 1000:g} ms; give at most "
                                           f"{self.window_s:g}, or leave segment_s out for the whole window")])
        self.segment_s = self.segment_samples / SAMPLE_RATE_HZ
        extractor = tf.WhisperFeatureExtractor(feature_size=self.num_mel_bins, sampling_rate=SAMPLE_RATE_HZ,
                                               hop_length=_HOP, n_fft=_N_FFT)
        self.mel_filters = torch.from_numpy(extractor.mel_filters).to(torch.float32).T.contiguous().to(self.device)

    def features(self, samples: torch.Tensor) -> torch.Tensor:
        """``(S,)`` samples (``S ≤ window_samples``) → ``(num_mel_bins, window frames)`` features."""
        x = samples.to(self.device, torch.float32)
        x = torch.nn.functional.pad(x, (0, self.window_samples - x.numel()))
        return whisper_log_mel(x, self.mel_filters)

    @torch.inference_mode()
    def encode(self, segments: list[torch.Tensor]) -> list[torch.Tensor]:
        """Each segment's tokens, float32 on the CPU. On a GPU each segment's rows are copied into
        page-locked memory without waiting and the call waits once, as the vision tower does."""
        out: list[torch.Tensor] = []
        cuda = self.device.type == "cuda"
        for s in range(0, len(segments), self.config.batch_size):
            batch = segments[s:s + self.config.batch_size]
            # Features one segment at a time (as the extractor does them); the encoder on the batch.
            feats = torch.stack([self.features(x) for x in batch]).to(self.dtype)
            hidden = self.encoder(input_features=feats).last_hidden_state
            for x, h in zip(batch, hidden):
                rows = h[: math.ceil(x.numel() / self.token_samples)]
                dst = torch.empty(rows.shape, dtype=torch.float32, pin_memory=cuda)
                out.append(dst.copy_(rows, non_blocking=cuda))
        if cuda:  # the copies above were queued, not waited for
            torch.cuda.current_stream(self.device).synchronize()
        return out


@register("hf_audio_encoder", kind="encoder")
class HFAudioEncoder(StretchEncoder):
    """Whisper encoder states as audio tokens, 50 per second (20 ms each), streamed in segments."""

    config_class = HFAudioEncoderConfig
    config: HFAudioEncoderConfig
    resources = {"num_cpus": 1.0}

    def __init__(self, config: HFAudioEncoderConfig | None = None, **kw: Any) -> None:
        super().__init__(config, **kw)
        self.tower = WhisperTower(self.config, stage=self.step_id)

    def _clear_own(self) -> None:
        self._pending: list[torch.Tensor] = []  # 16 kHz samples of the unfinished segment
        self._num_pending = 0
        self._segment = 0  # index in the stretch of the unfinished segment

    # -- the stream ---------------------------------------------------------------------------
    def _feed(self, x: torch.Tensor, *, final: bool) -> list[Packet]:
        """Add 16 kHz samples; encode every complete group of ``batch_size`` segments (everything
        pending, the unfinished segment padded, when ``final``)."""
        if x.numel():
            self._pending.append(x.clone())  # the chunk's tensor belongs to the caller
            self._num_pending += x.numel()
        seg = self.tower.segment_samples
        group = seg * self.config.batch_size
        cut = self._num_pending if final else self._num_pending // group * group
        if cut == 0:
            return []
        buf = torch.cat(self._pending)
        segments = list(buf[:cut].split(seg))
        rest = buf[cut:]
        self._pending = [rest.clone()] if rest.numel() else []
        self._num_pending = rest.numel()
        parts = [self._make_tokens(h, x.numel()) for h, x in zip(self.tower.encode(segments), segments)]
        return [cat(parts)]

    def _make_tokens(self, data: torch.Tensor, num_samples: int) -> Tokens:
        n, step = data.shape[0], self.tower.token_samples
        start = self._segment * self.tower.segment_samples
        first = start + torch.arange(n, dtype=torch.float64) * step
        last = torch.clamp(first + step, max=float(start + num_samples))
        self._segment += 1
        return self._audio_tokens(data, first / SAMPLE_RATE_HZ, last / SAMPLE_RATE_HZ,
                                  {"feature": "whisper", "token_s": step / SAMPLE_RATE_HZ,
                                   "segment_s": self.tower.segment_s})

    # -- snapshots ----------------------------------------------------------------------------
    def _own_state(self) -> dict[str, Any]:
        buf = torch.cat(self._pending) if self._pending else torch.zeros(0, dtype=torch.float32)
        return {"buf": buf, "segment": self._segment}

    def _load_own_state(self, state: dict[str, Any]) -> None:
        buf = state["buf"].to(torch.float32).clone()
        self._pending = [buf] if buf.numel() else []
        self._num_pending = buf.numel()
        self._segment = int(state["segment"])


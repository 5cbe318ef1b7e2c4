"""The ``fbank`` audio encoder: Kaldi-compatible log-mel filterbanks, stacked into tokens.

Features are torchaudio's :func:`torchaudio.compliance.kaldi.fbank` (25 ms Povey windows every
10 ms, 80 mel bins, no dither so the output is deterministic) on 16 kHz mono; other rates are
resampled first (:class:`~streamzip.encoders._audio.BlockResampler`). The waveform is scaled to the
int16 range, as Kaldi (and WeNet, FunASR…) feed it.

**Tokens.** ``mode="stack"`` (default) concatenates ``k`` consecutive frames into one token
(``k = 100 / tokens_per_s``: 4 frames → 320 dims at the default 25 tokens/s), the "low frame rate"
stacking of Paraformer/SenseVoice front ends: it keeps the order of the frames inside a token, so
adjacent-token similarity (A-ToMe) still sees the spectral change within 40 ms. ``mode="pool"``
averages them instead (80 dims).

**Normalisation.** ``normalize="frame"`` (default) subtracts each frame's mean over the mel bins, so
a token describes the spectral shape and cosine similarity is not dominated by the overall level (raw
log-mels are all of one sign and every pair of them looks alike). It is per frame, so streaming needs
no statistics. ``"none"`` keeps Kaldi's raw log-mels.

**Time.** Frame ``j`` of a stretch of contiguous audio starting at ``start_s`` covers the hop
``[start_s + j·10 ms, +10 ms)`` (its 25 ms window reaches 15 ms further); a token covers the hops of
its frames, so the tokens of one stretch tile the clock: ``t1[i] == t0[i+1]``. Times are stream time
(the chunks' ``start_s``), so silence the VAD removed never shifts them.

**Streaming.** Features are computed in fixed blocks of 25 tokens counted from the start of a stretch
of contiguous audio; the samples of an unfinished block are carried to the next chunk, so the tokens
are bit-identical however the audio was chunked (latency: one block, 1 s at 25 tokens/s). A
chunk that does not start where the previous one ended (silence removed, a hole in the input, another
sample rate) starts a new stretch: the previous one ends with a partial token (its frames padded by
repeating the last one in ``stack`` mode) and samples short of one 25 ms window are dropped.
Every token gets a fresh id (``src``) for provenance.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torchaudio.compliance import kaldi

from streamzip.config import Config
from streamzip.encoders._audio import STRETCH_RATE_HZ, StretchEncoder
from streamzip.packets import Packet, Tokens
from streamzip.registry import register
from streamzip.tokens import cat

__all__ = ["FbankEncoder", "FbankEncoderConfig", "fbank_frames", "frames_to_tokens", "FEATURE_RATE_HZ"]

#: The rate the features are computed at; other inputs are resampled to it.
FEATURE_RATE_HZ = STRETCH_RATE_HZ
_FRAME_LEN = 400  # 25 ms at 16 kHz
_HOP = 160  # 10 ms at 16 kHz
_HOP_S = _HOP / FEATURE_RATE_HZ
_BLOCK_TOKENS = 25  # tokens per fbank call (1 s at 25 tokens/s): see FbankEncoder._feed


@dataclass(frozen=True)
class FbankEncoderConfig(Config):
    # 80 bins: the Kaldi/Whisper/WeNet standard for speech models.
    num_mel_bins: int = 80
    # 25 tokens/s (40 ms per token): the rate of common speech encoders after 4x subsampling.
    tokens_per_s: float = 25.0
    # Stacking keeps the order of frames within a token (see the module docstring).
    mode: Literal["stack", "pool"] = "stack"
    # Per-frame mean removal: level-independent tokens, so cosine similarity compares spectra.
    normalize: Literal["frame", "none"] = "frame"

    @property
    def frames_per_token(self) -> int:
        return round(1.0 / (self.tokens_per_s * _HOP_S))

    @property
    def dim(self) -> int:
        return self.num_mel_bins * (self.frames_per_token if self.mode == "stack" else 1)

    def check(self) -> Iterator[tuple[str, str]]:
        if not 10 <= self.num_mel_bins <= 256:
            yield "num_mel_bins", f"must be in [10, 256], got {self.num_mel_bins}"
        if not 0 < self.tokens_per_s <= 100:
            yield "tokens_per_s", f"must be in (0, 100] (frames come every 10 ms), got {self.tokens_per_s}"
        else:
            k = 1.0 / (self.tokens_per_s * _HOP_S)
            if abs(k - round(k)) > 1e-6:
                yield "tokens_per_s", (f"a token must hold a whole number of 10 ms frames, got {self.tokens_per_s} "
                                       f"({k:.3f} frames); use 100 / k for an integer k: 100, 50, 25, 20, 12.5, 10…")


def fbank_frames(samples_16k: torch.Tensor, *, num_mel_bins: int = 80, normalize: str = "frame") -> torch.Tensor:
    """Log-mel frames of ``(S,)`` float samples at 16 kHz: ``(F, num_mel_bins)`` float32 with
    ``F = 1 + (S - 400) // 160`` (0 when ``S < 400``); frame ``j`` uses samples ``[160j, 160j + 400)``."""
    if samples_16k.numel() < _FRAME_LEN:
        return torch.zeros(0, num_mel_bins, dtype=torch.float32)
    feats = kaldi.fbank(samples_16k.to(torch.float32)[None] * 32768.0, num_mel_bins=num_mel_bins,
                        frame_length=_FRAME_LEN * 1000.0 / FEATURE_RATE_HZ,
                        frame_shift=_HOP * 1000.0 / FEATURE_RATE_HZ, dither=0.0,
                        sample_frequency=float(FEATURE_RATE_HZ), snip_edges=True)
    if normalize == "frame":
        feats = feats - feats.mean(dim=1, keepdim=True)
    return feats.to(torch.float32)


def frames_to_tokens(frames: torch.Tensor, frames_per_token: int, mode: str) -> torch.Tensor:
    """``(F, B)`` frames → ``(ceil(F / k), D)`` tokens: stacks (``D = k·B``) or means (``D = B``) of
    ``k`` consecutive frames. A partial last group is padded by repeating its last frame (stack)
    or averaged over the frames it has (pool)."""
    f, b = frames.shape
    k = frames_per_token
    n = -(-f // k)
    if n == 0:
        return torch.zeros(0, k * b if mode == "stack" else b, dtype=torch.float32)
    if mode == "pool":
        full = f // k
        parts = [frames[: full * k].reshape(full, k, b).mean(dim=1)]
        if f % k:
            parts.append(frames[full * k:].mean(dim=0, keepdim=True))
        return torch.cat(parts).contiguous()
    if f % k:
        frames = torch.cat([frames, frames[-1:].expand(n * k - f, b)])
    return frames.reshape(n, k * b).contiguous()


@register("fbank_encoder", kind="encoder")
class FbankEncoder(StretchEncoder):
    """Kaldi log-mel filterbanks stacked into audio tokens (default 25 tokens/s, 320 dims)."""

    config_class = FbankEncoderConfig
    config: FbankEncoderConfig
    threads = 1  # small tensor ops (Operator.threads)

    def _clear_own(self) -> None:
        self._buf = torch.zeros(0, dtype=torch.float32)  # 16 kHz samples from the next frame on
        self._token_frame = 0  # the stretch's frame index of the next frame

    # -- the stream ---------------------------------------------------------------------------
    def _feed(self, x: torch.Tensor, *, final: bool) -> list[Packet]:
        """Add 16 kHz samples; turn every whole block of frames (all frames left when ``final``) into
        tokens. Blocks have a fixed number of frames, counted from the stretch's start, because the
        batched FFT and matrix products round differently for different batch sizes: fixed blocks
        make the tokens bit-identical however the audio was chunked."""
        buf = torch.cat([self._buf, x]) if self._buf.numel() else x
        block = self.config.frames_per_token * _BLOCK_TOKENS
        need = (block - 1) * _HOP + _FRAME_LEN
        parts = []
        start = 0
        while buf.numel() - start >= need:
            parts.append(self._make_tokens(self._frames(buf[start: start + need])))
            start += block * _HOP
        if final:
            frames = self._frames(buf[start:])
            if frames.shape[0]:
                parts.append(self._make_tokens(frames))
            start = buf.numel()
        self._buf = buf[start:].clone()
        return [cat(parts)] if parts else []

    def _frames(self, samples: torch.Tensor) -> torch.Tensor:
        return fbank_frames(samples, num_mel_bins=self.config.num_mel_bins, normalize=self.config.normalize)

    def _make_tokens(self, frames: torch.Tensor) -> Tokens:
        k = self.config.frames_per_token
        data = frames_to_tokens(frames, k, self.config.mode)
        n = data.shape[0]
        first = self._token_frame + torch.arange(n, dtype=torch.float64) * k
        last = torch.clamp(first + k, max=float(self._token_frame + frames.shape[0]))
        self._token_frame += frames.shape[0]
        return self._audio_tokens(data, first * _HOP_S, last * _HOP_S,
                                  {"frames_per_token": k, "frame_shift_s": _HOP_S, "feature": "fbank"})

    # -- snapshots ----------------------------------------------------------------------------
    def _own_state(self) -> dict[str, Any]:
        return {"buf": self._buf.clone(), "token_frame": self._token_frame}

    def _load_own_state(self, state: dict[str, Any]) -> None:
        self._buf = state["buf"].clone()
        self._token_frame = int(state["token_frame"])

"""Shared machinery of the audio stages: input checks, contiguity in stream time, a streaming
resampler whose output does not depend on how the audio was cut into chunks, and the *stretch* of
contiguous audio that these stages hold and close at a break, a gap or the end (:class:`StretchStage`).

Used by the audio encoders (:class:`StretchEncoder`) and by the VAD operator (``streamzip.operators.vad``).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from streamzip.errors import InputError
from streamzip.operator import Operator
from streamzip.packets import AUDIO, AudioChunk, Gap, Packet, Tokens
from streamzip.tokens import with_fresh_assignment

__all__ = ["STRETCH_RATE_HZ", "BlockResampler", "StretchEncoder", "StretchStage", "audio_samples", "is_contiguous"]

#: the rate the audio encoders work at; other inputs are resampled to it.
STRETCH_RATE_HZ = 16000


def audio_samples(chunk: AudioChunk, *, stage: str | None = None) -> torch.Tensor:
    """The chunk's samples as a ``(S,)`` float32 tensor; :class:`InputError` if they cannot be used.

    Stages take mono audio: the file source downmixes, so a 2-D tensor here means a caller skipped it.
    """
    x = chunk.samples

    def bad(message: str, fix: str, time_s: float = float(chunk.start_s)) -> InputError:
        return InputError(message, input=chunk.stream or None, stage=stage, time_s=time_s, fix=fix)

    if not isinstance(x, torch.Tensor):
        raise bad(f"audio samples must be a torch.Tensor, got {type(x).__name__}",
                  "wrap the samples with torch.as_tensor(..., dtype=torch.float32)")
    if x.dim() != 1:
        raise bad(f"audio samples must be mono (S,), got shape {tuple(x.shape)}",
                  "downmix to mono first, e.g. samples.mean(dim=0) for (channels, S) (the file source does this)")
    if not x.is_floating_point():
        raise bad(f"audio samples must be float in [-1, 1], got dtype {x.dtype}",
                  "convert integer PCM with samples.float() / 32768 (int16)")
    rate = chunk.sample_rate_hz
    if isinstance(rate, bool) or not isinstance(rate, int) or rate <= 0:
        raise bad(f"sample_rate_hz must be a positive int, got {rate!r}",
                  "give the rate in samples per second, e.g. 16000")
    x = x.to(torch.float32)
    if x.numel() and not bool(torch.isfinite(x).all()):
        first = int((~torch.isfinite(x)).nonzero()[0, 0])
        raise bad(f"audio sample {first} of the chunk is NaN or inf",
                  "check the decoder; audio stages take finite samples only", float(chunk.start_s) + first / rate)
    return x.contiguous()


def is_contiguous(expected_start_s: float | None, start_s: float, sample_rate_hz: int) -> bool:
    """Whether a chunk starting at ``start_s`` follows on from audio that ended at ``expected_start_s``
    (within half a sample: chunk times are sums of floats)."""
    if expected_start_s is None:
        return False
    return abs(start_s - expected_start_s) <= 0.5 / sample_rate_hz


def _sinc_kernel(orig: int, new: int, gcd: int) -> tuple[torch.Tensor | None, int]:
    """torchaudio's own resampling kernel, computed once (its private helper; ``None`` when a
    torchaudio version lacks it, and then :func:`torchaudio.functional.resample` is called)."""
    try:
        from torchaudio.functional.functional import _get_sinc_resample_kernel
    except ImportError:  # pragma: no cover - depends on the torchaudio version
        base = min(orig, new) // gcd * 0.99
        return None, math.ceil(6 * (orig // gcd) / base)
    kernel, width = _get_sinc_resample_kernel(orig, new, gcd, 6, 0.99, "sinc_interp_hann", None,
                                              torch.device("cpu"), torch.float32)
    return kernel, int(width)


class BlockResampler:
    """Streaming sinc resampler (torchaudio's) that gives the same samples however the input is cut.

    The input is cut into fixed blocks aligned to the stream's first sample (about ``block_s`` long,
    a whole number of the rates' common periods), and each block is resampled on its own with a few
    periods of context either side: zeros before the first sample (as torchaudio pads) and after the
    last (at :meth:`finish`). Since every block is computed from the same samples whatever the
    chunking, the output is identical for any chunking. Latency: one block plus the context.

    Output sample ``j`` stands for stream time ``origin + j / new_rate_hz``.
    """

    def __init__(self, orig_rate_hz: int, new_rate_hz: int, *, block_s: float = 0.1) -> None:
        self.orig, self.new = int(orig_rate_hz), int(new_rate_hz)
        g = math.gcd(self.orig, self.new)
        self._gcd = g
        self.period_in, self.period_out = self.orig // g, self.new // g
        self._kernel, self._width = _sinc_kernel(self.orig, self.new, g)
        self._ctx = (math.ceil(self._width / self.period_in) + 1) * self.period_in
        self._block = max(1, round(block_s * self.orig / self.period_in)) * self.period_in
        self.reset()

    def reset(self) -> None:
        """Start a new stream: zeros before its first sample."""
        self._buf = torch.zeros(self._ctx, dtype=torch.float32)  # starts ctx samples before `_next`
        self._total_in = 0  # input samples received
        self._next = 0  # input index of the next block to resample

    def _resample(self, x: torch.Tensor) -> torch.Tensor:
        if self._kernel is None:  # pragma: no cover - old/new torchaudio without the helper
            import torchaudio.functional as taf

            return taf.resample(x, self.orig, self.new)
        from torchaudio.functional.functional import _apply_sinc_resample_kernel

        return _apply_sinc_resample_kernel(x, self.orig, self.new, self._gcd, self._kernel, self._width)

    def _block_out(self, length_in: int) -> torch.Tensor:
        """Resample the block at ``_next`` of ``length_in`` real samples (the buffer holds its
        context); returns its output samples."""
        padded_len = math.ceil(length_in / self.period_in) * self.period_in
        seg = self._buf[: self._ctx + padded_len + self._ctx]
        if seg.numel() < self._ctx + padded_len + self._ctx:
            seg = torch.nn.functional.pad(seg, (0, self._ctx + padded_len + self._ctx - seg.numel()))
        out = self._resample(seg)
        first = self._ctx // self.period_in * self.period_out
        num_out = math.ceil(length_in * self.new / self.orig)
        return out[first: first + num_out]

    def push(self, samples: torch.Tensor) -> torch.Tensor:
        """Feed ``(S,)`` samples; returns the output samples that became final (maybe none)."""
        if self.orig == self.new:
            self._total_in += samples.numel()
            return samples
        self._buf = torch.cat([self._buf, samples.to(torch.float32)])
        self._total_in += samples.numel()
        outs = []
        while self._total_in - self._next >= self._block + self._ctx:
            outs.append(self._block_out(self._block))
            self._next += self._block
            self._buf = self._buf[self._block:]
        return torch.cat(outs) if outs else torch.zeros(0, dtype=torch.float32)

    def finish(self) -> torch.Tensor:
        """The rest of the output, with zeros after the last sample; then :meth:`reset`."""
        if self.orig == self.new:
            self.reset()
            return torch.zeros(0, dtype=torch.float32)
        outs = []
        while self._total_in > self._next:
            length = min(self._block, self._total_in - self._next)
            outs.append(self._block_out(length))
            self._next += length
            self._buf = self._buf[length:]
        self.reset()
        return torch.cat(outs) if outs else torch.zeros(0, dtype=torch.float32)

    def state_dict(self) -> dict[str, object]:
        return {"buf": self._buf.clone(), "total_in": self._total_in, "next": self._next}

    def load_state_dict(self, state: dict[str, object]) -> None:
        buf = state["buf"]
        assert isinstance(buf, torch.Tensor)
        self._buf = buf.clone().to(torch.float32)
        self._total_in = int(state["total_in"])  # type: ignore[call-overload]
        self._next = int(state["next"])  # type: ignore[call-overload]


class StretchStage(Operator):
    """Base of the streaming audio stages (``vad``, ``fbank_encoder``, ``hf_audio_encoder``): the *stretch*.

    A stretch is a run of contiguous chunks at one sample rate, resampled by one
    :class:`BlockResampler` to the rate the stage works at. A chunk that does not follow on, another
    rate, a gap or the end closes the stretch: the resampler's tail goes to :meth:`_feed` with
    ``final=True``, and the stretch is forgotten. Subclasses implement :meth:`_begin` (ready a new
    stretch, name its working rate), :meth:`_feed` and :meth:`_clear_own`, and :meth:`_keep_input`
    when they need the input's own samples; their snapshots hold :meth:`_stretch_state`.
    """

    accepts = (AudioChunk,)
    modalities = (AUDIO,)

    def __init__(self, config: Any = None, **kw: Any) -> None:
        super().__init__(config, **kw)
        self._clear()

    def _clear(self) -> None:
        """No stretch open."""
        self._rate: int | None = None
        self._origin_s = 0.0  # stream time of the stretch's first sample
        self._expected_s: float | None = None  # where the next contiguous chunk starts
        self._resampler: BlockResampler | None = None
        self._stream_name = self.stream  # the stream of the chunks of this stretch
        self._clear_own()

    # -- what subclasses add --------------------------------------------------------------------
    def _clear_own(self) -> None:
        raise NotImplementedError

    def _begin(self, packet: AudioChunk) -> int:
        """Ready a stretch that starts with ``packet``; returns the rate (Hz) the stage works at."""
        raise NotImplementedError

    def _keep_input(self, samples: torch.Tensor) -> None:
        """Take the ``(S,)`` samples of a chunk at its own rate, before resampling (by default the stage keeps none)."""

    def _feed(self, x: torch.Tensor, *, final: bool) -> list[Packet]:
        """Take samples of the stretch at the working rate; ``final``: the stretch ends, emit everything."""
        raise NotImplementedError

    # -- the stream ---------------------------------------------------------------------------
    def process(self, packet: Packet) -> list[Packet]:
        assert isinstance(packet, AudioChunk)
        samples = audio_samples(packet, stage=self.step_id)
        out: list[Packet] = []
        if samples.numel() == 0:
            return out
        rate = packet.sample_rate_hz
        if rate != self._rate or not is_contiguous(self._expected_s, packet.start_s, rate):
            out.extend(self._end_stretch())
            self._open(packet)
        self._expected_s = float(packet.start_s) + samples.numel() / rate
        self._keep_input(samples)
        x = self._resampler.push(samples) if self._resampler is not None else samples
        out.extend(self._feed(x, final=False))
        return out

    def _open(self, packet: AudioChunk) -> None:
        work_rate = self._begin(packet)
        rate = packet.sample_rate_hz
        self._rate, self._origin_s, self._stream_name = rate, float(packet.start_s), packet.stream
        self._resampler = BlockResampler(rate, work_rate) if rate != work_rate else None

    def _end_stretch(self) -> list[Packet]:
        if self._rate is None:
            return []
        tail = self._resampler.finish() if self._resampler is not None else torch.zeros(0)
        out = self._feed(tail, final=True)
        self._clear()
        return out

    def flush(self) -> list[Packet]:
        return self._end_stretch()

    def on_gap(self, gap: Gap) -> list[Packet]:
        return [*self._end_stretch(), gap]

    # -- snapshots ----------------------------------------------------------------------------
    def _stretch_state(self) -> dict[str, Any]:
        return {
            "rate": self._rate, "origin_s": self._origin_s, "expected_s": self._expected_s,
            "stream_name": self._stream_name,
            "resampler": self._resampler.state_dict() if self._resampler is not None else None,
        }

    def _load_stretch_state(self, state: dict[str, Any]) -> None:
        """Reopen the stretch of a :meth:`_stretch_state` (through :meth:`_begin`); the subclass then
        loads its own state."""
        self._clear()
        self._stream_name = str(state["stream_name"])
        if state["rate"] is None:
            return
        self._open(AudioChunk(stream=self._stream_name, samples=torch.zeros(0), sample_rate_hz=int(state["rate"]),
                              start_s=float(state["origin_s"])))
        self._expected_s = None if state["expected_s"] is None else float(state["expected_s"])
        if self._resampler is not None and state["resampler"] is not None:
            self._resampler.load_state_dict(state["resampler"])


class StretchEncoder(StretchStage):
    """Base of the streaming audio encoders (``fbank_encoder``, ``hf_audio_encoder``): stretches
    (:class:`StretchStage`) at 16 kHz, turned into audio tokens with fresh ids.

    Subclasses keep their own buffer and counters: they implement :meth:`_feed`, :meth:`_clear_own`,
    :meth:`_own_state` and :meth:`_load_own_state`, and build their tokens with :meth:`_audio_tokens`.
    """

    produces = (AUDIO,)

    def __init__(self, config: Any = None, **kw: Any) -> None:
        super().__init__(config, **kw)
        self._next_id = 0

    def _begin(self, packet: AudioChunk) -> int:
        return STRETCH_RATE_HZ

    def _own_state(self) -> dict[str, Any]:
        raise NotImplementedError

    def _load_own_state(self, state: dict[str, Any]) -> None:
        raise NotImplementedError

    def _audio_tokens(self, data: torch.Tensor, start_s: torch.Tensor, end_s: torch.Tensor,
                      meta: dict[str, Any]) -> Tokens:
        """Audio tokens covering ``[start_s, end_s)`` seconds from the stretch's start, with fresh ids."""
        n = data.shape[0]
        tokens = Tokens(
            stream=self._stream_name, modality=AUDIO, data=data,
            t0=self._origin_s + start_s, t1=self._origin_s + end_s,
            pos=torch.full((n, 2), -1, dtype=torch.int32), size=torch.ones(n, dtype=torch.int64), meta=meta,
        )
        with_fresh_assignment(tokens, self._next_id)
        self._next_id += n
        return tokens

    # -- snapshots ----------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"next_id": self._next_id, **self._stretch_state(), **self._own_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._next_id = int(state["next_id"])
        self._load_stretch_state(state)
        self._load_own_state(state)

"""Voice activity detection: drop silence, keep speech at its true stream time, report segments.

Backends (one interface, chosen by ``backend``):

- ``webrtc`` (default): the WebRTC VAD (``webrtcvad``; aggressiveness 0–3) on 10/20/30 ms frames
  at 8/16/32/48 kHz. Cheap (a few µs per frame) but it calls some noises speech (water, modem tones).
- ``silero``: Silero VAD (``silero-vad``; its weights ship inside the wheel, nothing is downloaded),
  a small recurrent network giving a speech probability per 32 ms frame (512 samples at 16 kHz, 256
  at 8 kHz); speech starts at ``threshold`` and ends below ``threshold - 0.15`` (Silero's own
  hysteresis). Better on noise; about 0.4 ms per frame on one core (~80x real time).

Input at another rate (44.1 kHz, 22.05 kHz…) is resampled for the decisions only (silero: to 16 kHz
unless it is 8 kHz; webrtc: to 16 kHz unless its rate is supported); the audio that comes out is the
input's own samples.

**Smoothing** (in frames, the same for both backends), so word edges are not clipped:

1. a run of speech frames shorter than ``min_speech_ms`` is a click, not speech;
2. each remaining run is widened by ``padding_ms`` on both sides (the hangover);
3. silences shorter than ``min_silence_ms`` between two speech segments are kept as speech.

:func:`smooth_decisions` states this rule on a whole sequence; :class:`Hangover` computes the same
segments frame by frame, and knows which frames are final (nothing that comes later can change
them): a frame is final once ``padding + min_silence`` (plus an unfinished run) lies behind it.

**Streaming.** Emitted :class:`~streamzip.packets.AudioChunk` packets hold only speech, each with
the ``start_s`` of its first sample in stream time, so removing silence never shifts times. Samples
and decisions cross chunk boundaries (a frame buffer, the resampler's blocks, the backend's state,
the audio not yet final), so the speech audio, its times and the segments do not depend on how the
input was chunked. A chunk that does not start where the previous one ended (or changes sample rate)
closes the current stretch first; so does a :class:`~streamzip.packets.Gap`.

The segments, as ``(start_s, end_s)`` in stream time, are on the operator: :attr:`VAD.segments`
(closed ones), :meth:`VAD.speech_segments` (with the open one), :meth:`VAD.drain_segments` (take and
forget, for endless streams).

webrtcvad starts from generic noise statistics and calls the first ~100 ms of any stream speech,
even plain noise; each stretch's first 300 ms are therefore run through it once to adapt it, and then
judged from the start (deterministic, so chunking still does not matter). Seen in testing: with
digitally clean speech and noise only in the pauses, webrtcvad modes 0–2 can lock on and call the
later pauses speech; mode 3 or the silero backend do not (with a steady noise floor, as a real
microphone has, mode 2 is fine).

**Exact restore (webrtc).** webrtcvad adapts a noise model in C that cannot be read out or set. So
its decisions are made a function of a bounded past instead: every 10 s of a stretch (``_RESET_S``,
counted in frames from the stretch's start: every 333 frames of 30 ms) a fresh webrtcvad takes over,
first run over the 3 s of frames before that point (``_WARM_S``; decisions discarded). The frames
since the current webrtcvad's warm-up began (under 13 s of 16-bit PCM at the decision rate: 416 kB
at 16 kHz) are the whole backend state: a snapshot holds them, and a restore rebuilds the same C
state by running them through a fresh webrtcvad again. Reset points are frame indices, so decisions
do not depend on the chunking, nor on whether or where snapshots were taken. (silero's state is
tensors, saved as they are.)

Why 10 s and 3 s. Measured at 30 ms frames on 16 kHz LibriVox and espeak-ng speech joined by
0.2–4 s pauses (five mixes of 200–330 s: noise floor -60 dBFS white; steps of white and pink noise
up to -34 dBFS; noise only in the pauses; dense speech), as frame-level speech recall and planted
silence removed after smoothing, against one webrtcvad for the whole stretch. A warm-up of 3 s is
about the 100 frames over which webrtcvad tracks its noise floor; shorter ones (0.5–2 s) leave the
decisions after each reset further from the unreset ones (mode 2: 10–17 % of frames flipped on
the noise-only-in-pauses mix, against 7.5 % at 3 s). At the default mode 2 the resets *help*: one
webrtcvad drifts towards calling pauses speech as it adapts over minutes (LibriVox mix: silence
removed 0.93, 0.90, 0.87, 0.90 in successive minutes), and a reset every 10 s bounds that drift
(0.96–0.97), for a recall of 0.991–0.994 instead of 0.995–1.000. Over the five mixes, recall
0.993–1.000 (was 0.999–1.000), silence removed 0.41–0.97 (was 0.30–0.90). Modes 0, 1 and 3 move the
same way: recall at most 0.9 points lower (mode 3, dense speech: 0.977 against 0.986), silence
removed the same or up to 0.12 higher. Reset periods from 5 s to 30 s (warm-up 3–5 s) give recall
within 0.2 points of these, and silence removed falls slowly as the period grows (mode 2, dense
speech: 0.77 at 5 s, 0.73 at 10 s, 0.64 at 30 s); shorter periods cost more warm-up work (W/R extra
frames), longer ones a larger snapshot. 10 s keeps a snapshot at 13 s of frames and a restore's
replay at a few milliseconds.

Differences from the references: webrtcvad's examples smooth with a ring buffer voting over ~300 ms
of frames; here the rule above (as in Silero's ``get_speech_timestamps``: ``min_speech_duration_ms``,
``speech_pad_ms``, ``min_silence_duration_ms``) is used for both backends so they are interchangeable.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch

from streamzip.config import Config
from streamzip.encoders._audio import StretchStage
from streamzip.errors import DependencyError, SnapshotError
from streamzip.packets import AudioChunk, Packet
from streamzip.registry import register

__all__ = ["Hangover", "VAD", "VADConfig", "smooth_decisions"]

_WEBRTC_RATES = (8000, 16000, 32000, 48000)
_PRIME_S = 0.3  # webrtcvad adapts on this much of each stretch before judging it
_RESET_S = 10.0  # a fresh webrtcvad every 10 s of a stretch (see "Exact restore" above)…
_WARM_S = 3.0  # …warmed on the 3 s before: about the 100 frames its noise-floor tracker keeps


@dataclass(frozen=True)
class VADConfig(Config):
    # webrtc: fast and the classic choice; silero for noisy audio.
    backend: Literal["webrtc", "silero"] = "webrtc"
    # webrtc mode 2 of 0-3: drops most silence and low noise while keeping >= 95% of read speech.
    aggressiveness: int = 2
    # webrtc frames of 30 ms: its most reliable size (10 and 20 ms are allowed).
    frame_ms: int = 30
    # silero speech probability: its default.
    threshold: float = 0.5
    # 200 ms either side of speech: covers weak onsets and trailing fricatives.
    padding_ms: float = 200.0
    # 100 ms: shorter runs are clicks, or webrtcvad's first ~90 ms of a stream (before it adapts).
    min_speech_ms: float = 100.0
    # Pauses under 300 ms (between words) are kept, so words stay joined.
    min_silence_ms: float = 300.0

    def check(self) -> Iterator[tuple[str, str]]:
        if not 0 <= self.aggressiveness <= 3:
            yield "aggressiveness", f"must be 0, 1, 2 or 3, got {self.aggressiveness}"
        if self.frame_ms not in (10, 20, 30):
            yield "frame_ms", f"webrtcvad takes 10, 20 or 30 ms frames, got {self.frame_ms}"
        if not 0.0 < self.threshold < 1.0:
            yield "threshold", f"must be in (0, 1), got {self.threshold}"
        for name in ("padding_ms", "min_speech_ms", "min_silence_ms"):
            value = getattr(self, name)
            if not 0.0 <= value <= 10_000.0:
                yield name, f"must be in [0, 10000] ms, got {value}"


# -- the smoothing rule ------------------------------------------------------------------------

def smooth_decisions(decisions: Sequence[bool], *, min_speech: int, padding: int,
                     min_silence: int) -> list[tuple[int, int]]:
    """The speech segments ``[start, end)`` (in frames) of a whole sequence of frame decisions.

    Runs of speech shorter than ``min_speech`` frames are dropped, the rest widened by ``padding``
    frames each side (clipped to the sequence), and segments less than ``min_silence`` frames apart
    joined. The reference for :class:`Hangover`, which computes the same thing incrementally.
    """
    n = len(decisions)
    runs: list[tuple[int, int]] = []
    start = None
    for i, d in enumerate([*decisions, False]):
        if d and start is None:
            start = i
        elif not d and start is not None:
            if i - start >= max(min_speech, 1):
                runs.append((max(start - padding, 0), min(i + padding, n)))
            start = None
    out: list[tuple[int, int]] = []
    for a, b in runs:
        if out and a - out[-1][1] < min_silence:
            out[-1] = (out[-1][0], max(out[-1][1], b))
        else:
            out.append((a, b))
    return out


class Hangover:
    """:func:`smooth_decisions` one frame at a time, knowing which frames are final.

    Segments are ``[start, end)`` frame indices. ``closed`` segments never change; the ``pending`` one
    can still grow at its end (its end may lie beyond the frames seen: the padding).
    """

    def __init__(self, *, min_speech: int, padding: int, min_silence: int) -> None:
        self.min_speech, self.padding, self.min_silence = max(min_speech, 1), padding, min_silence
        self.num_frames = 0
        self.run_start: int | None = None  # start of the current run of speech frames
        self.pending: tuple[int, int] | None = None
        self.closed: list[tuple[int, int]] = []  # closed segments not yet taken by the caller

    def push(self, speech: bool) -> None:
        i = self.num_frames
        self.num_frames += 1
        if speech:
            if self.run_start is None:
                self.run_start = i
            if self.num_frames - self.run_start >= self.min_speech:
                self._commit(self.run_start, self.num_frames)
        else:
            self.run_start = None
        open_committed = self.run_start is not None and self.num_frames - self.run_start >= self.min_speech
        if (self.pending is not None and not open_committed
                and self._earliest_future() - self.padding - self.pending[1] >= self.min_silence):
            self._close()  # no later run can reach it

    def _commit(self, start: int, end: int) -> None:
        a, b = max(start - self.padding, 0), end + self.padding
        if self.pending is not None and a - self.pending[1] < self.min_silence:
            self.pending = (self.pending[0], max(self.pending[1], b))
        else:
            self._close()
            self.pending = (a, b)

    def _close(self) -> None:
        if self.pending is not None:
            self.closed.append(self.pending)
            self.pending = None

    def _earliest_future(self) -> int:
        """No segment not yet committed can start (before padding) earlier than this frame."""
        if self.run_start is not None and self.num_frames - self.run_start < self.min_speech:
            return self.run_start
        return self.num_frames

    def final_upto(self) -> int:
        """Frames before this one are final: in a closed segment, in the pending one, or silence."""
        if self.pending is not None:
            return min(self.pending[1], self.num_frames)
        return max(0, min(self._earliest_future() - self.padding, self.num_frames))

    def finish(self) -> None:
        """The sequence ended: an unfinished short run is dropped, the pending segment closes at the
        last frame."""
        self.run_start = None
        if self.pending is not None:
            self.pending = (self.pending[0], min(self.pending[1], self.num_frames))
        self._close()

    def segments(self) -> list[tuple[int, int]]:
        return [*self.closed, *([self.pending] if self.pending is not None else [])]

    def state_dict(self) -> dict[str, Any]:
        return {"num_frames": self.num_frames, "run_start": self.run_start,
                "pending": list(self.pending) if self.pending is not None else None,
                "closed": [list(s) for s in self.closed]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.num_frames = int(state["num_frames"])
        self.run_start = state["run_start"]
        self.pending = tuple(state["pending"]) if state["pending"] is not None else None  # type: ignore[assignment]
        self.closed = [(int(a), int(b)) for a, b in state["closed"]]


# -- backends: frames (n, L) float32 at their own rate → (n,) decisions ------------------------

class _WebrtcBackend:
    """webrtcvad with decisions that depend on a bounded past, so that its state can be rebuilt.

    A stretch is cut into blocks of ``_RESET_S``. The first block's webrtcvad is primed on the
    stretch's first ``_PRIME_S`` (webrtcvad starts from generic noise statistics and calls the first
    ~100 ms of a stream speech even in plain noise), then judges from the start; each later block gets
    a fresh webrtcvad, warmed on the ``_WARM_S`` before the block (decisions discarded). The frames
    since the current webrtcvad was created are the whole state: a snapshot holds them, and a restore
    rebuilds the same C state by running them through a fresh webrtcvad again.
    """

    def __init__(self, rate_hz: int, aggressiveness: int, frame_ms: int) -> None:
        try:
            import webrtcvad
        except ImportError as err:  # pragma: no cover - a dependency of streamzip
            raise DependencyError("the webrtc VAD backend needs the webrtcvad package",
                                  fix="pip install webrtcvad-wheels (a dependency of streamzip)") from err
        self._module = webrtcvad
        self.aggressiveness = aggressiveness
        self.rate_hz = rate_hz if rate_hz in _WEBRTC_RATES else 16000
        self.frame_len = self.rate_hz * frame_ms // 1000
        self._prime_frames = max(1, round(_PRIME_S * 1000 / frame_ms))
        self._block_frames = round(_RESET_S * 1000 / frame_ms)
        self._warm_frames = round(_WARM_S * 1000 / frame_ms)
        self.reset()

    def reset(self) -> None:
        """A new stretch."""
        self._vad: Any = None  # None while the stretch's first frames are held for priming
        self._frames: list[bytes] = []  # the stretch's frames from `_frames_start` on (16-bit PCM)
        self._frames_start = 0
        self._num_frames = 0  # frames taken in the stretch

    def _fresh(self, warm: list[bytes]) -> Any:
        vad = self._module.Vad(self.aggressiveness)
        for f in warm:
            vad.is_speech(f, self.rate_hz)
        return vad

    def _judge(self, frames: list[bytes]) -> list[bool]:
        return [bool(self._vad.is_speech(f, self.rate_hz)) for f in frames]

    def decide(self, frames: torch.Tensor) -> list[bool]:
        """Decisions for the frames given, in order; fewer (none) while priming holds them."""
        pcm = (frames * 32768.0).round_().clamp_(-32768, 32767).to(torch.int16).numpy()
        out: list[bool] = []
        for row in pcm:
            i = self._num_frames
            if i and i % self._block_frames == 0:
                # A block starts: keep the warm-up frames, forget the rest, and start afresh.
                keep = i - self._warm_frames
                del self._frames[: keep - self._frames_start]
                self._frames_start = keep
                self._vad = self._fresh(self._frames)
            frame = row.tobytes()
            self._frames.append(frame)
            self._num_frames += 1
            if self._vad is not None:
                out += self._judge([frame])
            elif self._num_frames == self._prime_frames:
                out += self._prime()
        return out

    def _prime(self) -> list[bool]:
        """The first block: adapt on its first frames (all held so far), then judge them."""
        self._vad = self._fresh(self._frames[: self._prime_frames])
        return self._judge(self._frames)

    def finish(self) -> list[bool]:
        """Decisions for frames still held (a stretch shorter than the priming)."""
        return self._prime() if self._vad is None and self._frames else []

    def state_dict(self) -> dict[str, Any]:
        # webrtcvad's C state cannot be read, but it is a function of these frames.
        pcm = np.frombuffer(b"".join(self._frames), dtype=np.int16).copy()
        return {"frames": torch.from_numpy(pcm).reshape(len(self._frames), self.frame_len),
                "frames_start": self._frames_start, "num_frames": self._num_frames}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "frames" not in state:
            raise SnapshotError("the webrtc VAD snapshot has an older layout (no 'frames')",
                                fix="resume with the same streamzip version that wrote the snapshot")
        self.reset()
        self._frames = [row.numpy().tobytes() for row in state["frames"]]
        self._frames_start, self._num_frames = int(state["frames_start"]), int(state["num_frames"])
        if self._num_frames < self._prime_frames:
            return  # still priming: the frames are held
        # Rebuild the webrtcvad as decide() built it: the block of the last frame taken.
        block = (self._num_frames - 1) // self._block_frames * self._block_frames
        if block == 0:
            self._vad = self._fresh(self._frames[: self._prime_frames])
            self._judge(self._frames)
        else:
            start = block - self._frames_start
            self._vad = self._fresh(self._frames[: start])
            self._judge(self._frames[start:])


_HYSTERESIS = 0.15  # Silero's neg_threshold = max(threshold - 0.15, 0.01)


class _SileroBackend:
    def __init__(self, rate_hz: int, threshold: float) -> None:
        try:
            import silero_vad
        except ImportError as err:  # pragma: no cover - a dependency of streamzip
            raise DependencyError("the silero VAD backend needs the silero-vad package",
                                  fix="pip install silero-vad (a dependency of streamzip)") from err
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.jit.load's deprecation notice
            wrapper = silero_vad.load_silero_vad()  # TorchScript weights packaged in the wheel
        self.rate_hz = 8000 if rate_hz == 8000 else 16000
        net = getattr(wrapper, "_model_8k" if self.rate_hz == 8000 else "_model", None)
        if net is None:  # pragma: no cover - another silero-vad layout
            raise DependencyError("this silero-vad version's model layout is not supported",
                                  fix="install silero-vad 5.x or 6.x")
        self._net = net
        self.frame_len = 256 if self.rate_hz == 8000 else 512
        self._context_len = 32 if self.rate_hz == 8000 else 64
        self.threshold = threshold
        self.reset()

    def reset(self) -> None:
        self._state = torch.zeros(2, 1, 128)
        self._context = torch.zeros(self._context_len)
        self._speaking = False

    @torch.no_grad()
    def probabilities(self, frames: torch.Tensor) -> list[float]:
        probs = []
        for row in frames:
            x = torch.cat([self._context, row])[None]
            out, self._state = self._net(x, self._state)
            self._context = row[-self._context_len:].clone()
            probs.append(float(out.reshape(-1)[0]))
        return probs

    def finish(self) -> list[bool]:
        return []

    def decide(self, frames: torch.Tensor) -> list[bool]:
        out = []
        for p in self.probabilities(frames):
            self._speaking = p >= (max(self.threshold - _HYSTERESIS, 0.01) if self._speaking else self.threshold)
            out.append(self._speaking)
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"state": self._state.clone(), "context": self._context.clone(), "speaking": self._speaking}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._state = state["state"].clone()
        self._context = state["context"].clone()
        self._speaking = bool(state["speaking"])


# -- the operator ------------------------------------------------------------------------------

@register("vad")
class VAD(StretchStage):
    """Voice activity detection (webrtcvad or silero-vad): keeps speech, drops silence."""

    config_class = VADConfig
    config: VADConfig
    threads = 1  # small tensor ops (Operator.threads)

    def __init__(self, config: VADConfig | None = None, **kw: Any) -> None:
        super().__init__(config, **kw)
        self.segments: list[tuple[float, float]] = []
        #: seconds of audio kept and dropped so far.
        self.speech_s = 0.0
        self.silence_s = 0.0
        self._backend: _WebrtcBackend | _SileroBackend | None = None
        self._backend_rate_in = 0  # the input rate the backend was built for
        self._frame_s = 0.0

    # -- a stretch of contiguous audio (StretchStage) ------------------------------------------
    def _clear_own(self) -> None:
        self._vbuf = torch.zeros(0, dtype=torch.float32)  # decision-rate samples short of a frame
        self._audio = torch.zeros(0, dtype=torch.float32)  # input samples from `_audio_start` on
        self._audio_start = 0  # input sample index (in the stretch) of _audio[0]
        self._total = 0  # input samples of the stretch
        self._emitted = 0  # frames whose audio was emitted or dropped
        self._hang: Hangover | None = None

    def _begin(self, packet: AudioChunk) -> int:
        cfg = self.config
        rate = packet.sample_rate_hz
        if self._backend is None or self._backend_rate_in != rate:
            if cfg.backend == "silero":
                self._backend = _SileroBackend(rate, cfg.threshold)
                frame_s = 0.032
            else:
                self._backend = _WebrtcBackend(rate, cfg.aggressiveness, cfg.frame_ms)
                frame_s = cfg.frame_ms / 1000
            self._backend_rate_in = rate
            self._frame_s = frame_s
        else:
            self._backend.reset()
        self._hang = Hangover(min_speech=math.ceil(cfg.min_speech_ms / 1000 / self._frame_s - 1e-9),
                              padding=math.ceil(cfg.padding_ms / 1000 / self._frame_s - 1e-9),
                              min_silence=math.ceil(cfg.min_silence_ms / 1000 / self._frame_s - 1e-9))
        return self._backend.rate_hz

    def _sample_of(self, frame: int) -> int:
        """The input sample (in the stretch) where ``frame`` starts."""
        assert self._backend is not None and self._rate is not None
        return min(frame * self._backend.frame_len * self._rate // self._backend.rate_hz, self._total)

    # -- the stream ---------------------------------------------------------------------------
    def _keep_input(self, samples: torch.Tensor) -> None:
        self._audio = torch.cat([self._audio, samples]) if self._audio.numel() else samples.clone()
        self._total += samples.numel()

    def _feed(self, x: torch.Tensor, *, final: bool) -> list[Packet]:
        self._decide(x, final=final)
        return self._emit(final=final)

    def _decide(self, x: torch.Tensor, *, final: bool) -> None:
        """Judge the whole frames of ``x`` (decision-rate samples); ``final``: the stretch ends, so a
        partial frame is judged too and the smoothing closes."""
        assert self._backend is not None and self._hang is not None
        buf = torch.cat([self._vbuf, x]) if self._vbuf.numel() else x
        length = self._backend.frame_len
        n = buf.numel() // length
        if final and buf.numel() % length:
            # A last partial frame (or a clip shorter than one frame) is judged padded with zeros.
            buf = torch.nn.functional.pad(buf, (0, length - buf.numel() % length))
            n += 1
        decisions = self._backend.decide(buf[: n * length].reshape(n, length)) if n else []
        if final:
            decisions += self._backend.finish()
        for d in decisions:
            self._hang.push(d)
        if final:
            self._hang.finish()
        self._vbuf = buf[n * length:].clone()

    def _emit(self, *, final: bool) -> list[Packet]:
        """Cut the audio of the frames that became final into speech chunks; drop the silence."""
        assert self._hang is not None and self._rate is not None
        upto = self._hang.num_frames if final else self._hang.final_upto()
        if upto <= self._emitted:
            return []
        out: list[AudioChunk] = []
        lo, hi = self._emitted, upto
        for a, b in self._hang.segments():
            a, b = max(a, lo), min(b, hi)
            if a >= b:
                continue
            sa, sb = self._sample_of(a), self._sample_of(b)
            if sb > sa:
                out.append(AudioChunk(stream=self._stream_name,
                                      samples=self._audio[sa - self._audio_start: sb - self._audio_start].clone(),
                                      sample_rate_hz=self._rate, start_s=self._origin_s + sa / self._rate))
        kept = sum(p.num_samples for p in out)
        cut = self._sample_of(hi)
        self.speech_s += kept / self._rate
        self.silence_s += (cut - self._sample_of(lo) - kept) / self._rate
        self._audio = self._audio[cut - self._audio_start:]
        self._audio_start = cut
        self._emitted = hi
        # Closed segments wholly emitted are reported and forgotten here.
        while self._hang.closed and self._hang.closed[0][1] <= hi:
            self._report(self._hang.closed.pop(0))
        return list(out)

    def _report(self, seg: tuple[int, int]) -> None:
        a, b = self._sample_of(seg[0]), self._sample_of(seg[1])
        if b > a:
            assert self._rate is not None
            self.segments.append((self._origin_s + a / self._rate, self._origin_s + b / self._rate))

    # -- segments -----------------------------------------------------------------------------
    def speech_segments(self) -> list[tuple[float, float]]:
        """Closed segments and the open ones known so far, ``(start_s, end_s)`` in stream time
        (the open one's end can still grow)."""
        out = list(self.segments)
        if self._hang is not None and self._rate is not None:
            for a, b in self._hang.segments():
                sa, sb = self._sample_of(a), self._sample_of(min(b, self._hang.num_frames))
                if sb > sa:
                    out.append((self._origin_s + sa / self._rate, self._origin_s + sb / self._rate))
        return out

    def report(self) -> dict[str, Any]:
        """The speech segments found, ``[[start_s, end_s], …]`` in stream time."""
        return {"speech_segments": [[a, b] for a, b in self.speech_segments()]}

    def drain_segments(self) -> list[tuple[float, float]]:
        """The closed segments so far, forgotten by the operator (for endless streams)."""
        out, self.segments = self.segments, []
        return out

    # -- snapshots ----------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "segments": torch.tensor(self.segments, dtype=torch.float64).reshape(-1, 2),
            "speech_s": self.speech_s, "silence_s": self.silence_s, **self._stretch_state(),
            "vbuf": self._vbuf.clone(), "audio": self._audio.clone(),
            "audio_start": self._audio_start, "total": self._total, "emitted": self._emitted,
            "hangover": self._hang.state_dict() if self._hang is not None else None,
            "backend": self._backend.state_dict() if self._backend is not None and self._rate is not None else None,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.segments = [(float(a), float(b)) for a, b in state["segments"].tolist()]
        self.speech_s, self.silence_s = float(state["speech_s"]), float(state["silence_s"])
        self._load_stretch_state(state)
        if state["rate"] is None:
            return
        self._vbuf, self._audio = state["vbuf"].clone(), state["audio"].clone()
        self._audio_start, self._total = int(state["audio_start"]), int(state["total"])
        self._emitted = int(state["emitted"])
        assert self._hang is not None and self._backend is not None
        self._hang.load_state_dict(state["hangover"])
        if state["backend"] is not None:
            self._backend.load_state_dict(state["backend"])

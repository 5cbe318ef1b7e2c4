"""Packets: the one vocabulary every stage speaks.

A packet is one of:

- :class:`VideoFrames` — a batch of decoded RGB frames ``(T, H, W, 3)`` uint8 with their times;
- :class:`AudioChunk` — decoded mono float32 audio at a known sample rate, with its start time;
- :class:`Tokens` — tokens of one modality of one stream (see :mod:`streamzip.tokens` for the ops);
- :class:`Gap` — a live source lost the span ``[start_s, end_s)``;
- :class:`End` — the stream ended.

Everything a packet carries is a tensor or a plain value, so it pickles cheaply for Ray and
round-trips through safetensors + JSON without pickle. Times are seconds of media (``*_s``).

Pickling (Ray's object store, a process pool): a packet's CPU tensors travel as NumPy arrays, which
pickle protocol 5 hands over out of band, so Ray writes them into its store with one copy and reads
them back without one. Torch's own pickling of a tensor goes through ``torch.save`` of its storage:
measured 8x slower to put into Ray's store and 9x slower to get (a 1568 x 768 float32 batch of video
tokens: 18.5 ms vs 2.3 ms, 1.4 ms vs 0.15 ms). Unpickled arrays that are read-only (Ray's store
is shared by every reader of the object, a replay included) are copied, so stages may still write
into their packets. :func:`wire` does the same for any nested state (the Ray runtime's snapshots).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

import torch

from streamzip.errors import TokenError

__all__ = ["AudioChunk", "End", "Gap", "Packet", "Tokens", "VideoFrames", "VIDEO", "AUDIO", "wire"]

VIDEO = "video"
AUDIO = "audio"

# torch dtypes NumPy holds as they are (bfloat16 has no NumPy twin: such a tensor pickles as torch's)
_NUMPY_DTYPES = frozenset({torch.float64, torch.float32, torch.float16, torch.int64, torch.int32, torch.int16,
                           torch.int8, torch.uint8, torch.bool, torch.complex64, torch.complex128})


def _tensor(array: Any) -> torch.Tensor:
    """A tensor from an unpickled array (copied when read-only, as an array in Ray's store is)."""
    return torch.from_numpy(array if array.flags.writeable else array.copy())


class _Wire:
    """A CPU tensor on its way through pickle, as a NumPy array: it unpickles as the tensor."""

    __slots__ = ("array",)

    def __init__(self, array: Any) -> None:
        self.array = array

    def __reduce__(self) -> tuple[Any, ...]:
        return _tensor, (self.array,)


def wire(value: Any) -> Any:
    """``value`` ready to pickle fast: its CPU tensors, also inside dicts, lists and tuples (a
    snapshot's state), travel as NumPy arrays and unpickle as tensors (see the module notes). Other
    tensors (on a GPU, bfloat16, tracking gradients) keep torch's own pickling."""
    if isinstance(value, torch.Tensor):
        if (value.device.type == "cpu" and value.dtype in _NUMPY_DTYPES and not value.requires_grad
                and value.layout == torch.strided):
            return _Wire(value.contiguous().numpy())
        return value
    if type(value) is dict:
        return {k: wire(v) for k, v in value.items()}
    if type(value) in (list, tuple):
        return type(value)(wire(v) for v in value)
    return value


def _packet(cls: type, values: dict[str, Any]) -> Any:
    # ``copy.copy`` hands the values over without pickling them: the arrays share the tensors' memory.
    return cls(**{k: _tensor(v.array) if isinstance(v, _Wire) else v for k, v in values.items()})


def _reduce_packet(self: Any) -> tuple[Any, ...]:
    return _packet, (type(self), {f.name: wire(getattr(self, f.name)) for f in fields(self)})


@dataclass
class VideoFrames:
    """A batch of decoded frames.

    Attributes:
        stream: the stream id (the input's name in a multi-input run).
        frames: ``(T, H, W, 3)`` uint8 RGB.
        pts_s: ``(T,)`` float64 presentation times in seconds, increasing.
        duration_s: how long each frame stands for (1 / sampling fps).
    """

    stream: str
    frames: torch.Tensor
    pts_s: torch.Tensor
    duration_s: float
    modality: str = VIDEO

    __reduce__ = _reduce_packet

    @property
    def num_frames(self) -> int:
        return int(self.frames.shape[0])

    @property
    def start_s(self) -> float:
        return float(self.pts_s[0]) if self.num_frames else 0.0

    @property
    def end_s(self) -> float:
        return float(self.pts_s[-1]) + self.duration_s if self.num_frames else 0.0


@dataclass
class AudioChunk:
    """Decoded mono audio.

    Attributes:
        stream: the stream id.
        samples: ``(S,)`` float32 in [-1, 1].
        sample_rate_hz: samples per second.
        start_s: stream time of the first sample.
    """

    stream: str
    samples: torch.Tensor
    sample_rate_hz: int
    start_s: float
    modality: str = AUDIO

    __reduce__ = _reduce_packet

    @property
    def num_samples(self) -> int:
        return int(self.samples.shape[0])

    @property
    def duration_s(self) -> float:
        return self.num_samples / self.sample_rate_hz

    @property
    def end_s(self) -> float:
        return self.start_s + self.duration_s


@dataclass
class Gap:
    """A live source lost ``[start_s, end_s)`` (an outage, a reconnect)."""

    stream: str
    start_s: float
    end_s: float
    reason: str = ""


@dataclass
class End:
    """The stream ended. Stages flush their pending state before passing it on."""

    stream: str


@dataclass
class Tokens:
    """Tokens of one modality of one stream.

    Shapes (``n`` tokens of dimension ``D``; ``m`` original tokens covered):

    - ``data``: ``(n, D)`` float32.
    - ``t0``, ``t1``: ``(n,)`` float64, the seconds of media each token covers.
    - ``pos``: ``(n, 2)`` int32, patch (row, col) for video; ``-1`` for audio.
    - ``size``: ``(n,)`` int64, how many original tokens each one stands for.
    - ``src``: optional ``(m,)`` int64, ids of the original tokens this packet covers
      (ids count the encoder's tokens of this stream and modality from 0).
    - ``assignment``: optional ``(m,)`` int64, for each ``src`` id the index of the token in ``data``
      that represents it, or -1 when it was dropped.
    - ``score``: optional ``(n,)`` float32 importance (e.g. an encoder's [CLS] attention).
    - ``meta``: plain values (``window``, ``window_start_s``, ``window_end_s``, ``kind``…).

    Tokens keep time order: ``t0`` is non-decreasing.
    """

    stream: str
    modality: str
    data: torch.Tensor
    t0: torch.Tensor
    t1: torch.Tensor
    pos: torch.Tensor
    size: torch.Tensor
    src: torch.Tensor | None = None
    assignment: torch.Tensor | None = None
    score: torch.Tensor | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    __reduce__ = _reduce_packet

    # -- construction -------------------------------------------------------------------------
    @classmethod
    def empty(cls, stream: str, modality: str, dim: int, *, with_assignment: bool = False,
              meta: dict[str, Any] | None = None) -> Tokens:
        """No tokens, of dimension ``dim``."""
        return cls(
            stream=stream, modality=modality,
            data=torch.zeros(0, dim, dtype=torch.float32),
            t0=torch.zeros(0, dtype=torch.float64), t1=torch.zeros(0, dtype=torch.float64),
            pos=torch.zeros(0, 2, dtype=torch.int32), size=torch.zeros(0, dtype=torch.int64),
            src=torch.zeros(0, dtype=torch.int64) if with_assignment else None,
            assignment=torch.zeros(0, dtype=torch.int64) if with_assignment else None,
            meta=dict(meta or {}),
        )

    # -- properties ---------------------------------------------------------------------------
    @property
    def num_tokens(self) -> int:
        return int(self.data.shape[0])

    @property
    def dim(self) -> int:
        return int(self.data.shape[1])

    @property
    def has_assignment(self) -> bool:
        return self.assignment is not None

    def __len__(self) -> int:
        return self.num_tokens

    # -- checks -------------------------------------------------------------------------------
    def check(self, *, stage: str | None = None) -> Tokens:
        """Raise :class:`TokenError` if shapes disagree or values are not finite. Returns self."""
        n = self.num_tokens
        problems = []
        if self.data.dim() != 2:
            problems.append(f"data must be (n, D), got shape {tuple(self.data.shape)}")
        for name in ("t0", "t1", "size"):
            value = getattr(self, name)
            if tuple(value.shape) != (n,):
                problems.append(f"{name} must be ({n},), got {tuple(value.shape)}")
        if tuple(self.pos.shape) != (n, 2):
            problems.append(f"pos must be ({n}, 2), got {tuple(self.pos.shape)}")
        if (self.src is None) != (self.assignment is None):
            problems.append("src and assignment go together: give both or neither")
        elif self.src is not None and self.assignment is not None and self.src.shape != self.assignment.shape:
            problems.append(f"src {tuple(self.src.shape)} and assignment {tuple(self.assignment.shape)} differ")
        if problems:
            raise TokenError("; ".join(problems), input=self.stream, stage=stage,
                             fix="build Tokens with matching shapes (see streamzip.Tokens)")
        # A sum is finite only if every term is (NaN and inf propagate): one cheap reduction, and the
        # element-wise test only when it is not (a NaN or inf, or float32 overflow of huge values).
        if n and not bool(torch.isfinite(self.data.sum())) and not bool(torch.isfinite(self.data).all()):
            bad = int((~torch.isfinite(self.data)).any(dim=1).nonzero()[0, 0])
            raise TokenError(
                f"token {bad} of the {self.modality} tokens holds NaN or inf",
                input=self.stream, stage=stage, time_s=float(self.t0[bad]),
                fix="check the encoder output; streamzip cannot compare non-finite tokens",
            )
        return self


Packet = VideoFrames | AudioChunk | Tokens | Gap | End

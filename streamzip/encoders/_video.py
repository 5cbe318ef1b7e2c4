"""Shared machinery of video encoders: frames (T, H, W, 3) → one Tokens packet of T·N tokens.

**Gathering.** An encoder whose class sets ``gathers`` can encode the frames of several packets (of
several streams, in a pool actor of the Ray runtime) in one forward pass: :meth:`VideoEncoder.prepare`
encodes them together before the packets are processed one by one, each with its stream's state, and
:meth:`VideoEncoder.process` then takes the prepared result instead of encoding again. A GPU encodes
64 frames in one pass about 30 times faster per frame than one at a time (``benchmarks/encoders.py``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import torch

from streamzip.operator import Operator
from streamzip.packets import VIDEO, Packet, Tokens, VideoFrames
from streamzip.tokens import with_fresh_assignment


class VideoEncoder(Operator):
    """Base of video encoders: subclasses implement :meth:`encode` (frames → ``(T, N, D)`` and the
    patch grid ``(rows, cols)``, plus optional ``(T, N)`` importance scores)."""

    accepts = (VideoFrames,)
    produces = (VIDEO,)
    resources = {"num_cpus": 0.5}  # encoders do the heaviest per-frame work

    #: frames of several streams' packets may be encoded together (:meth:`prepare`); worth it where
    #: one pass over many frames is much cheaper than many passes (a model on a GPU).
    gathers: ClassVar[bool] = False

    def __init__(self, config: Any = None, **kw: Any) -> None:
        super().__init__(config, **kw)
        self._next_id = 0
        self._ready: dict[int, Any] = {}  # id(frames) -> what encode would give, from prepare

    def encode(self, frames: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int], torch.Tensor | None]:
        raise NotImplementedError

    def may_gather(self, state: dict[str, Any] | None) -> bool:
        """Whether frames of a stream in ``state`` (its :meth:`state_dict`) may be encoded with other
        streams' frames: the encoding must not depend on the stream's state."""
        return state is not None

    def encode_joint(self, frames: Sequence[torch.Tensor]) -> list[Any]:
        """What :meth:`encode` gives for each of ``frames``, computed together (the base: in turn)."""
        return [self.encode(f) for f in frames]

    def prepare(self, frames: Sequence[torch.Tensor]) -> None:
        """Encode ``frames`` (of packets about to be processed) together; :meth:`process` of those
        packets takes the results. :meth:`unprepare` drops what was not taken."""
        self._ready.update({id(f): r for f, r in zip(frames, self.encode_joint(frames))})

    def unprepare(self) -> None:
        self._ready.clear()

    def _encoded(self, frames: torch.Tensor) -> Any:
        ready = self._ready.pop(id(frames), None)
        return ready if ready is not None else self.encode(frames)

    def process(self, packet: Packet) -> list[Packet]:
        assert isinstance(packet, VideoFrames)
        if packet.num_frames == 0:
            return []
        feats, (rows, cols), score = self._encoded(packet.frames)[:3]
        t, n, d = feats.shape
        if rows * cols != n:
            raise ValueError(f"{type(self).__name__}: grid {rows}x{cols} does not match {n} tokens per frame")
        grid = torch.stack(torch.meshgrid(torch.arange(rows, dtype=torch.int32),
                                          torch.arange(cols, dtype=torch.int32), indexing="ij"), -1)
        t0 = packet.pts_s.to(torch.float64).repeat_interleave(n)
        tokens = Tokens(
            stream=packet.stream, modality=VIDEO,
            data=feats.reshape(t * n, d).to(torch.float32).contiguous(),
            t0=t0, t1=t0 + packet.duration_s,
            pos=grid.reshape(n, 2).repeat(t, 1),
            size=torch.ones(t * n, dtype=torch.int64),
            score=score.reshape(t * n).to(torch.float32) if score is not None else None,
            meta={"tokens_per_frame": n, "grid": [rows, cols], "frame_duration_s": packet.duration_s},
        )
        with_fresh_assignment(tokens, self._next_id)
        self._next_id += t * n
        return [tokens]

    def flush(self) -> list[Packet]:
        return []

    def on_gap(self, gap):  # type: ignore[no-untyped-def]
        return [gap]

    def state_dict(self) -> dict[str, Any]:
        return {"next_id": self._next_id}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._next_id = int(state["next_id"])

"""Shared machinery of video encoders: frames (T, H, W, 3) → one Tokens packet of T·N tokens."""

from __future__ import annotations

from typing import Any

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

    def __init__(self, config: Any = None, **kw: Any) -> None:
        super().__init__(config, **kw)
        self._next_id = 0

    def encode(self, frames: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int], torch.Tensor | None]:
        raise NotImplementedError

    def process(self, packet: Packet) -> list[Packet]:
        assert isinstance(packet, VideoFrames)
        if packet.num_frames == 0:
            return []
        feats, (rows, cols), score = self.encode(packet.frames)
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

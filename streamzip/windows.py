"""Windows: the stream clock cut into ``[k·window_s, (k+1)·window_s)``.

Every windowed stage (FrameFusion's pending window, DPC-KNN's per-window budget, the window stage
that feeds the memory) uses these helpers, so all of them agree on which window a token belongs to:
the window of its ``t0``. A window closes for a modality when a token of a later window arrives, at a
``gap`` or at the end of the stream.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from streamzip.operator import Operator
from streamzip.packets import VIDEO, Packet, Tokens
from streamzip.tokens import cat, check_dim, take, tokens_from_state, tokens_to_state

__all__ = ["WindowBuffer", "WindowedOperator", "window_bounds", "window_of"]


def window_of(t_s: float, window_s: float) -> int:
    """The index of the window holding time ``t_s``."""
    # A small tolerance keeps float noise (3.9999999) from moving a token to the previous window.
    return int(math.floor(t_s / window_s + 1e-9))


def window_bounds(index: int, window_s: float) -> tuple[float, float]:
    return index * window_s, (index + 1) * window_s


class WindowBuffer:
    """Buffers the tokens of one modality of one stream and hands back whole windows.

    ``add`` returns ``[(window_index, tokens), …]`` for every window that the new tokens closed, in
    order; ``flush`` returns the rest. Tokens arrive in time order. A returned packet carries
    ``meta['window']``, ``meta['window_start_s']`` and ``meta['window_end_s']``.
    """

    def __init__(self, window_s: float) -> None:
        if not window_s > 0:
            raise ValueError(f"window_s must be > 0, got {window_s}")
        self.window_s = window_s
        self._parts: list[Tokens] = []
        self._current: int | None = None

    @property
    def current(self) -> int | None:
        """The index of the window being filled, if any."""
        return self._current

    def add(self, tokens: Tokens) -> list[tuple[int, Tokens]]:
        closed: list[tuple[int, Tokens]] = []
        if tokens.num_tokens == 0:
            return closed
        idx = torch.floor(tokens.t0 / self.window_s + 1e-9).to(torch.int64)
        for i, w in enumerate(torch.unique_consecutive(idx).tolist()):
            # Originals already dropped upstream ride with the first part only, never twice.
            part = take(tokens, (idx == w).nonzero().squeeze(1), keep_dropped=i == 0)
            if self._current is not None and w != self._current:
                closed.extend(self.flush())
            self._current = w
            self._parts.append(part)
        return closed

    def flush(self) -> list[tuple[int, Tokens]]:
        if self._current is None or not self._parts:
            self._current = None
            return []
        w = self._current
        tokens = cat(self._parts)
        start, end = window_bounds(w, self.window_s)
        tokens.meta = {**tokens.meta, "window": w, "window_start_s": start, "window_end_s": end}
        self._parts, self._current = [], None
        return [(w, tokens)]

    def state_dict(self) -> dict[str, Any]:
        return {"current": self._current, "parts": [tokens_to_state(p) for p in self._parts]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._current = state["current"]
        self._parts = [tokens_from_state(p) for p in state["parts"]]


class WindowedOperator(Operator):
    """Base of stages that buffer video tokens per window and reduce each closed window with
    :meth:`reduce` (DPC-KNN, the baselines). Its config has ``window_s``."""

    modalities = (VIDEO,)

    def __init__(self, config: Any = None, **kw: Any) -> None:
        super().__init__(config, **kw)
        self._buffer = WindowBuffer(self.config.window_s)  # type: ignore[attr-defined]
        self._dim: int | None = None

    def reduce(self, tokens: Tokens) -> Tokens:
        raise NotImplementedError

    def process(self, packet: Packet) -> list[Packet]:
        assert isinstance(packet, Tokens)
        tokens = packet.check(stage=self.step_id)
        if tokens.num_tokens == 0:
            return []
        self._dim = check_dim(tokens, self._dim, stage=self.step_id)
        return [self.reduce(w) for _, w in self._buffer.add(tokens)]

    def flush(self) -> list[Packet]:
        return [self.reduce(w) for _, w in self._buffer.flush()]

    def state_dict(self) -> dict[str, Any]:
        return {"buffer": self._buffer.state_dict(), "dim": self._dim}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._buffer.load_state_dict(state["buffer"])
        self._dim = state["dim"]

"""Baselines to compare the compression operators against, at the same per-window token budget.

Each is a kernel (``(tokens, max_tokens) -> tokens``, one window) plus a windowed operator with the
same config fields as :mod:`streamzip.operators.dpc_knn` (``max_tokens`` per ``window_s`` window), so a
benchmark can swap them at equal budget. All keep provenance and merge with
:func:`streamzip.tokens.merge_groups` (size-weighted means, time order).

- ``uniform_sampling``: keep every ``stride``-th frame, then evenly spaced frames to the budget, as
  MLLMs that sample frames do. The kept tokens are unchanged; a dropped frame's token is represented
  by the same-position token of the nearest kept frame (or, with ``drop``, by nothing: -1). When even
  one frame exceeds the budget, evenly spaced tokens of the middle frame are kept.
- ``spatial_pool``: average ``pool × pool`` cells of each frame's patch grid (2×2 by default, as
  LLaVA-Video pools), growing the cell until the window fits; if one token per frame is still too
  many, consecutive frames are averaged too.
- ``temporal_pool``: average groups of ``frames`` consecutive frames at each patch position, growing
  the group until the window fits; if one pooled frame is still too many, it is pooled spatially too.
- ``tome``: ToMe bipartite soft matching (Bolya et al., ICLR 2023; facebookresearch/ToMe
  ``tome/merge.py``): tokens alternate into sets A and B, each A token picks its most cosine-similar B
  token, and the r best edges merge (A into B), r ≤ |A| per pass, passes repeated to the budget. The
  reference matches attention keys inside a ViT, within one image; here it matches the tokens
  themselves across the whole window, and has no class token to protect.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from streamzip.config import Config
from streamzip.operators.framefusion import frame_ids, keep_only
from streamzip.packets import Tokens
from streamzip.registry import register
from streamzip.tokens import merge_groups
from streamzip.windows import WindowedOperator

__all__ = [
    "SpatialPool", "SpatialPoolConfig", "TemporalPool", "TemporalPoolConfig", "ToMe", "ToMeConfig",
    "UniformSampling", "UniformSamplingConfig", "bipartite_merge", "spatial_pool", "temporal_pool",
    "uniform_sampling",
]


def _evenly(num: int, count: int) -> torch.Tensor:
    """``count`` evenly spaced indices out of ``num`` (segment centres), increasing."""
    return ((torch.arange(count, dtype=torch.float64) + 0.5) * num / count).floor().to(torch.int64)


def _cells(tokens: Tokens, frame_group: torch.Tensor, cell: int) -> torch.Tensor:
    """Group id per token: (frame group, row // cell, col // cell)."""
    pos = tokens.pos.to(torch.int64)
    rows = pos[:, 0] - pos[:, 0].min()
    cols = pos[:, 1] - pos[:, 1].min()
    span_r = int(rows.max()) // cell + 1
    span_c = int(cols.max()) // cell + 1
    return (frame_group * span_r + rows // cell) * span_c + cols // cell


def _grid_side(tokens: Tokens) -> int:
    pos = tokens.pos.to(torch.int64)
    return int(max(pos[:, 0].max() - pos[:, 0].min(), pos[:, 1].max() - pos[:, 1].min())) + 1


# -- kernels ------------------------------------------------------------------------------------------

def _same_position(tokens: Tokens, frame: torch.Tensor, target_frame: torch.Tensor) -> torch.Tensor:
    """For each token, the index of the token at the same ``pos`` in frame ``target_frame[i]``, or -1."""
    pos = tokens.pos.to(torch.int64) + (1 << 20)
    cell = (pos[:, 0] << 21) | pos[:, 1]
    key = (frame << 42) | cell
    order = torch.argsort(key, stable=True)
    sorted_key = key[order]
    query = (target_frame << 42) | cell
    at = torch.searchsorted(sorted_key, query).clamp(max=key.numel() - 1)
    return torch.where(sorted_key[at] == query, order[at], torch.full_like(at, -1))


def uniform_sampling(tokens: Tokens, max_tokens: int, stride: int = 1, *, drop: bool = False) -> Tokens:
    """Keep every ``stride``-th frame, then evenly spaced frames until ``max_tokens`` fit.

    Kept tokens are copied bit for bit. With ``drop`` the other frames' originals map to -1; otherwise
    each is represented by the token at its position in the nearest kept frame (ties: the earlier), so
    sizes, t0/t1 and provenance say which moments a kept frame stands for.
    """
    n = tokens.num_tokens
    if n == 0:
        return tokens
    frame = frame_ids(tokens.t0)
    num_frames = int(frame[-1]) + 1
    kept = torch.arange(0, num_frames, stride, dtype=torch.int64)
    if stride == 1 and n <= max_tokens:
        return tokens
    counts = torch.bincount(frame, minlength=num_frames)
    for m in range(kept.numel(), 0, -1):
        chosen = kept[_evenly(kept.numel(), m)]
        if m == 1 or int(counts[chosen].sum()) <= max_tokens:
            kept = chosen
            break
    keep = torch.isin(frame, kept).nonzero().squeeze(1)
    if keep.numel() > max_tokens:  # one frame is over the budget: evenly spaced tokens of it
        keep = keep[_evenly(keep.numel(), max_tokens)]
    if drop:
        return keep_only(tokens, keep)
    at = torch.searchsorted(kept, frame).clamp(max=kept.numel() - 1)
    before = kept[(at - 1).clamp(min=0)]
    nearest = torch.where((frame - before).abs() <= (kept[at] - frame).abs(), before, kept[at])
    rep = _same_position(tokens, frame, nearest)
    is_kept = torch.zeros(n, dtype=torch.bool)
    is_kept[keep] = True
    rep = torch.where((rep >= 0) & is_kept[rep.clamp(min=0)], rep, torch.full_like(rep, -1))
    rep[keep] = keep
    out = merge_groups(tokens, rep)
    # merge_groups orders groups by first member; put the sampled tokens, unaveraged, in that order.
    first = torch.full((n,), n, dtype=torch.int64)
    live = rep >= 0
    first.scatter_reduce_(0, rep[live], torch.arange(n)[live], reduce="amin")
    src_tokens = keep[torch.argsort(first[keep])]
    out.data = tokens.data[src_tokens].clone()
    if tokens.score is not None:
        out.score = tokens.score[src_tokens].clone()
    return out


def spatial_pool(tokens: Tokens, max_tokens: int, pool: int = 2) -> Tokens:
    """Average ``cell × cell`` patch-grid cells per frame, ``cell ≥ pool`` the smallest that fits."""
    n = tokens.num_tokens
    if n == 0:
        return tokens
    frame = frame_ids(tokens.t0)
    side = _grid_side(tokens)
    cell = pool
    group = _cells(tokens, frame, cell)
    while cell < side and int(torch.unique(group).numel()) > max_tokens:
        cell += 1
        group = _cells(tokens, frame, cell)
    if int(torch.unique(group).numel()) > max_tokens:  # one token per frame is too many: pool frames
        num_frames = int(frame[-1]) + 1
        per = math.ceil(num_frames / max_tokens)
        group = _cells(tokens, frame // per, side)
    return merge_groups(tokens, group) if cell > 1 or n > max_tokens else tokens


def temporal_pool(tokens: Tokens, max_tokens: int, frames: int = 2) -> Tokens:
    """Average groups of ``g ≥ frames`` consecutive frames at each position, ``g`` the smallest that
    fits; then spatial cells if one pooled frame is still over the budget."""
    n = tokens.num_tokens
    if n == 0:
        return tokens
    frame = frame_ids(tokens.t0)
    num_frames = int(frame[-1]) + 1
    g = max(1, min(frames, num_frames))
    group = _cells(tokens, frame // g, 1)
    while g < num_frames and int(torch.unique(group).numel()) > max_tokens:
        g += 1
        group = _cells(tokens, frame // g, 1)
    cell, side = 1, _grid_side(tokens)
    while cell < side and int(torch.unique(group).numel()) > max_tokens:
        cell += 1
        group = _cells(tokens, frame // g, cell)
    if g == 1 and cell == 1:
        return tokens
    return merge_groups(tokens, group)


def bipartite_merge(tokens: Tokens, max_tokens: int) -> Tokens:
    """ToMe bipartite soft matching, repeated until at most ``max_tokens`` remain."""
    while tokens.num_tokens > max_tokens and tokens.num_tokens > 1:
        n = tokens.num_tokens
        a_idx = torch.arange(0, n, 2)
        b_idx = torch.arange(1, n, 2)
        x = torch.nn.functional.normalize(tokens.data.to(torch.float32), dim=1, eps=1e-12)
        sim = x[a_idx] @ x[b_idx].T
        best, match = sim.max(1)
        r = min(n - max_tokens, a_idx.numel())
        edges = torch.sort(best, descending=True, stable=True).indices[:r]
        group = torch.arange(n, dtype=torch.int64)
        group[a_idx[edges]] = b_idx[match[edges]]
        tokens = merge_groups(tokens, group)
    return tokens


# -- operators ----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class _BudgetConfig(Config):
    # 256 per 4 s window: the same default budget as dpc_knn, so baselines compare at equal budget.
    max_tokens: int = 256
    # 4 s: the engine's window clock (streamzip.windows), shared by every windowed stage.
    window_s: float = 4.0

    def check(self) -> Iterator[tuple[str, str]]:
        if self.max_tokens < 1:
            yield "max_tokens", f"must be >= 1, got {self.max_tokens}"
        if not (math.isfinite(self.window_s) and self.window_s > 0):
            yield "window_s", f"must be > 0 seconds, got {self.window_s}"


@dataclass(frozen=True)
class UniformSamplingConfig(_BudgetConfig):
    # 1: every frame is a candidate; the budget alone decides how many are kept.
    stride: int = 1
    # False: a kept frame stands for its neighbours (what an MLLM sampling frames sees); True: -1.
    drop: bool = False

    def check(self) -> Iterator[tuple[str, str]]:
        yield from super().check()
        if self.stride < 1:
            yield "stride", f"must be >= 1, got {self.stride}"


@dataclass(frozen=True)
class SpatialPoolConfig(_BudgetConfig):
    # 2: the 2×2 pooling video MLLMs such as LLaVA-Video apply to their patch grids.
    pool: int = 2

    def check(self) -> Iterator[tuple[str, str]]:
        yield from super().check()
        if self.pool < 1:
            yield "pool", f"must be >= 1, got {self.pool}"


@dataclass(frozen=True)
class TemporalPoolConfig(_BudgetConfig):
    # 2: pairs of frames, the mildest temporal pooling.
    frames: int = 2

    def check(self) -> Iterator[tuple[str, str]]:
        yield from super().check()
        if self.frames < 1:
            yield "frames", f"must be >= 1, got {self.frames}"


@dataclass(frozen=True)
class ToMeConfig(_BudgetConfig):
    pass


@register("uniform_sampling")
class UniformSampling(WindowedOperator):
    """Keep evenly spaced frames to the budget (baseline)."""

    config_class = UniformSamplingConfig
    config: UniformSamplingConfig
    threads = 1  # small tensor ops (Operator.threads)

    def reduce(self, tokens: Tokens) -> Tokens:
        return uniform_sampling(tokens, self.config.max_tokens, self.config.stride, drop=self.config.drop)


@register("spatial_pool")
class SpatialPool(WindowedOperator):
    """Average-pool each frame's patch grid to the budget (baseline)."""

    config_class = SpatialPoolConfig
    config: SpatialPoolConfig
    threads = 1  # small tensor ops (Operator.threads)

    def reduce(self, tokens: Tokens) -> Tokens:
        return spatial_pool(tokens, self.config.max_tokens, self.config.pool)


@register("temporal_pool")
class TemporalPool(WindowedOperator):
    """Average consecutive frames position by position to the budget (baseline)."""

    config_class = TemporalPoolConfig
    config: TemporalPoolConfig
    threads = 1  # small tensor ops (Operator.threads)

    def reduce(self, tokens: Tokens) -> Tokens:
        return temporal_pool(tokens, self.config.max_tokens, self.config.frames)


@register("tome")
class ToMe(WindowedOperator):
    """ToMe bipartite soft matching to the budget (baseline)."""

    config_class = ToMeConfig
    config: ToMeConfig
    threads = 1  # small tensor ops (Operator.threads)

    def reduce(self, tokens: Tokens) -> Tokens:
        return bipartite_merge(tokens, self.config.max_tokens)

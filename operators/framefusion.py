"""FrameFusion: merge each video token into the same-position token of the previous frame.

Fu et al., "FrameFusion: Combining Similarity and Importance for Video Token Reduction on Large
Visual Language Models", arXiv 2501.01986 (ICCV 2025); reference code thu-nics/FrameFusion
(``framefusion/main.py``). The rule: ``S_i = cos(x_i, x_prev(i))`` where ``prev(i)`` is the token at the
same patch position in the previous frame; every token with ``S_i ≥ threshold`` joins its predecessor's
chain, so chains run transitively (frames 1, 2, 3 merge into frame 1 when S(1,2) and S(2,3) pass, even if
cos(1,3) does not) and each chain becomes one token anchored at its earliest member. Tokens of the
first frame never merge (they have no predecessor). An optional importance pruning then keeps the
highest-scoring tokens to a budget.

Where we differ from the reference, and why:

- **Size-weighted means.** The reference averages a run uniformly (``(h_anchor + Σ h_j) / (|run|+1)``),
  so an anchor that already stands for n originals weighs as much as one fresh token when merged again.
  We merge with :func:`streamzip.tokens.merge_groups` (weighted by ``size``) so every output token is the
  true mean of the originals it represents, however many stages merged it.
- **Streaming.** The reference sees the whole clip. Here chains never cross a window boundary
  (``window_s``, the clock cut of :mod:`streamzip.windows`) nor a gap, the first frame of each window plays
  the role of the first frame, and a token is emitted only once final: when its chain broke (it has no
  member in the latest two frames — one more frame of latency in case a frame arrived split over
  packets — so no later frame can extend it) and every earlier chain is final too (time order), or when
  its window closed. The state (the pending window) crosses packet boundaries,
  so the output does not depend on how frames are split into packets. With ``keep_ratio`` or pruning the
  decision needs the whole window, so those modes emit at window close.
- **Threshold.** Given, or calibrated once on the first ``calibrate_frames`` frames by the maintainers'
  recipe (issue #13: the mean over frames of the median adjacent same-position similarity), or chosen
  per window so that about ``keep_ratio`` of its tokens survive (the highest similarities merge first,
  as the reference does when its budget cap binds). The reference's per-layer budget controller needs
  an LLM; it has no place here.
- **Importance.** The reference scores by the LLM's last-token attention. Without an LLM we use, in
  order: similarity to ``query_embedding`` when given, else the encoder's score (``Tokens.score``, e.g.
  [CLS] attention; a merged token keeps its members' max), else the token's size (a token standing for
  more originals covers more of the window).
- **Similarity edge cases.** Cosine with a zero vector is 0, except between two zero vectors, which are
  identical (1). A frame whose token count differs from the previous frame's (a resolution change)
  starts fresh chains: nothing in it merges backwards. Non-finite tokens and a changed token dimension
  raise :class:`~streamzip.errors.TokenError`.

The kernels compute on their input's device. The operator plans on ``device`` (a CUDA GPU when present)
and applies the plan to the packets on the CPU, where they stay (the packet contract).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any

import torch

from streamzip.config import Config
from streamzip.devices import OnDevice, check_device, tokens_on
from streamzip.errors import TokenError
from streamzip.operator import Operator
from streamzip.packets import VIDEO, Packet, Tokens
from streamzip.registry import register
from streamzip.tokens import cat, check_dim, merge_groups, take, tokens_from_state, tokens_to_state
from streamzip.windows import window_bounds

__all__ = [
    "FrameFusion", "FrameFusionConfig", "FusionPlan", "adjacent_similarity", "apply_fusion",
    "calibrate_threshold", "frame_ids", "importance", "keep_only", "plan_fusion", "prune", "safe_cosine",
]


# -- kernel -------------------------------------------------------------------------------------------

def frame_ids(t0: torch.Tensor) -> torch.Tensor:
    """``(n,)`` frame index of each token: frames are runs of equal ``t0`` (tokens in time order)."""
    if t0.numel() == 0:
        return torch.zeros(0, dtype=torch.int64, device=t0.device)
    change = torch.zeros(t0.shape[0], dtype=torch.int64, device=t0.device)
    change[1:] = (t0[1:] != t0[:-1]).to(torch.int64)
    return change.cumsum(0)


def safe_cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Row-wise cosine of ``(n, D)`` tensors in float32, clamped to [-1, 1]; with a zero row it is 0,
    between two zero rows 1."""
    a, b = a.to(torch.float32), b.to(torch.float32)
    na, nb = a.norm(dim=1), b.norm(dim=1)
    dot = (a * b).sum(1)
    cos = (dot / (na * nb).clamp(min=1e-30)).clamp(-1.0, 1.0)
    zero_a, zero_b = na == 0, nb == 0
    cos = torch.where(zero_a | zero_b, torch.zeros_like(cos), cos)
    return torch.where(zero_a & zero_b, torch.ones_like(cos), cos)


def adjacent_similarity(tokens: Tokens) -> tuple[torch.Tensor, torch.Tensor]:
    """For each token, its predecessor (same ``pos`` in the previous frame) and their cosine.

    Returns ``prev (n,)`` int64 (-1: none — first frame, a new position, or a frame whose token count
    differs from the previous frame's) and ``similarity (n,)`` float32 (-inf where ``prev`` is -1).
    """
    n = tokens.num_tokens
    device = tokens.data.device
    prev = torch.full((n,), -1, dtype=torch.int64, device=device)
    sim = torch.full((n,), float("-inf"), dtype=torch.float32, device=device)
    frame = frame_ids(tokens.t0)
    if n == 0 or int(frame[-1]) == 0:
        return prev, sim
    counts = torch.bincount(frame)
    same_count = torch.zeros_like(counts, dtype=torch.bool)
    same_count[1:] = counts[1:] == counts[:-1]
    # One int64 key per (frame, row, col): sort once, then look up (frame - 1, row, col).
    pos = tokens.pos.to(torch.int64) + (1 << 20)
    cell = (pos[:, 0] << 21) | pos[:, 1]
    key = (frame << 42) | cell
    order = torch.argsort(key, stable=True)
    sorted_key = key[order]
    query = ((frame - 1) << 42) | cell
    at = torch.searchsorted(sorted_key, query).clamp(max=n - 1)
    found = (sorted_key[at] == query) & same_count[frame] & (frame > 0)
    idx = found.nonzero().squeeze(1)
    if idx.numel():
        before = order[at[idx]]
        prev[idx] = before
        sim[idx] = _pair_cosine(tokens.data, idx, before)
    return prev, sim


def _pair_cosine(data: torch.Tensor, idx: torch.Tensor, before: torch.Tensor) -> torch.Tensor:
    """``safe_cosine(data[idx], data[before])``. In the usual case (frames of one size, patches in the
    same order) both are runs of rows at a constant distance: row slices then, no copies of the data."""
    lo, hi = int(idx[0]), int(idx[-1]) + 1
    gap = lo - int(before[0])
    if hi - lo == idx.numel() and bool((idx - before == gap).all()):
        return safe_cosine(data[lo:hi], data[lo - gap:hi - gap])
    return safe_cosine(data.index_select(0, idx), data.index_select(0, before))


@dataclass(frozen=True)
class FusionPlan:
    """Which tokens merge, and into which anchor.

    ``prev``, ``similarity``: from :func:`adjacent_similarity`; ``merged (n,)`` bool: joins its
    predecessor's chain; ``anchor (n,)`` int64: index of the chain's earliest token (itself if not merged).
    """

    prev: torch.Tensor
    similarity: torch.Tensor
    merged: torch.Tensor
    anchor: torch.Tensor

    @property
    def num_merged(self) -> int:
        return int(self.merged.sum())

    def cpu(self) -> FusionPlan:
        """The same plan with its tensors on the CPU."""
        return replace(self, prev=self.prev.cpu(), similarity=self.similarity.cpu(), merged=self.merged.cpu(),
                       anchor=self.anchor.cpu())


def plan_fusion(tokens: Tokens, *, threshold: float | None = None, keep_ratio: float | None = None) -> FusionPlan:
    """Plan the merge of ``tokens`` (one window, time order) by a similarity ``threshold`` (merge when
    ``S ≥ threshold``) or so that about ``keep_ratio`` of the tokens survive (highest ``S`` first, ties by
    index). Exactly one of the two is given. The plan is on the tokens' device."""
    if (threshold is None) == (keep_ratio is None):
        raise ValueError("plan_fusion takes exactly one of threshold and keep_ratio")
    n = tokens.num_tokens
    device = tokens.data.device
    prev, sim = adjacent_similarity(tokens)
    if threshold is not None:
        merged = sim >= threshold
    else:
        assert keep_ratio is not None
        num_merge = min(n - math.ceil(keep_ratio * n), int((prev >= 0).sum()))
        merged = torch.zeros(n, dtype=torch.bool, device=device)
        if num_merge > 0:
            best = torch.sort(sim, descending=True, stable=True).indices[:num_merge]
            merged[best] = True
    anchor = torch.arange(n, dtype=torch.int64, device=device)
    anchor = torch.where(merged, prev, anchor)
    # Pointer jumping: follow predecessors until every token points at its chain's unmerged head.
    while True:
        nxt = anchor[anchor]
        if torch.equal(nxt, anchor):
            break
        anchor = nxt
    return FusionPlan(prev=prev, similarity=sim, merged=merged, anchor=anchor)


def apply_fusion(tokens: Tokens, plan: FusionPlan) -> Tokens:
    """Merge each chain into one size-weighted token at its anchor (unchanged input if nothing merges)."""
    if plan.num_merged == 0:
        return tokens
    return merge_groups(tokens, plan.anchor)


def calibrate_threshold(tokens: Tokens) -> float | None:
    """The median-similarity recipe (FrameFusion issue #13): the mean over frames of the median
    similarity of each frame's tokens to their predecessors. ``None`` when no token has one."""
    prev, sim = adjacent_similarity(tokens)
    has = prev >= 0
    if not bool(has.any()):
        return None
    frame, s = frame_ids(tokens.t0)[has], sim[has]  # frame is non-decreasing
    # Each frame's median at once (the lower middle value, as torch.median): sort by similarity, then
    # stably by frame, so each frame's similarities lie together in increasing order.
    by_sim = torch.sort(s, stable=True).indices
    order = by_sim[torch.sort(frame[by_sim], stable=True).indices]
    counts = torch.unique_consecutive(frame, return_counts=True)[1]
    medians = s[order][counts.cumsum(0) - counts + (counts - 1) // 2].tolist()
    return sum(medians) / len(medians)


def importance(tokens: Tokens, query: torch.Tensor | None = None) -> torch.Tensor:
    """``(n,)`` score for pruning: cosine to ``query`` (``(D,)``) if given, else ``tokens.score``, else
    the size."""
    if query is not None:
        if query.numel() != tokens.dim:
            raise TokenError(f"query_embedding has {query.numel()} values but tokens have dimension {tokens.dim}",
                             input=tokens.stream, fix="embed the query with the same encoder as the frames")
        query = query.to(tokens.data.device, torch.float32).reshape(1, -1)
        return safe_cosine(tokens.data, query.expand(tokens.num_tokens, -1))
    if tokens.score is not None:
        return tokens.score.to(torch.float32)
    return tokens.size.to(torch.float32)


def keep_only(tokens: Tokens, index: torch.Tensor) -> Tokens:
    """The tokens at ``index`` (increasing), the others dropped: their originals stay in the provenance
    with assignment -1. Kept tokens are copied bit for bit (no re-averaging)."""
    out = take(tokens, index, keep_dropped=True)
    if tokens.assignment is not None and tokens.src is not None:
        a = tokens.assignment
        remap = torch.full((tokens.num_tokens,), -1, dtype=torch.int64, device=a.device)
        remap[index] = torch.arange(index.numel(), dtype=torch.int64, device=a.device)
        out.src = tokens.src
        out.assignment = torch.where(a >= 0, remap[a.clamp(min=0)], a)
    return out


def prune(tokens: Tokens, max_tokens: int, score: torch.Tensor) -> Tokens:
    """Keep the ``max_tokens`` highest-``score`` tokens (ties: earliest), in time order."""
    if tokens.num_tokens <= max_tokens:
        return tokens
    best = torch.sort(score, descending=True, stable=True).indices[:max_tokens]
    return keep_only(tokens, torch.sort(best).values)


# -- streaming operator -------------------------------------------------------------------------------

@dataclass(frozen=True)
class FrameFusionConfig(Config):
    # None: calibrate (thresholds are encoder-specific: 0.5-0.7 in the reference, ~1 for pixel patches).
    threshold: float | None = None
    # 16 frames (8 s at 2 fps): enough adjacent pairs for a stable median, and output starts soon.
    calibrate_frames: int = 16
    # None: threshold-driven. A ratio picks each window's threshold so about that fraction survives.
    keep_ratio: float | None = None
    # None: no pruning (merging alone); an int caps each window's tokens after merging.
    max_tokens: int | None = None
    # None: no pruning; a ratio drops that fraction of each window's merged tokens.
    prune_ratio: float | None = None
    # None: prune by encoder score (or size); a vector (same encoder as the frames) prunes by relevance.
    query_embedding: tuple[float, ...] | None = None
    # 4 s: the engine's window clock (streamzip.windows); chains never cross it, latency stays bounded.
    window_s: float = 4.0
    # "auto": a CUDA GPU when PyTorch sees one, else the CPU: where the plans compute (similarities,
    # chains, importance); the packets stay on the CPU.
    device: str = "auto"

    def check(self) -> Iterator[tuple[str, str]]:
        if self.threshold is not None and self.keep_ratio is not None:
            yield "threshold", "give threshold or keep_ratio, not both"
        if self.threshold is not None and not (math.isfinite(self.threshold) and self.threshold >= -1.0):
            yield "threshold", f"must be a number >= -1 (values above 1 disable merging), got {self.threshold}"
        if self.calibrate_frames < 2:
            yield "calibrate_frames", f"must be >= 2 (similarities need frame pairs), got {self.calibrate_frames}"
        if self.keep_ratio is not None and not 0.0 < self.keep_ratio <= 1.0:
            yield "keep_ratio", f"must be in (0, 1], got {self.keep_ratio}"
        if self.max_tokens is not None and self.max_tokens < 1:
            yield "max_tokens", f"must be >= 1, got {self.max_tokens}"
        if self.prune_ratio is not None and not 0.0 <= self.prune_ratio < 1.0:
            yield "prune_ratio", f"must be in [0, 1), got {self.prune_ratio}"
        if self.query_embedding is not None and not all(math.isfinite(v) for v in self.query_embedding):
            yield "query_embedding", "must hold finite numbers"
        if not (math.isfinite(self.window_s) and self.window_s > 0):
            yield "window_s", f"must be > 0 seconds, got {self.window_s}"
        if (msg := check_device(self.device)) is not None:
            yield "device", msg


@register("framefusion")
class FrameFusion(OnDevice, Operator):
    """Merge video tokens into the same-position token of the previous frame (FrameFusion)."""

    config_class = FrameFusionConfig
    config: FrameFusionConfig
    threads = 1  # small tensor ops (Operator.threads)
    modalities = (VIDEO,)

    def __init__(self, config: FrameFusionConfig | None = None, **kw: Any) -> None:
        super().__init__(config, **kw)
        c = self.config
        self.query: torch.Tensor | None = (
            torch.tensor(c.query_embedding, dtype=torch.float32, device="cpu")
            if c.query_embedding is not None else None)
        self._threshold: float | None = c.threshold
        self._held: list[Tokens] = []          # tokens waiting for calibration
        self._pending: Tokens | None = None    # raw tokens of the open window
        self._window: int | None = None
        self._emitted_upto = 0                 # chains anchored before this index were emitted
        self._dim: int | None = None
        self._last_t0 = -math.inf

    # -- modes --------------------------------------------------------------------------------
    @property
    def _calibrating(self) -> bool:
        return self.config.threshold is None and self.config.keep_ratio is None and self._threshold is None

    @property
    def _whole_window(self) -> bool:
        """Whether decisions need the whole window (so nothing is emitted before it closes)."""
        c = self.config
        return c.keep_ratio is not None or c.max_tokens is not None or c.prune_ratio is not None

    @property
    def threshold(self) -> float | None:
        """The similarity threshold in use (given or calibrated); None before calibration."""
        return self._threshold

    # Not the text query of Operator.set_query: FrameFusion takes an already embedded query (it has
    # no text encoder), so it keeps accepts_query False and the runtimes never call this with text
    # (runtime.local.set_query_on skips it). The signature differs on purpose, hence the ignore.
    def set_query(self, embedding: torch.Tensor | None) -> None:  # type: ignore[override]
        """Prune by similarity to this ``(D,)`` embedding from now on (None: back to encoder scores).
        Only matters when pruning is on (``max_tokens`` or ``prune_ratio``).

        Unlike :meth:`Operator.set_query` this takes an embedding, not text."""
        self.query = None if embedding is None else embedding.detach().to("cpu", torch.float32).reshape(-1)

    # -- protocol -----------------------------------------------------------------------------
    def process(self, packet: Packet) -> list[Packet]:
        assert isinstance(packet, Tokens)
        tokens = packet.check(stage=self.step_id)
        if tokens.num_tokens == 0:
            return []
        self._dim = check_dim(tokens, self._dim, stage=self.step_id)
        t0 = tokens.t0
        if float(t0[0]) < self._last_t0 or bool((t0[1:] < t0[:-1]).any()):
            raise TokenError("video tokens are not in time order (t0 decreased)", input=tokens.stream,
                             stage=self.step_id, time_s=float(t0[0]), fix="feed frames in presentation order")
        self._dim, self._last_t0 = tokens.dim, float(t0[-1])
        if self._calibrating:
            self._held.append(tokens)
            return self._try_calibrate(final=False)
        return self._ingest(tokens)

    def flush(self) -> list[Packet]:
        out = self._try_calibrate(final=True) if self._calibrating else []
        out.extend(self._close())
        return out

    # -- internals ----------------------------------------------------------------------------
    def _try_calibrate(self, *, final: bool) -> list[Packet]:
        held = cat(self._held) if self._held else None
        if held is None:
            return []
        frame = frame_ids(held.t0)
        num_frames = int(frame[-1]) + 1
        need = self.config.calibrate_frames
        if num_frames < need and not final:
            self._held = [held]
            return []
        first = (frame < need).nonzero().squeeze(1)
        self._threshold = calibrate_threshold(tokens_on(take(held, first, keep_dropped=False), self.device))
        self._held = []
        if self._threshold is None:
            # No frame pairs yet (a single frame before a gap or the end): nothing could merge anyway.
            out = self._ingest(held, threshold=math.inf)
            return out + self._close()
        return self._ingest(held)

    def _ingest(self, tokens: Tokens, *, threshold: float | None = None) -> list[Packet]:
        out: list[Packet] = []
        win = torch.floor(tokens.t0 / self.config.window_s + 1e-9).to(torch.int64)
        wins = torch.unique_consecutive(win).tolist()
        for i, w in enumerate(wins):
            # A packet within one window is taken whole (a new packet object, the same tensors).
            part = (replace(tokens) if len(wins) == 1
                    else take(tokens, (win == w).nonzero().squeeze(1), keep_dropped=i == 0))
            if self._window is not None and w != self._window:
                out.extend(self._close(threshold))
            self._window = w
            self._pending = part if self._pending is None else cat([self._pending, part])
        if not self._whole_window:
            out.extend(self._emit(final=False, threshold=threshold))
        return out

    def _close(self, threshold: float | None = None) -> list[Packet]:
        out = self._emit(final=True, threshold=threshold)
        self._pending, self._window, self._emitted_upto = None, None, 0
        return out

    def _emit(self, *, final: bool, threshold: float | None = None) -> list[Packet]:
        pending = self._pending
        if pending is None or pending.num_tokens == 0:
            return []
        c = self.config
        view = tokens_on(pending, self.device)
        if c.keep_ratio is not None:
            plan = plan_fusion(view, keep_ratio=c.keep_ratio)
        else:
            th = threshold if threshold is not None else self._threshold
            plan = plan_fusion(view, threshold=math.inf if th is None else th)
        plan = plan.cpu()  # it applies to the packet, which stays on the CPU
        n = pending.num_tokens
        if final:
            upto = n
        else:
            # A chain with a member in the latest frame may still grow, and so may one in the frame
            # before it when the latest frame arrived split over packets. Emit the chains anchored
            # before the earliest such chain (time order), once.
            frame = frame_ids(pending.t0)
            upto = int(plan.anchor[frame >= frame[-1] - 1].min())
        lo = self._emitted_upto
        if upto <= lo and not final:
            return []
        members = ((plan.anchor >= lo) & (plan.anchor < upto)).nonzero().squeeze(1)
        # The whole window at its close: every token and every dropped original, as they are.
        part = replace(pending) if final and lo == 0 and upto == n else take(pending, members, keep_dropped=final)
        anchor_in_part = torch.searchsorted(members, plan.anchor[members])
        merged = apply_fusion(part, FusionPlan(plan.prev[members], plan.similarity[members],
                                               plan.merged[members], anchor_in_part))
        self._emitted_upto = upto
        if final and self._whole_window:
            merged = self._prune(merged)
        start, end = window_bounds(int(self._window), c.window_s)  # type: ignore[arg-type]
        merged.meta = {**merged.meta, "window": self._window, "window_start_s": start, "window_end_s": end}
        if merged.num_tokens == 0 and not (merged.src is not None and merged.src.numel()):
            return []
        return [_canonical(merged)]

    def _prune(self, tokens: Tokens) -> Tokens:
        c = self.config
        budget = tokens.num_tokens
        if c.max_tokens is not None:
            budget = min(budget, c.max_tokens)
        if c.prune_ratio is not None:
            budget = min(budget, max(1, math.ceil((1.0 - c.prune_ratio) * tokens.num_tokens)))
        if budget >= tokens.num_tokens:
            return tokens
        return prune(tokens, budget, importance(tokens_on(tokens, self.device), self.query).cpu())

    # -- snapshots ----------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"threshold": self._threshold, "held": [tokens_to_state(t) for t in self._held],
                "pending": None if self._pending is None else tokens_to_state(self._pending),
                "window": self._window, "emitted_upto": self._emitted_upto, "dim": self._dim,
                "last_t0": self._last_t0,
                "query": self.query if self.config.query_embedding is None else None}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._threshold = state["threshold"]
        self._held = [tokens_from_state(t) for t in state["held"]]
        self._pending = None if state["pending"] is None else tokens_from_state(state["pending"])
        self._window = state["window"]
        self._emitted_upto = int(state["emitted_upto"])
        self._dim = state["dim"]
        self._last_t0 = float(state["last_t0"])
        if state.get("query") is not None:
            self.query = state["query"]


def _canonical(tokens: Tokens) -> Tokens:
    """Order provenance by (representative, id), dropped originals last, so the concatenated output
    does not depend on how the emissions were batched."""
    if tokens.src is None or tokens.assignment is None or tokens.src.numel() == 0:
        return tokens
    a = tokens.assignment
    by_id = torch.argsort(tokens.src, stable=True)
    rep = torch.where(a >= 0, a, torch.full_like(a, tokens.num_tokens))[by_id]
    order = by_id[torch.argsort(rep, stable=True)]
    tokens.src, tokens.assignment = tokens.src[order], a[order]
    return tokens

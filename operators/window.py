"""Windows: each stream cut into ``window_s`` windows of at most a fixed number of tokens per modality.

The clock cut is :mod:`streamzip.windows` (window k = ``[k·window_s, (k+1)·window_s)`` by token ``t0``),
so this stage agrees with every other windowed stage. Per window and per modality present, it emits
one :class:`~streamzip.packets.Tokens` packet with ``meta['kind'] = "window"``, ``window``,
``window_start_s``, ``window_end_s``, ``window_complete`` (True) and ``tokens_in`` (the tokens before
any reduction), holding at most ``max_video_tokens`` video or ``max_audio_tokens`` audio tokens.
Audio and video tokens of a stream share its clock, so window k of either modality covers the same
span of media. The memory (:mod:`streamzip.operators.memory`) is fed with these packets.

**Over budget.** A window with too many tokens is reduced by *adjacent merging*: repeatedly merge the
most similar (cosine) pair of neighbours, size-weighted (:func:`plan_adjacent_merges`, applied with
:func:`streamzip.tokens.merge_groups`, so provenance and sizes stay exact). "Neighbours" follow an
order: time for audio (this is A-ToMe's rule, Li et al., Interspeech 2023), and for video the same
patch position in consecutive frames, then the next position (so a static patch collapses along time
first, the redundancy FrameFusion exploits, Fu et al., ICCV 2025). Nothing is ever dropped, so a
window's tokens keep covering the media they covered. It differs from MovieChat's consolidation
(Song et al., CVPR 2024), which averages pairs unweighted and one at a time: here merges are
size-weighted, and several disjoint pairs merge per pass (at most a quarter of the tokens, as ToMe
bounds r per layer), which costs a few passes instead of one pass per merge.

**When a window closes.** For a modality, when one of its tokens from a later window arrives, at a
``gap`` or at the end of the stream (the runtime calls :meth:`Window.flush`). Packets come out as soon
as the window closes. An upstream stage that emits whole windows (one packet per closed window, as
:class:`~streamzip.windows.WindowBuffer` users do) can mark such a packet ``meta['window_complete'] =
True``; the window then closes at once, instead of one window later (each windowed stage in a chain
would otherwise add ``window_s`` of latency).

**Windows without tokens** (silence dropped by a VAD, a static scene merged into an earlier token)
still get a packet, empty, so that consumers, the memory above all, see every window of the stream's
time line. Once a modality has had a token, its empty windows are emitted when its next token arrives,
or up to the last window of the stream (over all modalities) at a gap or at the end. A modality whose
first token comes late gets empty packets back to the stream's first window (or the last gap's end).

**Gaps.** A ``gap`` closes every open window. The windows inside the gap get no packet. A window cut
in two by a short gap is emitted in two parts that carry the same index; the budget holds for each.

**Late tokens.** Tokens should come in time order. A token whose window already closed (an upstream
stage held a merged token back) is not dropped: it joins the next packet emitted for its modality, and
that packet is re-sorted by ``t0``.

**Device.** The merge plan computes on the tokens' device: on the CPU in numpy (its per-call overhead is
a fraction of torch's on these small arrays), elsewhere in torch, the same passes with the greedy pick
vectorised (:func:`~streamzip.operators.atome.greedy_disjoint`). The stage plans on ``device`` (a CUDA
GPU when present) and applies the plan to the packets on the CPU, where they stay (the packet contract).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from streamzip.config import Config
from streamzip.devices import OnDevice, check_device, tokens_on
from streamzip.errors import SnapshotError
from streamzip.operator import Operator
from streamzip.operators.atome import greedy_disjoint
from streamzip.packets import AUDIO, VIDEO, Gap, Packet, Tokens
from streamzip.registry import register
from streamzip.tokens import cat, merge_groups, take, tokens_from_state, tokens_to_state
from streamzip.windows import WindowBuffer, window_bounds, window_of

__all__ = [
    "MergePlan",
    "Window",
    "WindowConfig",
    "apply_plan",
    "plan_adjacent_merges",
    "position_major_order",
    "reduce_window",
    "tokens_from_state",
    "tokens_to_state",
]

#: Bumped when the layout of :meth:`Window.state_dict` changes.
STATE_VERSION = 1


# -- kernel ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class MergePlan:
    """A grouping of ``n`` tokens into runs of neighbours.

    ``group``: ``(n,)`` int64, the group of each token (in the caller's token order); ``num_groups``:
    how many groups. Apply with :func:`apply_plan` (i.e. :func:`~streamzip.tokens.merge_groups`).
    """

    group: torch.Tensor
    num_groups: int

    @property
    def is_identity(self) -> bool:
        return self.num_groups == int(self.group.numel())


def plan_adjacent_merges(
    data: torch.Tensor,
    size: torch.Tensor,
    budget: int,
    *,
    order: torch.Tensor | None = None,
    t0: torch.Tensor | None = None,
    t1: torch.Tensor | None = None,
    now_s: float | None = None,
    recency_weight: float = 0.0,
    barrier: torch.Tensor | None = None,
    max_fraction_per_pass: float = 0.25,
) -> MergePlan:
    """Plan merges of neighbouring tokens down to ``budget`` groups.

    Tokens are lined up by ``order`` (``(n,)`` int64 permutation; default: as given); only neighbours
    in that line merge, so every group is a run of consecutive tokens of the line. Each pass scores
    every neighbouring pair (running size-weighted means)::

        cos(x_i, x_j) - recency_weight · (t1 - t0) / (now_s - t0)      (t0, t1 of the pair merged)

    then merges the best disjoint pairs, at most ``max_fraction_per_pass`` of the tokens and never
    more than needed, until ``budget`` is reached. The recency term is the span a merge would create
    relative to its age: merging old tokens costs little, merging recent ones much, so a memory ends
    up with a resolution proportional to age (log-spaced in time) instead of one blob of everything
    old. A pair whose ``barrier`` ids differ (``(n,)`` int64, e.g. the segments between gaps) merges
    only when no other pair is left, so the budget always holds.

    Shapes: ``data`` ``(n, D)``; ``size``, ``t0``, ``t1`` (seconds, needed for recency), ``barrier``
    ``(n,)``, all on ``data``'s device, where the plan computes and lands. Returns the identity plan
    when ``n <= budget``.
    """
    n = int(data.shape[0])
    budget = max(1, int(budget))
    if n <= budget:
        return MergePlan(torch.arange(n, dtype=torch.int64, device=data.device), n)
    if data.device.type != "cpu":
        return _plan_torch(data, size, budget, order=order, t0=t0, t1=t1, now_s=now_s,
                           recency_weight=recency_weight, barrier=barrier,
                           max_fraction_per_pass=max_fraction_per_pass)
    # The loop runs on numpy: its per-call overhead is a fraction of torch's on these small arrays.
    perm = order.to(torch.int64).numpy() if order is not None else np.arange(n, dtype=np.int64)
    x = data.detach().to(torch.float32).numpy()[perm]
    w = size.detach().to(torch.float32).numpy()[perm].clip(min=1.0)
    seg = barrier.detach().to(torch.int64).numpy()[perm] if barrier is not None else None
    use_time = bool(recency_weight) and t0 is not None and t1 is not None
    if use_time:
        assert t0 is not None and t1 is not None
        lo, hi = t0.detach().to(torch.float64).numpy()[perm], t1.detach().to(torch.float64).numpy()[perm]
        now = float(hi.max()) if now_s is None else max(float(now_s), float(hi.max()))
    # cur_of[j] = the current run holding the j-th token of the line.
    cur_of = np.arange(n, dtype=np.int64)
    cur = n
    while cur > budget:
        needed = cur - budget
        cap = min(needed, max(1, int(cur * max_fraction_per_pass)))
        xn = x / np.maximum(np.sqrt(np.einsum("ij,ij->i", x, x)), 1e-12)[:, None]
        score = np.einsum("ij,ij->i", xn[:-1], xn[1:])
        if use_time:
            start = np.minimum(lo[:-1], lo[1:])
            span = np.maximum(hi[:-1], hi[1:]) - start
            score = score - recency_weight * (span / np.maximum(now - start, 1e-9)).astype(np.float32)
        candidates = np.argsort(-score, kind="stable")
        if seg is not None:
            blocked = seg[:-1] != seg[1:]
            free = int((~blocked).sum())
            if free:  # pairs across a barrier wait until no other pair is left
                candidates = candidates[~blocked[candidates]][:free]
        left = _pick_disjoint(candidates.tolist(), cur, cap)
        # Merge each chosen pair (i, i+1): i+1 stops being a run start.
        is_start = np.ones(cur, dtype=bool)
        is_start[np.asarray(left, dtype=np.int64) + 1] = False
        new_id = np.cumsum(is_start) - 1
        new_w = _run_reduce(new_id, is_start, w, np.add)
        x = _run_reduce(new_id, is_start, x * w[:, None], np.add) / new_w[:, None]
        w = new_w
        if use_time:
            lo = _run_reduce(new_id, is_start, lo, np.minimum)
            hi = _run_reduce(new_id, is_start, hi, np.maximum)
        if seg is not None:
            seg = seg[is_start]  # a run merged over a barrier keeps its left part's segment
        cur_of = new_id[cur_of]
        cur = int(new_w.shape[0])
    group = torch.empty(n, dtype=torch.int64, device=data.device)
    group[torch.from_numpy(perm)] = torch.from_numpy(cur_of)
    return MergePlan(group, cur)


def _plan_torch(data: torch.Tensor, size: torch.Tensor, budget: int, *, order: torch.Tensor | None,
                t0: torch.Tensor | None, t1: torch.Tensor | None, now_s: float | None, recency_weight: float,
                barrier: torch.Tensor | None, max_fraction_per_pass: float) -> MergePlan:
    """:func:`plan_adjacent_merges` in torch on ``data``'s device (``n > budget``): the numpy loop's
    passes, dtypes and tie rules, the greedy pick as :func:`greedy_disjoint` (the same picks)."""
    n = int(data.shape[0])
    device = data.device
    perm = order.to(torch.int64) if order is not None else torch.arange(n, dtype=torch.int64, device=device)
    x = data.detach().to(torch.float32)[perm]
    w = size.detach().to(torch.float32)[perm].clamp(min=1.0)
    seg = barrier.detach().to(torch.int64)[perm] if barrier is not None else None
    use_time = bool(recency_weight) and t0 is not None and t1 is not None
    if use_time:
        assert t0 is not None and t1 is not None
        lo, hi = t0.detach().to(torch.float64)[perm], t1.detach().to(torch.float64)[perm]
        now = hi.max() if now_s is None else hi.max().clamp(min=float(now_s))
    cur_of = torch.arange(n, dtype=torch.int64, device=device)
    cur = n
    while cur > budget:
        needed = cur - budget
        cap = min(needed, max(1, int(cur * max_fraction_per_pass)))
        xn = x / x.square().sum(1).sqrt().clamp(min=1e-12)[:, None]
        score = (xn[:-1] * xn[1:]).sum(1)
        if use_time:
            start = torch.minimum(lo[:-1], lo[1:])
            span = torch.maximum(hi[:-1], hi[1:]) - start
            score = score - recency_weight * (span / (now - start).clamp(min=1e-9)).to(torch.float32)
        # Pairs across a barrier wait until no other pair is left.
        candidate = torch.ones_like(score, dtype=torch.bool)
        if seg is not None:
            free = seg[:-1] == seg[1:]
            candidate = torch.where(free.any(), free, candidate)
        picked = greedy_disjoint(score, candidate, cap)
        # Merge each picked pair (i, i+1): i+1 stops being a run start.
        is_start = torch.ones(cur, dtype=torch.bool, device=device)
        is_start[1:] = ~picked
        new_id = torch.cumsum(is_start, 0) - 1
        second = ~is_start
        into = new_id[second]
        new_w = w[is_start]
        new_w[into] += w[second]
        wx = x * w[:, None]
        x = wx[is_start]
        x[into] += wx[second]
        x = x / new_w[:, None]
        w = new_w
        if use_time:
            lo_second, hi_second = lo[second], hi[second]
            lo, hi = lo[is_start], hi[is_start]
            lo[into] = torch.minimum(lo[into], lo_second)
            hi[into] = torch.maximum(hi[into], hi_second)
        if seg is not None:
            seg = seg[is_start]  # a run merged over a barrier keeps its left part's segment
        cur_of = new_id[cur_of]
        cur = int(new_w.shape[0])
    group = torch.empty(n, dtype=torch.int64, device=device)
    group[perm] = cur_of
    return MergePlan(group, cur)


def _run_reduce(new_id: np.ndarray, is_start: np.ndarray, values: np.ndarray, op: np.ufunc) -> np.ndarray:
    """Reduce ``values`` by run with ``op``; a run has one or two members (a token merges once per pass)."""
    out = values[is_start]
    second = ~is_start
    idx = new_id[second]
    out[idx] = op(out[idx], values[second])
    return out


def _pick_disjoint(candidates: list[int], n: int, cap: int) -> list[int]:
    """Greedy: take pairs (i, i+1) in the given order when neither token is taken yet."""
    taken = bytearray(n)
    chosen: list[int] = []
    for i in candidates:
        if not taken[i] and not taken[i + 1]:
            taken[i] = taken[i + 1] = 1
            chosen.append(i)
            if len(chosen) == cap:
                break
    return chosen


def apply_plan(tokens: Tokens, plan: MergePlan) -> Tokens:
    """Merge ``tokens`` by ``plan`` (size-weighted means, provenance composed); identity → input."""
    if plan.is_identity:
        return tokens
    return merge_groups(tokens, plan.group)


def position_major_order(tokens: Tokens) -> torch.Tensor:
    """``(n,)`` the order that lines tokens up by patch position, time order within a position.

    For video this puts the same patch of consecutive frames side by side; audio tokens (position -1)
    keep their time order.
    """
    pos = tokens.pos.to(torch.int64)
    cols = int(pos[:, 1].max().item()) + 2 if tokens.num_tokens else 1
    key = pos[:, 0] * cols + pos[:, 1]
    return torch.argsort(key, stable=True)


def reduce_window(tokens: Tokens, max_tokens: int, *, device: torch.device | None = None) -> Tokens:
    """At most ``max_tokens`` tokens by adjacent merging (video: along time per position first).

    ``device``: where the plan computes (the tokens' own when None); the result is on the tokens'
    device either way (the CPU for packets)."""
    if tokens.num_tokens <= max_tokens:
        return tokens
    view = tokens if device is None else tokens_on(tokens, device)
    order = position_major_order(view) if tokens.modality != AUDIO else None
    plan = plan_adjacent_merges(view.data, view.size, max_tokens, order=order)
    return apply_plan(tokens, MergePlan(plan.group.to(tokens.data.device), plan.num_groups))


# -- plain-data snapshots of packets ----------------------------------------------------------------
# -- streaming operator --------------------------------------------------------------------------
@dataclass(frozen=True)
class WindowConfig(Config):
    # 4 s: a few actions' worth of media, short enough that a live consumer waits little.
    window_s: float = 4.0
    # 256 per 4 s window: 8 frames at 2 fps of 32 tokens, a fifth of the raw 14×14 patch grid.
    max_video_tokens: int = 256
    # 64 per 4 s window: fbank tokens come at ~25/s (100 per window); A-ToMe keeps ~57% at no WER cost.
    max_audio_tokens: int = 64
    # Empty packets for windows without tokens, so the memory and consumers see every window.
    emit_empty: bool = True
    # "auto": a CUDA GPU when PyTorch sees one, else the CPU: where merge plans compute; the packets
    # stay on the CPU.
    device: str = "auto"

    def check(self) -> Iterator[tuple[str, str]]:
        if not 0.0 < self.window_s <= 3600.0 or not math.isfinite(self.window_s):
            yield "window_s", f"must be in (0, 3600] seconds, got {self.window_s}"
        for name in ("max_video_tokens", "max_audio_tokens"):
            if getattr(self, name) < 1:
                yield name, f"must be >= 1 token, got {getattr(self, name)}"
        if (msg := check_device(self.device)) is not None:
            yield "device", msg


class _Lane:
    """Per-modality state: the open window, the next window index to emit, late tokens."""

    def __init__(self, window_s: float, stream: str, next_window: int, dim: int, with_assignment: bool) -> None:
        self.buffer = WindowBuffer(window_s)
        self.stream = stream
        self.next_window = next_window
        self.dim = dim
        self.with_assignment = with_assignment
        self.late: list[Tokens] = []


@register("window")
class Window(OnDevice, Operator):
    """Cut the stream into windows of at most a token budget per modality (empty windows included)."""

    config_class = WindowConfig
    config: WindowConfig
    threads = 1  # small tensor ops (Operator.threads)

    def __init__(self, config: WindowConfig | None = None, **kw: Any) -> None:
        super().__init__(config, **kw)
        self._lanes: dict[str, _Lane] = {}
        # The window a modality seen for the first time starts from (stream start or the last gap's end).
        self._clock_start: int | None = None
        # The last window index any modality has had a token in.
        self._clock_last: int | None = None

    def takes(self, packet: Packet) -> bool:
        # Memory views re-present tokens already windowed; pass them on untouched.
        return super().takes(packet) and isinstance(packet, Tokens) and packet.meta.get("kind") not in ("memory", "read")

    def budget(self, modality: str) -> int:
        return self.config.max_audio_tokens if modality == AUDIO else self.config.max_video_tokens

    # -- protocol ---------------------------------------------------------------------------------
    def process(self, packet: Packet) -> list[Packet]:
        assert isinstance(packet, Tokens)
        tokens = packet.check(stage=self.step_id)
        if tokens.num_tokens == 0:
            return []
        if bool((tokens.t0[1:] < tokens.t0[:-1]).any()):
            tokens = take(tokens, torch.argsort(tokens.t0, stable=True))
        w = self.config.window_s
        idx = torch.floor(tokens.t0 / w + 1e-9).to(torch.int64)
        first, last = int(idx.min()), int(idx.max())
        lane = self._lanes.get(tokens.modality)
        if lane is None:
            start = first if self._clock_start is None else min(first, self._clock_start)
            lane = self._lanes[tokens.modality] = _Lane(w, tokens.stream, start, tokens.dim, tokens.has_assignment)
            if self._clock_start is None:
                self._clock_start = first
        self._clock_last = last if self._clock_last is None else max(self._clock_last, last)
        floor = lane.buffer.current if lane.buffer.current is not None else lane.next_window
        late = idx < floor
        if bool(late.any()):
            lane.late.append(take(tokens, late.nonzero().squeeze(1), keep_dropped=True))
            tokens = take(tokens, (~late).nonzero().squeeze(1), keep_dropped=False)
        out: list[Packet] = []
        for k, win in lane.buffer.add(tokens):
            out.extend(self._emit_until(lane, tokens.modality, k))
            out.append(self._emit(lane, k, win))
        if lane.buffer.current is not None:
            out.extend(self._emit_until(lane, tokens.modality, lane.buffer.current))
            if packet.meta.get("window_complete") is True and packet.meta.get("window") == lane.buffer.current:
                # An upstream windowed stage vouches that this window is whole: no need to wait.
                for k, win in lane.buffer.flush():
                    out.append(self._emit(lane, k, win))
        return out

    def flush(self) -> list[Packet]:
        return self._close_all()

    def on_gap(self, gap: Gap) -> list[Packet]:
        out = self._close_all()
        resume = window_of(max(gap.start_s, gap.end_s), self.config.window_s)
        for lane in self._lanes.values():
            # A gap ending inside an emitted window lets that window's after-gap part come out too.
            lane.next_window = max(resume, lane.next_window - 1)
        self._clock_start = resume if self._clock_start is not None else None
        self._clock_last = None
        return [*out, gap]

    # -- emission ---------------------------------------------------------------------------------
    def _close_all(self) -> list[Packet]:
        keyed: list[tuple[int, int, Tokens]] = []
        order = {VIDEO: 0, AUDIO: 1}
        for modality, lane in self._lanes.items():
            rank = order.get(modality, 2)
            for k, win in lane.buffer.flush():
                for pad in self._emit_until(lane, modality, k):
                    keyed.append((int(pad.meta["window"]), rank, pad))
                keyed.append((k, rank, self._emit(lane, k, win)))
            if self._clock_last is not None:
                for pad in self._emit_until(lane, modality, self._clock_last + 1):
                    keyed.append((int(pad.meta["window"]), rank, pad))
            if lane.late:  # late tokens with no window left to join: they get one of their own
                k = max(lane.next_window - 1, 0)
                empty = Tokens.empty(lane.stream, modality, lane.dim, with_assignment=lane.with_assignment)
                keyed.append((k, rank, self._emit(lane, k, empty, advance=False)))
        keyed.sort(key=lambda e: (e[0], e[1]))
        return [p for _, _, p in keyed]

    def _emit_until(self, lane: _Lane, modality: str, stop: int) -> list[Tokens]:
        """Empty packets for the windows ``lane.next_window … stop-1`` (they had no tokens)."""
        out = []
        while lane.next_window < stop:
            k = lane.next_window
            empty = Tokens.empty(lane.stream, modality, lane.dim, with_assignment=lane.with_assignment)
            if self.config.emit_empty or lane.late:
                out.append(self._emit(lane, k, empty))
            else:
                lane.next_window = k + 1
        return out

    def _emit(self, lane: _Lane, k: int, tokens: Tokens, *, advance: bool = True) -> Tokens:
        if lane.late:
            joined = cat([*lane.late, tokens] if tokens.num_tokens else lane.late)
            tokens = take(joined, torch.argsort(joined.t0, stable=True))
            lane.late = []
        tokens_in = tokens.num_tokens
        tokens = reduce_window(tokens, self.budget(tokens.modality), device=self.device)
        start, end = window_bounds(k, self.config.window_s)
        tokens.meta = {**tokens.meta, "kind": "window", "window": k, "window_start_s": start,
                       "window_end_s": end, "window_complete": True, "tokens_in": tokens_in}
        if advance:
            lane.next_window = k + 1
        return tokens

    # -- snapshots --------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        lanes = {}
        for modality, lane in self._lanes.items():
            buf = lane.buffer.state_dict()
            lanes[modality] = {
                "stream": lane.stream, "current": buf["current"], "parts": buf["parts"],
                "next_window": lane.next_window, "dim": lane.dim, "with_assignment": lane.with_assignment,
                "late": [tokens_to_state(p) for p in lane.late],
            }
        return {"version": STATE_VERSION, "clock_start": self._clock_start, "clock_last": self._clock_last,
                "lanes": lanes}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        version = state.get("version")
        if version != STATE_VERSION:
            raise SnapshotError(f"window state version {version!r} is not {STATE_VERSION}", stage=self.step_id,
                                fix="resume with the streamzip version that wrote the snapshot")
        try:
            lanes: dict[str, _Lane] = {}
            for modality, s in state["lanes"].items():
                lane = _Lane(self.config.window_s, str(s["stream"]), int(s["next_window"]), int(s["dim"]),
                             bool(s["with_assignment"]))
                lane.buffer.load_state_dict({"current": s["current"], "parts": s["parts"]})
                lane.late = [tokens_from_state(p) for p in s["late"]]
                lanes[modality] = lane
            clock_start, clock_last = state["clock_start"], state["clock_last"]
        except (KeyError, TypeError, ValueError) as err:
            raise SnapshotError(f"window state is incomplete or malformed ({err!r})", stage=self.step_id,
                                fix="resume from a snapshot written by this version") from err
        self._lanes, self._clock_start, self._clock_last = lanes, clock_start, clock_last

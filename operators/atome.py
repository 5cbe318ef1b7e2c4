"""A-ToMe: adjacent token merging for audio tokens.

Li, Wu, Li, Liu, "Accelerating Transducers through Adjacent Token Merging", Interspeech 2023
(arXiv 2306.16009). No reference code is public; the rule follows ``research/methods.md`` §3.3.

One pass:

1. score every adjacent pair by cosine similarity, ``s_i = cos(x_i, x_{i+1})``;
2. candidates: pairs with ``s_i > threshold`` (and, with ``ratio``, only the ``⌊ratio·L⌋`` best);
3. pick disjoint pairs greedily in descending score (ties: earlier pair first), so each token takes
   part in at most one merge per pass (≤ 50 % fewer tokens per pass, no chains);
4. merge each picked pair as the size-weighted mean (:func:`streamzip.tokens.merge_groups`: sizes
   add, ``t0`` of the first, ``t1`` of the second, provenance composed). Order is kept.

Passes repeat (the paper's stacked modules) until no pair is a candidate, the budget
(``max_tokens`` per window) is met, or ``max_passes`` ran. The whole plan is computed first, on
float64 running means, then applied once to the input with ``merge_groups``.

**Where tokens never merge** (a *cut* between two adjacent input tokens):

- a time discontinuity: the next token starts more than ``max_gap_s`` (default 20 ms, half a 40 ms
  token) after the previous one ends. The fbank encoder's tokens of one contiguous stretch tile the
  clock exactly, and the VAD removes only silences of at least ``min_silence_ms`` (300 ms), so every
  removed silence and every gap is a cut;
- an input pair whose similarity does not pass ``threshold``. This is where we differ from the
  paper: a later pass may join two merged tokens only if every input pair between them passed the
  threshold. Without this rule, averages can become similar across a real change of sound; with
  it, a low-similarity pair is a permanent cut, which is also what makes the streaming form exact;
- in window mode (``max_tokens`` or ``ratio``), the boundaries of the ``window_s`` windows of the
  stream clock (:mod:`streamzip.windows`), so each window's budget is its own.

**Streaming, exactly.** With more than one pass the result near the end of a packet can depend on
tokens that have not arrived (greedy choices cascade along a chain of candidate pairs, and merged
tokens get new scores), so holding back only the last token is not enough. Since nothing merges
across a cut, the input splits into independent *runs* between cuts; the operator holds back the
trailing run (it can still grow) and merges every run that a cut has closed. Runs are capped at
``max_run_tokens`` (a forced cut every that many tokens from the run's start, a position that
depends on the tokens only) so latency and memory stay bounded on endless steady sound. In window
mode the unit is the window instead (a budget couples all of a window's tokens), emitted when it
closes. Either way the output is identical for any packetisation.

The kernels compute on their input's device. The operator finds cuts and plans on ``device`` (a CUDA GPU
when present) and applies the plan to the packets on the CPU, where they stay (the packet contract).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

from streamzip.config import Config
from streamzip.devices import OnDevice, check_device, tokens_on
from streamzip.errors import TokenError
from streamzip.operator import Operator
from streamzip.packets import AUDIO, Packet, Tokens
from streamzip.registry import register
from streamzip.tokens import cat, merge_groups, take
from streamzip.windows import WindowBuffer

__all__ = ["ATome", "ATomeConfig", "MergePlan", "adjacent_similarity", "atome", "greedy_disjoint", "input_cuts",
           "plan_merges", "time_cuts"]


# -- kernel ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class MergePlan:
    """``group``: ``(n,)`` int64, the output token of each input token (non-decreasing, contiguous
    groups; on the tokens' device); ``passes``: how many passes changed something."""

    group: torch.Tensor
    passes: int

    @property
    def num_out(self) -> int:
        return int(self.group[-1]) + 1 if self.group.numel() else 0


def adjacent_similarity(data: torch.Tensor) -> torch.Tensor:
    """``(n, D)`` → ``(n-1,)`` float64 cosine of each token with the next (0 for a zero vector).

    Float64 so that the scores of the same tokens agree to ~1e-16 whatever batch they are computed
    in (the streaming form relies on it)."""
    if data.shape[0] < 2:
        return torch.zeros(0, dtype=torch.float64, device=data.device)
    x = data.to(torch.float64)
    x = x / x.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return (x[:-1] * x[1:]).sum(dim=1)


def time_cuts(t0: torch.Tensor, t1: torch.Tensor, max_gap_s: float) -> torch.Tensor:
    """``(n-1,)`` bool: True where token i+1 starts more than ``max_gap_s`` after token i ends."""
    if t0.numel() < 2:
        return torch.zeros(0, dtype=torch.bool, device=t0.device)
    return (t0[1:] - t1[:-1]) > max_gap_s


def greedy_disjoint(scores: torch.Tensor, candidate: torch.Tensor, limit: int | None = None) -> torch.Tensor:
    """Pairs picked greedily in descending score (ties: lower index first), skipping any pair that
    shares a token with one already picked; at most ``limit`` picks (the best ones).

    ``scores``, ``candidate``: ``(m,)`` for the pairs ``(i, i+1)``; returns ``(m,)`` bool.

    Vectorised: a candidate that outranks both its still-available neighbours is exactly one the
    sequential greedy would pick (nothing it waits for can block it), so each round picks all of
    them and removes their neighbours; rounds repeat until no candidate is left.
    """
    m = scores.numel()
    device = scores.device
    picked = torch.zeros(m, dtype=torch.bool, device=device)
    if m == 0 or not bool(candidate.any()) or (limit is not None and limit <= 0):
        return picked
    order = torch.argsort(-scores, stable=True)
    rank = torch.empty(m, dtype=torch.int64, device=device)
    rank[order] = torch.arange(m, 0, -1, dtype=torch.int64, device=device)  # higher = picked earlier
    avail = candidate.clone()
    pad = torch.zeros(1, dtype=torch.int64, device=device)
    while bool(avail.any()):
        r = torch.where(avail, rank, torch.zeros_like(rank))
        left = torch.cat([pad, r[:-1]])
        right = torch.cat([r[1:], pad])
        win = avail & (r > left) & (r > right)
        picked |= win
        blocked = win.clone()
        blocked[1:] |= win[:-1]
        blocked[:-1] |= win[1:]
        avail &= ~blocked
    if limit is not None and int(picked.sum()) > limit:
        keep = order[picked[order]][:limit]
        picked = torch.zeros(m, dtype=torch.bool, device=device)
        picked[keep] = True
    return picked


def plan_merges(data: torch.Tensor, size: torch.Tensor, cuts: torch.Tensor, *, threshold: float | None,
                ratio: float | None = None, max_tokens: int | None = None,
                max_passes: int | None = None) -> MergePlan:
    """The A-ToMe plan for ``(n, D)`` tokens with ``(n,)`` sizes; ``cuts`` ``(n-1,)`` bool marks the
    adjacent pairs that must never merge (nor anything across them).

    Passes run until no pair is a candidate (``s > threshold``; any pair when ``threshold`` is None),
    the token count is ``<= max_tokens``, or ``max_passes`` passes ran. ``ratio`` limits each pass
    to the ``⌊ratio·L⌋`` best candidates of its ``L`` tokens.
    """
    n = data.shape[0]
    group = torch.arange(n, dtype=torch.int64, device=data.device)
    if n < 2:
        return MergePlan(group, 0)
    x = data.to(torch.float64)
    w = size.to(torch.float64)
    cuts = cuts.clone()
    passes = 0
    while x.shape[0] >= 2:
        length = x.shape[0]
        if max_tokens is not None and length <= max_tokens:
            break
        if max_passes is not None and passes >= max_passes:
            break
        s = adjacent_similarity(x)
        cand = ~cuts
        if threshold is not None:
            cand &= s > threshold
        if ratio is not None and bool(cand.any()):
            k = math.floor(ratio * length)
            if k < int(cand.sum()):
                ranked = torch.argsort(torch.where(cand, s, torch.full_like(s, -math.inf)), descending=True,
                                       stable=True)
                cand = torch.zeros_like(cand)
                cand[ranked[:k]] = True
        limit = length - max_tokens if max_tokens is not None else None
        picked = greedy_disjoint(s, cand, limit)
        if not bool(picked.any()):
            break
        starts = torch.ones(length, dtype=torch.bool, device=data.device)
        starts[1:] = ~picked
        new_id = torch.cumsum(starts.to(torch.int64), 0) - 1
        # Each merge joins exactly two tokens: (w_a·x_a + w_b·x_b) / (w_a + w_b), elementwise.
        first = picked.nonzero().squeeze(1)
        wx = x * w[:, None]
        merged_wx, merged_w = wx[starts], w[starts]
        at = new_id[first]
        merged_wx[at] += wx[first + 1]
        merged_w[at] += w[first + 1]
        x, w = merged_wx / merged_w[:, None], merged_w
        group = new_id[group]
        cuts = cuts[~picked]
        passes += 1
    return MergePlan(group, passes)


def input_cuts(tokens: Tokens, *, threshold: float | None, max_gap_s: float, start: int = 0) -> torch.Tensor:
    """The ``(n-1-start,)`` cuts between input tokens ``start…n-1``: time discontinuities and pairs
    not passing ``threshold``."""
    cuts = time_cuts(tokens.t0[start:], tokens.t1[start:], max_gap_s)
    if threshold is not None:
        cuts |= adjacent_similarity(tokens.data[start:]) <= threshold
    return cuts


def atome(tokens: Tokens, *, threshold: float | None = 0.9, ratio: float | None = None,
          max_tokens: int | None = None, max_passes: int | None = None, max_gap_s: float = 0.02) -> Tokens:
    """A-ToMe on one packet of tokens (offline: the whole packet is one unit). Empty or one-token
    input is returned unchanged."""
    if tokens.num_tokens < 2:
        return tokens
    cuts = input_cuts(tokens, threshold=threshold, max_gap_s=max_gap_s)
    plan = plan_merges(tokens.data, tokens.size, cuts, threshold=threshold, ratio=ratio,
                       max_tokens=max_tokens, max_passes=max_passes)
    if plan.passes == 0:
        return tokens
    return merge_groups(tokens, plan.group)


# -- streaming operator ------------------------------------------------------------------------

@dataclass(frozen=True)
class ATomeConfig(Config):
    # 0.8 on fbank tokens (stacked, per-frame normalised): about a third fewer speech tokens at a
    # mean cosine of ~0.97 to the originals (benchmarks/audio.py); re-tune for another encoder.
    threshold: float | None = 0.8
    # None: merge by threshold only. With a ratio, each pass merges at most ratio × tokens pairs.
    ratio: float | None = None
    # None: no budget. A budget per window stops merging once met (set threshold null to force it).
    max_tokens: int | None = None
    # 4 s: the engine's window clock (streamzip.windows), shared by every windowed stage.
    window_s: float = 4.0
    # None: passes repeat until nothing changes (at most log2 of a run's length).
    max_passes: int | None = None
    # 20 ms, half a 40 ms fbank token: above float noise, below any silence the VAD removes.
    max_gap_s: float = 0.02
    # 250 tokens (10 s at 25 tokens/s): bounds latency and memory on endless steady sound.
    max_run_tokens: int = 250
    # "auto": a CUDA GPU when PyTorch sees one, else the CPU: where cuts and plans compute; the packets
    # stay on the CPU.
    device: str = "auto"

    @property
    def windowed(self) -> bool:
        return self.ratio is not None or self.max_tokens is not None

    def check(self) -> Iterator[tuple[str, str]]:
        if self.threshold is not None and not -1.0 <= self.threshold <= 1.0:
            yield "threshold", f"a cosine threshold must be in [-1, 1], got {self.threshold}"
        if self.ratio is not None and not 0.0 < self.ratio <= 1.0:
            yield "ratio", f"must be in (0, 1], got {self.ratio}"
        if self.max_tokens is not None and self.max_tokens < 1:
            yield "max_tokens", f"must be >= 1, got {self.max_tokens}"
        if not (math.isfinite(self.window_s) and self.window_s > 0):
            yield "window_s", f"must be > 0 seconds, got {self.window_s}"
        if self.max_passes is not None and self.max_passes < 1:
            yield "max_passes", f"must be >= 1 (or null for no limit), got {self.max_passes}"
        if not (math.isfinite(self.max_gap_s) and self.max_gap_s >= 0):
            yield "max_gap_s", f"must be >= 0 seconds, got {self.max_gap_s}"
        if self.max_run_tokens < 2:
            yield "max_run_tokens", f"must be >= 2, got {self.max_run_tokens}"
        if self.threshold is None and self.max_tokens is None and self.max_passes is None:
            yield "threshold", ("with no threshold, set max_tokens or max_passes, else every stretch "
                                "of contiguous audio merges into one token")
        if (msg := check_device(self.device)) is not None:
            yield "device", msg


@register("atome")
class ATome(OnDevice, Operator):
    """A-ToMe: merge adjacent similar audio tokens (by threshold, ratio or budget), in time order."""

    config_class = ATomeConfig
    config: ATomeConfig
    threads = 1  # small tensor ops (Operator.threads)
    modalities = (AUDIO,)

    def __init__(self, config: ATomeConfig | None = None, **kw: Any) -> None:
        super().__init__(config, **kw)
        self._held: Tokens | None = None  # the trailing run (run mode)
        self._windows = WindowBuffer(self.config.window_s)  # window mode
        self._dim: int | None = None

    # -- the stream ---------------------------------------------------------------------------
    def process(self, packet: Packet) -> list[Packet]:
        assert isinstance(packet, Tokens)
        tokens = packet.check(stage=self.step_id)
        if tokens.num_tokens == 0:
            # Nothing to merge; pass on provenance of originals dropped upstream, if any.
            return [tokens] if tokens.src is not None and tokens.src.numel() else []
        if self._dim is not None and tokens.dim != self._dim:
            raise TokenError(f"token dimension changed from {self._dim} to {tokens.dim} mid-stream",
                             input=tokens.stream, stage=self.step_id, time_s=float(tokens.t0[0]),
                             fix="use one encoder per stream; its output dimension must not change")
        self._dim = tokens.dim
        if self.config.windowed:
            return [self._merge(w) for _, w in self._windows.add(tokens)]
        return self._add_run_mode(tokens)

    def _add_run_mode(self, tokens: Tokens) -> list[Packet]:
        c = self.config
        held = self._held
        # Cuts on the new edges only: the held run has none inside (that is why it is held).
        joined = cat([held, tokens]) if held is not None else tokens
        view = tokens_on(joined, self.device)
        first = held.num_tokens - 1 if held is not None else 0
        cuts = torch.zeros(joined.num_tokens - 1, dtype=torch.bool, device=view.data.device)
        cuts[first:] = input_cuts(view, threshold=c.threshold, max_gap_s=c.max_gap_s, start=first)
        cuts = _cap_runs(cuts, c.max_run_tokens)
        if not bool(cuts.any()):
            self._held = joined
            return []
        last_cut = int(cuts.nonzero()[-1, 0])  # between tokens last_cut and last_cut + 1
        packet_device = joined.t0.device  # the CPU
        closed = take(joined, torch.arange(last_cut + 1, device=packet_device), keep_dropped=True)
        self._held = take(joined, torch.arange(last_cut + 1, joined.num_tokens, device=packet_device), keep_dropped=False)
        return [self._merge(closed, cuts[:last_cut])]

    def _merge(self, tokens: Tokens, cuts: torch.Tensor | None = None) -> Tokens:
        """``tokens`` merged; ``cuts`` (on the device) when known."""
        c = self.config
        if tokens.num_tokens < 2:
            return tokens
        view = tokens_on(tokens, self.device)
        if cuts is None:
            cuts = input_cuts(view, threshold=c.threshold, max_gap_s=c.max_gap_s)
        plan = plan_merges(view.data, view.size, cuts, threshold=c.threshold, ratio=c.ratio,
                           max_tokens=c.max_tokens, max_passes=c.max_passes)
        # The plan applies to the packet, which stays on the CPU.
        return merge_groups(tokens, plan.group.to(tokens.data.device)) if plan.passes else tokens

    def flush(self) -> list[Packet]:
        if self.config.windowed:
            return [self._merge(w) for _, w in self._windows.flush()]
        held, self._held = self._held, None
        if held is None:
            return []
        cuts = torch.zeros(held.num_tokens - 1, dtype=torch.bool, device=self.device)  # one run by construction
        return [self._merge(held, cuts)]

    # -- snapshots ----------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"held": self._held, "windows": self._windows.state_dict(), "dim": self._dim}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._held = state["held"]
        self._windows.load_state_dict(state["windows"])
        self._dim = state["dim"]


def _cap_runs(cuts: torch.Tensor, max_run: int) -> torch.Tensor:
    """Add a cut every ``max_run`` tokens from the start of each run (token 0 starts a run)."""
    n = cuts.numel() + 1
    idx = torch.arange(n, dtype=torch.int64, device=cuts.device)
    is_start = torch.ones(n, dtype=torch.bool, device=cuts.device)
    is_start[1:] = cuts
    run_start = torch.cummax(torch.where(is_start, idx, torch.zeros_like(idx)), 0).values
    pos = idx - run_start
    forced = (pos[1:] > 0) & (pos[1:] % max_run == 0)
    return cuts | forced

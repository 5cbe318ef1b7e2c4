"""A Token Turing Machine memory of at most M tokens, training-free (Ryoo et al., CVPR 2023).

TTM (google-research/scenic ``projects/token_turing``) keeps a memory ``M_t`` of m tokens. Per step it
*reads* ``Z_t = S_r([M_t ‖ I_t])`` (r tokens for the downstream model), processes them into ``O_t`` and
*writes* ``M_{t+1} = S_m([M_t ‖ I_t ‖ O_t])``, where ``S_k`` is a learned TokenLearner summariser. This
operator is the training-free form (the learned one is :mod:`streamzip.operators.ttm_learned`): a step
is one window packet (from the ``window`` stage), and ``S_k`` is size-weighted merging of temporally
adjacent tokens with a recency weight (:func:`~streamzip.operators.window.plan_adjacent_merges`):

- **write**: ``[M ‖ window]`` in time order, the best neighbouring pairs merged first, until ``M``
  tokens are left. The score of a pair is its cosine minus ``recency_weight`` × the span the merge
  would make relative to its age (``(t1 - t0) / (now - t0)``): old tokens merge first, recent ones keep
  detail, and the memory settles to a resolution proportional to age (log-spaced in time) rather than
  one token for everything old, as a plain age bonus gives;
- **read**: the same rule down to ``read_tokens`` (r) tokens (up to half the tokens merge per pass
  instead of a quarter: a coarser, cheaper summary).

Where it differs from TTM and its peers, and why:

- *No process step, and the read output is not written back.* TTM writes ``O_t``, the processed read;
  the engine has no process step (the consumer's LLM is it), so ``O_t = Z_t`` is a summary of
  ``[M ‖ I]`` itself, and writing it would count the same media twice (sizes would no longer add up to
  the originals, and t0/t1 would overlap). The learned form does write ``O_t``.
- *Only neighbours in time merge.* A memory token always covers one contiguous span of media, and
  every past window stays represented until merged with a neighbour: the union of the memory's
  ``[t0, t1]`` covers the whole stream so far, with holes only where a ``gap`` was reported (pairs
  across a gap merge last, only when nothing else is left, so ``M`` always holds). This is MovieChat's
  long-term consolidation (Song et al., CVPR 2024) at token granularity, size-weighted as ToMe is (the
  unweighted pairwise average of MovieChat biases the memory toward recent merges); Flash-VStream's
  size-weighted k-means (Zhang et al., 2024) would merge across time and lose contiguity.
- *One memory per modality, one budget M.* Video and audio tokens come from different encoders (their
  dimensions differ), so a merge across modalities means nothing. Each modality has its own memory,
  and the budget M (and r) is shared: with both present, audio gets ``audio_share`` of it and video the
  rest; a stream with one modality gives it all of M. When a second modality appears, the first
  memory is merged down to its new share at once, so the total never exceeds M.
- *No per-original provenance in memory.* Window packets pass through with their ``src``/``assignment``;
  memory and read packets drop them (and ``score``) but keep ``size``, ``t0``, ``t1`` and ``pos``. A
  memory token of hour two stands for thousands of originals; carrying their ids would grow without
  bound (RSS would not stay flat). Which originals a memory token covers can be read back from its
  ``[t0, t1]`` and the window packets.

Per window packet it emits the window (unchanged), then the modality's memory (``meta['kind'] =
"memory"``, at most its share of M tokens, with ``covered_s``: the stream spans seen so far, split at
gaps, so a silent window stays visible even though no token covers it) and the read tokens
(``kind = "read"``). ``emit_memory_every`` thins the memory and read packets for batch outputs.
:meth:`TokenMemory.context` returns "context now": the memories plus the last window of each modality.

**M smaller than a window's budget** is allowed: the write merges the window itself down, so the
memory still holds at most M tokens.

The merge plans compute on ``device`` (a CUDA GPU when present); the memory and every packet stay on the
CPU (the packet contract), where the plans apply.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

from streamzip.config import Config
from streamzip.devices import OnDevice, check_device, tokens_on
from streamzip.errors import SnapshotError, TokenError
from streamzip.operator import Operator
from streamzip.operators.window import plan_adjacent_merges
from streamzip.packets import AUDIO, VIDEO, Gap, Packet, Tokens
from streamzip.registry import register
from streamzip.tokens import cat, merge_groups, take, tokens_from_state, tokens_to_state

__all__ = ["MemoryConfig", "TokenMemory", "split_budget", "summarise"]

#: Bumped when the layout of :meth:`TokenMemory.state_dict` changes.
STATE_VERSION = 1
#: The most spans ``covered_s`` lists; beyond it the two oldest spans are joined (a bound on state).
MAX_SPANS = 256
_RANK = {VIDEO: 0, AUDIO: 1}


# -- kernel ---------------------------------------------------------------------------------------
def split_budget(total: int, modalities: list[str], audio_share: float) -> dict[str, int]:
    """Share ``total`` tokens among the modalities present: audio gets ``audio_share`` of it, the
    others split the rest evenly; each gets at least one (so the shares add up to ``total`` as long as
    there are no more modalities than tokens)."""
    if not modalities:
        return {}
    if len(modalities) == 1:
        return {modalities[0]: total}
    out: dict[str, int] = {}
    rest = list(modalities)
    if AUDIO in rest:
        rest.remove(AUDIO)
        out[AUDIO] = min(max(1, round(total * audio_share)), max(1, total - len(rest)))
    left = max(len(rest), total - sum(out.values()))
    for i, m in enumerate(rest):
        out[m] = max(1, left // len(rest) + (1 if i < left % len(rest) else 0))
    return out


def summarise(tokens: Tokens, segment: torch.Tensor, budget: int, *, now_s: float, recency_weight: float,
              max_fraction_per_pass: float = 0.25, device: torch.device | None = None) -> tuple[Tokens, torch.Tensor]:
    """At most ``budget`` tokens by merging time neighbours (size-weighted, older first).

    ``tokens`` are in time order, without provenance; ``segment`` ``(n,)`` int64 numbers the spans
    between gaps (pairs across segments merge last). Returns the summary and its segments, on the
    tokens' device; ``device`` is where the plan computes (the tokens' own when None).
    """
    if tokens.num_tokens <= budget:
        return tokens, segment
    view = tokens if device is None else tokens_on(tokens, device)
    plan = plan_adjacent_merges(view.data, view.size, budget, t0=view.t0, t1=view.t1, now_s=now_s,
                                recency_weight=recency_weight, barrier=segment.to(view.data.device),
                                max_fraction_per_pass=max_fraction_per_pass)
    group = plan.group.to(tokens.data.device)
    out = merge_groups(tokens, group)
    # merge_groups orders groups by their first member: take that member's segment.
    first = torch.full((plan.num_groups,), tokens.num_tokens, dtype=torch.int64, device=group.device).scatter_reduce(
        0, group, torch.arange(tokens.num_tokens, dtype=torch.int64, device=group.device), reduce="amin")
    return out, segment[torch.sort(first).values]


def _strip(tokens: Tokens) -> Tokens:
    """The tokens without per-original provenance or scores (what the memory keeps)."""
    return Tokens(stream=tokens.stream, modality=tokens.modality, data=tokens.data.to(torch.float32),
                  t0=tokens.t0, t1=tokens.t1, pos=tokens.pos, size=tokens.size)


# -- streaming operator --------------------------------------------------------------------------
@dataclass(frozen=True)
class MemoryConfig(Config):
    # 256: MovieChat's long-term memory length; a fixed, small share of an MLLM's context.
    max_tokens: int = 256
    # 32: TTM reads 8–16 tokens per step for its processor; an LLM consumer can afford a few more.
    read_tokens: int = 32
    # A quarter of M (and r) for audio when both modalities are present: its windows hold ~4× fewer tokens.
    audio_share: float = 0.25
    # 1: a merge spanning half its age costs 0.5 in cosine; 0 = similarity alone (MovieChat's rule).
    recency_weight: float = 1.0
    # 1: memory and read packets after every window (0 = only at the end of the stream).
    emit_memory_every: int = 1
    # "auto": a CUDA GPU when PyTorch sees one, else the CPU: where the read and write plans compute; the
    # memory and the packets stay on the CPU.
    device: str = "auto"

    def check(self) -> Iterator[tuple[str, str]]:
        if self.max_tokens < 2:
            yield "max_tokens", f"must be >= 2 (one token per modality at least), got {self.max_tokens}"
        if self.read_tokens < 2:
            yield "read_tokens", f"must be >= 2 (one token per modality at least), got {self.read_tokens}"
        if not 0.0 < self.audio_share < 1.0:
            yield "audio_share", f"must be in (0, 1), got {self.audio_share}"
        if not (self.recency_weight >= 0.0 and math.isfinite(self.recency_weight)):
            yield "recency_weight", f"must be a finite number >= 0, got {self.recency_weight}"
        if self.emit_memory_every < 0:
            yield "emit_memory_every", f"must be >= 0 windows (0 = at the end only), got {self.emit_memory_every}"
        if (msg := check_device(self.device)) is not None:
            yield "device", msg


class _Slots:
    """One modality's memory: tokens in time order, their gap segments, and the last window."""

    def __init__(self, memory: Tokens, segment: torch.Tensor) -> None:
        self.memory = memory
        self.segment = segment
        self.last_window: Tokens | None = None
        self.windows = 0
        self.emitted = False
        self.window_meta: dict[str, Any] = {}


@register("memory")
class TokenMemory(OnDevice, Operator):
    """Token Turing Machine memory of at most M tokens (training-free write, read of r tokens)."""

    config_class = MemoryConfig
    config: MemoryConfig
    threads = 1  # small tensor ops (Operator.threads)

    def __init__(self, config: MemoryConfig | None = None, **kw: Any) -> None:
        super().__init__(config, **kw)
        self._slots: dict[str, _Slots] = {}
        self._segment = 0
        self._spans: list[list[float]] = []
        self._after_gap = False

    def takes(self, packet: Packet) -> bool:
        # Memory and read views (ours or another memory's) pass through.
        return super().takes(packet) and isinstance(packet, Tokens) and packet.meta.get("kind") not in ("memory", "read")

    # -- budgets ----------------------------------------------------------------------------------
    def _modalities(self) -> list[str]:
        return sorted(self._slots, key=lambda m: (_RANK.get(m, 2), m))

    def budgets(self) -> dict[str, int]:
        """Memory tokens per modality present (they add up to at most ``max_tokens``)."""
        return split_budget(self.config.max_tokens, self._modalities(), self.config.audio_share)

    def read_budgets(self) -> dict[str, int]:
        return split_budget(self.config.read_tokens, self._modalities(), self.config.audio_share)

    # -- protocol ---------------------------------------------------------------------------------
    def process(self, packet: Packet) -> list[Packet]:
        assert isinstance(packet, Tokens)
        window = packet.check(stage=self.step_id)
        if window.meta.get("kind") != "window":
            raise TokenError(f"the memory takes window packets (meta kind 'window'), got kind "
                             f"{window.meta.get('kind', 'tokens')!r}", input=window.stream, stage=self.step_id,
                             fix="add a 'window' step before 'memory'")
        start_s = float(window.meta.get("window_start_s", window.t0.min() if window.num_tokens else 0.0))
        end_s = float(window.meta.get("window_end_s", window.t1.max() if window.num_tokens else start_s))
        self._cover(start_s, end_s)
        slots = self._slots.get(window.modality)
        if slots is None:
            empty = _strip(Tokens.empty(window.stream, window.modality, window.dim))
            no_segment = torch.zeros(0, dtype=torch.int64, device=empty.t0.device)
            slots = self._slots[window.modality] = _Slots(empty, no_segment)
            self._rebudget(now_s=end_s)  # a new modality takes its share: shrink the others now
        joined = cat([slots.memory, _strip(window)])
        segment = torch.cat([slots.segment, torch.full((window.num_tokens,), self._segment, dtype=torch.int64,
                                                       device=slots.segment.device)])
        if bool((joined.t0[1:] < joined.t0[:-1]).any()):
            order = torch.argsort(joined.t0, stable=True)
            joined, segment = take(joined, order), segment[order]
        now_s = max(end_s, float(joined.t1.max()) if joined.num_tokens else end_s)
        slots.window_meta = {"window": window.meta.get("window"), "window_start_s": start_s, "window_end_s": end_s}
        read = self._summarise(joined, segment, self.read_budgets()[window.modality], now_s, read=True)[0]
        slots.memory, slots.segment = self._summarise(joined, segment, self.budgets()[window.modality], now_s)
        slots.last_window = window
        slots.windows += 1
        every = self.config.emit_memory_every
        slots.emitted = every > 0 and slots.windows % every == 0
        if not slots.emitted:
            return [window]
        return [window, self._view(slots, "memory", slots.memory), self._view(slots, "read", read)]

    def on_gap(self, gap: Gap) -> list[Packet]:
        # Nothing is pending; the memory lives on across the gap, but nothing merges over it.
        self._segment += 1
        self._after_gap = True
        return [gap]

    def flush(self) -> list[Packet]:
        out: list[Packet] = []
        for m in self._modalities():
            slots = self._slots[m]
            if slots.emitted:
                continue
            now_s = slots.window_meta.get("window_end_s", 0.0)
            read = self._summarise(slots.memory, slots.segment, self.read_budgets()[m], now_s, read=True)[0]
            out += [self._view(slots, "memory", slots.memory), self._view(slots, "read", read)]
            slots.emitted = True
        return out

    def context(self) -> list[Tokens]:
        """"Context now": per modality (video first), the memory then the last window packet."""
        out: list[Tokens] = []
        for m in self._modalities():
            slots = self._slots[m]
            out.append(self._view(slots, "memory", slots.memory))
            if slots.last_window is not None:
                out.append(slots.last_window)
        return out

    @property
    def covered_s(self) -> list[list[float]]:
        """The stream spans the memory has seen, ``[[start_s, end_s], …]``, split at gaps."""
        return [list(s) for s in self._spans]

    # -- internals --------------------------------------------------------------------------------
    def _summarise(self, tokens: Tokens, segment: torch.Tensor, budget: int, now_s: float, *,
                   read: bool = False) -> tuple[Tokens, torch.Tensor]:
        # The read is a coarse summary (r << M): half the tokens may merge per pass, so it takes
        # log2 passes instead of a quarter's finer steps.
        return summarise(tokens, segment, budget, now_s=now_s, recency_weight=self.config.recency_weight,
                         max_fraction_per_pass=0.5 if read else 0.25, device=self.device)

    def _rebudget(self, now_s: float) -> None:
        for m, budget in self.budgets().items():
            slots = self._slots[m]
            slots.memory, slots.segment = self._summarise(slots.memory, slots.segment, budget, now_s)

    def _cover(self, start_s: float, end_s: float) -> None:
        if not self._spans or self._after_gap:
            self._spans.append([start_s, end_s])
            if len(self._spans) > MAX_SPANS:
                self._spans[0:2] = [[self._spans[0][0], self._spans[1][1]]]
        else:
            last = self._spans[-1]
            last[0], last[1] = min(last[0], start_s), max(last[1], end_s)
        self._after_gap = False

    def _view(self, slots: _Slots, kind: str, tokens: Tokens) -> Tokens:
        m = tokens.modality
        budget = self.budgets()[m] if kind == "memory" else self.read_budgets()[m]
        meta = {**slots.window_meta, "kind": kind, "max_tokens": budget, "covered_s": self.covered_s}
        return Tokens(stream=tokens.stream, modality=m, data=tokens.data, t0=tokens.t0, t1=tokens.t1,
                      pos=tokens.pos, size=tokens.size, meta=meta)

    # -- snapshots --------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        mods = {}
        for m, s in self._slots.items():
            mods[m] = {"memory": tokens_to_state(s.memory), "segment": s.segment.clone(),
                       "last_window": tokens_to_state(s.last_window) if s.last_window is not None else None,
                       "windows": s.windows, "emitted": s.emitted, "window_meta": dict(s.window_meta)}
        return {"version": STATE_VERSION, "segment": self._segment,
                "spans": self.covered_s, "after_gap": self._after_gap, "modalities": mods}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        version = state.get("version")
        if version != STATE_VERSION:
            raise SnapshotError(f"memory state version {version!r} is not {STATE_VERSION}", stage=self.step_id,
                                fix="resume with the streamzip version that wrote the snapshot")
        try:
            slots: dict[str, _Slots] = {}
            for m, s in state["modalities"].items():
                memory = tokens_from_state(s["memory"])
                segment = s["segment"].clone().to(torch.int64)
                if memory.modality != m or tuple(segment.shape) != (memory.num_tokens,):
                    raise SnapshotError(f"the saved {m} memory is inconsistent (modality {memory.modality!r}, "
                                        f"{memory.num_tokens} tokens, {tuple(segment.shape)} segments)",
                                        stage=self.step_id, fix="resume from an intact snapshot")
                slot = _Slots(memory, segment)
                slot.last_window = tokens_from_state(s["last_window"]) if s["last_window"] is not None else None
                slot.windows, slot.emitted = int(s["windows"]), bool(s["emitted"])
                slot.window_meta = dict(s["window_meta"])
                slots[m] = slot
            spans = [[float(a), float(b)] for a, b in state["spans"]]
            segment_id, after_gap = int(state["segment"]), bool(state["after_gap"])
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            if isinstance(err, SnapshotError):
                raise
            raise SnapshotError(f"memory state is incomplete or malformed ({err!r})", stage=self.step_id,
                                fix="resume from a snapshot written by this version") from err
        budgets = split_budget(self.config.max_tokens, sorted(slots, key=lambda m: (_RANK.get(m, 2), m)),
                               self.config.audio_share)
        for m, slot in slots.items():
            if slot.memory.num_tokens > budgets[m]:
                raise SnapshotError(f"the saved {m} memory holds {slot.memory.num_tokens} tokens, over this "
                                    f"config's {budgets[m]}", stage=self.step_id,
                                    fix="resume with the config that wrote the snapshot")
        self._slots, self._spans = slots, spans
        self._segment, self._after_gap = segment_id, after_gap

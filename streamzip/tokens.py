"""Operations on :class:`~streamzip.packets.Tokens` shared by every operator.

The one merge rule of the engine lives here: :func:`merge_groups` applies a grouping plan (each
token → a group id, or -1 to drop it) as size-weighted means computed in float32, so repeated merges
stay true averages of the original tokens (the ToMe ``size`` trick). It also keeps provenance: the
``src``/``assignment`` pair is composed through the plan, and t0/t1 become the min/max of the group.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from streamzip.errors import SnapshotError, TokenError
from streamzip.packets import Tokens

__all__ = ["cat", "check_dim", "cosine_to_represented", "join", "merge_groups", "take", "tokens_from_state",
           "tokens_to_state", "with_fresh_assignment"]


def cat(parts: Sequence[Tokens], *, stream: str | None = None, modality: str | None = None,
        dim: int | None = None) -> Tokens:
    """Concatenate token packets of one stream and modality, in the order given.

    ``src``/``assignment`` are kept only when every part has them. With no parts, ``stream``,
    ``modality`` and ``dim`` describe the empty result.
    """
    if not parts:
        if stream is None or modality is None or dim is None:
            raise ValueError("cat() of nothing needs stream, modality and dim")
        return Tokens.empty(stream, modality, dim)
    first = parts[0]
    for p in parts[1:]:
        if p.modality != first.modality or p.stream != first.stream:
            raise TokenError(f"cannot join {p.modality} tokens of {p.stream!r} with "
                             f"{first.modality} tokens of {first.stream!r}")
        if p.dim != first.dim:
            raise TokenError(
                f"token dimension changed from {first.dim} to {p.dim} within one stream",
                input=first.stream, time_s=float(p.t0[0]) if p.num_tokens else None,
                fix="use one encoder per stream; its output dimension must not change",
            )
    if len(parts) == 1:
        return parts[0]
    return join(parts)


def join(parts: Sequence[Tokens], *, provenance: bool = True) -> Tokens:
    """Concatenate token packets in the order given, as they are: the tensors of :func:`cat`, without
    its checks (stream, modality and dimension are the caller's business; ``data`` of mixed dtypes is
    promoted as ``torch.cat`` does) and always as new tensors, a single part included.

    ``src``/``assignment`` are kept only when ``provenance`` and every part has them, each part's
    assignment shifted by the tokens before it; ``score`` only when every part has one. Stream,
    modality and meta are the first part's. ``parts`` must not be empty.
    """
    first = parts[0]
    assignments = [p.assignment for p in parts if p.assignment is not None]
    scores = [p.score for p in parts if p.score is not None]
    keep_assign = provenance and len(assignments) == len(parts)
    keep_score = len(scores) == len(parts)
    src = assignment = None
    if keep_assign:
        offsets = torch.tensor([0] + [p.num_tokens for p in parts[:-1]], dtype=torch.int64).cumsum(0)
        src = torch.cat([p.src for p in parts])  # type: ignore[misc]
        assignment = torch.cat([
            torch.where(a >= 0, a + off, a)
            for a, off in zip(assignments, offsets.tolist())
        ])
    return Tokens(
        stream=first.stream, modality=first.modality,
        data=torch.cat([p.data for p in parts]),
        t0=torch.cat([p.t0 for p in parts]), t1=torch.cat([p.t1 for p in parts]),
        pos=torch.cat([p.pos for p in parts]), size=torch.cat([p.size for p in parts]),
        src=src, assignment=assignment,
        score=torch.cat(scores) if keep_score else None,
        meta=dict(first.meta),
    )


def check_dim(tokens: Tokens, expected: int | None, *, stage: str) -> int:
    """The dimension of ``tokens``; a :class:`TokenError` if a stream's dimension changed."""
    if expected is not None and tokens.dim != expected:
        raise TokenError(f"token dimension changed from {expected} to {tokens.dim} mid-stream",
                         input=tokens.stream, stage=stage, time_s=float(tokens.t0[0]) if tokens.num_tokens else None,
                         fix="use one encoder per stream; its output dimension must not change")
    return tokens.dim


def take(tokens: Tokens, index: torch.Tensor, *, keep_dropped: bool = True) -> Tokens:
    """The tokens at ``index`` (int64, increasing) as a new packet.

    Provenance follows the tokens: an original whose representative is taken comes along (remapped);
    originals already dropped (assignment -1) come along when ``keep_dropped``.
    """
    index = index.to(torch.int64)
    src = assignment = None
    if tokens.assignment is not None and tokens.src is not None:
        remap = torch.full((tokens.num_tokens + 1,), -1, dtype=torch.int64)
        remap[index] = torch.arange(index.numel(), dtype=torch.int64)
        a = tokens.assignment
        new_a = remap[torch.where(a >= 0, a, torch.full_like(a, tokens.num_tokens))]
        keep = new_a >= 0
        if keep_dropped:
            keep = keep | (a < 0)
        src, assignment = tokens.src[keep], new_a[keep]

    def rows(t: torch.Tensor) -> torch.Tensor:
        return t.index_select(0, index)  # a plain gather: faster than advanced indexing

    return Tokens(
        stream=tokens.stream, modality=tokens.modality,
        data=rows(tokens.data), t0=rows(tokens.t0), t1=rows(tokens.t1),
        pos=rows(tokens.pos), size=rows(tokens.size), src=src, assignment=assignment,
        score=rows(tokens.score) if tokens.score is not None else None, meta=dict(tokens.meta),
    )


def merge_groups(tokens: Tokens, group: torch.Tensor) -> Tokens:
    """Apply a grouping plan: ``group[i]`` is token i's group id (any ints ≥ 0), or -1 to drop it.

    Each group becomes one token: data is the size-weighted mean (float32 accumulation), size the
    sum, t0/t1 the min/max, pos and the order those of the group's first member. Because input tokens
    are in time order, so is the output. Empty input returns the input unchanged.

    Shapes: ``group`` is ``(n,)`` int64.
    """
    n = tokens.num_tokens
    if group.shape != (n,):
        raise ValueError(f"group must have shape ({n},), got {tuple(group.shape)}")
    if n == 0:
        return tokens
    group = group.to(torch.int64)
    kept = group >= 0
    # Renumber groups 0..G-1 by their first member, so the output keeps the input's order.
    first = torch.full((int(group.max().item()) + 1 if bool(kept.any()) else 1,), n, dtype=torch.int64)
    idx = torch.arange(n, dtype=torch.int64)
    if bool(kept.any()):
        first.scatter_reduce_(0, group[kept], idx[kept], reduce="amin")
    used = first < n
    order = torch.argsort(first[used])
    firsts = first[used][order]
    num_out = int(firsts.numel())
    new_id_of_old = torch.full_like(first, -1)
    new_id_of_old[used.nonzero().squeeze(1)[order]] = torch.arange(num_out, dtype=torch.int64)
    out_of_token = torch.where(kept, new_id_of_old[group.clamp(min=0)], torch.full_like(group, -1))

    k = out_of_token[kept]
    acc = torch.zeros(num_out, tokens.dim, dtype=torch.float32)
    # In blocks of rows: one weighted copy of a large window (10⁵+ tokens) would double its memory.
    rows = kept.nonzero().squeeze(1)
    every = rows.numel() == n  # nothing dropped: blocks are row slices, no gathered copy
    for s in range(0, rows.numel(), 65536):
        r = rows[s:s + 65536]
        w = tokens.size[r].to(torch.float32).unsqueeze(1)
        block = tokens.data[s:s + 65536] if every else tokens.data.index_select(0, r)
        acc.index_add_(0, out_of_token[r], block.to(torch.float32) * w)
    size = torch.zeros(num_out, dtype=torch.int64).index_add_(0, k, tokens.size[kept])
    data = acc / size.clamp(min=1).to(torch.float32).unsqueeze(1)
    t0 = torch.full((num_out,), float("inf"), dtype=torch.float64).scatter_reduce(
        0, k, tokens.t0[kept], reduce="amin")
    t1 = torch.full((num_out,), float("-inf"), dtype=torch.float64).scatter_reduce(
        0, k, tokens.t1[kept], reduce="amax")
    score = None
    if tokens.score is not None:
        score = torch.full((num_out,), float("-inf"), dtype=tokens.score.dtype).scatter_reduce(
            0, k, tokens.score[kept], reduce="amax")
    src = assignment = None
    if tokens.assignment is not None and tokens.src is not None:
        a = tokens.assignment
        assignment = torch.where(a >= 0, out_of_token[a.clamp(min=0)], a)
        src = tokens.src
    return Tokens(
        stream=tokens.stream, modality=tokens.modality, data=data, t0=t0, t1=t1,
        pos=tokens.pos[firsts], size=size, src=src, assignment=assignment, score=score,
        meta=dict(tokens.meta),
    )


def with_fresh_assignment(tokens: Tokens, first_id: int) -> Tokens:
    """Mark these tokens as originals with ids ``first_id…``: each one represents itself."""
    n = tokens.num_tokens
    tokens.src = torch.arange(first_id, first_id + n, dtype=torch.int64)
    tokens.assignment = torch.arange(n, dtype=torch.int64)
    return tokens


def cosine_to_represented(originals: torch.Tensor, tokens: Tokens, positions: torch.Tensor) -> torch.Tensor:
    """Cosine of each original token to the output token that represents it (0 when dropped).

    ``originals`` is ``(m, D)``, the original data of ``tokens.src[positions]``; returns ``(m,)``.
    """
    assert tokens.assignment is not None
    a = tokens.assignment[positions]
    out = torch.zeros(a.shape[0], dtype=torch.float32)
    live = a >= 0
    if bool(live.any()):
        rep = tokens.data[a[live]].to(torch.float32)
        orig = originals[live].to(torch.float32)
        out[live] = torch.nn.functional.cosine_similarity(orig, rep, dim=1, eps=1e-12)
    return out


_TENSOR_FIELDS = ("data", "t0", "t1", "pos", "size", "src", "assignment", "score")


def tokens_to_state(tokens: Tokens) -> dict[str, Any]:
    """A :class:`Tokens` packet as tensors and plain values (for ``state_dict``)."""
    out: dict[str, Any] = {"stream": tokens.stream, "modality": tokens.modality, "meta": dict(tokens.meta)}
    for name in _TENSOR_FIELDS:
        value = getattr(tokens, name)
        if value is not None:
            out[name] = value.clone()
    return out


def tokens_from_state(state: dict[str, Any]) -> Tokens:
    """The inverse of :func:`tokens_to_state`."""

    def get(name: str) -> Any:
        return state[name].clone() if name in state else None

    try:
        tokens = Tokens(stream=state["stream"], modality=state["modality"], data=state["data"].clone(),
                        t0=state["t0"].clone(), t1=state["t1"].clone(), pos=state["pos"].clone(),
                        size=state["size"].clone(), src=get("src"), assignment=get("assignment"),
                        score=get("score"), meta=dict(state.get("meta", {})))
    except (KeyError, TypeError, AttributeError) as err:
        raise SnapshotError(f"a saved token packet is incomplete ({err!r})",
                            fix="resume from a snapshot written by this version") from err
    return tokens.check(stage="snapshot")

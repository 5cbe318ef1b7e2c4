"""Query-guided DPC-KNN: tokens relevant to the query keep more resolution (more of the window's
budget), as in LongVU; attention scores alone leave the clustering as it was."""

from __future__ import annotations

import pytest
import torch

from streamzip.operators.dpc_knn import DPCKNN, DPCKNNConfig, query_weights
from streamzip.packets import Tokens
from streamzip.tokens import with_fresh_assignment

FRAMES, PER_FRAME, DIM = 8, 16, 24


def window(score_kind: str | None = "query", relevant: tuple[int, ...] = (4, 5, 6, 7)) -> Tokens:
    """Two scenes of equal complexity, frames 0-3 and 4-7, each frame a noisy copy of its scene;
    frames in ``relevant`` score 0.9 for the query, the others 0.1."""
    g = torch.Generator().manual_seed(0)
    scenes = [torch.randn(PER_FRAME, DIM, generator=g) for _ in range(2)]
    data = torch.cat([scenes[f // 4] + 0.3 * torch.randn(PER_FRAME, DIM, generator=g) for f in range(FRAMES)])
    t0 = torch.arange(FRAMES, dtype=torch.float64).repeat_interleave(PER_FRAME) * 0.5
    score = torch.tensor([0.9 if f in relevant else 0.1 for f in range(FRAMES)]).repeat_interleave(PER_FRAME)
    side = int(PER_FRAME ** 0.5)
    grid = torch.stack(torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij"), -1).reshape(-1, 2)
    tokens = Tokens(stream="s", modality="video", data=data, t0=t0, t1=t0 + 0.5,
                    pos=grid.repeat(FRAMES, 1).to(torch.int32), size=torch.ones(len(data), dtype=torch.int64),
                    score=score, meta={"score_kind": score_kind} if score_kind else {})
    return with_fresh_assignment(tokens, 0)


def resolution(out: Tokens, frames: range) -> int:
    """How many output tokens represent some original token of ``frames``."""
    first, last = frames.start * PER_FRAME, frames.stop * PER_FRAME
    mine = (out.src >= first) & (out.src < last)
    return int(torch.unique(out.assignment[mine]).numel())


def run(tokens: Tokens, **kw) -> Tokens:  # type: ignore[no-untyped-def]
    op = DPCKNN(DPCKNNConfig(max_tokens=16, window_s=4.0, **kw))
    (out,) = [*op.process(tokens), *op.flush()]
    assert out.num_tokens == 16
    assert int(out.size.sum()) == tokens.num_tokens  # nothing lost, whatever the weights
    return out


@pytest.mark.parametrize("event_level", [False, True])
def test_relevant_frames_keep_more_tokens(event_level) -> None:  # type: ignore[no-untyped-def]
    plain = run(window(), weight_by="none", event_level=event_level)
    guided = run(window(), event_level=event_level)  # default weight_by: query
    a, b = range(0, 4), range(4, 8)
    assert resolution(guided, b) > resolution(plain, b)
    assert resolution(guided, b) > resolution(guided, a)
    # the other way round when the first scene is the relevant one
    flipped = run(window(relevant=(0, 1, 2, 3)), event_level=event_level)
    assert resolution(flipped, a) > resolution(flipped, b)


def test_attention_scores_do_not_steer_unless_asked() -> None:
    plain = run(window(), weight_by="none")
    attention = run(window(score_kind="attention"))  # weight_by: query ignores [CLS] attention
    assert torch.equal(attention.data, plain.data)
    steered = run(window(score_kind="attention"), weight_by="score")
    assert resolution(steered, range(4, 8)) > resolution(plain, range(4, 8))


def test_equal_scores_change_nothing() -> None:
    tokens = window(relevant=tuple(range(FRAMES)))
    assert torch.equal(run(tokens).data, run(window(), weight_by="none").data)


def test_query_weights_are_bounded_and_centred() -> None:
    w = query_weights(torch.tensor([0.1, 0.1, 0.5, 0.9, 5.0]), strength=1.0)
    assert bool((w > 0).all()) and float(w.max() / w.min()) <= float(torch.exp(torch.tensor(6.0))) + 1e-3
    assert torch.equal(torch.argsort(w), torch.argsort(torch.tensor([0.1, 0.1, 0.5, 0.9, 5.0]), stable=True))
    assert torch.equal(query_weights(torch.full((4,), 0.3), strength=2.0), torch.ones(4))
    assert torch.equal(query_weights(torch.tensor([0.1, 0.9]), strength=0.0), torch.ones(2))

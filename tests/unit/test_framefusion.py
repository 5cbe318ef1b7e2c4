"""FrameFusion: kernel answers on hand-made tokens, streaming invariants, bad input."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from streamzip.errors import ConfigError, TokenError
from streamzip.operators.framefusion import (
    FrameFusion,
    FrameFusionConfig,
    adjacent_similarity,
    apply_fusion,
    calibrate_threshold,
    plan_fusion,
    safe_cosine,
)
from streamzip.packets import Gap, Tokens
from streamzip.registry import get
from streamzip.tokens import cat, take, with_fresh_assignment


def make(frames: torch.Tensor, *, fps: float = 2.0, start_s: float = 0.0, first_id: int = 0,
         size: torch.Tensor | None = None, score: torch.Tensor | None = None) -> Tokens:
    """``(T, P, D)`` frames on a square-ish grid → encoder-like Tokens with fresh provenance."""
    t, p, d = frames.shape
    cols = math.ceil(math.sqrt(p))
    grid = torch.tensor([[i // cols, i % cols] for i in range(p)], dtype=torch.int32)
    t0 = (start_s + torch.arange(t, dtype=torch.float64) / fps).repeat_interleave(p)
    tok = Tokens(stream="s", modality="video", data=frames.reshape(t * p, d).float(), t0=t0, t1=t0 + 1 / fps,
                 pos=grid.repeat(t, 1), size=torch.ones(t * p, dtype=torch.int64) if size is None else size,
                 score=score, meta={"tokens_per_frame": p})
    return with_fresh_assignment(tok, first_id)


def run(op: FrameFusion, tokens: Tokens, frames_per_packet: int) -> list[Tokens]:
    """Feed ``tokens`` in packets of whole frames; return all outputs (flush included)."""
    t = tokens.t0
    frame = torch.cat([torch.zeros(1, dtype=torch.int64), (t[1:] != t[:-1]).long()]).cumsum(0)
    out: list = []
    for s in range(0, int(frame[-1]) + 1, frames_per_packet):
        idx = ((frame >= s) & (frame < s + frames_per_packet)).nonzero().squeeze(1)
        out += op.process(take(tokens, idx))
    out += op.flush()
    return out


def assert_same(a: Tokens, b: Tokens) -> None:
    for name in ("data", "t0", "t1", "pos", "size", "src", "assignment"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name


def clip(seed: int = 0, t: int = 24, p: int = 16, d: int = 12) -> Tokens:
    """Static stretches with a moving patch, noise, and a cut every 9 frames."""
    g = torch.Generator().manual_seed(seed)
    frames, scene = [], torch.randn(p, d, generator=g)
    for i in range(t):
        if i % 9 == 0:
            scene = torch.randn(p, d, generator=g)
        f = scene + 0.05 * torch.randn(p, d, generator=g)
        f[i % p] = torch.randn(d, generator=g)  # a moving object
        frames.append(f)
    return make(torch.stack(frames))


# -- kernel: hand-made answers --------------------------------------------------------------------

def test_chains_merge_into_the_earliest_token_with_size_weighted_means() -> None:
    e0, e1 = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    tilt = torch.tensor([0.8, 0.6])  # cos(e0, tilt) = 0.8
    frames = torch.stack([torch.stack([e0, e0]), torch.stack([e0, tilt]), torch.stack([e1, tilt])])
    tok = make(frames)  # positions (0,0) and (0,1); frames at 0, 0.5, 1.0 s
    plan = plan_fusion(tok, threshold=0.7)
    assert plan.prev.tolist() == [-1, -1, 0, 1, 2, 3]
    assert torch.allclose(plan.similarity[2:], torch.tensor([1.0, 0.8, 0.0, 1.0]))
    assert plan.anchor.tolist() == [0, 1, 0, 1, 4, 1]
    out = apply_fusion(tok, plan)
    assert out.size.tolist() == [2, 3, 1]
    assert torch.allclose(out.data[0], e0)
    assert torch.allclose(out.data[1], (e0 + 2 * tilt) / 3)
    assert out.t0.tolist() == [0.0, 0.0, 1.0] and out.t1.tolist() == [1.0, 1.5, 1.5]
    assert out.pos.tolist() == [[0, 0], [0, 1], [0, 0]]
    assert out.src.tolist() == list(range(6)) and out.assignment.tolist() == [0, 1, 0, 1, 2, 1]


def test_chains_are_transitive_even_when_ends_differ() -> None:
    a = torch.tensor([[1.0, 0.0]])
    b = torch.tensor([[math.cos(0.5), math.sin(0.5)]])
    c = torch.tensor([[math.cos(1.0), math.sin(1.0)]])  # cos(a, c) = 0.54 < 0.8 < cos(a,b) = cos(b,c) = 0.88
    out = apply_fusion(tok := make(torch.stack([a, b, c])), plan_fusion(tok, threshold=0.8))
    assert out.size.tolist() == [3]
    assert torch.allclose(out.data[0], (a + b + c)[0] / 3)


def test_merges_weigh_members_by_size() -> None:
    frames = torch.tensor([[[1.0, 0.0]], [[1.0, 0.4]]])
    tok = make(frames, size=torch.tensor([3, 1]))
    out = apply_fusion(tok, plan_fusion(tok, threshold=0.9))
    assert out.size.tolist() == [4]
    assert torch.allclose(out.data[0], torch.tensor([1.0, 0.1]))  # (3·[1,0] + [1,0.4]) / 4, not the plain mean


def test_cosine_with_zero_vectors() -> None:
    z, x = torch.zeros(1, 3), torch.tensor([[1.0, 2.0, 3.0]])
    assert safe_cosine(z, z).item() == 1.0
    assert safe_cosine(z, x).item() == 0.0 and safe_cosine(x, z).item() == 0.0
    assert safe_cosine(x, 2 * x).item() == pytest.approx(1.0)
    frames = torch.stack([torch.cat([z, x]), torch.cat([z, z])])  # pos 0: zero→zero, pos 1: x→zero
    tok = make(frames)
    assert apply_fusion(tok, plan_fusion(tok, threshold=0.5)).size.tolist() == [2, 1, 1]


def test_resolution_change_starts_fresh_chains() -> None:
    same = torch.ones(4, 3)
    tok = cat([make(torch.stack([same, same])),                                  # 2 frames of 4 tokens
               make(torch.ones(2, 1, 3), start_s=1.0, first_id=8)])             # then 2 frames of 1
    plan = plan_fusion(tok, threshold=0.5)
    assert plan.prev.tolist() == [-1] * 4 + [0, 1, 2, 3] + [-1, 8]
    out = apply_fusion(tok, plan)
    assert out.size.tolist() == [2, 2, 2, 2, 2]
    assert bool((out.t0[1:] >= out.t0[:-1]).all())


def test_one_frame_and_one_token_pass_unchanged() -> None:
    for frames in (torch.randn(1, 5, 4), torch.randn(1, 1, 4)):
        tok = make(frames)
        out = apply_fusion(tok, plan_fusion(tok, threshold=-1.0))
        assert out is tok
        op = FrameFusion(FrameFusionConfig(threshold=-1.0))
        assert_same(cat(op.process(make(frames)) + op.flush()), tok)


def test_calibration_is_the_mean_of_per_frame_medians() -> None:
    e0 = torch.tensor([1.0, 0.0])
    angles = [[0.0, 0.0, 0.0], [0.1, 0.2, 0.3], [0.0, 1.0, 1.2]]  # each frame's three tokens
    frames = torch.stack([torch.stack([torch.tensor([math.cos(a), math.sin(a)]) for a in row]) for row in angles])
    tok = make(frames)
    _, sim = adjacent_similarity(tok)
    med1 = sorted([math.cos(0.1), math.cos(0.2), math.cos(0.3)])[1]
    med2 = sorted([math.cos(0.1), math.cos(0.8), math.cos(0.9)])[1]
    assert calibrate_threshold(tok) == pytest.approx((med1 + med2) / 2, abs=1e-6)
    op = FrameFusion(FrameFusionConfig(calibrate_frames=3))
    assert op.threshold is None
    run(op, tok, 1)
    assert op.threshold == pytest.approx((med1 + med2) / 2, abs=1e-6)
    assert calibrate_threshold(make(e0.reshape(1, 1, 2))) is None


def test_keep_ratio_keeps_about_that_fraction_per_window() -> None:
    tok = clip(1, t=16)  # 2 windows of 8 frames × 16 tokens
    out = cat(run(FrameFusion(FrameFusionConfig(keep_ratio=0.3)), tok, 3))
    per_window = torch.bincount(torch.floor(out.t0 / 4.0).long())
    assert per_window.tolist() == [math.ceil(0.3 * 128)] * 2
    assert int(out.size.sum()) == tok.num_tokens


def test_pruning_keeps_the_highest_scores_and_marks_the_rest_dropped() -> None:
    frames = torch.eye(6)[:4].reshape(1, 4, 6).repeat(2, 1, 1)  # 2 identical frames of 4 tokens
    score = torch.tensor([0.1, 0.9, 0.5, 0.2, 0.1, 0.1, 0.1, 0.1])
    op = FrameFusion(FrameFusionConfig(threshold=0.9, max_tokens=2))
    out = cat(op.process(make(frames, score=score)) + op.flush())
    assert out.pos.tolist() == [[0, 1], [1, 0]]  # merged scores 0.9 and 0.5, in time/position order
    assert out.size.tolist() == [2, 2]
    # provenance ordered by (representative, id), dropped originals last
    assert out.src.tolist() == [1, 5, 2, 6, 0, 3, 4, 7]
    assert out.assignment.tolist() == [0, 0, 1, 1, -1, -1, -1, -1]


def test_pruning_by_query_and_by_ratio() -> None:
    frames = torch.eye(4).reshape(1, 4, 4)
    op = FrameFusion(FrameFusionConfig(threshold=2.0, max_tokens=1, query_embedding=[0.0, 0.0, 1.0, 0.1]))
    out = cat(op.process(make(frames)) + op.flush())
    assert out.data.tolist() == [[0.0, 0.0, 1.0, 0.0]]
    op = FrameFusion(FrameFusionConfig(threshold=2.0, prune_ratio=0.5))
    op.set_query(torch.tensor([1.0, 1.0, 0.0, 0.0]))
    out = cat(op.process(make(frames)) + op.flush())
    assert out.pos.tolist() == [[0, 0], [0, 1]]
    assert int((out.assignment >= 0).sum()) == 2


# -- streaming ------------------------------------------------------------------------------------

@pytest.mark.parametrize("cfg", [
    {"threshold": 0.9}, {}, {"keep_ratio": 0.25}, {"threshold": 0.95, "max_tokens": 40},
    {"calibrate_frames": 20, "window_s": 3.0},
])
def test_output_does_not_depend_on_packet_size(cfg: dict) -> None:
    tok = clip(2, t=30)
    results = [cat(run(FrameFusion(FrameFusionConfig(**cfg)), tok, size)) for size in (1, 7, 30)]
    for other in results[1:]:
        assert_same(results[0], other)
    assert results[0].num_tokens < tok.num_tokens


def test_tokens_are_emitted_once_their_chain_broke() -> None:
    static, moving = torch.ones(1, 3), torch.eye(3)[torch.arange(6) % 3].reshape(6, 1, 3)
    frames = torch.stack([torch.cat([static, moving[i]]) for i in range(6)])  # pos 0 static, pos 1 changes
    tok = make(frames)
    op = FrameFusion(FrameFusionConfig(threshold=0.99, window_s=100.0))
    outs = [op.process(take(tok, torch.tensor([2 * i, 2 * i + 1]))) for i in range(6)]
    # The static chain anchored at frame 0 stays open, so nothing after it may leave (time order)...
    assert all(o == [] for o in outs)
    assert cat(op.flush()).size.tolist() == [6, 1, 1, 1, 1, 1, 1]
    # ...but with the static token gone, moving tokens leave two frames after they arrive.
    tok = make(moving.repeat(1, 2, 1) * torch.tensor([1.0, -1.0]).reshape(1, 2, 1))
    op = FrameFusion(FrameFusionConfig(threshold=0.99, window_s=100.0))
    counts = [sum(o.num_tokens for o in op.process(take(tok, torch.tensor([2 * i, 2 * i + 1])))) for i in range(6)]
    assert counts == [0, 0, 2, 2, 2, 2]
    assert sum(o.num_tokens for o in op.flush()) == 4


def test_chains_break_at_window_boundaries_and_gaps() -> None:
    frames = torch.ones(4, 2, 3)
    out = cat(run(FrameFusion(FrameFusionConfig(threshold=0.5, window_s=1.0)), make(frames), 4))
    assert out.size.tolist() == [2, 2, 2, 2] and out.t0.tolist() == [0.0, 0.0, 1.0, 1.0]
    op = FrameFusion(FrameFusionConfig(threshold=0.5))
    first = op.process(make(frames[:2]))
    gap = Gap("s", 1.0, 2.0)
    at_gap = op.on_gap(gap)
    assert at_gap[-1] is gap
    rest = op.process(make(frames[2:], start_s=2.0, first_id=4)) + op.flush()
    got = cat([*first, *at_gap[:-1], *rest])
    assert got.size.tolist() == [2, 2, 2, 2]
    assert got.meta["window"] == 0


def test_snapshot_resumes_with_identical_output() -> None:
    tok = clip(3, t=20)
    full = cat(run(FrameFusion(FrameFusionConfig(calibrate_frames=6)), tok, 1))
    op = FrameFusion(FrameFusionConfig(calibrate_frames=6))
    frame = torch.arange(tok.num_tokens) // 16
    before = op.process(take(tok, (frame < 11).nonzero().squeeze(1)))
    resumed = FrameFusion(FrameFusionConfig(calibrate_frames=6))
    resumed.restore(op.snapshot())
    after = resumed.process(take(tok, (frame >= 11).nonzero().squeeze(1))) + resumed.flush()
    assert_same(cat(before + after), full)


# -- properties -----------------------------------------------------------------------------------

@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10_000), t=st.integers(1, 12), p=st.integers(1, 9),
       threshold=st.floats(-1.0, 1.0), packet=st.integers(1, 5))
def test_sizes_conserved_and_time_order_kept(seed: int, t: int, p: int, threshold: float, packet: int) -> None:
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(1, p, 4, generator=g)
    tok = make(base + 0.3 * torch.randn(t, p, 4, generator=g), fps=3.0)
    out = cat(run(FrameFusion(FrameFusionConfig(threshold=threshold)), tok, packet))
    assert int(out.size.sum()) == tok.num_tokens
    assert sorted(out.src.tolist()) == list(range(tok.num_tokens))
    assert torch.equal(torch.bincount(out.assignment, minlength=out.num_tokens), out.size)
    assert bool((out.t0[1:] >= out.t0[:-1]).all())
    assert bool((out.t1 >= out.t0).all())


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), t=st.integers(1, 10), p=st.integers(1, 6))
def test_a_threshold_above_every_similarity_changes_nothing(seed: int, t: int, p: int) -> None:
    g = torch.Generator().manual_seed(seed)
    tok = make(torch.randn(t, p, 3, generator=g), fps=1.0)
    _, sim = adjacent_similarity(tok)
    above = float(sim.max()) + 1e-6 if bool(torch.isfinite(sim).any()) else 0.0
    out = cat(run(FrameFusion(FrameFusionConfig(threshold=above, window_s=100.0)), tok, 2))
    assert_same(out, tok)


# -- bad input and config -------------------------------------------------------------------------

def test_non_finite_tokens_raise_naming_token_and_time() -> None:
    frames = torch.randn(3, 2, 3)
    frames[1, 1, 2] = float("nan")
    with pytest.raises(TokenError, match=r"token 3 .*NaN.*at 0\.500 s"):
        FrameFusion(FrameFusionConfig(threshold=0.5)).process(make(frames))
    frames[1, 1, 2] = float("inf")
    with pytest.raises(TokenError, match="token 3"):
        FrameFusion(FrameFusionConfig(threshold=0.5)).process(make(frames))


def test_dimension_change_and_time_reversal_raise() -> None:
    op = FrameFusion(FrameFusionConfig(threshold=0.5))
    op.process(make(torch.randn(2, 2, 3)))
    with pytest.raises(TokenError, match="dimension changed from 3 to 5"):
        op.process(make(torch.randn(2, 2, 5), start_s=1.0))
    with pytest.raises(TokenError, match="time order"):
        op.process(make(torch.randn(1, 2, 3), start_s=0.0))


def test_config_problems_are_listed() -> None:
    with pytest.raises(ConfigError) as err:
        FrameFusionConfig(threshold=0.5, keep_ratio=0.3, calibrate_frames=1, prune_ratio=1.5, window_s=0.0)
    assert len(err.value.problems) == 4
    with pytest.raises(ConfigError, match="unknown option"):
        FrameFusionConfig.from_mapping({"treshold": 0.5})
    assert FrameFusionConfig.from_mapping({"query_embedding": [1, 2]}).query_embedding == (1.0, 2.0)


def test_registered_for_video() -> None:
    info = get("framefusion")
    assert info.cls is FrameFusion and FrameFusion.modalities == ("video",)

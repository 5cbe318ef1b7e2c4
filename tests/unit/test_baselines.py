"""Baselines: uniform sampling, spatial and temporal pooling, ToMe — answers, budgets, provenance."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from streamzip.errors import ConfigError, TokenError
from streamzip.operators.baselines import (
    SpatialPool,
    SpatialPoolConfig,
    TemporalPool,
    TemporalPoolConfig,
    ToMe,
    ToMeConfig,
    UniformSampling,
    UniformSamplingConfig,
    bipartite_merge,
    spatial_pool,
    temporal_pool,
    uniform_sampling,
)
from streamzip.packets import Tokens
from streamzip.registry import get
from streamzip.tokens import cat, with_fresh_assignment


def make(frames: torch.Tensor, *, cols: int | None = None, fps: float = 2.0, start_s: float = 0.0) -> Tokens:
    t, p, d = frames.shape
    cols = cols or math.ceil(math.sqrt(p))
    grid = torch.tensor([[i // cols, i % cols] for i in range(p)], dtype=torch.int32)
    t0 = (start_s + torch.arange(t, dtype=torch.float64) / fps).repeat_interleave(p)
    tok = Tokens(stream="s", modality="video", data=frames.reshape(t * p, d).float(), t0=t0, t1=t0 + 1 / fps,
                 pos=grid.repeat(t, 1), size=torch.ones(t * p, dtype=torch.int64))
    return with_fresh_assignment(tok, 0)


def frame_values(t: int, p: int) -> torch.Tensor:
    """Token (f, i) holds [f, i] so every mean is easy to check."""
    f = torch.arange(t, dtype=torch.float32).reshape(t, 1, 1).expand(t, p, 1)
    i = torch.arange(p, dtype=torch.float32).reshape(1, p, 1).expand(t, p, 1)
    return torch.cat([f, i], dim=2)


def check_provenance(out: Tokens, num_originals: int) -> None:
    assert sorted(out.src.tolist()) == list(range(num_originals))
    kept = out.assignment[out.assignment >= 0]
    assert torch.equal(torch.bincount(kept, minlength=out.num_tokens), out.size)
    assert bool((out.t0[1:] >= out.t0[:-1]).all())


# -- uniform sampling -----------------------------------------------------------------------------

def test_uniform_sampling_keeps_evenly_spaced_frames_standing_for_their_neighbours() -> None:
    tok = make(frame_values(8, 4))
    out = uniform_sampling(tok, 8)
    assert out.data[:, 0].tolist() == [2.0] * 4 + [6.0] * 4      # segment centres of 8 frames in 2
    assert torch.equal(out.data, torch.cat([tok.data[8:12], tok.data[24:28]]))  # copied, not re-averaged
    # frames 0-4 are nearest to frame 2 (frame 4 ties and goes to the earlier), 5-7 to frame 6
    assert out.assignment.tolist() == [0, 1, 2, 3] * 5 + [4, 5, 6, 7] * 3
    assert out.size.tolist() == [5] * 4 + [3] * 4
    assert out.t0.tolist() == [0.0] * 4 + [2.5] * 4 and out.t1.tolist() == [2.5] * 4 + [4.0] * 4
    check_provenance(out, 32)
    dropped = uniform_sampling(tok, 8, drop=True)
    assert torch.equal(dropped.data, out.data)
    assert dropped.assignment.tolist() == [-1] * 8 + [0, 1, 2, 3] + [-1] * 12 + [4, 5, 6, 7] + [-1] * 4
    assert dropped.size.tolist() == [1] * 8
    check_provenance(dropped, 32)
    assert uniform_sampling(tok, 32) is tok
    strided = uniform_sampling(tok, 32, stride=3)
    assert strided.data[:, 0].unique().tolist() == [0.0, 3.0, 6.0]


def test_uniform_sampling_below_one_frame_takes_tokens_of_the_middle_frame() -> None:
    out = uniform_sampling(make(frame_values(8, 4)), 2)
    assert out.data.tolist() == [[4.0, 1.0], [4.0, 3.0]]
    assert out.size.tolist() == [8, 8]  # positions 1 and 3 of every frame; the others are dropped
    assert int((out.assignment == -1).sum()) == 16


# -- spatial pooling ------------------------------------------------------------------------------

def test_spatial_pool_averages_2x2_cells_weighted_by_size() -> None:
    tok = make(torch.arange(16, dtype=torch.float32).reshape(1, 16, 1))  # a 4×4 grid holding 0..15
    tok.size = torch.ones(16, dtype=torch.int64)
    tok.size[0] = 3
    out = spatial_pool(tok, 100)
    assert out.pos.tolist() == [[0, 0], [0, 2], [2, 0], [2, 2]]
    assert out.size.tolist() == [6, 4, 4, 4]
    assert out.data[:, 0].tolist() == pytest.approx([(0 * 3 + 1 + 4 + 5) / 6, 4.5, 10.5, 12.5])


def test_spatial_pool_grows_the_cell_then_pools_frames_to_fit() -> None:
    tok = make(torch.randn(2, 16, 3))
    assert spatial_pool(tok, 4).size.tolist() == [16, 16]       # 2×2 and 3×3 cells give too many
    assert spatial_pool(tok, 18).size.tolist() == [4] * 8       # 2×2 cells fit: 4 per frame
    six = make(torch.randn(1, 36, 3))                           # a 6×6 grid: 2×2 cells give 9 tokens
    assert spatial_pool(six, 5).size.tolist() == [9, 9, 9, 9]  # 3×3 cells
    one = spatial_pool(tok, 1)
    assert one.size.tolist() == [32] and torch.allclose(one.data[0], tok.data.mean(0), atol=1e-6)


# -- temporal pooling -----------------------------------------------------------------------------

def test_temporal_pool_averages_consecutive_frames_per_position() -> None:
    tok = make(frame_values(4, 2))
    out = temporal_pool(tok, 100)
    assert out.data.tolist() == [[0.5, 0.0], [0.5, 1.0], [2.5, 0.0], [2.5, 1.0]]
    assert out.t0.tolist() == [0.0, 0.0, 1.0, 1.0] and out.t1.tolist() == [1.0, 1.0, 2.0, 2.0]
    assert temporal_pool(tok, 2).data.tolist() == [[1.5, 0.0], [1.5, 1.0]]
    assert temporal_pool(tok, 1).data.tolist() == [[1.5, 0.5]]


# -- ToMe -----------------------------------------------------------------------------------------

def test_tome_merges_the_most_similar_a_b_pairs() -> None:
    x = torch.tensor([[1.0, 0.0], [1.0, 0.1], [0.0, 1.0], [0.3, 1.0]])  # A = {0, 2}, B = {1, 3}
    tok = make(x.reshape(4, 1, 2))
    out = bipartite_merge(tok, 3)
    assert out.size.tolist() == [2, 1, 1]
    assert torch.allclose(out.data[0], torch.tensor([1.0, 0.05]))
    assert out.assignment.tolist() == [0, 0, 1, 2]
    assert bipartite_merge(tok, 2).size.tolist() == [2, 2]
    assert bipartite_merge(tok, 1).size.tolist() == [4]
    assert bipartite_merge(tok, 4) is tok


# -- operators and properties ---------------------------------------------------------------------

OPS = [(UniformSampling, UniformSamplingConfig), (SpatialPool, SpatialPoolConfig),
       (TemporalPool, TemporalPoolConfig), (ToMe, ToMeConfig)]


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 10_000), t=st.integers(1, 14), side=st.integers(1, 5), budget=st.integers(1, 60),
       which=st.integers(0, 3))
def test_every_baseline_holds_the_budget_per_window(seed: int, t: int, side: int, budget: int, which: int) -> None:
    g = torch.Generator().manual_seed(seed)
    tok = make(torch.randn(t, side * side, 4, generator=g), fps=3.0)
    op_cls, cfg_cls = OPS[which]
    op = op_cls(cfg_cls(max_tokens=budget, window_s=2.0))
    outs = op.process(tok) + op.flush()
    assert [o.meta["window"] for o in outs] == sorted({int(x) for x in torch.floor(tok.t0 / 2.0 + 1e-9).tolist()})
    for o in outs:
        assert o.num_tokens <= budget
    out = cat(outs)
    check_provenance(out, tok.num_tokens)
    if which != 0:  # the others merge, never drop
        assert int(out.size.sum()) == tok.num_tokens


@pytest.mark.parametrize("op_cls,cfg_cls", OPS)
def test_registered_with_the_same_interface(op_cls: type, cfg_cls: type) -> None:
    assert get(op_cls.name).cls is op_cls and op_cls.modalities == ("video",)
    cfg = cfg_cls.from_mapping({"max_tokens": 7, "window_s": 2.0})
    assert cfg.max_tokens == 7 and cfg.window_s == 2.0
    with pytest.raises(ConfigError):
        cfg_cls(max_tokens=0)
    op = op_cls(cfg)
    bad = torch.randn(2, 4, 3)
    bad[0, 1, 0] = float("inf")
    with pytest.raises(TokenError, match="token 1"):
        op.process(make(bad))
    op.process(make(torch.randn(1, 4, 3)))
    with pytest.raises(TokenError, match="dimension changed"):
        op.process(make(torch.randn(1, 4, 5), start_s=1.0))
    snap = op.snapshot()
    again = op_cls(cfg)
    again.restore(snap)
    assert cat(again.flush()).num_tokens == cat(op.flush()).num_tokens

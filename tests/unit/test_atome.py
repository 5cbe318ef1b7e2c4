"""A-ToMe: the greedy disjoint pass, multi-pass merging, cuts, budgets, and exact streaming."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from streamzip.errors import ConfigError, TokenError
from streamzip.operators.atome import (
    ATome,
    ATomeConfig,
    adjacent_similarity,
    atome,
    greedy_disjoint,
    plan_merges,
)
from streamzip.packets import AUDIO, Tokens
from streamzip.registry import get
from streamzip.tokens import cat, take, with_fresh_assignment

# -- helpers -------------------------------------------------------------------------------------

def make_tokens(data: torch.Tensor, *, token_s: float = 0.04, gaps: list[int] | None = None,
                gap_s: float = 1.0, first_id: int = 0) -> Tokens:
    """Audio tokens tiling the clock (``token_s`` each), with ``gap_s`` of removed silence before
    each index in ``gaps``."""
    n = data.shape[0]
    t0 = torch.arange(n, dtype=torch.float64) * token_s
    for g in gaps or []:
        t0[g:] += gap_s
    tokens = Tokens(stream="s", modality=AUDIO, data=data.to(torch.float32), t0=t0, t1=t0 + token_s,
                    pos=torch.full((n, 2), -1, dtype=torch.int32), size=torch.ones(n, dtype=torch.int64))
    return with_fresh_assignment(tokens, first_id)


def stream(config: ATomeConfig, tokens: Tokens, packet: int) -> Tokens:
    op = ATome(config)
    out = []
    for i in range(0, tokens.num_tokens, packet):
        out += op.process(take(tokens, torch.arange(i, min(i + packet, tokens.num_tokens))))
    out += op.flush()
    if not out:
        return Tokens.empty("s", AUDIO, tokens.dim, with_assignment=True)
    return cat(out)  # type: ignore[arg-type]


def assert_same(a: Tokens, b: Tokens) -> None:
    for name in ("data", "t0", "t1", "size", "src", "assignment"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name


def check_invariants(inp: Tokens, out: Tokens) -> None:
    out.check()
    assert int(out.size.sum()) == int(inp.size.sum())  # sizes conserved
    assert bool((out.t0[1:] >= out.t0[:-1]).all())  # time order kept
    assert bool((out.t1 >= out.t0).all())
    assert torch.equal(out.src, inp.src)
    a = out.assignment
    assert bool((a >= 0).all()) and bool((a[1:] >= a[:-1]).all())  # adjacent merges only
    # each original lies within the time span of the token representing it
    assert bool((out.t0[a] <= inp.t0).all()) and bool((out.t1[a] >= inp.t1).all())
    # every output token is the size-weighted mean of the originals it represents
    counts = torch.bincount(a, minlength=out.num_tokens)
    assert torch.equal(counts, out.size)
    means = torch.zeros_like(out.data).index_add_(0, a, inp.data) / counts[:, None]
    assert torch.allclose(means, out.data, atol=1e-5)


def sequential_greedy(scores: list[float], candidate: list[bool], limit: int | None) -> list[bool]:
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    picked = [False] * len(scores)
    used: set[int] = set()
    count = 0
    for i in order:
        if not candidate[i] or i in used or i + 1 in used:
            continue
        if limit is not None and count >= limit:
            break
        picked[i] = True
        used |= {i, i + 1}
        count += 1
    return picked


def smooth_data(n: int, dim: int, seed: int, step: float = 0.3) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.cumsum(torch.randn(n, dim, generator=g) * step, 0) + 3 * torch.randn(dim, generator=g)


token_data = st.integers(0, 60).flatmap(
    lambda n: st.tuples(st.just(n), st.integers(1, 6), st.integers(0, 2**16),
                        st.lists(st.integers(1, max(n - 1, 1)), max_size=3)))


# -- the kernel ----------------------------------------------------------------------------------

def test_registered() -> None:
    assert get("atome").cls is ATome and ATome.modalities == (AUDIO,)


def test_greedy_disjoint_hand_made() -> None:
    s = torch.tensor([0.95, 0.99, 0.97], dtype=torch.float64)
    all_ = torch.ones(3, dtype=torch.bool)
    assert greedy_disjoint(s, all_).tolist() == [False, True, False]  # the best blocks both neighbours
    s = torch.tensor([0.99, 0.5, 0.98, 0.97, 0.1], dtype=torch.float64)
    assert greedy_disjoint(s, torch.ones(5, dtype=torch.bool)).tolist() == [True, False, True, False, True]
    assert greedy_disjoint(s, torch.ones(5, dtype=torch.bool), limit=2).tolist() == [True, False, True, False, False]
    cand = torch.tensor([True, False, False, True, True])
    assert greedy_disjoint(s, cand).tolist() == [True, False, False, True, False]
    # ties: the earlier pair first
    s = torch.tensor([0.9, 0.9, 0.9], dtype=torch.float64)
    assert greedy_disjoint(s, torch.ones(3, dtype=torch.bool)).tolist() == [True, False, True]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from([0.1, 0.5, 0.8, 0.9, 0.95, 0.99]) | st.floats(0, 1), max_size=40),
       st.data())
def test_greedy_disjoint_is_the_sequential_greedy(scores: list[float], data: st.DataObject) -> None:
    cand = data.draw(st.lists(st.booleans(), min_size=len(scores), max_size=len(scores)))
    limit = data.draw(st.none() | st.integers(0, 20))
    got = greedy_disjoint(torch.tensor(scores, dtype=torch.float64), torch.tensor(cand, dtype=torch.bool), limit)
    assert got.tolist() == sequential_greedy(scores, cand, limit)


def test_multi_pass_merges_identical_run_into_one() -> None:
    a = torch.tensor([1.0, 0.0])
    b = torch.tensor([0.0, 1.0])
    tokens = make_tokens(torch.stack([a, a, a, a, b, b, b]))
    out = atome(tokens, threshold=0.9)
    assert out.size.tolist() == [4, 3]
    assert out.t0.tolist() == pytest.approx([0.0, 0.16]) and out.t1.tolist() == pytest.approx([0.16, 0.28])
    assert out.assignment.tolist() == [0, 0, 0, 0, 1, 1, 1]
    one_pass = atome(tokens, threshold=0.9, max_passes=1)
    assert one_pass.size.tolist() == [2, 2, 2, 1]  # each token in at most one merge per pass


def test_never_merges_across_a_time_gap() -> None:
    a = torch.tensor([1.0, 0.0])
    tokens = make_tokens(a.repeat(6, 1), gaps=[3], gap_s=0.3)
    assert atome(tokens, threshold=0.5).size.tolist() == [3, 3]
    small = make_tokens(a.repeat(6, 1), gaps=[3], gap_s=0.01)  # within max_gap_s: contiguous
    assert atome(small, threshold=0.5).size.tolist() == [6]


def test_low_similarity_input_pair_is_a_permanent_cut() -> None:
    # x = [u, v, w, u'] where the averages (u+v) and (w+u') are similar but v·w is not.
    u = torch.tensor([1.0, 0.0, 0.0])
    v = torch.tensor([0.8, 0.6, 0.0])
    w = torch.tensor([0.8, 0.0, 0.6])
    tokens = make_tokens(torch.stack([u, v, w, u]))
    s = adjacent_similarity(tokens.data)
    assert s[1] < 0.7 < s[0] and s[2] > 0.7
    out = atome(tokens, threshold=0.7)
    assert out.size.tolist() == [2, 2]  # (u+v) and (w+u) are similar, but v|w is a cut
    plan = plan_merges(tokens.data, tokens.size, torch.zeros(3, dtype=torch.bool), threshold=0.7)
    assert plan.num_out == 1  # without the cut a second pass would join them


def test_ratio_and_budget() -> None:
    data = smooth_data(100, 8, 0)
    tokens = make_tokens(data)  # 4 s of tokens: one window
    one = atome(tokens, threshold=None, ratio=0.1, max_passes=1)
    # the 10 best pairs are the candidates; disjoint picks among them merge
    s = adjacent_similarity(tokens.data).tolist()
    top = set(sorted(range(99), key=lambda i: (-s[i], i))[:10])
    picks = sum(sequential_greedy(s, [i in top for i in range(99)], None))
    assert 5 <= picks <= 10 and one.num_tokens == 100 - picks
    budget = atome(tokens, threshold=None, max_tokens=7)
    assert budget.num_tokens == 7
    check_invariants(tokens, budget)
    # with a threshold, the budget only stops merging early
    assert atome(tokens, threshold=0.999, max_tokens=7).num_tokens > 7


def test_edge_cases_unchanged() -> None:
    empty = make_tokens(torch.zeros(0, 4))
    assert atome(empty) is empty
    single = make_tokens(torch.ones(1, 4))
    assert atome(single) is single


@settings(max_examples=80, deadline=None)
@given(token_data, st.sampled_from([0.0, 0.5, 0.8, 0.9, 0.99]))
def test_invariants_hold(spec: tuple[int, int, int, list[int]], threshold: float) -> None:
    n, dim, seed, gaps = spec
    tokens = make_tokens(smooth_data(n, dim, seed), gaps=sorted(set(gaps)) if n > 1 else [])
    check_invariants(tokens, atome(tokens, threshold=threshold))


@settings(max_examples=60, deadline=None)
@given(token_data)
def test_threshold_above_every_similarity_changes_nothing(spec: tuple[int, int, int, list[int]]) -> None:
    n, dim, seed, _ = spec
    tokens = make_tokens(smooth_data(n, dim, seed))
    top = float(adjacent_similarity(tokens.data).max()) if n > 1 else 0.0
    for threshold in (top, 1.0):
        out = stream(ATomeConfig(threshold=threshold), tokens, 5)
        assert_same(tokens, out)


@settings(max_examples=40, deadline=None)
@given(token_data, st.integers(1, 30))
def test_budget_is_met_per_window(spec: tuple[int, int, int, list[int]], budget: int) -> None:
    n, dim, seed, _ = spec
    tokens = make_tokens(smooth_data(n, dim, seed), token_s=0.1)  # 4 s windows of 40 tokens
    out = stream(ATomeConfig(threshold=None, max_tokens=budget), tokens, 7)
    check_invariants(tokens, out)
    window = torch.floor(out.t0 / 4.0 + 1e-9).to(torch.int64)
    assert int(torch.bincount(window, minlength=1).max()) <= budget
    # nothing merges across a window boundary
    assert bool((torch.floor(out.t1 / 4.0 - 1e-9) == window.to(out.t1.dtype)).all())


# -- streaming -----------------------------------------------------------------------------------

CONFIGS = [
    ATomeConfig(threshold=0.9),
    ATomeConfig(threshold=0.8, max_run_tokens=5),
    ATomeConfig(threshold=0.95, max_passes=2),
    ATomeConfig(threshold=None, max_tokens=12),
    ATomeConfig(threshold=0.7, ratio=0.25, max_passes=3),
]


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: f"t{c.threshold}-r{c.ratio}-m{c.max_tokens}")
def test_packet_sizes_1_13_all_give_identical_tokens(config: ATomeConfig) -> None:
    data = smooth_data(300, 16, 1, step=0.25)
    tokens = make_tokens(data, gaps=[40, 41, 200], gap_s=0.5)
    whole = stream(config, tokens, tokens.num_tokens)
    assert whole.num_tokens < tokens.num_tokens
    check_invariants(tokens, whole)
    for packet in (1, 13):
        assert_same(whole, stream(config, tokens, packet))


def test_streaming_equals_offline_kernel() -> None:
    tokens = make_tokens(smooth_data(200, 8, 2, step=0.2), gaps=[50])
    for threshold in (0.8, 0.9, 0.97):
        assert_same(stream(ATomeConfig(threshold=threshold), tokens, 7), atome(tokens, threshold=threshold))


@settings(max_examples=40, deadline=None)
@given(token_data, st.integers(1, 20), st.sampled_from(CONFIGS))
def test_any_packetisation_gives_identical_tokens(spec: tuple[int, int, int, list[int]], packet: int,
                                                  config: ATomeConfig) -> None:
    n, dim, seed, gaps = spec
    tokens = make_tokens(smooth_data(n, dim, seed, step=0.2), gaps=sorted(set(gaps)) if n > 1 else [],
                         gap_s=0.3)
    assert_same(stream(config, tokens, max(n, 1)), stream(config, tokens, packet))


def test_held_back_run_is_bounded() -> None:
    tokens = make_tokens(torch.ones(100, 4))  # endless identical sound
    op = ATome(ATomeConfig(threshold=0.5, max_run_tokens=10))
    emitted = 0
    for i in range(100):
        out = op.process(take(tokens, torch.tensor([i])))
        emitted += sum(int(t.size.sum()) for t in out)  # type: ignore[union-attr]
        held = op.state_dict()["held"]
        assert held.num_tokens <= 10
    assert emitted == 90  # every 10 tokens are final once the 11th arrives


def test_snapshot_restore_mid_stream() -> None:
    tokens = make_tokens(smooth_data(120, 8, 3, step=0.2), gaps=[60])
    for config in (ATomeConfig(threshold=0.9), ATomeConfig(threshold=None, max_tokens=10)):
        whole = stream(config, tokens, 11)
        op = ATome(config)
        out = []
        for i in range(0, 55, 11):
            out += op.process(take(tokens, torch.arange(i, i + 11)))
        op2 = ATome(config)
        op2.restore(op.snapshot())
        for i in range(55, 120, 11):
            out += op2.process(take(tokens, torch.arange(i, min(i + 11, 120))))
        out += op2.flush()
        assert_same(whole, cat(out))


def test_gap_flushes_the_held_run() -> None:
    from streamzip.packets import Gap

    op = ATome()
    tokens = make_tokens(torch.ones(5, 4))
    assert op.process(tokens) == []
    gap = Gap("s", 0.2, 1.0)
    out = op.on_gap(gap)
    assert out[-1] is gap and out[0].size.tolist() == [5]  # type: ignore[union-attr]


# -- bad input -----------------------------------------------------------------------------------

def test_bad_tokens_are_token_errors() -> None:
    op = ATome()
    bad = make_tokens(torch.ones(3, 4))
    bad.data[1, 0] = float("nan")
    with pytest.raises(TokenError, match="NaN"):
        op.process(bad)
    op.process(make_tokens(torch.ones(3, 4)))
    with pytest.raises(TokenError, match="dimension"):
        op.process(make_tokens(torch.ones(3, 5)))


def test_config_is_checked() -> None:
    with pytest.raises(ConfigError) as err:
        ATomeConfig.from_mapping({"threshold": 1.5, "ratio": 0.0, "max_tokens": 0, "max_run_tokens": 1})
    text = str(err.value)
    for name in ("threshold", "ratio", "max_tokens", "max_run_tokens"):
        assert name in text
    with pytest.raises(ConfigError, match="max_passes"):
        ATomeConfig(threshold=None)
    assert math.isclose(ATomeConfig().window_s, 4.0)

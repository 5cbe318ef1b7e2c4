from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from streamzip.errors import TokenError
from streamzip.packets import Tokens
from streamzip.tokens import cat, merge_groups, take, with_fresh_assignment


def make(n: int, d: int = 3, *, first_id: int = 0, t_step: float = 0.5) -> Tokens:
    t0 = torch.arange(n, dtype=torch.float64) * t_step
    tok = Tokens(stream="s", modality="video", data=torch.arange(n * d, dtype=torch.float32).reshape(n, d),
                 t0=t0, t1=t0 + t_step, pos=torch.zeros(n, 2, dtype=torch.int32),
                 size=torch.ones(n, dtype=torch.int64))
    return with_fresh_assignment(tok, first_id)


def test_merge_groups_weighted_means_known_answer() -> None:
    tok = make(4, 1)
    tok.data = torch.tensor([[0.0], [2.0], [10.0], [4.0]])
    tok.size = torch.tensor([1, 3, 1, 1])
    out = merge_groups(tok, torch.tensor([0, 0, -1, 7]))
    # group 0 = tokens 0,1 → (0*1 + 2*3) / 4 = 1.5; token 2 dropped; group 7 = token 3.
    assert out.data.squeeze(1).tolist() == [1.5, 4.0]
    assert out.size.tolist() == [4, 1]
    assert out.t0.tolist() == [0.0, 1.5] and out.t1.tolist() == [1.0, 2.0]
    assert out.assignment.tolist() == [0, 0, -1, 1]
    assert out.src.tolist() == [0, 1, 2, 3]


def test_merge_orders_groups_by_first_member() -> None:
    tok = make(4)
    out = merge_groups(tok, torch.tensor([5, 2, 5, 2]))
    assert out.t0.tolist() == [0.0, 0.5]  # the group of token 0 comes first
    assert out.assignment.tolist() == [0, 1, 0, 1]


def test_merge_of_nothing_is_identity() -> None:
    tok = make(0)
    assert merge_groups(tok, torch.zeros(0, dtype=torch.int64)) is tok


def test_repeated_merges_stay_true_averages() -> None:
    tok = make(6, 2)
    once = merge_groups(tok, torch.tensor([0, 0, 0, 1, 1, 2]))
    twice = merge_groups(once, torch.tensor([0, 0, 0]))
    assert torch.allclose(twice.data[0], tok.data.mean(0))
    assert twice.size.tolist() == [6]
    assert twice.assignment.tolist() == [0] * 6


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(min_value=-1, max_value=6), min_size=1, max_size=40))
def test_merge_conserves_sizes_and_keeps_time_order(groups: list[int]) -> None:
    tok = make(len(groups))
    out = merge_groups(tok, torch.tensor(groups))
    kept = sum(1 for g in groups if g >= 0)
    assert int(out.size.sum()) == kept
    assert bool((out.t0[1:] >= out.t0[:-1]).all())
    # Every original maps to a token whose span covers it, or is dropped.
    for j, a in enumerate(out.assignment.tolist()):
        if groups[j] < 0:
            assert a == -1
        else:
            assert out.t0[a] <= tok.t0[j] and out.t1[a] >= tok.t1[j]


def test_take_and_cat_keep_provenance() -> None:
    a, b = make(3, first_id=0), make(2, first_id=3)
    whole = cat([a, b])
    assert whole.assignment.tolist() == [0, 1, 2, 3, 4]
    part = take(whole, torch.tensor([1, 4]))
    assert part.src.tolist() == [1, 4] and part.assignment.tolist() == [0, 1]


def test_take_moves_dropped_originals_once() -> None:
    tok = merge_groups(make(4), torch.tensor([0, -1, 1, 1]))
    first = take(tok, torch.tensor([0]), keep_dropped=True)
    second = take(tok, torch.tensor([1]), keep_dropped=False)
    assert first.src.tolist() == [0, 1] and first.assignment.tolist() == [0, -1]
    assert second.src.tolist() == [2, 3] and second.assignment.tolist() == [0, 0]


def test_cat_rejects_a_changed_dimension() -> None:
    with pytest.raises(TokenError, match="dimension changed from 3 to 4"):
        cat([make(2, 3), make(2, 4)])


def test_check_finds_nan_and_names_time() -> None:
    tok = make(3)
    tok.data[2, 0] = float("nan")
    with pytest.raises(TokenError, match="token 2 .* NaN") as info:
        tok.check(stage="fuse")
    assert info.value.time_s == 1.0 and info.value.stage == "fuse"


@pytest.mark.parametrize("bad", [float("inf"), float("-inf"), float("nan")])
def test_check_finds_any_non_finite_value_but_takes_huge_finite_ones(bad: float) -> None:
    tok = make(4)
    tok.data[:] = 3e38  # finite, but their sum overflows float32: still valid tokens
    tok.check()
    tok.data[1, 2] = bad
    with pytest.raises(TokenError, match="token 1 "):
        tok.check()
    tok.data[1, 2], tok.data[3, 0] = 0.0, -bad  # +inf and -inf elsewhere would cancel to NaN in a sum
    with pytest.raises(TokenError, match="token 3 "):
        tok.check()

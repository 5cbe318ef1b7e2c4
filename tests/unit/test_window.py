from __future__ import annotations

import copy

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from streamzip.errors import ConfigError, SnapshotError, TokenError
from streamzip.operators.window import (
    Window,
    WindowConfig,
    plan_adjacent_merges,
    reduce_window,
    tokens_from_state,
    tokens_to_state,
)
from streamzip.packets import AUDIO, VIDEO, Gap, Tokens
from streamzip.tokens import take, with_fresh_assignment


def video(times: list[float], *, positions: int = 2, d: int = 3, first_id: int = 0, dt: float = 0.5,
          data: torch.Tensor | None = None) -> Tokens:
    """Frames at ``times``, ``positions`` patches each (row 0, col p), originals numbered from first_id."""
    n = len(times) * positions
    t0 = torch.tensor(times, dtype=torch.float64).repeat_interleave(positions)
    pos = torch.stack([torch.zeros(positions, dtype=torch.int32), torch.arange(positions, dtype=torch.int32)], 1)
    if data is None:
        data = torch.randn(n, d, generator=torch.Generator().manual_seed(first_id + 1))
    tok = Tokens(stream="s", modality=VIDEO, data=data, t0=t0, t1=t0 + dt, pos=pos.repeat(len(times), 1),
                 size=torch.ones(n, dtype=torch.int64))
    return with_fresh_assignment(tok, first_id)


def audio(times: list[float], *, d: int = 2, first_id: int = 0, dt: float = 0.04) -> Tokens:
    n = len(times)
    t0 = torch.tensor(times, dtype=torch.float64)
    tok = Tokens(stream="s", modality=AUDIO, data=torch.randn(n, d, generator=torch.Generator().manual_seed(7)),
                 t0=t0, t1=t0 + dt, pos=torch.full((n, 2), -1, dtype=torch.int32), size=torch.ones(n, dtype=torch.int64))
    return with_fresh_assignment(tok, first_id)


def windows_of(packets: list, modality: str | None = None) -> list[Tokens]:
    return [p for p in packets if isinstance(p, Tokens) and (modality is None or p.modality == modality)]


# -- kernel ---------------------------------------------------------------------------------------
def test_plan_merges_the_most_similar_neighbours_first() -> None:
    data = torch.tensor([[1.0, 0.0], [1.0, 0.05], [0.0, 1.0], [0.1, 1.0], [-1.0, 0.0]])
    plan = plan_adjacent_merges(data, torch.ones(5, dtype=torch.int64), 3)
    assert plan.group.tolist() == [0, 0, 1, 1, 2]
    assert plan_adjacent_merges(data, torch.ones(5, dtype=torch.int64), 5).is_identity


def test_plan_keeps_barriers_until_nothing_else_is_left() -> None:
    data = torch.ones(4, 2)
    barrier = torch.tensor([0, 0, 1, 1])
    plan = plan_adjacent_merges(data, torch.ones(4, dtype=torch.int64), 2, barrier=barrier)
    assert plan.group.tolist() == [0, 0, 1, 1]
    forced = plan_adjacent_merges(data, torch.ones(4, dtype=torch.int64), 1, barrier=barrier)
    assert forced.group.tolist() == [0, 0, 0, 0] and forced.num_groups == 1


def test_plan_recency_merges_older_tokens_first() -> None:
    data = torch.ones(4, 2)  # every pair equally similar
    t0 = torch.tensor([0.0, 1.0, 2.0, 3.0], dtype=torch.float64)
    plan = plan_adjacent_merges(data, torch.ones(4, dtype=torch.int64), 3, t0=t0, t1=t0 + 1, now_s=4.0,
                                recency_weight=1.0)
    assert plan.group.tolist() == [0, 0, 1, 2]


def test_reduce_window_collapses_static_video_along_time_per_position() -> None:
    # 4 frames of 2 positions; each position's patch never changes.
    patches = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    tok = video([0.0, 0.5, 1.0, 1.5], data=patches.repeat(4, 1))
    out = reduce_window(tok, 2)
    assert out.num_tokens == 2
    assert out.pos[:, 1].tolist() == [0, 1]
    assert out.size.tolist() == [4, 4]
    assert torch.allclose(out.data, patches)
    assert out.t0.tolist() == [0.0, 0.0] and out.t1.tolist() == [2.0, 2.0]
    assert out.assignment.tolist() == [0, 1] * 4  # every original maps to its position's token


def test_reduce_window_under_budget_is_identity() -> None:
    tok = video([0.0, 0.5])
    assert reduce_window(tok, 4) is tok


# -- the stage ------------------------------------------------------------------------------------
def test_window_is_emitted_when_a_later_token_arrives_with_meta() -> None:
    op = Window(WindowConfig(window_s=4.0, max_video_tokens=3))
    assert op.process(video([0.0, 0.5, 1.0])) == []  # window 0 still open
    out = op.process(video([4.0], first_id=6))
    assert len(out) == 1
    w = out[0]
    assert w.meta["kind"] == "window" and w.meta["window"] == 0
    assert (w.meta["window_start_s"], w.meta["window_end_s"]) == (0.0, 4.0)
    assert w.meta["tokens_in"] == 6 and w.num_tokens == 3 and int(w.size.sum()) == 6
    assert w.src.tolist() == list(range(6)) and bool((w.assignment >= 0).all())
    last = op.flush()
    assert [p.meta["window"] for p in last] == [1]


def test_a_packet_marked_complete_closes_its_window_at_once() -> None:
    op = Window(WindowConfig(window_s=4.0))
    tok = video([0.0, 0.5])
    tok.meta = {"window": 0, "window_complete": True}
    out = op.process(tok)
    assert [(p.meta["window"], p.num_tokens) for p in out] == [(0, 4)]
    partial = video([4.0], first_id=4)
    partial.meta = {"window": 1}
    assert op.process(partial) == []  # not vouched for: wait for a later token
    assert [p.meta["window"] for p in op.flush()] == [1]


def test_empty_windows_get_empty_packets() -> None:
    op = Window(WindowConfig(window_s=1.0))
    op.process(video([0.0]))
    out = op.process(video([3.2], first_id=2))
    assert [(p.meta["window"], p.num_tokens) for p in out] == [(0, 2), (1, 0), (2, 0)]
    assert all(p.meta["kind"] == "window" and p.dim == 3 for p in out)
    assert out[1].has_assignment  # empty packets keep the modality's provenance fields


def test_empty_windows_can_be_skipped() -> None:
    op = Window(WindowConfig(window_s=1.0, emit_empty=False))
    op.process(video([0.0]))
    out = op.process(video([3.2], first_id=2))
    assert [p.meta["window"] for p in out] == [0]


def test_two_modalities_share_the_clock_and_both_see_every_window() -> None:
    op = Window(WindowConfig(window_s=1.0))
    out = op.process(video([0.0, 1.0, 2.0, 3.0]))
    # audio is silent at first and stops early: its windows are padded back and forward.
    out += op.process(audio([1.5, 1.6]))
    out += op.flush()
    vid = [p.meta["window"] for p in windows_of(out, VIDEO)]
    aud = [(p.meta["window"], p.num_tokens) for p in windows_of(out, AUDIO)]
    assert vid == [0, 1, 2, 3]
    assert aud == [(0, 0), (1, 2), (2, 0), (3, 0)]
    # at the end, windows come in time order, video before audio
    tail = [(p.meta["window"], p.modality) for p in out[-4:]]
    assert tail == sorted(tail, key=lambda e: (e[0], e[1] != VIDEO))


def test_a_gap_closes_windows_and_nothing_inside_it_gets_a_packet() -> None:
    op = Window(WindowConfig(window_s=1.0))
    op.process(video([0.0, 0.5]))
    out = op.on_gap(Gap("s", 1.2, 5.5))
    assert [p.meta["window"] for p in windows_of(out)] == [0] and isinstance(out[-1], Gap)
    out = op.process(video([5.6, 7.1], first_id=4)) + op.flush()
    assert [(p.meta["window"], p.num_tokens) for p in windows_of(out)] == [(5, 2), (6, 0), (7, 2)]


def test_a_window_cut_by_a_short_gap_comes_in_two_parts() -> None:
    op = Window(WindowConfig(window_s=4.0))
    out = op.process(video([0.0, 1.0]))
    out += op.on_gap(Gap("s", 1.5, 2.0))
    out += op.process(video([2.5], first_id=4)) + op.flush()
    assert [(p.meta["window"], p.num_tokens) for p in windows_of(out)] == [(0, 4), (0, 2)]


def test_late_tokens_join_the_next_packet_in_time_order() -> None:
    op = Window(WindowConfig(window_s=1.0))
    out = op.process(video([0.0, 1.0]))
    out += op.process(video([0.5, 1.5], first_id=4))  # 0.5 is late: window 0 already closed
    out += op.flush()
    wins = windows_of(out)
    assert [p.meta["window"] for p in wins] == [0, 1]
    assert wins[1].t0.tolist() == [0.5, 0.5, 1.0, 1.0, 1.5, 1.5]
    assert sorted(torch.cat([p.src for p in wins]).tolist()) == list(range(8))


def test_unsorted_packet_is_sorted_first() -> None:
    op = Window(WindowConfig(window_s=1.0))
    tok = video([1.0, 0.0])
    out = op.process(tok) + op.flush()
    assert [p.meta["window"] for p in windows_of(out)] == [0, 1]


def test_memory_views_pass_through_and_bad_tokens_raise() -> None:
    op = Window()
    view = video([0.0])
    view.meta["kind"] = "memory"
    assert not op.takes(view)
    assert op.takes(video([0.0]))
    bad = video([0.0])
    bad.data[0, 0] = float("nan")
    with pytest.raises(TokenError, match="NaN"):
        op.process(bad)
    op.process(video([0.0]))
    with pytest.raises(TokenError, match="dimension"):
        op.process(video([0.5], d=5))
        op.flush()


@pytest.mark.parametrize("field, value", [("window_s", 0.0), ("window_s", -1.0), ("max_video_tokens", 0),
                                          ("max_audio_tokens", -3)])
def test_config_rejects_out_of_range(field: str, value: float) -> None:
    with pytest.raises(ConfigError, match=field):
        WindowConfig(**{field: value})


# -- properties -----------------------------------------------------------------------------------
def run(op: Window, packets: list) -> list:
    out: list = []
    for p in packets:
        out += op.on_gap(p) if isinstance(p, Gap) else op.process(p)
    return out + op.flush()


@st.composite
def streams(draw: st.DrawFn) -> tuple[list[float], list[int], list[tuple[int, float, float]], int, int]:
    """Frame times (strictly increasing, with silences), packet cuts, gaps (after frame i), budgets."""
    steps = draw(st.lists(st.sampled_from([0.5, 0.5, 0.5, 2.0, 7.0]), min_size=1, max_size=40))
    times, t = [], 0.0
    for s in steps:
        times.append(t)
        t += s
    cuts = sorted(set(draw(st.lists(st.integers(1, max(1, len(times) - 1)), max_size=8))))
    gaps = []
    for i in sorted(set(draw(st.lists(st.integers(0, len(times) - 2), max_size=2))) if len(times) > 1 else []):
        gaps.append((i, times[i] + 0.5, times[i + 1]))
    return times, cuts, gaps, draw(st.integers(1, 6)), draw(st.sampled_from([1.0, 2.0, 4.0]))


def packetise(times: list[float], cuts: list[int], gaps: list[tuple[int, float, float]]) -> list:
    tok = video(times)
    bounds = sorted(set([0, *cuts, *[i + 1 for i, _, _ in gaps], len(times)]))
    packets: list = []
    for a, b in zip(bounds, bounds[1:]):
        packets.append(take(tok, torch.arange(2 * a, 2 * b), keep_dropped=False))
        for i, g0, g1 in gaps:
            if i + 1 == b:
                packets.append(Gap("s", g0, g1))
    return packets


@settings(max_examples=60, deadline=None)
@given(streams())
def test_windows_hold_budget_conserve_sizes_and_cover_the_clock(case) -> None:  # type: ignore[no-untyped-def]
    times, cuts, gaps, budget, window_s = case
    out = run(Window(WindowConfig(window_s=window_s, max_video_tokens=budget)), packetise(times, cuts, gaps))
    wins = windows_of(out)
    assert all(p.num_tokens <= budget for p in wins)
    assert sum(int(p.size.sum()) for p in wins) == 2 * len(times)
    assert sorted(torch.cat([p.src for p in wins]).tolist()) == list(range(2 * len(times)))
    for p in wins:
        k = p.meta["window"]
        assert p.meta["kind"] == "window"
        assert bool((p.t0 >= k * window_s - 1e-9).all()) and bool((p.t0 < (k + 1) * window_s).all())
        assert bool((p.t0[1:] >= p.t0[:-1]).all())
    # every window from the first to the last has a packet, except windows wholly inside a gap
    seen = {p.meta["window"] for p in wins}
    first, last = min(seen), max(seen)
    inside_gap = {k for _, g0, g1 in gaps for k in range(first, last + 1)
                  if g0 <= k * window_s and (k + 1) * window_s <= g1}
    assert seen | inside_gap >= set(range(first, last + 1))
    assert [p.meta["window"] for p in wins] == sorted(p.meta["window"] for p in wins)


@settings(max_examples=40, deadline=None)
@given(streams())
def test_output_does_not_depend_on_packet_boundaries(case) -> None:  # type: ignore[no-untyped-def]
    times, cuts, gaps, budget, window_s = case
    cfg = WindowConfig(window_s=window_s, max_video_tokens=budget)
    a = windows_of(run(Window(cfg), packetise(times, cuts, gaps)))
    b = windows_of(run(Window(cfg), packetise(times, [], gaps)))
    assert [p.meta for p in a] == [p.meta for p in b]
    for p, q in zip(a, b):
        assert torch.equal(p.data, q.data) and torch.equal(p.size, q.size) and torch.equal(p.t0, q.t0)


# -- snapshots ------------------------------------------------------------------------------------
def plain_only(value: object) -> bool:
    if isinstance(value, dict):
        return all(isinstance(k, str) and plain_only(v) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return all(plain_only(v) for v in value)
    return value is None or isinstance(value, (torch.Tensor, str, int, float, bool))


def test_snapshot_resume_gives_the_same_windows() -> None:
    cfg = WindowConfig(window_s=1.0, max_video_tokens=3)
    packets = [video([0.0, 0.5], first_id=0), video([1.0, 1.5, 3.5], first_id=4), audio([0.2, 3.9]),
               video([4.0, 5.0], first_id=10)]
    whole = windows_of(run(Window(cfg), packets))
    first = Window(cfg)
    part = [o for p in packets[:2] for o in first.process(p)]
    snap = copy.deepcopy(first.snapshot())
    assert plain_only(snap)
    second = Window(cfg)
    second.restore(snap)
    part += run(second, packets[2:])
    resumed = windows_of(part)
    assert [(p.modality, p.meta) for p in resumed] == [(p.modality, p.meta) for p in whole]
    for p, q in zip(resumed, whole):
        assert torch.equal(p.data, q.data) and torch.equal(p.src, q.src) and torch.equal(p.assignment, q.assignment)


def test_snapshot_from_another_config_or_version_is_refused() -> None:
    op = Window(WindowConfig(window_s=2.0))
    op.process(video([0.0]))
    snap = op.snapshot()
    with pytest.raises(SnapshotError, match=r"window_s: snapshot 2\.0 vs now 4\.0"):
        Window(WindowConfig(window_s=4.0)).restore(snap)
    with pytest.raises(SnapshotError, match="format"):
        Window(WindowConfig(window_s=2.0)).restore({**snap, "format": 999})
    with pytest.raises(SnapshotError, match="version"):
        Window(WindowConfig(window_s=2.0)).restore({**snap, "state": {**snap["state"], "version": 0}})
    with pytest.raises(SnapshotError, match="malformed"):
        Window(WindowConfig(window_s=2.0)).restore({**snap, "state": {"version": 1, "lanes": {"video": {}}}})


def test_tokens_state_round_trip() -> None:
    tok = video([0.0, 1.0])
    tok.meta = {"kind": "window", "window": 3}
    back = tokens_from_state(tokens_to_state(tok))
    for name in ("data", "t0", "t1", "pos", "size", "src", "assignment"):
        assert torch.equal(getattr(back, name), getattr(tok, name))
    assert back.score is None and back.meta == tok.meta
    with pytest.raises(SnapshotError):
        tokens_from_state({"stream": "s"})

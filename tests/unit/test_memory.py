from __future__ import annotations

import copy

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from streamzip.errors import ConfigError, SnapshotError, TokenError
from streamzip.operators.memory import MemoryConfig, TokenMemory, split_budget
from streamzip.packets import AUDIO, VIDEO, End, Gap, Tokens
from streamzip.pipeline import Pipeline


def window(k: int, n: int, *, d: int = 4, modality: str = VIDEO, window_s: float = 4.0, seed: int | None = None,
           data: torch.Tensor | None = None) -> Tokens:
    """Window k with n tokens tiling it in time (each covers window_s / n seconds)."""
    start = k * window_s
    t0 = start + torch.arange(n, dtype=torch.float64) * (window_s / max(n, 1))
    if data is None:
        data = torch.randn(n, d, generator=torch.Generator().manual_seed(k if seed is None else seed))
    return Tokens(stream="s", modality=modality, data=data, t0=t0, t1=t0 + window_s / max(n, 1),
                  pos=torch.zeros(n, 2, dtype=torch.int32), size=torch.ones(n, dtype=torch.int64),
                  src=torch.arange(n, dtype=torch.int64), assignment=torch.arange(n, dtype=torch.int64),
                  meta={"kind": "window", "window": k, "window_start_s": start, "window_end_s": start + window_s})


def kinds(packets: list) -> list[str]:
    return [p.meta["kind"] if isinstance(p, Tokens) else type(p).__name__ for p in packets]


def union(tokens: Tokens) -> list[tuple[float, float]]:
    """The union of [t0, t1] of the tokens, as sorted disjoint intervals."""
    spans: list[list[float]] = []
    for a, b in sorted(zip(tokens.t0.tolist(), tokens.t1.tolist())):
        if spans and a <= spans[-1][1] + 1e-9:
            spans[-1][1] = max(spans[-1][1], b)
        else:
            spans.append([a, b])
    return [(a, b) for a, b in spans]


# -- known answers --------------------------------------------------------------------------------
def test_per_window_output_is_window_memory_read() -> None:
    mem = TokenMemory(MemoryConfig(max_tokens=8, read_tokens=2))
    w = window(0, 5)
    out = mem.process(w)
    assert kinds(out) == ["window", "memory", "read"]
    assert out[0] is w  # the window passes through with its provenance
    memory, read = out[1], out[2]
    assert memory.num_tokens == 5 and read.num_tokens == 2
    assert memory.src is None and memory.assignment is None and read.src is None
    assert int(memory.size.sum()) == 5 and int(read.size.sum()) == 5
    assert memory.meta["window"] == 0 and memory.meta["covered_s"] == [[0.0, 4.0]]
    assert memory.meta["max_tokens"] == 8 and read.meta["max_tokens"] == 2


def test_write_merges_identical_neighbours_size_weighted() -> None:
    mem = TokenMemory(MemoryConfig(max_tokens=2, read_tokens=2, recency_weight=0.0))
    a, b = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]])
    mem.process(window(0, 2, d=2, data=a.repeat(2, 1)))
    out = mem.process(window(1, 2, d=2, data=torch.cat([a, b])))
    memory = out[1]
    # [a a] [a b] → the three a's merge (size 3), b stays
    assert memory.size.tolist() == [3, 1]
    assert torch.allclose(memory.data, torch.cat([a, b]))
    assert memory.t0.tolist() == [0.0, 6.0] and memory.t1.tolist() == [6.0, 8.0]


def test_recency_weight_keeps_recent_detail() -> None:
    def spans(weight: float) -> list[float]:
        mem = TokenMemory(MemoryConfig(max_tokens=8, read_tokens=2, recency_weight=weight))
        for k in range(40):
            mem.process(window(k, 4, data=torch.ones(4, 4)))  # everything equally similar
        m = mem.context()[0]
        return (m.t1 - m.t0).tolist()

    recent = spans(1.0)
    assert recent == sorted(recent, reverse=True)  # the older a token, the longer its span
    assert recent[-1] == 1.0  # the newest tokens are still one original each


def test_memory_smaller_than_a_window_still_holds() -> None:
    mem = TokenMemory(MemoryConfig(max_tokens=3, read_tokens=2))
    for k in range(5):
        out = mem.process(window(k, 50))
        assert out[1].num_tokens <= 3 and out[2].num_tokens <= 2
    assert int(out[1].size.sum()) == 250


def test_empty_window_keeps_memory_and_extends_coverage() -> None:
    mem = TokenMemory(MemoryConfig(max_tokens=4, read_tokens=2))
    mem.process(window(0, 3))
    out = mem.process(window(1, 0))
    assert kinds(out) == ["window", "memory", "read"]
    assert out[1].num_tokens == 3 and out[1].meta["covered_s"] == [[0.0, 8.0]]
    assert out[1].meta["window"] == 1


def test_empty_first_window_gives_empty_memory() -> None:
    mem = TokenMemory(MemoryConfig(max_tokens=4, read_tokens=2))
    out = mem.process(window(0, 0))
    assert [p.num_tokens for p in out] == [0, 0, 0] and out[1].dim == 4


def test_gap_keeps_a_hole_and_splits_coverage() -> None:
    mem = TokenMemory(MemoryConfig(max_tokens=4, read_tokens=2))
    for k in range(3):
        mem.process(window(k, 4))
    assert mem.on_gap(Gap("s", 12.0, 20.0)) == [Gap("s", 12.0, 20.0)]
    for k in range(5, 8):
        out = mem.process(window(k, 4))
    memory = out[1]
    assert union(memory) == [(0.0, 12.0), (20.0, 32.0)]
    assert memory.meta["covered_s"] == [[0.0, 12.0], [20.0, 32.0]]


def test_more_gaps_than_memory_tokens_still_holds_m() -> None:
    mem = TokenMemory(MemoryConfig(max_tokens=2, read_tokens=2))
    for k in range(6):
        mem.process(window(2 * k, 3))
        mem.on_gap(Gap("s", 8.0 * k + 4, 8.0 * k + 8))
    memory = mem.context()[0]
    assert memory.num_tokens == 2 and int(memory.size.sum()) == 18


def test_two_modalities_share_m_and_r() -> None:
    mem = TokenMemory(MemoryConfig(max_tokens=16, read_tokens=8, audio_share=0.25))
    for k in range(3):
        mem.process(window(k, 10))
    assert mem.context()[0].num_tokens == 16  # alone, video has all of M
    out = mem.process(window(3, 10, modality=AUDIO, d=2))
    assert mem.budgets() == {VIDEO: 12, AUDIO: 4} and mem.read_budgets() == {VIDEO: 6, AUDIO: 2}
    ctx = mem.context()
    assert [(p.modality, p.meta["kind"]) for p in ctx] == [(VIDEO, "memory"), (VIDEO, "window"),
                                                           (AUDIO, "memory"), (AUDIO, "window")]
    assert ctx[0].num_tokens == 12 and ctx[2].num_tokens == 4  # video shrank as soon as audio came
    assert out[2].num_tokens == 2 and ctx[1].meta["window"] == 2 and ctx[3].meta["window"] == 3


@pytest.mark.parametrize("total, mods, share, want", [
    (256, [VIDEO], 0.25, {VIDEO: 256}),
    (256, [VIDEO, AUDIO], 0.25, {VIDEO: 192, AUDIO: 64}),
    (2, [VIDEO, AUDIO], 0.01, {VIDEO: 1, AUDIO: 1}),
    (2, [VIDEO, AUDIO], 0.99, {VIDEO: 1, AUDIO: 1}),
    (10, [VIDEO, AUDIO], 0.99, {VIDEO: 1, AUDIO: 9}),
    (10, ["depth", VIDEO], 0.5, {"depth": 5, VIDEO: 5}),
])
def test_split_budget(total: int, mods: list[str], share: float, want: dict[str, int]) -> None:
    assert split_budget(total, mods, share) == want


def test_emit_memory_every() -> None:
    mem = TokenMemory(MemoryConfig(max_tokens=4, read_tokens=2, emit_memory_every=2))
    assert kinds(mem.process(window(0, 3))) == ["window"]
    assert kinds(mem.process(window(1, 3))) == ["window", "memory", "read"]
    assert kinds(mem.process(window(2, 3))) == ["window"]
    assert kinds(mem.flush()) == ["memory", "read"]
    never = TokenMemory(MemoryConfig(max_tokens=4, read_tokens=2, emit_memory_every=0))
    assert kinds(never.process(window(0, 3))) == ["window"]
    assert kinds(never.flush()) == ["memory", "read"] and never.flush() == []


def test_non_window_tokens_and_bad_dims_raise() -> None:
    mem = TokenMemory()
    raw = window(0, 3)
    raw.meta = {}
    with pytest.raises(TokenError, match="add a 'window' step before 'memory'"):
        mem.process(raw)
    view = window(0, 3)
    view.meta["kind"] = "read"
    assert not mem.takes(view)
    mem.process(window(0, 3))
    with pytest.raises(TokenError, match="dimension"):
        mem.process(window(1, 3, d=7))


@pytest.mark.parametrize("field, value", [("max_tokens", 1), ("read_tokens", 0), ("audio_share", 1.0),
                                          ("recency_weight", -1.0), ("emit_memory_every", -1)])
def test_config_rejects_out_of_range(field: str, value: float) -> None:
    with pytest.raises(ConfigError, match=field):
        MemoryConfig(**{field: value})


# -- hours of stream ------------------------------------------------------------------------------
@st.composite
def long_streams(draw: st.DrawFn, min_windows: int, max_windows: int) -> dict:
    return {
        "windows": draw(st.integers(min_windows, max_windows)),
        "m": draw(st.integers(2, 48)),
        "r": draw(st.integers(2, 12)),
        "recency": draw(st.sampled_from([0.0, 1.0, 4.0])),
        "seed": draw(st.integers(0, 2**16)),
        "gap_rate": draw(st.sampled_from([0.0, 0.002, 0.05])),
        "empty_rate": draw(st.sampled_from([0.0, 0.05])),
        "audio": draw(st.booleans()),
    }


def check_long_stream(case: dict) -> None:
    """Feed ``windows`` 4 s windows (video, optionally audio) with random gaps and empty windows, and
    check after every window: the memory holds at most M, the read at most r, sizes add up, and the
    memory's [t0, t1] cover every non-empty window seen, with holes only at gaps and empty windows."""
    g = torch.Generator().manual_seed(case["seed"])
    cfg = MemoryConfig(max_tokens=case["m"], read_tokens=case["r"], recency_weight=case["recency"])
    mem = TokenMemory(cfg)
    mods = [VIDEO, AUDIO] if case["audio"] else [VIDEO]
    seen = dict.fromkeys(mods, 0)
    holes: dict[str, list[tuple[float, float]]] = {m: [] for m in mods}  # gaps and empty windows
    filled: dict[str, list[float]] = {m: [] for m in mods}  # [first start, last end] of non-empty windows
    k = 0
    for i in range(case["windows"]):
        if float(torch.rand(1, generator=g)) < case["gap_rate"]:
            skip = int(torch.randint(1, 4, (1,), generator=g))
            mem.on_gap(Gap("s", 4.0 * k, 4.0 * (k + skip)))
            for m in mods:
                holes[m].append((4.0 * k, 4.0 * (k + skip)))
            k += skip
        for modality in mods:
            empty = float(torch.rand(1, generator=g)) < case["empty_rate"]
            n = 0 if empty else int(torch.randint(1, 12, (1,), generator=g))
            if empty:
                holes[modality].append((4.0 * k, 4.0 * (k + 1)))
            else:
                filled[modality] = [filled[modality][0] if filled[modality] else 4.0 * k, 4.0 * (k + 1)]
            out = mem.process(window(k, n, d=3 if modality == VIDEO else 2, modality=modality,
                                     seed=int(torch.randint(0, 2**30, (1,), generator=g))))
            seen[modality] += n
            memory, read = out[1], out[2]
            assert memory.meta["kind"] == "memory" and read.meta["kind"] == "read"
            assert memory.num_tokens <= memory.meta["max_tokens"] and read.num_tokens <= read.meta["max_tokens"]
            assert int(memory.size.sum()) == seen[modality] == int(read.size.sum())
            assert bool((memory.t0[1:] >= memory.t0[:-1]).all())
        k += 1
        if k % 97 and i != case["windows"] - 1:
            continue
        memories = [p for p in mem.context() if p.meta["kind"] == "memory"]
        assert sum(p.num_tokens for p in memories) <= cfg.max_tokens
        for p in memories:
            if not filled[p.modality]:
                assert p.num_tokens == 0
                continue
            spans = union(p)
            assert spans[0][0] == pytest.approx(filled[p.modality][0]) and spans[-1][1] == pytest.approx(filled[p.modality][1])
            allowed = _merge(holes[p.modality])
            for (_, b), (a, _) in zip(spans, spans[1:]):
                assert any(h0 <= b + 1e-9 and a <= h1 + 1e-9 for h0, h1 in allowed), (b, a, allowed)


def _merge(holes: list[tuple[float, float]]) -> list[tuple[float, float]]:
    out: list[list[float]] = []
    for a, b in sorted(holes):
        if out and a <= out[-1][1] + 1e-9:
            out[-1][1] = max(out[-1][1], b)
        else:
            out.append([a, b])
    return [(a, b) for a, b in out]


@settings(max_examples=2, deadline=None)
@given(long_streams(900, 1800))
def test_memory_bounded_and_covering_over_hours(case: dict) -> None:
    """1 to 2 hours of 4 s windows."""
    check_long_stream(case)


@settings(max_examples=30, deadline=None)
@given(long_streams(1, 60))
def test_memory_bounded_and_covering_short_streams(case: dict) -> None:
    check_long_stream(case)


def test_state_stays_bounded_over_hours() -> None:
    mem = TokenMemory(MemoryConfig(max_tokens=16, read_tokens=4))

    def numel() -> int:
        total = 0

        def walk(v: object) -> None:
            nonlocal total
            if isinstance(v, torch.Tensor):
                total += v.numel()
            elif isinstance(v, dict):
                for x in v.values():
                    walk(x)
            elif isinstance(v, list):
                for x in v:
                    walk(x)

        walk(mem.state_dict())
        return total

    sizes = []
    for k in range(600):
        mem.process(window(k, 8))
        if k in (100, 599):
            sizes.append(numel())
    assert sizes[0] == sizes[1]


# -- snapshots ------------------------------------------------------------------------------------
def stream_packets() -> list:
    packets: list = []
    for k in range(12):
        packets.append(window(k, 6))
        if k % 3 == 1:
            packets.append(window(k, 3, d=2, modality=AUDIO))
        if k == 7:
            packets.append(Gap("s", 32.0, 36.0))
    return packets


def feed(mem: TokenMemory, packets: list) -> list:
    out: list = []
    for p in packets:
        out += mem.on_gap(p) if isinstance(p, Gap) else mem.process(p)
    return out


@pytest.mark.parametrize("cut", [1, 5, 9, 13])
def test_snapshot_resume_then_continue_gives_the_same_tokens(cut: int) -> None:
    cfg = MemoryConfig(max_tokens=10, read_tokens=4, emit_memory_every=2)
    packets = stream_packets()
    first = TokenMemory(cfg)
    out = feed(first, packets[:cut])
    snap = copy.deepcopy(first.snapshot())
    second = TokenMemory(cfg)
    second.restore(snap)
    out += feed(second, packets[cut:])
    whole = feed(ref := TokenMemory(cfg), packets) + ref.flush()
    out += second.flush()
    assert kinds(out) == kinds(whole)
    for p, q in zip(out, whole):
        if isinstance(p, Tokens):
            assert p.meta == q.meta
            for name in ("data", "t0", "t1", "pos", "size"):
                assert torch.equal(getattr(p, name), getattr(q, name)), (name, p.meta)


def test_snapshot_holds_only_tensors_and_plain_values() -> None:
    mem = TokenMemory()
    feed(mem, stream_packets())

    def plain(v: object) -> bool:
        if isinstance(v, dict):
            return all(isinstance(k, str) and plain(x) for k, x in v.items())
        if isinstance(v, (list, tuple)):
            return all(plain(x) for x in v)
        return v is None or isinstance(v, (torch.Tensor, str, int, float, bool))

    assert plain(mem.snapshot())


def test_snapshot_from_another_config_or_version_is_refused() -> None:
    mem = TokenMemory(MemoryConfig(max_tokens=10))
    feed(mem, stream_packets())
    snap = mem.snapshot()
    with pytest.raises(SnapshotError, match=r"max_tokens: snapshot 10 vs now 20"):
        TokenMemory(MemoryConfig(max_tokens=20)).restore(snap)
    with pytest.raises(SnapshotError, match="format"):
        TokenMemory(MemoryConfig(max_tokens=10)).restore({**snap, "format": 0})
    with pytest.raises(SnapshotError, match="operator"):
        TokenMemory(MemoryConfig(max_tokens=10)).restore({**snap, "operator": "window"})
    with pytest.raises(SnapshotError, match="memory state version 7"):
        TokenMemory(MemoryConfig(max_tokens=10)).restore({**snap, "state": {**snap["state"], "version": 7}})
    with pytest.raises(SnapshotError, match="malformed"):
        TokenMemory(MemoryConfig(max_tokens=10)).restore({**snap, "state": {"version": 1, "modalities": {}}})
    small = TokenMemory(MemoryConfig(max_tokens=4))
    with pytest.raises(SnapshotError, match="over this config's"):
        small.load_state_dict(snap["state"])


# -- end to end -----------------------------------------------------------------------------------
def test_window_then_memory_in_a_pipeline(short_clip) -> None:  # type: ignore[no-untyped-def]
    pipe = (Pipeline("t", decode={"fps": 2, "width": 64, "height": 64})
            .add("patch_encoder", patch_size=16)
            .add("window", window_s=2.0, max_video_tokens=10)
            .add("memory", max_tokens=12, read_tokens=4))
    out = list(pipe.run(short_clip.path))
    assert isinstance(out[-1], End)
    toks = [p for p in out if isinstance(p, Tokens)]
    assert kinds(toks)[:3] == ["window", "memory", "read"]
    wins = [p for p in toks if p.meta["kind"] == "window"]
    assert [p.meta["window"] for p in wins] == [0, 1, 2]
    assert all(p.num_tokens <= 10 for p in wins)
    memory = [p for p in toks if p.meta["kind"] == "memory"][-1]
    assert memory.num_tokens <= 12 and int(memory.size.sum()) == 12 * 16
    assert memory.meta["covered_s"] == [[0.0, 6.0]]
    # sampled frames need not tile the clock exactly: holes stay under a frame's duration
    spans = union(memory)
    assert spans[0][0] == 0.0 and spans[-1][1] > 5.5
    assert all(a - b < 0.5 for (_, b), (a, _) in zip(spans, spans[1:]))


@settings(max_examples=60, deadline=None)
@given(st.integers(2, 600), st.floats(0.01, 0.99), st.booleans())
def test_split_budget_adds_up(total: int, share: float, both: bool) -> None:
    mods = [VIDEO, AUDIO] if both else [AUDIO]
    out = split_budget(total, mods, share)
    assert sum(out.values()) == total and min(out.values()) >= 1

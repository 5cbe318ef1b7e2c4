"""DPC-KNN on FAISS: hand-made answers, agreement with a plain O(N²) version, streaming, bad input."""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import streamzip.operators.dpc_knn as dpc
from streamzip.errors import ConfigError, TokenError
from streamzip.operators.dpc_knn import (
    AUTO_MIN_TOKENS,
    DPCKNN,
    DPCKNNConfig,
    apply_clusters,
    plan_clusters,
    reduce_tokens,
    segment_events,
)
from streamzip.packets import Gap, Tokens
from streamzip.registry import get
from streamzip.tokens import cat, take, with_fresh_assignment


def make(frames: torch.Tensor, *, fps: float = 2.0, start_s: float = 0.0, first_id: int = 0) -> Tokens:
    t, p, d = frames.shape
    cols = math.ceil(math.sqrt(p))
    grid = torch.tensor([[i // cols, i % cols] for i in range(p)], dtype=torch.int32)
    t0 = (start_s + torch.arange(t, dtype=torch.float64) / fps).repeat_interleave(p)
    tok = Tokens(stream="s", modality="video", data=frames.reshape(t * p, d).float(), t0=t0, t1=t0 + 1 / fps,
                 pos=grid.repeat(t, 1), size=torch.ones(t * p, dtype=torch.int64))
    return with_fresh_assignment(tok, first_id)


def clustered(n: int, d: int, num: int, seed: int, spread: float = 0.3) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(num, d, generator=g)
    scale = torch.rand(num, 1, generator=g) + 0.5  # clusters of different widths
    label = torch.randint(0, num, (n,), generator=g)
    return centres[label] + spread * scale[label] * torch.randn(n, d, generator=g)


def reference_dpc_knn(x: torch.Tensor, num_clusters: int, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The same formulas on the full N×N distance matrix (Chat-UniVi's cluster_dpc_knn, with the
    engine's deterministic ties and densest-token rule): returns (centres, assignment)."""
    n, d = x.shape
    dist = torch.cdist(x.double(), x.double()) / math.sqrt(d)
    near = torch.topk(dist, min(k, n), dim=1, largest=False).values
    density = torch.exp(-(near ** 2).mean(1)).float()
    order = torch.sort(density, descending=True, stable=True).indices
    rank = torch.empty(n, dtype=torch.int64)
    rank[order] = torch.arange(n)
    denser = rank.unsqueeze(0) < rank.unsqueeze(1)  # [i, j]: j is denser than i
    delta = torch.where(denser, dist, torch.full_like(dist, math.inf)).min(1).values
    delta[order[0]] = dist[order[0]].max()
    score = density * delta.float()
    centres = torch.sort(score, descending=True, stable=True).indices[:num_clusters]
    assign = dist[:, centres].argmin(1)
    assign[centres] = torch.arange(centres.numel())
    return centres, assign


# -- kernel ---------------------------------------------------------------------------------------

def test_two_blobs_become_their_size_weighted_means() -> None:
    a = torch.tensor([[0.0, 0.0], [0.1, 0.0], [0.0, 0.1]])
    b = a + 5.0
    x = torch.stack([a[0], b[0], a[1], b[1], a[2], b[2]])  # interleaved in time
    tok = make(x.reshape(6, 1, 2))
    tok.size = torch.tensor([1, 1, 2, 1, 1, 1])
    plan = plan_clusters(tok.data, 2, k=3)
    assert sorted(plan.assign.tolist()) == [0, 0, 0, 1, 1, 1]
    assert plan.assign[0] == plan.assign[2] == plan.assign[4]
    out = apply_clusters(tok, plan)
    assert out.size.tolist() == [4, 3]                       # time order: blob a starts first
    assert torch.allclose(out.data[0], (a[0] + 2 * a[1] + a[2]) / 4)
    assert torch.allclose(out.data[1], b.mean(0))
    assert out.t0.tolist() == [0.0, 0.5] and out.t1.tolist() == [2.5, 3.0]
    assert out.assignment.tolist() == [0, 1, 0, 1, 0, 1]


def test_density_distance_and_the_densest_token() -> None:
    x = torch.tensor([[0.0], [1.0], [2.0], [10.0]])
    plan = plan_clusters(x, 2, k=2)
    # k=2: self plus the nearest other; d = |x_i - x_j| / sqrt(1)
    assert torch.allclose(plan.density, torch.exp(-torch.tensor([1.0, 1.0, 1.0, 64.0]) / 2))
    # ties broken by index: token 0 is the densest; its delta is its distance to the farthest token
    assert plan.delta.tolist() == pytest.approx([10.0, 1.0, 1.0, 8.0])
    # the outlier's density is ~e^-32, so the second centre is the tie-winner among tokens 1 and 2
    assert plan.centers.tolist() == [0, 1]
    assert plan.assign.tolist() == [0, 1, 1, 1]


def test_duplicates_cluster_onto_the_earliest_copy() -> None:
    x = torch.tensor([[1.0, 0.0]] * 4 + [[0.0, 1.0]] * 3)
    plan = plan_clusters(x, 2, k=3)
    assert plan.centers.tolist() == [0, 4]
    assert plan.delta[1:4].tolist() == [0.0, 0.0, 0.0]


@pytest.mark.parametrize("n,k,neighbours", [(500, 5, 32), (2000, 5, 32), (800, 2, 1)])
def test_faiss_agrees_with_the_quadratic_reference(n: int, k: int, neighbours: int) -> None:
    x = clustered(n, 48, 24, seed=n)
    plan = plan_clusters(x, n // 20, k, neighbours=neighbours)
    centres, assign = reference_dpc_knn(x, n // 20, k)
    same = (plan.centers[plan.assign] == centres[assign]).float().mean().item()
    assert same >= 0.99
    assert len(set(plan.centers.tolist()) & set(centres.tolist())) >= 0.95 * centres.numel()


@pytest.mark.parametrize("index", ["ivf", "hnsw"])
def test_approximate_indexes_mostly_agree(index: str) -> None:
    x = clustered(3000, 32, 30, seed=7, spread=0.15)
    plan = plan_clusters(x, 60, 5, index=index)  # type: ignore[arg-type]
    centres, assign = reference_dpc_knn(x, 60, 5)
    assert plan.centers.numel() == 60 and int(plan.assign.max()) < 60
    assert (plan.centers[plan.assign] == centres[assign]).float().mean().item() >= 0.9


def same_assignment(a: dpc.ClusterPlan, centres: torch.Tensor, assign: torch.Tensor) -> float:
    return (a.centers[a.assign] == centres[assign]).float().mean().item()


@pytest.mark.parametrize("n,d,groups", [(6000, 128, 40), (8000, 64, 200), (5000, 256, 250)])
def test_ivf_cells_agree_with_the_quadratic_reference(n: int, d: int, groups: int) -> None:
    # groups of 150, 40 and 20 tokens: the cells hold whole groups or parts of one
    x = clustered(n, d, groups, seed=n)
    plan = plan_clusters(x, n // 50, 5, index="ivf")
    assert plan.search == "ivf" and plan.recall is None  # asked for: not checked
    centres, assign = reference_dpc_knn(x, n // 50, 5)
    assert same_assignment(plan, centres, assign) >= 0.99
    assert len(set(plan.centers.tolist()) & set(centres.tolist())) >= 0.98 * centres.numel()
    # a centre's δ is exact (the search over all denser tokens), as the flat search gives it
    flat = plan_clusters(x, n // 50, 5, index="flat")
    both = [c for c in plan.centers.tolist() if c in set(flat.centers.tolist())]
    assert torch.allclose(plan.delta[both], flat.delta[both], rtol=1e-4)


def test_ivf_centres_have_an_exact_delta_under_query_weights() -> None:
    # weights favouring sparse tokens reorder the centre scores: the δ made exact must be those of the
    # weighted top scores (exact given the plan's own ρ)
    x = clustered(5000, 256, 250, seed=21)
    w = dpc.query_weights(-plan_clusters(x, 100, 5, index="flat").density.log())
    plan = plan_clusters(x, 100, 5, index="ivf", weight=w)
    order = torch.sort(plan.density, descending=True, stable=True).indices
    rank = torch.empty_like(order)
    rank[order] = torch.arange(order.numel())
    centres = plan.centers[plan.centers != order[0]]  # the densest: its farthest token
    exact = torch.sqrt(brute_denser(x, centres, rank) / x.shape[1]).float()
    assert torch.allclose(plan.delta[centres], exact, rtol=1e-4)


def test_auto_is_exact_below_the_threshold_and_checked_cells_above(monkeypatch: pytest.MonkeyPatch) -> None:
    x = clustered(3000, 48, 24, seed=11)
    exact = plan_clusters(x, 60, 5, index="flat")
    small = plan_clusters(x, 60, 5)  # auto, N < AUTO_MIN_TOKENS: the flat search, bit for bit
    assert AUTO_MIN_TOKENS > 3000 and small.search == "flat" and small.recall is None
    for field in ("centers", "assign", "density", "delta"):
        assert torch.equal(getattr(small, field), getattr(exact, field))
    monkeypatch.setattr(dpc, "AUTO_MIN_TOKENS", 2000)
    big = plan_clusters(x, 60, 5)
    assert big.search == "ivf" and big.recall is not None and big.recall >= 0.98
    assert same_assignment(big, exact.centers, exact.assign) >= 0.99


def test_auto_searches_exactly_where_the_cells_miss(monkeypatch: pytest.MonkeyPatch) -> None:
    # plain noise has no local structure: the cells find few of the sampled tokens' neighbours
    monkeypatch.setattr(dpc, "AUTO_MIN_TOKENS", 2000)
    x = torch.randn(3000, 32, generator=torch.Generator().manual_seed(0))
    plan = plan_clusters(x, 60, 5)
    assert plan.search == "flat" and plan.recall is not None and plan.recall < 0.98
    exact = plan_clusters(x, 60, 5, index="flat")
    assert torch.equal(plan.assign, exact.assign) and torch.equal(plan.centers, exact.centers)


def test_ivf_gives_the_same_plan_whatever_the_thread_count() -> None:
    x = clustered(4000, 64, 40, seed=4)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = plan_clusters(x, 80, 5, index="ivf")
        torch.set_num_threads(3)
        three = plan_clusters(x, 80, 5, index="ivf")
    finally:
        torch.set_num_threads(threads)
    assert torch.get_num_threads() == threads
    for field in ("centers", "assign", "density", "delta"):
        assert torch.equal(getattr(one, field), getattr(three, field))


def test_auto_gives_the_same_plan_whatever_the_thread_count(monkeypatch: pytest.MonkeyPatch) -> None:
    # the recall check's exact search runs on the pool while the cells are built
    monkeypatch.setattr(dpc, "AUTO_MIN_TOKENS", 2000)
    x = clustered(4000, 64, 40, seed=6)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = plan_clusters(x, 80, 5)
        torch.set_num_threads(3)
        three = plan_clusters(x, 80, 5)
    finally:
        torch.set_num_threads(threads)
    assert one.search == three.search == "ivf" and one.recall == three.recall
    for field in ("centers", "assign", "density", "delta"):
        assert torch.equal(getattr(one, field), getattr(three, field))


# -- search internals -----------------------------------------------------------------------------

def tied(n: int, d: int, seed: int) -> torch.Tensor:
    """Small integer tokens, a fifth of them repeated: many equal distances, and exact ones."""
    g = torch.Generator().manual_seed(seed)
    base = torch.randint(-3, 4, (n - n // 5, d), generator=g).float()
    return torch.cat([base, base[torch.randperm(base.shape[0], generator=g)[: n // 5]]])


def ranks(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A density order with ties (broken by index, as the plan does): ``order, rank``."""
    density = torch.randint(0, 50, (n,), generator=torch.Generator().manual_seed(seed)).float()
    order = torch.sort(density, descending=True, stable=True).indices
    rank = torch.empty_like(order)
    rank[order] = torch.arange(n)
    return order, rank


def brute_denser(x: torch.Tensor, queries: torch.Tensor, rank: torch.Tensor,
                 among: list[torch.Tensor] | None = None) -> torch.Tensor:
    """Squared distance from each query to its nearest denser token (``among[i]``: only those), float64."""
    d2 = ((x[queries].double().unsqueeze(1) - x.double().unsqueeze(0)) ** 2).sum(2)
    d2[rank.unsqueeze(0) >= rank[queries].unsqueeze(1)] = math.inf
    if among is not None:
        mask = torch.ones_like(d2, dtype=torch.bool)
        for i, cand in enumerate(among):
            mask[i, cand] = False
        d2[mask] = math.inf
    return d2.min(1).values


@pytest.mark.parametrize("faiss", [True, False])
def test_exact_denser_matches_brute_force_with_ties_and_duplicates(faiss: bool,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    if not faiss:
        monkeypatch.setattr(dpc, "_faiss", lambda: None)
    x = tied(5000, 6, seed=1)  # more tokens than one chunk of the density order
    order, rank = ranks(x.shape[0], seed=2)
    queries = torch.cat([order[:3], torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(3))[:400]])
    got = dpc._exact_denser(x, queries, rank, order)
    want = brute_denser(x, queries, rank)
    assert math.isinf(got[0]) and torch.equal(torch.isinf(got), torch.isinf(want))
    assert torch.equal(got.double()[~torch.isinf(got)], want[~torch.isinf(want)])  # integers: exact
    with ThreadPoolExecutor(3, initializer=dpc._one_thread) as pool:
        assert torch.equal(dpc._exact_denser(x, queries, rank, order, pool=pool), got)


def test_first_denser_of_exact_lists_is_the_nearest_denser() -> None:
    # the kNN lists give δ wherever they hold a denser token (the first in distance order)
    x = tied(3000, 4, seed=4)
    order, rank = ranks(x.shape[0], seed=5)
    rows = torch.arange(x.shape[0])
    dist2, nbr = dpc._TorchSearch(x, dpc._squared_norms(x), None).knn(16)
    delta2, has = dpc._first_denser(dist2, nbr, rank, rows)
    assert 0.5 * x.shape[0] < int(has.sum()) < x.shape[0]  # found for most, not for local peaks
    assert torch.equal(delta2[has].double(), brute_denser(x, rows[has], rank))


def test_smallest_by_sorted_keys_is_an_exact_top_k() -> None:
    g = torch.Generator().manual_seed(6)
    for cols in (3, 17, 130, 700):
        d2 = torch.randint(0, 60, (40, cols), generator=g).float() * 1.5  # ties
        d2[:, cols // 2] = -1e-3  # rounding can give a token a small negative distance: ordered as 0
        w = min(16, cols - 1)
        v, j = dpc._smallest(d2, w)
        exact = torch.sort(d2.clamp(min=0), dim=1).values[:, :w]
        assert torch.equal(v.clamp(min=0), exact)  # the w smallest, nearest first
        assert torch.equal(d2.gather(1, j), v) and all(len(set(r)) == w for r in j.tolist())  # exact values


def test_cell_search_is_exact_within_the_probed_cells() -> None:
    x = clustered(3000, 32, 30, seed=9)
    search = dpc._CellSearch(x, dpc._squared_norms(x), None)
    owner = torch.empty(x.shape[0], dtype=torch.int64)
    for c, mem in enumerate(search.members):
        owner[mem] = c
    cands = [torch.cat([search.members[c] for c in p.tolist() if c >= 0]) for p in search.probe]
    assert all(int(owner[i]) == int(search.probe[i, 0]) for i in range(0, x.shape[0], 97))  # own cell first
    # the k nearest (slots merged over the probed cells) against brute force over the same candidates
    d2, ids = search._search(None, 16, None)
    for i in range(0, x.shape[0], 37):
        want = torch.sort(((x[cands[i]] - x[i]) ** 2).sum(1)).values[:16]
        assert torch.allclose(d2[i], want, rtol=1e-4, atol=1e-3)
        assert set(ids[i].tolist()) <= set(cands[i].tolist())
    # the nearest denser token in the probed cells, for a subset of the tokens
    order, rank = ranks(x.shape[0], seed=10)
    rows = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(11))[:200]
    got = search.denser(rows, rank, order, 16)
    want = brute_denser(x, rows, rank, [cands[int(i)] for i in rows])
    assert torch.equal(torch.isinf(got), torch.isinf(want))
    assert torch.allclose(got.double()[~torch.isinf(got)], want[~torch.isinf(want)], rtol=1e-4, atol=1e-3)


def test_reverse_lists_offer_each_token_to_the_tokens_that_found_it() -> None:
    g = torch.Generator().manual_seed(12)
    n, k = 300, 10
    d2 = torch.sort(torch.rand(n, k, generator=g), dim=1).values
    ids = torch.stack([torch.randperm(n, generator=g)[:k] for _ in range(n)])  # distinct per list
    ids[::7, -3:], d2[::7, -3:] = -1, math.inf  # short lists
    out_d, out_i = dpc._with_reverse(d2, ids, offers=4)
    for i in range(n):
        have = {int(j): float(v) for j, v in zip(ids[i], d2[i]) if j >= 0}
        offered = {j: float(d2[j, t]) for j in range(n) for t in range(4) if int(ids[j, t]) == i and j not in have}
        best = sorted(list(have.items()) + sorted(offered.items(), key=lambda kv: kv[1])[:4], key=lambda kv: kv[1])[:k]
        assert torch.allclose(out_d[i][: len(best)], torch.tensor([v for _, v in best]))
        assert set(out_i[i][: len(best)].tolist()) == {j for j, _ in best}


def test_cell_sums_do_not_depend_on_the_pool() -> None:
    x = torch.randn(5000, 16, generator=torch.Generator().manual_seed(13))
    cell = torch.randint(0, 40, (5000,), generator=torch.Generator().manual_seed(14))
    alone = dpc._cell_sums(x, cell, 40)
    assert torch.allclose(alone, torch.zeros(40, 16).index_add_(0, cell, x), atol=1e-4)
    with ThreadPoolExecutor(3) as pool:
        assert torch.equal(dpc._cell_sums(x, cell, 40, pool), alone)


def test_torch_search_agrees_with_faiss_flat(monkeypatch: pytest.MonkeyPatch) -> None:
    # the search CUDA runs (and the CPU where FAISS is missing), here on the CPU
    x = clustered(3000, 64, 30, seed=8)
    exact = plan_clusters(x, 60, 5, index="flat")
    monkeypatch.setattr(dpc, "_faiss", lambda: None)
    plan = plan_clusters(x, 60, 5, index="flat")
    assert plan.search == "torch" and exact.search == "flat"
    assert torch.allclose(plan.density, exact.density, rtol=1e-5)
    assert torch.allclose(plan.delta, exact.delta, rtol=1e-4, atol=1e-6)
    assert same_assignment(plan, exact.centers, exact.assign) >= 0.999
    with pytest.raises(ImportError, match="hnsw needs FAISS"):
        plan_clusters(x, 60, 5, index="hnsw")


def test_importable_and_exact_without_faiss(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import subprocess
    import sys

    code = (
        "import sys; sys.modules['faiss'] = None\n"  # import faiss now raises ImportError
        "import torch\n"
        "from streamzip.operators.dpc_knn import DPCKNN, DPCKNNConfig, plan_clusters\n"
        "x = torch.cat([torch.randn(50, 8) + 5 * torch.randn(1, 8) for _ in range(6)])\n"
        "plan = plan_clusters(x, 6, 5)\n"
        "assert plan.search == 'torch', plan.search\n"
        "assert sorted(torch.bincount(plan.assign).tolist()) == [50] * 6\n"
        "assert 'faiss' not in sys.modules or sys.modules['faiss'] is None\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr


def test_device_option(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError) as err:
        DPCKNNConfig(device="gpu")
    assert [p.path for p in err.value.problems] == ["device"]
    tok = make(clustered(160, 8, 5, seed=3).reshape(10, 16, 8))
    cpu = DPCKNN(DPCKNNConfig(max_tokens=20, device="cpu"))
    auto = DPCKNN(DPCKNNConfig(max_tokens=20))
    a, b = cpu.process(tok) + cpu.flush(), auto.process(tok) + auto.flush()
    assert [o.num_tokens for o in a] == [20, 20]
    if not torch.cuda.is_available():  # auto is the CPU here: the same tokens
        assert all(torch.equal(p.data, q.data) for p, q in zip(a, b))
        monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
        with pytest.raises(ConfigError, match="no CUDA GPU"):
            DPCKNN(DPCKNNConfig(max_tokens=20, device="cuda"), step_id="cluster").process(tok)


def test_edge_cases_pass_through_or_clamp() -> None:
    one = make(torch.randn(1, 1, 4))
    assert reduce_tokens(one, 1) is one
    tok = make(torch.randn(3, 4, 4))
    assert reduce_tokens(tok, 12) is tok and reduce_tokens(tok, 100) is tok
    big_k = plan_clusters(tok.data, 3, k=500)
    assert torch.equal(big_k.assign, plan_clusters(tok.data, 3, k=12).assign)  # k clamps to N
    assert plan_clusters(tok.data, 1, k=5).assign.unique().tolist() == [0]
    empty = plan_clusters(torch.zeros(0, 4), 3)
    assert empty.assign.numel() == 0


def test_events_are_contiguous_and_at_most_the_number_asked() -> None:
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(8, generator=g), torch.randn(8, generator=g)
    frames = torch.stack([a, a, b, b, a, a, b, b]) + 0.01 * torch.randn(8, 8, generator=g)
    ev = segment_events(frames, 2, k=2)
    assert bool((ev[1:] - ev[:-1] >= 0).all()) and int(ev.max()) <= 1
    assert ev.tolist() in ([0, 0, 1, 1, 1, 1, 1, 1], [0, 0, 0, 0, 1, 1, 1, 1], [0, 0, 0, 0, 0, 0, 1, 1])
    assert segment_events(frames, 4, k=2).tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    assert segment_events(frames[:1], 3).tolist() == [0]


def test_event_level_never_merges_across_events() -> None:
    g = torch.Generator().manual_seed(1)
    scenes = [torch.randn(1, 9, 6, generator=g) + 3 * torch.randn(1, 1, 6, generator=g) for _ in range(2)]
    frames = torch.cat([s + 0.1 * torch.randn(4, 9, 6, generator=g) for s in scenes])  # cut at frame 4 (2.0 s)
    tok = make(frames)
    out = reduce_tokens(tok, 10, event_level=True, event_ratio=0.25)
    assert out.num_tokens == 10 and int(out.size.sum()) == tok.num_tokens
    assert bool(((out.t1 <= 2.0) | (out.t0 >= 2.0)).all())
    assert bool((out.t0[1:] >= out.t0[:-1]).all())


# -- streaming operator ---------------------------------------------------------------------------

def test_one_packet_per_window_with_window_meta() -> None:
    tok = make(clustered(160, 8, 5, seed=3).reshape(10, 16, 8))  # 10 frames at 2 fps: windows 0 and 1
    op = DPCKNN(DPCKNNConfig(max_tokens=20))
    frame = torch.arange(160) // 16
    outs = [o for i in range(10) for o in op.process(take(tok, (frame == i).nonzero().squeeze(1)))]
    assert len(outs) == 1 and outs[0].meta["window"] == 0
    outs += op.flush()
    assert [o.meta["window"] for o in outs] == [0, 1]
    assert [o.meta["window_start_s"] for o in outs] == [0.0, 4.0]
    assert [o.num_tokens for o in outs] == [20, 20]
    whole = DPCKNN(DPCKNNConfig(max_tokens=20))
    again = whole.process(tok) + whole.flush()
    for a, b in zip(outs, again):
        assert torch.equal(a.data, b.data) and torch.equal(a.assignment, b.assignment)


def test_gap_flushes_the_window() -> None:
    op = DPCKNN(DPCKNNConfig(max_tokens=4))
    assert op.process(make(torch.randn(2, 4, 3))) == []
    gap = Gap("s", 1.0, 2.0)
    out = op.on_gap(gap)
    assert out[-1] is gap and out[0].num_tokens == 4


def test_snapshot_resumes_with_identical_output() -> None:
    tok = make(clustered(192, 8, 6, seed=5).reshape(12, 16, 8))
    op = DPCKNN(DPCKNNConfig(max_tokens=10))
    first = op.process(take(tok, torch.arange(80)))
    resumed = DPCKNN(DPCKNNConfig(max_tokens=10))
    resumed.restore(op.snapshot())
    rest = resumed.process(take(tok, torch.arange(80, 192))) + resumed.flush()
    ref = DPCKNN(DPCKNNConfig(max_tokens=10))
    full = cat(ref.process(tok) + ref.flush())
    got = cat(first + rest)
    assert torch.equal(got.data, full.data) and torch.equal(got.src, full.src)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), t=st.integers(1, 14), p=st.integers(1, 12), budget=st.integers(1, 40),
       event_level=st.booleans())
def test_budget_held_sizes_conserved_time_order_kept(seed: int, t: int, p: int, budget: int,
                                                     event_level: bool) -> None:
    g = torch.Generator().manual_seed(seed)
    tok = make(torch.randn(t, p, 5, generator=g).round(decimals=1), fps=3.0)  # rounding makes ties
    op = DPCKNN(DPCKNNConfig(max_tokens=budget, event_level=event_level))
    outs = op.process(tok) + op.flush()
    for o in outs:
        assert o.num_tokens <= budget
        assert bool((o.t0[1:] >= o.t0[:-1]).all())
        assert torch.equal(torch.bincount(o.assignment, minlength=o.num_tokens), o.size)
    out = cat(outs)
    assert int(out.size.sum()) == tok.num_tokens
    assert sorted(out.src.tolist()) == list(range(tok.num_tokens))


# -- bad input and config -------------------------------------------------------------------------

def test_bad_tokens_raise() -> None:
    op = DPCKNN()
    bad = torch.randn(2, 3, 4)
    bad[1, 0, 0] = float("nan")
    with pytest.raises(TokenError, match="token 3"):
        op.process(make(bad))
    op.process(make(torch.randn(2, 3, 4)))
    with pytest.raises(TokenError, match="dimension changed from 4 to 6"):
        op.process(make(torch.randn(2, 3, 6), start_s=1.0))


def test_config_and_registration() -> None:
    with pytest.raises(ConfigError) as err:
        DPCKNNConfig.from_mapping({"max_tokens": 0, "k": 0, "index": "annoy"}, "steps[1]")
    assert [p.path for p in err.value.problems] == ["steps[1].index"]  # type problems come first
    with pytest.raises(ConfigError) as err:
        DPCKNNConfig(max_tokens=0, k=0, event_ratio=2.0)
    assert [p.path for p in err.value.problems] == ["max_tokens", "k", "event_ratio"]
    assert get("dpc_knn").cls is DPCKNN and DPCKNN.modalities == ("video",)

"""DPC-KNN token clustering (Chat-UniVi) on FAISS, per window, optionally per event.

Jin et al., "Chat-UniVi: Unified Visual Representation Empowers Large Language Models with Image and
Video Understanding", CVPR 2024; reference code PKU-YuanGroup/Chat-UniVi
(``ChatUniVi/model/cluster.py::cluster_dpc_knn``), itself after Rodriguez & Laio's density peaks
(Science 2014) with a kNN density. With ``d_ij = ‖x_i − x_j‖₂ / √D``:

1. density ``ρ_i = exp(−(1/k) Σ_{j ∈ kNN(i)} d_ij²)``, the k nearest neighbours including i itself;
2. distance to the nearest denser token ``δ_i = min_{j denser than i} d_ij``;
3. centres: the K tokens with the largest ``ρ_i · δ_i``;
4. every token joins its nearest centre; each cluster becomes one token (size-weighted mean).

Where we differ from the reference, and why:

- **No N×N matrix.** The reference builds the full distance matrix (O(N²) memory). Here the kNN comes
  from FAISS (exact brute force ``faiss.knn`` by default, O(N²·D) time but O(N·D) memory; ``ivf`` or
  ``hnsw`` approximate search for large N, see :class:`_Searcher`).
  The nearest denser token is searched among each token's ``neighbours`` nearest (the first denser one in
  distance order is the nearest denser overall when the list is exact); tokens with no denser token in
  that list (local density peaks, few) search a longer list, and the rest an exact search restricted to
  denser tokens, in blocks — O(N·D) memory throughout.
- **Densest token.** The reference gives it ``δ = max`` of the whole distance matrix, which needs all
  N² distances. We use the paper's rule instead, its distance to the farthest token
  (``max_j d_densest,j``, one O(N·D) row). Either way it gets the largest ``ρ·δ`` (every other
  ``δ_i ≤ d_i,densest``), so it is always a centre, as in the reference.
- **Deterministic ties.** The reference breaks density ties with uniform noise (``1e-6·U(0,1)``). We
  order tokens by (density descending, index ascending) instead: "denser" means earlier in that order,
  so among equal densities (duplicate tokens of a static scene) the earliest token is the denser one, and
  the result is reproducible. Centre scores tie the same way (the earlier token wins).
- **k clamp.** ``k`` is clamped to N (the reference's CTM wrapper instead lowers k to ≤ 3 when k > K).
- **Output order and weights.** The reference emits clusters in centre-score order with plain means. We
  merge with :func:`streamzip.tokens.merge_groups`: size-weighted means (inputs may already be merged),
  time order (a cluster sits at its earliest member), provenance kept.
- **Events are contiguous.** Chat-UniVi's events are the frames sharing a DPC-KNN label, which need not
  be contiguous in time (issue #25), so an event token could span unrelated moments and a live stream
  could never close an event. :func:`segment_events` cuts the window into runs of equal labels instead
  and, when there are more runs than events, keeps the cuts between the least similar adjacent frames
  (as PruneVid refines its segments). The token budget is shared among events in proportion to their
  token counts (the reference gives every event the same count; our budget is per window).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Literal

import faiss
import numpy as np
import torch

from streamzip.config import Config
from streamzip.operators.framefusion import frame_ids
from streamzip.packets import Tokens
from streamzip.registry import register
from streamzip.tokens import merge_groups
from streamzip.windows import WindowedOperator

__all__ = ["ClusterPlan", "DPCKNN", "DPCKNNConfig", "apply_clusters", "plan_clusters", "reduce_tokens",
           "segment_events"]

IndexKind = Literal["flat", "ivf", "hnsw"]

_BLOCK_QUERIES = 512      # exact fallback: queries per block
_BLOCK_POINTS = 16384     # exact fallback: candidate points per block (512 × 16384 floats = 32 MiB)


@dataclass(frozen=True)
class ClusterPlan:
    """The clustering of N tokens into K.

    ``centers (K,)`` int64: token index of each centre, best score first; ``assign (N,)`` int64: the
    cluster (index into ``centers``) of each token; ``density``, ``delta (N,)`` float32: ρ and δ.
    """

    centers: torch.Tensor
    assign: torch.Tensor
    density: torch.Tensor
    delta: torch.Tensor

    @property
    def score(self) -> torch.Tensor:
        return self.density * self.delta


def _balanced_cells(dist2: np.ndarray, near: np.ndarray, nlist: int) -> np.ndarray:
    """Each token's cell: its nearest centroid with room (at most twice the mean cell size), or -1.

    ``near``/``dist2`` ``(N, m)``: each token's m nearest centroids, nearest first. Tokens closest to a
    centroid keep it; the others move to their next nearest with room.
    """
    n = near.shape[0]
    cap = 2 * math.ceil(n / nlist)
    cell = np.full(n, -1, dtype=np.int64)
    load = np.zeros(nlist, dtype=np.int64)
    for r in range(near.shape[1]):
        todo = np.flatnonzero(cell < 0)
        c, d2 = near[todo, r], dist2[todo, r]
        valid = c >= 0
        todo, c, d2 = todo[valid], c[valid], d2[valid]
        if todo.size == 0:
            break
        order = np.lexsort((d2, c))  # by centroid, nearest first
        todo, c = todo[order], c[order]
        rank_in_cell = np.arange(c.size) - np.searchsorted(c, c, side="left")
        ok = rank_in_cell < cap - load[c]
        cell[todo[ok]] = c[ok]
        load += np.bincount(c[ok], minlength=nlist)
    return cell


def _partition(x: np.ndarray, nprobe: int, levels: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """Cut ``x (N, D)`` into cells of about √N tokens: ``cell (N,)`` and ``probe (cells, nprobe)`` (the
    cells a cell's queries search, nearest centroid first, -1 padded).

    k-means in high dimension grows hub cells (a centroid near the mean of several clusters is the
    nearest to every token left without a centroid of its own), and a search cell by cell costs
    Σ queries × candidates, so a hub makes it quadratic. Cells are capped (:func:`_balanced_cells`);
    the tokens that fit nowhere near are partitioned again among themselves, up to ``levels`` times.
    """
    n, d = x.shape
    cell = np.full(n, -1, dtype=np.int64)
    probes: list[np.ndarray] = []
    offset = 0
    idx = np.arange(n)
    for level in range(levels):
        sub = x if level == 0 else np.ascontiguousarray(x[idx])  # no copy of all N tokens
        # cells of about √N tokens; FAISS wants ≥ 39 training points per centroid
        nlist = max(1, min(int(round(idx.size / math.sqrt(n))), idx.size // 39))
        if nlist == 1:
            cell[idx] = offset
            probes.append(np.full((1, nprobe), -1, dtype=np.int64))
            probes[-1][0, 0] = offset
            offset += 1
            break
        km = faiss.Kmeans(d, nlist, niter=5, seed=1234, max_points_per_centroid=32)
        km.train(sub)
        dist2, near = km.index.search(sub, min(8, nlist))
        c = _balanced_cells(dist2, near, nlist)
        if level == levels - 1:
            c = np.where(c >= 0, c, near[:, 0])
        probe = np.full((nlist, nprobe), -1, dtype=np.int64)
        p = km.index.search(km.centroids, min(nprobe, nlist))[1]  # type: ignore[arg-type]
        probe[:, : p.shape[1]] = np.where(p >= 0, p + offset, -1)
        probes.append(probe)
        cell[idx[c >= 0]] = c[c >= 0] + offset
        offset += nlist
        idx = idx[c < 0]
        if idx.size == 0:
            break
    return cell, np.concatenate(probes)


class _Searcher:
    """k-nearest-neighbour search of some tokens against all ``N`` (squared L2, nearest first).

    ``flat``: exact, ``faiss.knn`` (BLAS, no copy of the data). ``ivf``: FAISS k-means cuts the tokens
    into cells of about √N (:func:`_partition`); the queries of a cell are searched exactly (BLAS) against the tokens of the
    ``nprobe`` cells nearest to it — an inverted-file search done cell by cell, so it runs as matrix
    products rather than one scan per query. ``hnsw``: a FAISS HNSW graph.
    """

    def __init__(self, x: np.ndarray, kind: IndexKind, *, nprobe: int = 8) -> None:
        n, d = x.shape
        self.x, self.kind = x, kind if n >= 2048 else "flat"
        if self.kind == "ivf":
            self.cell, self.probe = _partition(x, nprobe)
            nlist = self.probe.shape[0]
            order = np.argsort(self.cell, kind="stable")
            bounds = np.searchsorted(self.cell[order], np.arange(nlist + 1))
            self.members = [order[bounds[c]:bounds[c + 1]] for c in range(nlist)]
        elif self.kind == "hnsw":
            self.index = faiss.IndexHNSWFlat(d, 32)
            self.index.hnsw.efSearch = 128
            self.index.add(x)
        elif self.kind != "flat":  # pragma: no cover - the config rejects other values
            raise ValueError(f"unknown index kind {kind!r}; use flat, ivf or hnsw")

    def __call__(self, rows: np.ndarray | None, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Neighbours of ``x[rows]`` (all tokens when None): ``dist2, ids (len(rows), k)``; ids -1 and
        distance inf where fewer than k were found."""
        xq = self.x if rows is None else np.ascontiguousarray(self.x[rows])
        if self.kind == "flat":
            d2, ids = faiss.knn(xq, self.x, k)
        elif self.kind == "hnsw":
            d2, ids = self.index.search(xq, k)
        else:
            d2 = np.full((xq.shape[0], k), np.inf, dtype=np.float32)
            ids = np.full((xq.shape[0], k), -1, dtype=np.int64)
            qcell = self.cell if rows is None else self.cell[rows]
            by_cell = np.argsort(qcell, kind="stable")
            starts = np.flatnonzero(np.diff(qcell[by_cell], prepend=-1))

            def one_cell(bounds: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
                q = by_cell[bounds[0]:bounds[1]]
                cand = np.concatenate([self.members[p] for p in self.probe[qcell[q[0]]] if p >= 0])
                cd, ci = faiss.knn(xq[q], self.x[cand], min(k, cand.size))
                return q, cd, cand[ci]

            # Cells are small matrix products: run them side by side, each on one OpenMP thread
            # (omp_set_num_threads is per thread), rather than one after another on all threads, whose
            # fork/join per call dominates and collapses when the cores are shared.
            workers = max(1, faiss.omp_get_max_threads())
            with ThreadPoolExecutor(workers, initializer=faiss.omp_set_num_threads, initargs=(1,)) as pool:
                for q, cd, ci in pool.map(one_cell, zip(starts, [*starts[1:], by_cell.size])):
                    d2[q, : cd.shape[1]], ids[q, : cd.shape[1]] = cd, ci
        ids_t = torch.from_numpy(np.ascontiguousarray(ids)).to(torch.int64)
        d2_t = torch.from_numpy(np.ascontiguousarray(d2)).clamp(min=0)
        return torch.where(ids_t >= 0, d2_t, torch.full_like(d2_t, math.inf)), ids_t


def _first_denser(dist2: torch.Tensor, nbr: torch.Tensor, rank: torch.Tensor,
                  rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For the tokens ``rows`` with neighbour lists ``nbr``/``dist2`` (distance order), the squared
    distance to the first denser neighbour, and whether there was one."""
    valid = nbr >= 0
    r = torch.where(valid, rank[nbr.clamp(min=0)], torch.full_like(nbr, rank.numel()))
    denser = r < rank[rows].unsqueeze(1)
    has = denser.any(1)
    first = denser.to(torch.int8).argmax(1)
    return dist2.gather(1, first.unsqueeze(1)).squeeze(1), has


def _squared_norms(x: torch.Tensor) -> torch.Tensor:
    """``(N,)`` squared L2 norms, in blocks (no N×D temporary)."""
    return torch.cat([x[s:s + _BLOCK_POINTS].square().sum(1) for s in range(0, x.shape[0], _BLOCK_POINTS)])


def _exact_denser(x: torch.Tensor, queries: torch.Tensor, rank: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    """Exact squared distance from each of ``queries`` to its nearest denser token, in blocks.
    ``order`` lists the tokens densest first; ``rank`` is its inverse."""
    out = torch.empty(queries.numel(), dtype=torch.float32)
    perm = torch.argsort(rank[queries])  # densest queries first: their candidate sets are smallest
    norms = _squared_norms(x)
    for qs in range(0, perm.numel(), _BLOCK_QUERIES):
        sel = perm[qs:qs + _BLOCK_QUERIES]
        q = queries[sel]
        xq, rq = x[q], rank[q]
        best = torch.full((q.numel(),), float("inf"))
        limit = int(rq.max())  # only tokens denser than the block's least dense query matter
        for ps in range(0, limit, _BLOCK_POINTS):
            p = order[ps:min(limit, ps + _BLOCK_POINTS)]
            d2 = norms[q].unsqueeze(1) + norms[p].unsqueeze(0) - 2.0 * (xq @ x[p].T)
            d2 = d2.masked_fill(rank[p].unsqueeze(0) >= rq.unsqueeze(1), float("inf"))
            best = torch.minimum(best, d2.min(1).values)
        out[sel] = best
    return out.clamp(min=0)


def plan_clusters(x: torch.Tensor, num_clusters: int, k: int = 5, *, index: IndexKind = "flat",
                  neighbours: int = 32) -> ClusterPlan:
    """DPC-KNN of ``x (N, D)`` into ``num_clusters`` clusters (see :func:`_plan_clusters`).

    FAISS's BLAS and torch sum in a different order with a different thread count, which can flip a
    near tie and so a cluster; the plan is computed on one thread, so the same tokens give the same
    clusters in a 2-thread local run and in a 1-CPU Ray actor.
    """
    faiss_threads, torch_threads = faiss.omp_get_max_threads(), torch.get_num_threads()
    faiss.omp_set_num_threads(1)
    torch.set_num_threads(1)
    try:
        return _plan_clusters(x, num_clusters, k, index=index, neighbours=neighbours)
    finally:
        faiss.omp_set_num_threads(faiss_threads)
        torch.set_num_threads(torch_threads)


def _plan_clusters(x: torch.Tensor, num_clusters: int, k: int = 5, *, index: IndexKind = "flat",
                   neighbours: int = 32) -> ClusterPlan:
    """DPC-KNN of ``x (N, D)`` into ``num_clusters`` clusters (see the module docstring).

    ``k`` (clamped to N) sets the density; ``neighbours`` is how many nearest tokens are searched for a
    denser one before falling back to longer searches. With ``num_clusters ≥ N`` every token is its own
    centre.
    """
    n = int(x.shape[0])
    if n == 0 or num_clusters >= n:
        ident = torch.arange(n, dtype=torch.int64)
        zeros = torch.zeros(n, dtype=torch.float32)
        return ClusterPlan(centers=ident, assign=ident.clone(), density=zeros + 1, delta=zeros)
    if num_clusters < 1:
        raise ValueError(f"num_clusters must be >= 1, got {num_clusters}")
    xf = x.detach().to(torch.float32).contiguous()
    dim = xf.shape[1]
    xn = xf.numpy()
    k = max(1, min(k, n))
    kk = min(n, max(k, neighbours))
    search = _Searcher(xn, index)
    dist2, nbr = search(None, kk)
    rows = torch.arange(n, dtype=torch.int64)

    # Density: self at distance 0, then the k-1 nearest others (approximate searches may miss self).
    others = torch.where(nbr == rows.unsqueeze(1), torch.full_like(dist2, math.inf), dist2)
    others = torch.sort(others, dim=1).values[:, : k - 1]
    density = torch.exp(-others.sum(1) / (k * dim)) if k > 1 else torch.ones(n)
    density = density.to(torch.float32)
    order = torch.sort(density, descending=True, stable=True).indices
    rank = torch.empty(n, dtype=torch.int64)
    rank[order] = rows

    # Distance to the nearest denser token: from the kNN list, then a longer list, then exact.
    delta2, has = _first_denser(dist2, nbr, rank, rows)
    has[order[0]] = True
    todo = (~has).nonzero().squeeze(1)
    if todo.numel() and kk < n:
        d2b, nbb = search(todo.numpy(), min(n, 8 * kk))
        d2b, hb = _first_denser(d2b, nbb, rank, todo)
        delta2[todo[hb]] = d2b[hb]
        todo = todo[~hb]
    del search
    if todo.numel():
        delta2[todo] = _exact_denser(xf, todo, rank, order)
    top = order[0]
    far2 = _squared_norms(xf) + (xf[top] * xf[top]).sum() - 2.0 * (xf @ xf[top])
    delta2[top] = far2.max().clamp(min=0)
    delta = torch.sqrt(delta2 / dim).to(torch.float32)

    score = density * delta
    centers = torch.sort(score, descending=True, stable=True).indices[:num_clusters]
    _, lab = faiss.knn(xn, np.ascontiguousarray(xn[centers.numpy()]), 1)
    assign = torch.from_numpy(lab[:, 0]).to(torch.int64)
    assign[centers] = torch.arange(centers.numel(), dtype=torch.int64)
    return ClusterPlan(centers=centers, assign=assign, density=density, delta=delta)


def apply_clusters(tokens: Tokens, plan: ClusterPlan) -> Tokens:
    """One size-weighted token per cluster, in time order (unchanged input when nothing merges)."""
    if plan.centers.numel() >= tokens.num_tokens:
        return tokens
    return merge_groups(tokens, plan.assign)


def segment_events(frames: torch.Tensor, num_events: int, k: int = 5) -> torch.Tensor:
    """Cut ``T`` frame descriptors ``(T, D)`` into at most ``num_events`` contiguous events.

    DPC-KNN labels the frames; each run of equal labels is an event; when there are more runs than
    ``num_events``, only the cuts between the least cosine-similar adjacent frames are kept.
    Returns ``(T,)`` int64 event ids 0, 0, 1, 1, 1, 2…
    """
    t = int(frames.shape[0])
    if t <= 1 or num_events <= 1:
        return torch.zeros(t, dtype=torch.int64)
    labels = plan_clusters(frames, num_events, k).assign
    cut = torch.zeros(t, dtype=torch.bool)
    cut[1:] = labels[1:] != labels[:-1]
    where = cut.nonzero().squeeze(1)
    if where.numel() > num_events - 1:
        f = frames.to(torch.float32)
        sim = torch.nn.functional.cosine_similarity(f[where], f[where - 1], dim=1, eps=1e-12)
        keep = torch.sort(sim, stable=True).indices[: num_events - 1]
        cut[:] = False
        cut[where[keep]] = True
    return cut.to(torch.int64).cumsum(0)


def _share(budget: int, counts: torch.Tensor) -> torch.Tensor:
    """Split ``budget`` over groups in proportion to ``counts`` (largest remainder, each ≥ 1, ≤ count)."""
    total = int(counts.sum())
    exact = counts.to(torch.float64) * budget / total
    share = exact.floor().to(torch.int64).clamp(min=1)
    share = torch.minimum(share, counts)
    # The floor of 1 per group can overshoot: take back from the largest shares (never below 1).
    while int(share.sum()) > budget and int(share.max()) > 1:
        share[int(torch.argmax(share))] -= 1
    left = budget - int(share.sum())
    if left > 0:
        room = (counts - share) > 0
        rema = torch.where(room, exact - exact.floor(), torch.full_like(exact, -1.0))
        for i in torch.sort(rema, descending=True, stable=True).indices.tolist():
            if left == 0:
                break
            if share[i] < counts[i]:
                share[i] += 1
                left -= 1
    return share


def reduce_tokens(tokens: Tokens, max_tokens: int, k: int = 5, *, event_level: bool = False,
                  event_ratio: float = 0.25, index: IndexKind = "flat", neighbours: int = 32) -> Tokens:
    """Cluster one window's tokens down to ``max_tokens`` (unchanged when it already fits).

    With ``event_level`` the frames (runs of equal ``t0``) are first cut into
    ``ceil(T · event_ratio)`` contiguous events (frame descriptor: the size-weighted mean token), and
    each event is clustered on its own share of the budget.
    """
    n = tokens.num_tokens
    if n <= max_tokens:
        return tokens
    if not event_level:
        return apply_clusters(tokens, plan_clusters(tokens.data, max_tokens, k, index=index, neighbours=neighbours))
    frame = frame_ids(tokens.t0)
    num_frames = int(frame[-1]) + 1
    w = tokens.size.to(torch.float32).unsqueeze(1)
    desc = torch.zeros(num_frames, tokens.dim).index_add_(0, frame, tokens.data * w)
    desc = desc / torch.zeros(num_frames).index_add_(0, frame, w.squeeze(1)).unsqueeze(1)
    num_events = min(max_tokens, max(1, math.ceil(num_frames * event_ratio)))
    event = segment_events(desc, num_events, k)
    num_runs = int(event.max()) + 1
    if num_runs > max_tokens:  # contiguity split clusters into more runs than the budget: join neighbours
        event = torch.div(event * max_tokens, num_runs, rounding_mode="floor")
    event = event[frame]
    counts = torch.bincount(event)
    share = _share(max_tokens, counts)
    group = torch.empty(n, dtype=torch.int64)
    offset = 0
    for e in range(int(counts.numel())):
        idx = (event == e).nonzero().squeeze(1)
        plan = plan_clusters(tokens.data[idx], int(share[e]), k, index=index, neighbours=neighbours)
        group[idx] = plan.assign + offset
        offset += int(share[e])
    return merge_groups(tokens, group)


# -- streaming operator -------------------------------------------------------------------------------

@dataclass(frozen=True)
class DPCKNNConfig(Config):
    # 256 per 4 s window: Chat-UniVi's 64 tokens per frame-level image at 1 frame/s.
    max_tokens: int = 256
    # 5: Chat-UniVi's ctm0 (first-level) k.
    k: int = 5
    # 4 s: the engine's window clock (streamzip.windows), shared by every windowed stage.
    window_s: float = 4.0
    # False: a 4 s window rarely holds more than one scene; turn on for long windows.
    event_level: bool = False
    # 1/4 (PruneVid's segment ratio): Chat-UniVi's 1/16 would give one event per short window.
    event_ratio: float = 0.25
    # "flat": exact. "ivf" trades agreement (0.84-0.99 in benchmarks/dpc_knn.py) for speed on 10⁴+ tokens.
    index: Literal["flat", "ivf", "hnsw"] = "flat"
    # 32 nearest tokens searched for a denser one before the (rarer) longer searches.
    neighbours: int = 32

    def check(self) -> Iterator[tuple[str, str]]:
        if self.max_tokens < 1:
            yield "max_tokens", f"must be >= 1, got {self.max_tokens}"
        if self.k < 1:
            yield "k", f"must be >= 1, got {self.k}"
        if not (math.isfinite(self.window_s) and self.window_s > 0):
            yield "window_s", f"must be > 0 seconds, got {self.window_s}"
        if not 0.0 < self.event_ratio <= 1.0:
            yield "event_ratio", f"must be in (0, 1], got {self.event_ratio}"
        if self.neighbours < 1:
            yield "neighbours", f"must be >= 1, got {self.neighbours}"


@register("dpc_knn")
class DPCKNN(WindowedOperator):
    """Cluster each window's video tokens to a budget with DPC-KNN (Chat-UniVi) on FAISS."""

    config_class = DPCKNNConfig
    config: DPCKNNConfig

    def reduce(self, window: Tokens) -> Tokens:
        c = self.config
        return reduce_tokens(window, c.max_tokens, c.k, event_level=c.event_level, event_ratio=c.event_ratio,
                             index=c.index, neighbours=c.neighbours)

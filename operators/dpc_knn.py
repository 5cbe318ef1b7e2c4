"""DPC-KNN token clustering (Chat-UniVi) on FAISS or PyTorch, per window, optionally per event.

Jin et al., "Chat-UniVi: Unified Visual Representation Empowers Large Language Models with Image and
Video Understanding", CVPR 2024; reference code PKU-YuanGroup/Chat-UniVi
(``ChatUniVi/model/cluster.py::cluster_dpc_knn``), itself after Rodriguez & Laio's density peaks
(Science 2014) with a kNN density. With ``d_ij = ‖x_i − x_j‖₂ / √D``:

1. density ``ρ_i = exp(−(1/k) Σ_{j ∈ kNN(i)} d_ij²)``, the k nearest neighbours including i itself;
2. distance to the nearest denser token ``δ_i = min_{j denser than i} d_ij``;
3. centres: the K tokens with the largest ``ρ_i · δ_i``;
4. every token joins its nearest centre; each cluster becomes one token (size-weighted mean).

Where we differ from the reference, and why:

- **No N×N matrix.** The reference builds the full distance matrix (O(N²) memory). Here every search
  keeps O(N·D) memory; ``index`` picks it (on the CPU):

  - ``flat``: exact brute force, ``faiss.knn`` (O(N²·D) time). Without FAISS installed, the same search
    runs as blocked torch matrix products.
  - ``ivf``: cells. k-means on a 64-dimensional random projection of the tokens (a sketch, cheap; in
    bfloat16 where the CPU multiplies it natively), then two Lloyd steps in full dimension (the sketch
    blurs small groups; the first on 64 tokens per cell, blocks of rows spread over the window), cut
    the tokens into cells of about 128 (√(N/2) above 32,768; cells over twice that are halved by
    2-means, as k-means grows hub cells). Each token searches its own cell and the cells whose means
    are nearly as near: within 20% of its own squared distance (at least 2 cells, at most 5) when its
    farthest listed cell is 1.5× as far (its group stands apart), within 10% in a crowd of similar
    cells. Within those cells the distances are exact (per cell, one product of its members with
    themselves and one with the other cells' tokens that search it; cells side by side on all cores,
    largest first), and each list is merged with its reverse (j found i, so i gets j: a cell cut can
    hide one from the other). So ρ is exact whenever a token's k nearest neighbours lie in its cells,
    which holds when tokens form groups larger than k (near-duplicates across frames, objects). The
    nearest denser token found there bounds δ from above, so δ is then made exact (a search over all
    denser tokens) for tokens in decreasing order of the bound ρ·δ until the K-th exact score beats
    every bound left: given ρ, the centres are exact (with query weights: those of the weighted
    scores), and so is the nearest-centre assignment. At N = 16,384, D = 1,024 it runs 11–12.5× faster
    than the O(N²) reference on 2 cores, every token on the same centre, on the benchmark's hard and
    easy data (``benchmarks/dpc_knn.py``); 262,144 tokens take 16–18 s and 2.9 GB peak RSS. With
    groups of about k tokens or fewer (4,096 tokens in 1,024 blobs) some tokens lose a neighbour, and
    3% of the assignment differs: ``auto`` searches exactly.
  - ``auto`` (default): ``flat`` below :data:`AUTO_MIN_TOKENS` (8,192) tokens, so small windows get the
    exact, bit-identical result; above, ``ivf``, checked: the exact k nearest neighbours of 128 sampled
    tokens are searched (on one thread while another builds the cells) and, if the cells found fewer
    than 98% of them (no local structure: groups smaller than k, noise), the exact search runs instead
    (the result is then ``flat``'s).
  - ``hnsw``: a FAISS HNSW graph (approximate).

  On the CPU the distances are products on FAISS's BLAS where FAISS is installed (its OpenBLAS runs
  them 1.2–1.6× faster than torch's MKL on the benchmark's AMD CPU), with the norms in the same pass.
  On a CUDA device (tokens there, or ``device: cuda`` / ``auto`` with a GPU) the search is always exact,
  blocked torch matrix products and top-k on the GPU (blocks of queries, never an N×N matrix), and
  ``index`` is ignored: brute force there outruns any index at window sizes.
  The nearest denser token is searched among each token's ``neighbours`` nearest (the first denser one
  in distance order is the nearest denser overall when the list is exact); tokens with no denser token in
  that list (local density peaks, few) search a longer list (``ivf``: all tokens of their cells), and
  the rest an exact search restricted to denser tokens, in blocks — O(N·D) memory throughout.
- **Densest token.** The reference gives it ``δ = max`` of the whole distance matrix, which needs all
  N² distances. We use the paper's rule instead, its distance to the farthest token
  (``max_j d_densest,j``, one O(N·D) row). Either way it gets the largest ``ρ·δ`` (every other
  ``δ_i ≤ d_i,densest``), so it is always a centre, as in the reference.
- **Deterministic ties.** The reference breaks density ties with uniform noise (``1e-6·U(0,1)``). We
  order tokens by (density descending, index ascending) instead: "denser" means earlier in that order,
  so among equal densities (duplicate tokens of a static scene) the earliest token is the denser one, and
  the result is reproducible. Centre scores tie the same way (the earlier token wins). A CPU plan runs
  each matrix product on one thread (work is spread over threads by blocks), so the same tokens give the
  same clusters whatever the thread count.
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

import functools
import math
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any, Literal, Protocol, TypeVar

import numpy as np
import torch

from streamzip.config import Config
from streamzip.devices import OnDevice, check_device
from streamzip.errors import DependencyError
from streamzip.operators.framefusion import frame_ids
from streamzip.packets import Tokens
from streamzip.registry import register
from streamzip.tokens import merge_groups
from streamzip.windows import WindowedOperator

__all__ = ["AUTO_MIN_TOKENS", "ClusterPlan", "DPCKNN", "DPCKNNConfig", "apply_clusters", "plan_clusters",
           "query_weights", "reduce_tokens", "segment_events"]

IndexKind = Literal["auto", "flat", "ivf", "hnsw"]

#: ``index: auto`` searches exactly below this many tokens: small windows keep the exact, bit-identical
#: result (the exact search takes 0.4 s at 4,096 × 1,024 on one core), and they often lack the groups of
#: more than k tokens the cells need. The default pipelines' windows stay far below it.
AUTO_MIN_TOKENS = 8192

_BLOCK_POINTS = 16384     # norms without FAISS: rows per block (64 MiB temporaries)
_BLOCK_FLOATS = 1 << 24   # other blocked searches: floats per distance block on the CPU (64 MiB)
# Other blocked searches on the CPU: queries per block. Larger temporaries made on the pool's threads
# stay in their malloc arenas (+0.9 GB RSS at 262,144 tokens with 4096), for no speed gain.
_BLOCK_ROWS = 256
# ivf (each value chosen on benchmarks/dpc_knn.py's data and groups of 20-150 tokens in 64-256 dims):
_SKETCH_DIM = 64          # k-means runs on a random projection to 64 dimensions: 16× cheaper at D = 1024
_KMEANS_SAMPLE = 64       # k-means trains on 64 tokens per cell (32 cost up to 2% agreement)
_FULL_STEPS = 2           # then Lloyd steps in full dimension (the sketch blurs small groups across cells)
_CELL_TOKENS = 128        # tokens per cell, √(N/2) above 32,768 (the means then cost what the cells do)
_PROBE_SLACK = 0.2        # cells searched: within 20% of the token's own squared distance (see _CellSearch)
_MIN_PROBES, _MAX_PROBES = 2, 5
_CELL_NEIGHBOURS = 16     # neighbour lists this long (the density needs k; δ is made exact where it counts)
# auto:
_RECALL_SAMPLES = 128     # tokens whose exact nearest neighbours check the cells' (2% of the search's cost)
_MIN_RECALL = 0.98        # below this share found, search exactly (the cells find 99.5-100% on grouped
                          # tokens, 50-60% on plain noise, 97-98% when groups are smaller than k)

T = TypeVar("T")
R = TypeVar("R")


@functools.cache
def _faiss() -> Any:
    """The ``faiss`` module, or None where it is not installed: it is imported on first use, so the
    torch searches (CUDA, ``ivf``, and ``flat``'s fallback) work without it."""
    try:
        import faiss
    except ImportError:
        return None
    return faiss


@dataclass(frozen=True)
class ClusterPlan:
    """The clustering of N tokens into K.

    ``centers (K,)`` int64: token index of each centre, best score first; ``assign (N,)`` int64: the
    cluster (index into ``centers``) of each token; ``density``, ``delta (N,)`` float32: ρ and δ (with
    ``ivf``, δ is exact for the centres and every token that could have been one, and an upper bound
    elsewhere). ``search``: the search that ran (``flat``, ``ivf``, ``hnsw`` or ``torch``, the exact
    blocked torch search); ``recall``: with ``index: auto`` above :data:`AUTO_MIN_TOKENS`, the share of
    the sampled tokens' exact nearest neighbours the cells found (None when not checked). All tensors
    are on the tokens' device.
    """

    centers: torch.Tensor
    assign: torch.Tensor
    density: torch.Tensor
    delta: torch.Tensor
    search: str = "flat"
    recall: float | None = None

    @property
    def score(self) -> torch.Tensor:
        return self.density * self.delta

    def cpu(self) -> ClusterPlan:
        """The same plan with its tensors on the CPU."""
        return replace(self, centers=self.centers.cpu(), assign=self.assign.cpu(), density=self.density.cpu(),
                       delta=self.delta.cpu())


def _map(pool: ThreadPoolExecutor | None, fn: Callable[[T], R], items: Iterable[T]) -> Iterator[R]:
    """``fn`` over ``items`` in order, on the pool's threads when there is one."""
    return map(fn, items) if pool is None else pool.map(fn, items)


@functools.cache
def _fast_bf16() -> bool:
    """Whether this CPU multiplies bfloat16 matrices natively (oneDNN; elsewhere torch's fallback is
    slower than float32)."""
    try:
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def _blas() -> Any:
    """FAISS, where its BLAS computes the CPU searches' distances, else None (torch then).

    FAISS's OpenBLAS runs these products 1.2-1.6x faster than torch's on one thread on the benchmark's
    CPU (an AMD EPYC, where torch's MKL takes a slower path), and it computes the norms in the same
    pass. Each thread calls it single-threaded (``plan_clusters`` sets FAISS's OpenMP threads to 1 on
    every thread it uses), so results do not depend on the thread count."""
    return _faiss()


def _squared_norms(x: torch.Tensor) -> torch.Tensor:
    """``(N,)`` squared L2 norms, in blocks (no N×D temporary)."""
    faiss = _blas() if x.device.type == "cpu" else None
    if faiss is not None and x.shape[0]:
        out = np.empty(x.shape[0], dtype=np.float32)
        faiss.fvec_norms_L2sqr(faiss.swig_ptr(out), faiss.swig_ptr(x.numpy()), x.shape[1], x.shape[0])
        return torch.from_numpy(out)
    return torch.cat([x[s:s + _BLOCK_POINTS].square().sum(1) for s in range(0, x.shape[0], _BLOCK_POINTS)])


def _sqdist(a: torch.Tensor, b: torch.Tensor, a_norms: torch.Tensor | None = None,
            b_norms: torch.Tensor | None = None, *, out: torch.Tensor | None = None) -> torch.Tensor:
    """``(A, B)`` squared L2 distances between the rows of ``a (A, D)`` and ``b (B, D)``, contiguous
    float32 (FAISS's BLAS on the CPU where installed, else torch with the given norms); into ``out``
    (contiguous) when given."""
    faiss = _blas() if a.device.type == "cpu" else None
    if faiss is not None and a.shape[0] and b.shape[0]:
        xa, xb = a.numpy(), b.numpy()
        res = np.empty((xa.shape[0], xb.shape[0]), dtype=np.float32) if out is None else out.numpy()
        faiss.pairwise_L2sqr(xa.shape[1], xa.shape[0], faiss.swig_ptr(xa), xb.shape[0], faiss.swig_ptr(xb),
                             faiss.swig_ptr(res))
        return torch.from_numpy(res) if out is None else out
    an = a.square().sum(1) if a_norms is None else a_norms
    bn = b.square().sum(1) if b_norms is None else b_norms
    d2 = (bn.unsqueeze(0) - 2.0 * (a @ b.T)) + an.unsqueeze(1)
    return d2 if out is None else out.copy_(d2)


def _nearest(q: torch.Tensor, base: torch.Tensor, m: int, pool: ThreadPoolExecutor | None, *,
             q_norms: torch.Tensor | None = None,
             base_norms: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact ``m`` nearest rows of ``base (B, D)`` for each row of ``q (Q, D)``: squared distances and
    indices ``(Q, m)``, nearest first, by blocks of queries (on any device; no Q×B matrix)."""
    bn = base_norms
    if bn is None and (q.device.type != "cpu" or _blas() is None):
        bn = _squared_norms(base)
    floats = _BLOCK_FLOATS if q.device.type == "cpu" else 1 << 28
    # a quarter of the queries per block (so the pool's threads share even a few), but at least 64 (a
    # thinner product runs slower)
    rows = max(1, min(floats // max(1, base.shape[0]), max(64, math.ceil(q.shape[0] / 4)),
                      _BLOCK_ROWS if q.device.type == "cpu" else q.shape[0]))

    faiss = _blas() if q.device.type == "cpu" else None

    def block(s: int) -> tuple[torch.Tensor, torch.Tensor]:
        qb = q[s:s + rows]
        # FAISS's product and its top-m in one pass (fewer rows than its BLAS threshold take a slow
        # path there: those get the product and a torch top-m)
        if faiss is not None and qb.shape[0] * qb.shape[1] >= faiss.cvar.distance_compute_blas_threshold:
            d2n, idn = faiss.knn(qb.numpy(), base.numpy(), m)
            return torch.from_numpy(d2n).clamp(min=0), torch.from_numpy(idn)
        d2 = _sqdist(qb, base, None if q_norms is None else q_norms[s:s + rows], bn)
        if m == 1:
            v, i = d2.min(1, keepdim=True)
        else:
            v, i = torch.topk(d2, m, dim=1, largest=False)
        return v.clamp(min=0), i

    out = list(_map(pool, block, range(0, q.shape[0], rows)))
    return torch.cat([o[0] for o in out]), torch.cat([o[1] for o in out])


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


def _exact_denser(x: torch.Tensor, queries: torch.Tensor, rank: torch.Tensor, order: torch.Tensor, *,
                  norms: torch.Tensor | None = None, pool: ThreadPoolExecutor | None = None) -> torch.Tensor:
    """Exact squared distance from each of ``queries`` to its nearest denser token. ``order`` lists the
    tokens densest first; ``rank`` is its inverse.

    By chunks of ``order`` (side by side on the pool): each chunk is gathered once and compared with
    the queries less dense than its first token (the others have no denser token there), so the
    products cost about the sum of the queries' ranks. The minimum is exact whatever the order."""
    cpu = x.device.type == "cpu"
    points, rows = (2048, 1024) if cpu else (1 << 16, 4096)
    if norms is None:
        norms = _squared_norms(x)
    perm = torch.argsort(rank[queries])  # densest queries first
    q = queries[perm]
    rq = rank[q]
    xq, nq = x.index_select(0, q), norms[q]
    limit = int(rq[-1]) if q.numel() else 0  # only tokens denser than the least dense query matter
    starts = list(range(0, limit, points))
    # chunk [ps, ps + points) matters to the queries ranked after ps: a suffix of the sorted queries
    first = torch.searchsorted(rq, torch.tensor(starts, dtype=rq.dtype, device=rq.device), right=True).tolist()

    def one(job: tuple[int, int]) -> tuple[int, torch.Tensor]:
        ps, f = job
        p = order[ps:min(limit, ps + points)]
        xp, np_, rp = x.index_select(0, p), norms[p], rank[p]
        best = []
        for s in range(f, q.numel(), rows):
            d2 = _sqdist(xq[s:s + rows], xp, nq[s:s + rows], np_)
            d2 = d2.masked_fill(rp.unsqueeze(0) >= rq[s:s + rows].unsqueeze(1), math.inf)
            best.append(d2.min(1).values)
        return f, torch.cat(best)

    out = torch.full((q.numel(),), math.inf, device=x.device)
    for f, best in _map(pool, one, zip(starts, first)):
        out[f:] = torch.minimum(out[f:], best)
    res = torch.empty_like(out)
    res[perm] = out.clamp(min=0)
    return res


# -- searches -----------------------------------------------------------------------------------------

class _Search(Protocol):
    """What a plan needs from a search over the N tokens ``x``."""

    name: str
    exact: bool  # whether denser() gives the exact nearest denser token

    def knn(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Every token's k nearest: ``dist2, ids (N, k)``, nearest first; -1 and inf where fewer."""

    def denser(self, rows: torch.Tensor, rank: torch.Tensor, order: torch.Tensor, k: int) -> torch.Tensor:
        """Squared distance from each of ``rows`` to the nearest denser token it finds (inf: none);
        ``k`` is the length of the lists :meth:`knn` gave."""

    def nearest(self, centers: torch.Tensor) -> torch.Tensor:
        """Each token's nearest centre (an index into ``centers``), exactly."""


class _FaissSearch:
    """``flat`` (exact, ``faiss.knn``: BLAS, no copy of the data) or ``hnsw`` (a FAISS HNSW graph)."""

    def __init__(self, x: torch.Tensor, kind: Literal["flat", "hnsw"], faiss: Any) -> None:
        n, d = x.shape
        self.x, self.xn, self.faiss = x, x.numpy(), faiss
        self.name: str = kind if n >= 2048 else "flat"
        self.exact = True
        if self.name == "hnsw":
            self.index = faiss.IndexHNSWFlat(d, 32)
            self.index.hnsw.efSearch = 128
            self.index.add(self.xn)

    def _search(self, rows: np.ndarray | None, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        xq = self.xn if rows is None else np.ascontiguousarray(self.xn[rows])
        if self.name == "flat":
            d2, ids = self.faiss.knn(xq, self.xn, k)
        else:
            d2, ids = self.index.search(xq, k)
        ids_t = torch.from_numpy(np.ascontiguousarray(ids)).to(torch.int64)
        d2_t = torch.from_numpy(np.ascontiguousarray(d2)).clamp(min=0)
        return torch.where(ids_t >= 0, d2_t, torch.full_like(d2_t, math.inf)), ids_t

    def knn(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self._search(None, k)

    def denser(self, rows: torch.Tensor, rank: torch.Tensor, order: torch.Tensor, k: int) -> torch.Tensor:
        # A list 8× longer first (peaks are few), then the exact search for what is left.
        n = self.x.shape[0]
        out = torch.empty(rows.numel(), dtype=torch.float32)
        rest = torch.ones(rows.numel(), dtype=torch.bool)
        if k < n:
            d2, nbr = self._search(rows.numpy(), min(n, 8 * k))
            d2, has = _first_denser(d2, nbr, rank, rows)
            out[has] = d2[has]
            rest = ~has
        if bool(rest.any()):
            self.index = None  # an HNSW graph is not needed any more: free it before the exact pass
            out[rest] = _exact_denser(self.x, rows[rest], rank, order)
        return out

    def nearest(self, centers: torch.Tensor) -> torch.Tensor:
        _, lab = self.faiss.knn(self.xn, np.ascontiguousarray(self.xn[centers.numpy()]), 1)
        return torch.from_numpy(lab[:, 0]).to(torch.int64)


class _TorchSearch:
    """Exact search as blocked torch matrix products and top-k, on the tokens' device (a CUDA GPU, or
    the CPU where FAISS is missing or a test asks for it)."""

    name = "torch"
    exact = True

    def __init__(self, x: torch.Tensor, norms: torch.Tensor, pool: ThreadPoolExecutor | None) -> None:
        self.x, self.norms, self.pool = x, norms, pool

    def knn(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        return _nearest(self.x, self.x, k, self.pool, q_norms=self.norms, base_norms=self.norms)

    def denser(self, rows: torch.Tensor, rank: torch.Tensor, order: torch.Tensor, k: int) -> torch.Tensor:
        return _exact_denser(self.x, rows, rank, order, norms=self.norms, pool=self.pool)

    def nearest(self, centers: torch.Tensor) -> torch.Tensor:
        return _nearest(self.x, self.x.index_select(0, centers), 1, self.pool, q_norms=self.norms)[1][:, 0]


def _closest(a: torch.Tensor, means: torch.Tensor) -> torch.Tensor:
    """Each row's nearest mean, ``(A,)``, by blocks of 4096 rows (on this thread: the work is small and
    k-means runs it often; FAISS's product where there are enough means, torch's for a cut in two)."""
    faiss = _blas() if a.device.type == "cpu" else None
    a, means = a.contiguous(), means.contiguous()
    mn = means.square().sum(1)

    def block(s: int) -> torch.Tensor:
        ab = a[s:s + 4096]
        if (faiss is not None and means.shape[0] >= 16
                and ab.shape[0] * ab.shape[1] >= faiss.cvar.distance_compute_blas_threshold):
            return torch.from_numpy(faiss.knn(ab.numpy(), means.numpy(), 1)[1][:, 0])
        return (mn - 2.0 * (ab @ means.T)).argmin(1)

    return torch.cat([block(s) for s in range(0, a.shape[0], 4096)])


def _cell_sums(x: torch.Tensor, cell: torch.Tensor, num_cells: int,
               pool: ThreadPoolExecutor | None = None) -> torch.Tensor:
    """``(num_cells, D)`` sums of the rows of ``x`` per cell, by 8 blocks of rows (side by side on the
    pool; the blocks do not depend on the threads, so neither does the rounding)."""
    rows = max(2048, math.ceil(x.shape[0] / 8))

    def part(s: int) -> torch.Tensor:
        return torch.zeros(num_cells, x.shape[1], dtype=x.dtype).index_add_(0, cell[s:s + rows], x[s:s + rows])

    parts = _map(pool, part, range(0, x.shape[0], rows))
    sums = next(parts)
    for p in parts:
        sums += p
    return sums


def _kmeans(s: torch.Tensor, num_cells: int, gen: torch.Generator, iters: int = 10) -> torch.Tensor:
    """Lloyd's k-means of ``s (N, d)`` on a sample of 64 points per cell; ``(N,)`` each point's cell."""
    sample = s.index_select(0, torch.randperm(s.shape[0], generator=gen)[: min(s.shape[0], _KMEANS_SAMPLE * num_cells)])
    if num_cells == 2:  # a cut in two: seeded by a far pair (a random pair often lies in one group)
        far = _sqdist(sample, sample[:1]).argmax()
        means = torch.stack([sample[far], sample[_sqdist(sample, sample[far:far + 1]).argmax()]])
    else:  # the sample is in random order: its first points seed the cells
        means = sample[:num_cells].clone()
    for _ in range(iters):
        lab = _closest(sample, means)
        count = torch.bincount(lab, minlength=num_cells).unsqueeze(1)
        sums = torch.zeros_like(means).index_add_(0, lab, sample)
        means = torch.where(count > 0, sums / count.clamp(min=1), means)  # an empty cell keeps its mean
    return _closest(s, means)


def _lloyd_step(x: torch.Tensor, means: torch.Tensor, size: int,
                pool: ThreadPoolExecutor | None = None) -> torch.Tensor:
    """One Lloyd step of ``means (C, D)`` on a sample of about ``size`` tokens: blocks of 128 rows
    spread evenly over ``x`` (views: no copy), in 8 groups side by side on the pool. A mean with no
    token keeps its value."""
    n = x.shape[0]
    stride = max(128, 128 * n // max(1, size))
    starts = list(range(0, n, stride))
    groups = [starts[g::8] for g in range(min(8, len(starts)))]

    def part(group: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        sums = torch.zeros_like(means)
        count = torch.zeros(means.shape[0], dtype=torch.int64)
        for a in group:
            xb = x[a:a + 128]
            lab = _closest(xb, means)
            sums.index_add_(0, lab, xb)
            count += torch.bincount(lab, minlength=means.shape[0])
        return sums, count

    parts = list(_map(pool, part, groups))
    sums = torch.stack([p[0] for p in parts]).sum(0)
    count = torch.stack([p[1] for p in parts]).sum(0).unsqueeze(1)
    return torch.where(count > 0, sums / count.clamp(min=1), means)


def _split_large(x: torch.Tensor, cell: torch.Tensor, cap: float) -> torch.Tensor:
    """Cut every cell of more than ``cap`` tokens in two by 2-means (in full dimension), until none is
    left: k-means grows hub cells, and a search costs the sum over cells of queries × members. Cells
    are cut in rounds, each with its own random generator (on this thread: the pool's overhead
    outweighs these small cuts)."""
    cell = torch.unique(cell, return_inverse=True)[1]  # ids 0..C-1
    next_id = int(cell.max()) + 1
    todo = [c for c, m in enumerate(torch.bincount(cell).tolist()) if m > cap]
    while todo:
        by_cell = torch.argsort(cell, stable=True)
        bounds = torch.searchsorted(cell[by_cell], torch.tensor([[c, c + 1] for c in todo])).tolist()

        def halve(job: tuple[int, list[int]], by_cell: torch.Tensor = by_cell) -> tuple[torch.Tensor, torch.Tensor]:
            c, (a, b) = job
            mem = by_cell[a:b]
            return mem, _kmeans(x.index_select(0, mem), 2, torch.Generator().manual_seed(c), iters=3)

        halves = list(map(halve, zip(todo, bounds)))
        todo = []
        for mem, lab in halves:
            if int(lab.min()) == int(lab.max()):  # identical tokens: nothing to cut
                continue
            c = int(cell[mem[0]])
            cell[mem[lab == 1]] = next_id
            todo += [cc for cc, m in ((c, int((lab == 0).sum())), (next_id, int((lab == 1).sum()))) if m > cap]
            next_id += 1
    return cell


def _smallest(d2: torch.Tensor, w: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``w`` smallest of each row of ``d2 (Q, M)`` (finite, CPU), nearest first: values, columns.

    A sort of int32 keys (numpy's vectorised sort, 3-5x faster than a partial selection here): a
    non-negative float's bits order as an integer, and the low ``log2(M)`` bits are replaced by the
    column, so distances closer than ``2^(log2(M)-23)`` relative (1e-4 for a few hundred columns) are
    ordered by column. The values returned are the exact ones."""
    dn = d2.numpy()
    bits = (d2.shape[1] - 1).bit_length()
    low = np.int32((1 << bits) - 1)
    keys = np.maximum(dn, 0).view(np.int32)
    keys &= ~low
    keys |= np.arange(d2.shape[1], dtype=np.int32)
    keys.sort(axis=1)
    j = keys[:, :w] & low
    return torch.from_numpy(np.take_along_axis(dn, j, 1)), torch.from_numpy(j.astype(np.int64))


class _CellSearch:
    """``ivf``: exact distances within cells chosen in a sketch (see the module docstring)."""

    name = "ivf"
    exact = False

    def __init__(self, x: torch.Tensor, norms: torch.Tensor, pool: ThreadPoolExecutor | None, *,
                 check: int = 0) -> None:
        """``check``: for ``index: auto``, the k of the recall check (:func:`_sampled_recall`), whose
        exact search then runs on one of the pool's threads during the k-means and the cuts; 0: none."""
        n, dim = x.shape
        self.x, self.norms, self.pool = x, norms, pool
        gen = torch.Generator().manual_seed(0)
        num_cells = max(1, round(n / max(_CELL_TOKENS, math.sqrt(n / 2))))
        if dim > _SKETCH_DIM:
            proj = torch.linalg.qr(torch.randn(dim, _SKETCH_DIM, generator=gen))[0]
            # the sketch is rough anyway: bfloat16 products where the CPU has them (twice as fast)
            low = torch.bfloat16 if _fast_bf16() else torch.float32
            pl = proj.to(low)
            sketch = torch.cat(list(_map(pool, lambda s: (x[s:s + 4096].to(low) @ pl).float(), range(0, n, 4096))))
        else:
            sketch = x
        self.sample = _RecallSample(x, norms, check, pool) if check > 1 else None
        if self.sample is not None:
            self.sample.start()
        cell = _kmeans(sketch, num_cells, gen)  # on this thread: small steps
        del sketch

        def cell_means(xs: torch.Tensor, lab: torch.Tensor, num: int) -> torch.Tensor:
            count = torch.bincount(lab, minlength=num)
            return _cell_sums(xs, lab, num, pool)[count > 0] / count[count > 0].unsqueeze(1)

        # Lloyd steps in full dimension (the sketch blurs small groups across cells): all but the last
        # on a sample of 64 tokens per cell (the means need no more), the last on all tokens.
        means = cell_means(x, cell, num_cells)
        for _ in range(_FULL_STEPS - 1):
            means = _lloyd_step(x, means, _KMEANS_SAMPLE * num_cells, pool)
        if _FULL_STEPS > 0:
            cell = _nearest(x, means, 1, pool, q_norms=norms)[1][:, 0]
        # cells over twice the size are halved; each token's own cell and probes by its exact distance
        # to the means
        if self.sample is not None:
            self.sample.start()
        cell = _split_large(x, cell, 2 * max(_CELL_TOKENS, math.sqrt(n / 2)))
        num_cells = int(cell.max()) + 1
        means = cell_means(x, cell, num_cells)
        num_cells = means.shape[0]
        d2, near = _nearest(x, means, min(_MAX_PROBES, num_cells), pool, q_norms=norms)
        # A token whose farthest listed cell is 1.5× as far as its own sits in a group set apart (the
        # group may span a few cells, all near): every cell within 20% of its own, at least 2. In a
        # crowd of cells at similar distances (many small groups) only those within 10%.
        apart = d2[:, -1:] > 1.5 * d2[:, :1]
        keep = d2 <= (1.0 + torch.where(apart, _PROBE_SLACK, _PROBE_SLACK / 2)) * d2[:, :1]
        keep[:, :1] = True
        keep[:, :_MIN_PROBES] |= apart
        self.probe = torch.where(keep, near, torch.full_like(near, -1))
        own = near[:, 0]
        by_cell = torch.argsort(own, stable=True)
        bounds = torch.searchsorted(own[by_cell], torch.arange(means.shape[0] + 1)).tolist()
        self.members = [by_cell[a:b] for a, b in zip(bounds[:-1], bounds[1:])]

    def _search(self, rows: torch.Tensor | None, width: int,
                rank: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """The ``width`` nearest tokens (denser ones only, with ``rank``) in the cells of ``rows`` (None:
        every token).

        Cell by cell: the queries that search a cell against its members, one matrix product; each
        (query, probe) pair has its own slot for that cell's ``width`` nearest, and one top-k over a
        query's slots merges them (so the result does not depend on the threads)."""
        x = self.x
        norms = self.norms if _blas() is None else None  # FAISS computes them with the product
        every = rows is None
        if rows is None:
            rows = torch.arange(x.shape[0])
        probe = self.probe[rows]
        slots = probe.shape[1]
        cells = probe.reshape(-1)
        pair = torch.arange(cells.numel())[cells >= 0]  # query * slots + slot
        cells = cells[pair]
        # by cell, and in a cell its own queries (slot 0) first, each part in query order
        by_cell = torch.argsort(cells * 2 + (pair % slots > 0), stable=True)
        pair, cells = pair[by_cell], cells[by_cell]
        bounds = torch.searchsorted(cells, torch.arange(len(self.members) + 1)).tolist()
        chunk = x.shape[0] if every else 1024
        jobs = [(c, pair[s:min(b, s + chunk)]) for c, (a, b) in enumerate(zip(bounds[:-1], bounds[1:]))
                for s in range(a, b, chunk)]
        # the largest products first, so that the threads finish together (any order gives the same lists)
        jobs.sort(key=lambda job: -job[1].numel() * self.members[job[0]].numel())
        best = torch.full((rows.numel() * slots, width), math.inf)
        ids = torch.full((rows.numel() * slots, width), -1, dtype=torch.int32)

        def one(job: tuple[int, torch.Tensor]) -> None:
            c, pj = job
            mem = self.members[c]
            if rank is not None:  # only members denser than some query matter
                mem = mem[rank[mem] < int(rank[rows[pj // slots]].max())]
                if mem.numel() == 0:
                    return
            xm = x.index_select(0, mem)
            if every:  # a cell's own queries come first: its members, in order, gathered already
                m = mem.numel()
                q = torch.cat([mem, rows[pj[m:] // slots]])
                d2 = torch.empty(q.numel(), m)
                nm = None if norms is None else norms[mem]
                _sqdist(xm, xm, nm, nm, out=d2[:m])
                _sqdist(x.index_select(0, q[m:]), xm, None if norms is None else norms[q[m:]], nm, out=d2[m:])
            else:
                q = rows[pj // slots]
                d2 = _sqdist(x.index_select(0, q), xm, None if norms is None else norms[q],
                             None if norms is None else norms[mem])
            if rank is not None:
                d2 = d2.masked_fill(rank[mem].unsqueeze(0) >= rank[q].unsqueeze(1), math.inf)
            w = min(width, mem.numel())
            if w == 1:
                v, j = d2.min(1, keepdim=True)
            elif w < mem.numel():
                v, j = _smallest(d2, w)
            else:
                v, j = d2, torch.arange(w).expand(q.numel(), w)
            found = mem.to(torch.int32).index_select(0, j.reshape(-1)).view(j.shape)
            if w == width:
                best.index_copy_(0, pj, v)
                ids.index_copy_(0, pj, found)
            else:
                best[pj, :w] = v
                ids[pj, :w] = found

        for _ in _map(self.pool, one, jobs):
            pass
        best, ids = best.view(rows.numel(), slots * width), ids.view(rows.numel(), slots * width)

        def merge(s: int) -> tuple[torch.Tensor, torch.Tensor]:
            d2, j = torch.topk(best[s:s + 4096], width, dim=1, largest=False)
            found = ids[s:s + 4096].gather(1, j).to(torch.int64)
            found[torch.isinf(d2)] = -1
            return d2.clamp(min=0), found

        out = list(_map(self.pool, merge, range(0, rows.numel(), 4096)))
        return torch.cat([o[0] for o in out]), torch.cat([o[1] for o in out])

    def knn(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        d2, ids = self._search(None, k, None)
        return _with_reverse(d2, ids)

    def denser(self, rows: torch.Tensor, rank: torch.Tensor, order: torch.Tensor, k: int) -> torch.Tensor:
        return self._search(rows, 1, rank)[0][:, 0]

    def nearest(self, centers: torch.Tensor) -> torch.Tensor:
        return _nearest(self.x, self.x.index_select(0, centers), 1, self.pool, q_norms=self.norms)[1][:, 0]


def _with_reverse(d2: torch.Tensor, ids: torch.Tensor, offers: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """Neighbour lists merged with their reverse: j found i among its ``offers`` nearest, so i is offered
    j at the same distance (a cell split can hide j from i yet show i to j; the density needs the
    nearest few). ``d2, ids (N, k)`` sorted, as in and out."""
    n, k = ids.shape
    offers = min(offers, k)
    src = torch.arange(n, dtype=torch.int32).repeat_interleave(offers)
    dst, dist = ids[:, :offers].reshape(-1).to(torch.int32), d2[:, :offers].reshape(-1)
    # i offers itself to j unless j's list holds it already (in blocks: a block of lists is gathered)
    new = dst >= 0
    step = max(1, _BLOCK_FLOATS // (4 * k))
    for s in range(0, dst.numel(), step):
        held = ids.index_select(0, dst[s:s + step].clamp(min=0)) == src[s:s + step].unsqueeze(1)
        new[s:s + step] &= ~held.any(1)
    src, dst, dist = src[new], dst[new], dist[new]
    by = torch.argsort(dist, stable=True)
    by = by[torch.argsort(dst[by], stable=True)]  # by receiver, nearest first
    src, dst, dist = src[by], dst[by], dist[by]
    slot = torch.arange(dst.numel()) - torch.searchsorted(dst, dst)
    keep = slot < offers
    src, dst, dist, slot = src[keep], dst[keep], dist[keep], slot[keep]
    offer_d = torch.full((n, offers), math.inf)
    offer_i = torch.full((n, offers), -1, dtype=torch.int64)
    offer_d[dst, slot], offer_i[dst, slot] = dist, src.to(torch.int64)
    d2, j = torch.topk(torch.cat([d2, offer_d], 1), k, dim=1, largest=False)
    return d2, torch.cat([ids, offer_i], 1).gather(1, j)


class _RecallSample:
    """The exact ``k`` nearest squared distances of :data:`_RECALL_SAMPLES` random tokens (the recall
    check of ``index: auto``), searched in two halves of the tokens, each on one of the pool's threads
    while this one runs a serial step of the cells (:meth:`start`; all samples at once, so each token
    is read once). :meth:`result`: ``rows, d2 (S, k)``."""

    def __init__(self, x: torch.Tensor, norms: torch.Tensor, k: int, pool: ThreadPoolExecutor | None) -> None:
        self.x, self.norms, self.k, self.pool = x, norms, k, pool
        self.rows = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(0))[:_RECALL_SAMPLES]
        self.q = x.index_select(0, self.rows)
        half = x.shape[0] // 2
        self.todo = [(0, half), (half, x.shape[0])]
        self.parts: list[Any] = []

    def _search(self, span: tuple[int, int]) -> torch.Tensor:
        a, b = span
        faiss = _blas()
        if faiss is not None:
            return torch.from_numpy(faiss.knn(self.q.numpy(), self.x[a:b].numpy(), min(self.k, b - a))[0])
        return _nearest(self.q, self.x[a:b], min(self.k, b - a), None, q_norms=self.norms[self.rows],
                        base_norms=self.norms[a:b])[0]

    def start(self) -> None:
        """Start the next half (at once, on this thread, without a pool)."""
        if self.todo:
            span = self.todo.pop(0)
            self.parts.append(self._search(span) if self.pool is None else self.pool.submit(self._search, span))

    def result(self) -> tuple[torch.Tensor, torch.Tensor]:
        while self.todo:
            self.start()
        d2 = torch.cat([p if isinstance(p, torch.Tensor) else p.result() for p in self.parts], 1)
        return self.rows, torch.topk(d2, self.k, dim=1, largest=False).values.clamp(min=0)


def _sampled_recall(norms: torch.Tensor, dist2: torch.Tensor, k: int, sample: _RecallSample) -> float:
    """The share of the exact k-1 nearest neighbours (self aside) of the sampled tokens that ``dist2``
    (a search's sorted lists) holds, compared by distance (ties are no misses)."""
    if k < 2:
        return 1.0
    rows, exact = sample.result()
    found = dist2[rows, :k]
    # the two sides compute the same distance in different blocks: allow their rounding
    tol = 1e-4 * exact + 1e-5 * norms[rows].unsqueeze(1)
    return float((found[:, 1:] <= exact[:, 1:] + tol[:, 1:]).float().mean())


def _exact_centres(x: torch.Tensor, norms: torch.Tensor, scale: torch.Tensor, delta2: torch.Tensor,
                   rank: torch.Tensor, order: torch.Tensor, num_clusters: int,
                   pool: ThreadPoolExecutor | None) -> None:
    """Make δ exact (in place in ``delta2``) for every token whose score could reach the top
    ``num_clusters``, the score being ``scale`` (ρ, times the query weight when there is one) times δ.
    ``delta2`` holds each token's squared distance to some denser token (inf: none found), so the score
    from it is an upper bound: tokens are made exact in decreasing order of that bound until the
    ``num_clusters``-th exact score beats every bound left."""
    n, dim = x.shape
    bound = torch.where(torch.isinf(delta2), math.inf, scale * torch.sqrt(delta2 / dim))
    queue = torch.sort(bound, descending=True, stable=True).indices
    done = torch.zeros(n, dtype=torch.bool)
    done[order[0]] = True  # the densest token's δ is exact already
    pos, step = 0, num_clusters + num_clusters // 4
    while pos < n:
        batch = queue[pos:pos + step]
        batch = batch[~done[batch]]
        if batch.numel():
            exact = _exact_denser(x, batch, rank, order, norms=norms, pool=pool)
            delta2[batch] = torch.minimum(delta2[batch], exact)
            done[batch] = True
        pos += step
        if pos >= n:
            break
        score = torch.where(done, scale * torch.sqrt(delta2 / dim), -math.inf)
        if float(torch.topk(score, num_clusters).values[-1]) > float(bound[queue[pos]]):
            break
        step = max(64, num_clusters // 4)


def _plan(x: torch.Tensor, num_clusters: int, k: int, neighbours: int, index: str,
          pool: ThreadPoolExecutor | None, weight: torch.Tensor | None = None) -> ClusterPlan:
    """DPC-KNN of ``x (N, D)`` float32 into ``num_clusters`` clusters (see the module docstring)."""
    n, dim = x.shape
    k = max(1, min(k, n))
    kk = min(n, max(k, neighbours))
    faiss = _faiss() if x.device.type == "cpu" else None
    norms = _squared_norms(x)
    kind = "flat" if index == "auto" and n < AUTO_MIN_TOKENS else index
    search: _Search
    if x.device.type != "cpu":
        search = _TorchSearch(x, norms, pool)
    elif kind in ("ivf", "auto") and n >= 2048:  # fewer tokens: exact search is as fast
        search = _CellSearch(x, norms, pool, check=k if kind == "auto" else 0)
    elif faiss is not None:
        search = _FaissSearch(x, "hnsw" if kind == "hnsw" else "flat", faiss)
    elif kind == "hnsw":
        raise DependencyError("index: hnsw needs FAISS, which is not installed", stage="dpc_knn",
                              fix="pip install faiss-cpu, or use index: auto, flat or ivf")
    else:
        search = _TorchSearch(x, norms, pool)
    # the cells keep shorter lists: a token with no denser one among them searches its cells again,
    # and δ is made exact wherever it matters
    dist2, nbr = search.knn(min(kk, max(k, _CELL_NEIGHBOURS)) if search.name == "ivf" else kk)
    recall = None
    if kind == "auto" and isinstance(search, _CellSearch):
        recall = 1.0 if search.sample is None else _sampled_recall(norms, dist2, k, search.sample)
        if recall < _MIN_RECALL:  # no local structure for the cells: search exactly
            search = _FaissSearch(x, "flat", faiss) if faiss is not None else _TorchSearch(x, norms, pool)
            dist2, nbr = search.knn(kk)
    rows = torch.arange(n, dtype=torch.int64, device=x.device)

    # Density: self at distance 0, then the k-1 nearest others (approximate searches may miss self).
    # (the lists are sorted and hold self at most once: the k-1 nearest others are in the first k)
    others = torch.where(nbr[:, :k] == rows.unsqueeze(1), math.inf, dist2[:, :k])
    others = torch.sort(others, dim=1).values[:, : k - 1]
    density = torch.exp(-others.sum(1) / (k * dim)) if k > 1 else torch.ones(n, device=x.device)
    density = density.to(torch.float32)
    order = torch.sort(density, descending=True, stable=True).indices
    rank = torch.empty(n, dtype=torch.int64, device=x.device)
    rank[order] = rows

    # Distance to the nearest denser token: from the kNN list, then the search's longer look.
    delta2, has = _first_denser(dist2, nbr, rank, rows)
    has[order[0]] = True
    todo = (~has).nonzero().squeeze(1)
    if todo.numel():
        delta2[todo] = search.denser(todo, rank, order, kk)
    top = order[0]
    far2 = norms + (x[top] * x[top]).sum() - 2.0 * (x @ x[top])
    delta2[top] = far2.max().clamp(min=0)
    if not search.exact:
        # the centre score, weighted when asked: its bounds pick the tokens whose δ is made exact
        scale = density if weight is None else density * weight.to(density.device, torch.float32)
        _exact_centres(x, norms, scale, delta2, rank, order, num_clusters, pool)
    delta = torch.sqrt(delta2 / dim).to(torch.float32)

    score = density * delta
    if weight is not None:  # query-guided: relevant tokens become centres first (more resolution there)
        score = score * weight.to(score.device, torch.float32)
    centers = torch.sort(score, descending=True, stable=True).indices[:num_clusters]
    assign = search.nearest(centers)
    assign[centers] = torch.arange(centers.numel(), dtype=torch.int64, device=x.device)
    return ClusterPlan(centers=centers, assign=assign, density=density, delta=delta, search=search.name,
                       recall=recall)


def _one_thread() -> None:
    """A pool thread's setup: FAISS's and torch's OpenMP run one thread here (their settings are per
    thread), so each product runs alone, as on one core."""
    torch.set_num_threads(1)
    faiss = _faiss()
    if faiss is not None:
        faiss.omp_set_num_threads(1)


def plan_clusters(x: torch.Tensor, num_clusters: int, k: int = 5, *, index: IndexKind = "auto",
                  neighbours: int = 32, weight: torch.Tensor | None = None) -> ClusterPlan:
    """DPC-KNN of ``x (N, D)`` into ``num_clusters`` clusters, on ``x``'s device (module docstring).

    ``k`` (clamped to N) sets the density; ``neighbours`` is how many nearest tokens are searched for a
    denser one before the (rarer) longer searches. With ``num_clusters ≥ N`` every token is its own
    centre. ``weight (N,)``, positive: multiplies each token's centre score ρ·δ (query-guided
    clustering, :func:`query_weights`); None leaves the plan exactly as without it.

    FAISS's BLAS and torch sum in a different order with a different thread count, which can flip a
    near tie and so a cluster; on the CPU each matrix product runs on one thread (the blocked searches
    run blocks side by side, one thread each), so the same tokens give the same clusters in a 2-thread
    local run and in a 1-CPU Ray actor.
    """
    n = int(x.shape[0])
    if n == 0 or num_clusters >= n:
        ident = torch.arange(n, dtype=torch.int64, device=x.device)
        zeros = torch.zeros(n, dtype=torch.float32, device=x.device)
        return ClusterPlan(centers=ident, assign=ident.clone(), density=zeros + 1, delta=zeros)
    if num_clusters < 1:
        raise ValueError(f"num_clusters must be >= 1, got {num_clusters}")
    xf = x.detach().to(torch.float32).contiguous()
    if xf.device.type != "cpu":
        return _plan(xf, num_clusters, k, neighbours, index, None, weight)
    faiss = _faiss()
    workers = torch.get_num_threads()
    faiss_threads = faiss.omp_get_max_threads() if faiss is not None else 1
    if faiss is not None:
        faiss.omp_set_num_threads(1)
    torch.set_num_threads(1)
    # FAISS's OpenMP thread count is per thread: each of the pool's threads sets its own
    pool = (ThreadPoolExecutor(workers, thread_name_prefix="dpc_knn", initializer=_one_thread)
            if workers > 1 else None)
    try:
        return _plan(xf, num_clusters, k, neighbours, index, pool, weight)
    finally:
        if pool is not None:
            pool.shutdown()
        if faiss is not None:
            faiss.omp_set_num_threads(faiss_threads)
        torch.set_num_threads(workers)


def apply_clusters(tokens: Tokens, plan: ClusterPlan) -> Tokens:
    """One size-weighted token per cluster, in time order (unchanged input when nothing merges)."""
    if plan.centers.numel() >= tokens.num_tokens:
        return tokens
    return merge_groups(tokens, plan.assign.cpu())


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


def query_weights(score: torch.Tensor, strength: float = 1.0) -> torch.Tensor:
    """Positive weights from relevance scores: ``exp(strength · z)``, ``z`` the score standardised over
    the window and clipped to ±3 (so one outlier cannot take the whole budget; the largest ratio is
    ``e^(6·strength)``). All ones when the scores are all equal or ``strength`` is 0."""
    s = score.detach().to(torch.float64)
    std = s.std(unbiased=False) if s.numel() > 1 else s.new_zeros(())
    if strength == 0 or not float(std) > 1e-9:
        return torch.ones(s.shape, dtype=torch.float32)
    z = ((s - s.mean()) / std).clamp(-3.0, 3.0)
    return torch.exp(strength * z).to(torch.float32)


def _share(budget: int, counts: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Split ``budget`` over groups in proportion to ``counts`` (× ``weights``, when given) by largest
    remainder, each group getting ≥ 1 and ≤ its count."""
    mass = counts.to(torch.float64) if weights is None else counts.to(torch.float64) * weights.to(torch.float64)
    exact = mass * budget / mass.sum()
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
                  event_ratio: float = 0.25, index: IndexKind = "auto", neighbours: int = 32,
                  device: torch.device | str | None = None, weight: torch.Tensor | None = None) -> Tokens:
    """Cluster one window's tokens down to ``max_tokens`` (unchanged when it already fits).

    With ``event_level`` the frames (runs of equal ``t0``) are first cut into
    ``ceil(T · event_ratio)`` contiguous events (frame descriptor: the size-weighted mean token), and
    each event is clustered on its own share of the budget. ``device``: where the clustering computes
    (the tokens' own, the CPU, when None); the result is on the CPU either way. ``weight (n,)``
    (:func:`query_weights`): relevant tokens become centres first and, with events, an event's share of
    the budget grows with its mean weight — relevant moments keep more resolution (LongVU's rule).
    """
    n = tokens.num_tokens
    if n <= max_tokens:
        return tokens
    data = tokens.data if device is None else tokens.data.to(device)
    if not event_level:
        return apply_clusters(tokens, plan_clusters(data, max_tokens, k, index=index, neighbours=neighbours,
                                                    weight=weight))
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
    mean_w = None
    if weight is not None:
        mean_w = torch.zeros(counts.numel(), dtype=torch.float64).index_add_(0, event, weight.to(torch.float64))
        mean_w = mean_w / counts.to(torch.float64)
    share = _share(max_tokens, counts, mean_w)
    group = torch.empty(n, dtype=torch.int64)
    offset = 0
    for e in range(int(counts.numel())):
        idx = (event == e).nonzero().squeeze(1)
        plan = plan_clusters(data[idx.to(data.device)], int(share[e]), k, index=index, neighbours=neighbours,
                             weight=None if weight is None else weight[idx])
        group[idx] = plan.assign.cpu() + offset
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
    # "auto": exact ("flat") below 8,192 tokens, so smaller windows give exact, unchanged results; above,
    # "ivf" (cells on a sketch, exact distances inside: 11x faster than the O(N²) form at 16k tokens, same
    # clusters, in benchmarks/dpc_knn.py), checked on sampled tokens and exact when the check fails.
    # "flat": always exact. "ivf": the cells unchecked. "hnsw": an approximate FAISS graph. On CUDA the
    # search is exact whatever this says.
    index: Literal["auto", "flat", "ivf", "hnsw"] = "auto"
    # 32 nearest tokens searched for a denser one before the (rarer) longer searches.
    neighbours: int = 32
    # "auto": a CUDA GPU when PyTorch sees one (exact blocked search there, far faster), else the CPU.
    device: str = "auto"
    # Which token scores steer the clustering (Tokens.score): "query" only a query's relevance (the
    # hf_encoder marks it, meta score_kind), "score" any score ([CLS] attention too), "none" never.
    weight_by: Literal["query", "score", "none"] = "query"
    # exp(strength · standardised score) multiplies each token's centre score: 1 lets a token one
    # standard deviation more relevant be a centre as if 2.7x denser; 0 turns steering off.
    query_strength: float = 1.0

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
        if (msg := check_device(self.device)) is not None:
            yield "device", msg
        if not (math.isfinite(self.query_strength) and 0.0 <= self.query_strength <= 10.0):
            yield "query_strength", f"must be in [0, 10], got {self.query_strength}"


@register("dpc_knn")
class DPCKNN(OnDevice, WindowedOperator):
    """Cluster each window's video tokens to a budget with DPC-KNN (Chat-UniVi), on FAISS or a GPU."""

    config_class = DPCKNNConfig
    config: DPCKNNConfig

    def reduce(self, window: Tokens) -> Tokens:
        c = self.config
        device = self.device  # resolved on first use, once; a config error names this step
        weight = None
        steer = (c.weight_by == "score" or (c.weight_by == "query" and window.meta.get("score_kind") == "query"))
        if steer and window.score is not None and c.query_strength > 0:
            weight = query_weights(window.score, c.query_strength)
        return reduce_tokens(window, c.max_tokens, c.k, event_level=c.event_level, event_ratio=c.event_ratio,
                             index=c.index, neighbours=c.neighbours,
                             device=None if device.type == "cpu" else device, weight=weight)

"""Does DPC-KNN without an N×N matrix scale past the O(N²) reference?

1. N = 4096 and 16384 tokens of D = 1024 (random blobs of varied widths; 1024 blobs, more than the 256
   clusters asked, is the hard case; 64 blobs the easy one): the plain O(N²) torch version of the
   same formulas (Chat-UniVi's ``cluster_dpc_knn`` with the engine's tie and densest-token rules)
   against :func:`streamzip.operators.dpc_knn.plan_clusters` with each search (``flat`` exact FAISS,
   ``ivf`` cells with exact distances inside, ``auto`` the default: ``flat`` below 8192 tokens, checked
   ``ivf`` above, ``hnsw``), in one run: median wall time, speed-up, and the fraction of tokens assigned
   to the same centre.
2. N = 262144, D = 1024 (1 GiB of tokens) with ``auto``, the whole window kernel (plan + size-weighted
   merge to 256 tokens) in a subprocess: wall time and peak RSS (``ru_maxrss``; importing torch alone
   takes about 0.7 GB of it).

Goals: >= 10x faster than the reference at N = 16384 with >= 99% of tokens on the same centre; N = 262144
finishes with peak RSS < 4 GB. The reference's cost is one N²·D matrix product (BLAS on all cores), which
``flat`` repeats on one core (so exact search is no faster); ``ivf``/``auto`` compute about a thirteenth
of its products (the means, the cells, exact inside, the recall check, the exact δ of the likely
centres, the nearest centre) on FAISS's BLAS, one thread per product; what is left goes to the serial
k-means steps, gathers of rows, selections and merges. The machine's load average is recorded: other
work on the cores slows both sides (the reference's 2-thread product more), so ratios within one run
are what count. Run: ``python benchmarks/dpc_knn.py`` (3 minutes on 2 quiet cores, more under load).
The same comparison on a CUDA GPU: ``benchmarks/gpu_dpc_knn.py``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import write_result  # noqa: E402

from streamzip.operators.dpc_knn import apply_clusters, plan_clusters  # noqa: E402
from streamzip.packets import Tokens  # noqa: E402
from streamzip.tokens import with_fresh_assignment  # noqa: E402

DIM = 1024
NUM_CLUSTERS = 256


def clustered(n: int, d: int = DIM, *, blobs: int = 1024, seed: int = 0) -> torch.Tensor:
    """``(n, d)`` tokens around ``blobs`` centres of varied widths (more blobs than clusters asked, so
    the clustering has real choices to make); built in chunks to keep memory at one copy."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(blobs, d, generator=g)
    width = 0.3 + 0.6 * torch.rand(blobs, 1, generator=g)
    label = torch.randint(0, blobs, (n,), generator=g)
    x = torch.empty(n, d)
    for s in range(0, n, 8192):
        lab = label[s:s + 8192]
        x[s:s + lab.numel()] = centres[lab] + width[lab] * torch.randn(lab.numel(), d, generator=g)
    return x


def reference(x: torch.Tensor, num_clusters: int, k: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    """O(N²) DPC-KNN on the full distance matrix (float32, as Chat-UniVi); (centres, assignment)."""
    n, d = x.shape
    dist = torch.cdist(x, x) / math.sqrt(d)
    density = torch.exp(-(torch.topk(dist, k, dim=1, largest=False).values ** 2).mean(1))
    order = torch.sort(density, descending=True, stable=True).indices
    rank = torch.empty(n, dtype=torch.int64, device=x.device)
    rank[order] = torch.arange(n, device=x.device)
    denser = rank.unsqueeze(0) < rank.unsqueeze(1)
    delta = torch.where(denser, dist, torch.full_like(dist, math.inf)).min(1).values
    del denser
    delta[order[0]] = dist[order[0]].max()
    centres = torch.sort(density * delta, descending=True, stable=True).indices[:num_clusters]
    assign = dist[:, centres].argmin(1)
    assign[centres] = torch.arange(num_clusters, device=x.device)
    return centres, assign


#: each search and how many times it is timed (median): the exact and graph searches are slow and known
SEARCHES = {"flat": 1, "ivf": 5, "auto": 5, "hnsw": 1}


def compare(n: int, repeats: int, blobs: int) -> dict:
    """The reference and each search on the same tokens, interleaved (reference, flat, ivf, auto, hnsw,
    then again), so that other work on the machine slows both sides of a ratio alike: median wall
    times, their ratio, and the median of the ratios within each round."""
    x = clustered(n, blobs=blobs)
    got: dict = {}
    times: dict[str, list[float]] = {name: [] for name in ["reference", *SEARCHES]}
    for r in range(repeats):
        for name in times:
            if name != "reference" and r >= min(SEARCHES[name], repeats):
                continue
            fn = (lambda: reference(x, NUM_CLUSTERS)) if name == "reference" else (
                lambda kind=name: plan_clusters(x, NUM_CLUSTERS, 5, index=kind))  # type: ignore[misc]
            start = time.perf_counter()
            got[name] = fn()
            times[name].append(time.perf_counter() - start)
    ref_all = times["reference"]
    ref_s = statistics.median(ref_all)
    centres, assign = got["reference"]
    row: dict = {"n": n, "dim": DIM, "blobs": blobs, "clusters": NUM_CLUSTERS, "reference_s": round(ref_s, 3),
                 "reference_runs_s": [round(t, 3) for t in ref_all], "faiss": {}}
    for kind in SEARCHES:
        runs = times[kind]
        secs = statistics.median(runs)
        plan = got[kind]
        agree = (plan.centers[plan.assign] == centres[assign]).double().mean().item()
        paired = statistics.median(ref_all[i] / t for i, t in enumerate(runs))
        row["faiss"][kind] = {"seconds": round(secs, 3), "runs_s": [round(t, 3) for t in runs],
                              "speedup": round(ref_s / secs, 2), "speedup_paired_median": round(paired, 2),
                              "assignment_agreement": round(agree, 5),
                              "same_centres": len(set(plan.centers.tolist()) & set(centres.tolist())),
                              "search": plan.search, "sampled_recall": plan.recall}
        print(f"N={n} blobs={blobs} {kind} ({plan.search}): {secs:.2f}s vs reference {ref_s:.2f}s -> "
              f"{ref_s / secs:.1f}x (paired {paired:.1f}x), agreement {agree:.4f}", flush=True)
    return row


def child(n: int, index: str) -> None:
    """Runs in a subprocess: the whole window kernel on n tokens; prints time and peak RSS as JSON."""
    x = clustered(n)
    t0 = torch.arange(n, dtype=torch.float64) / 196 * 0.5  # 196 tokens per frame at 2 fps
    tokens = with_fresh_assignment(Tokens("s", "video", x, t0, t0 + 0.5, torch.zeros(n, 2, dtype=torch.int32),
                                          torch.ones(n, dtype=torch.int64)), 0)
    def peak_gb() -> float:
        return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6, 3)  # ru_maxrss is in KiB

    data_rss = peak_gb()
    start = time.perf_counter()
    plan = plan_clusters(tokens.data, NUM_CLUSTERS, 5, index=index)  # type: ignore[arg-type]
    plan_s, plan_rss = time.perf_counter() - start, peak_gb()
    out = apply_clusters(tokens, plan)
    secs = time.perf_counter() - start
    print(json.dumps({"n": n, "dim": DIM, "index": index, "search": plan.search, "sampled_recall": plan.recall,
                      "seconds": round(secs, 2), "plan_seconds": round(plan_s, 2),
                      "tokens_out": out.num_tokens, "sizes_sum": int(out.size.sum()),
                      "data_gib": round(x.numel() * 4 / 2**30, 3), "rss_after_data_gb": data_rss,
                      "rss_after_plan_gb": plan_rss, "peak_rss_gb": peak_gb(), "vm_hwm_gb": _vm_hwm_gb()}))


def _vm_hwm_gb() -> float | None:
    """This process image's own peak RSS (``VmHWM``; ``ru_maxrss`` survives exec and can carry over a
    forking parent's peak, which is why the scale run is started before the parent grows)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return round(int(line.split()[1]) / 1e6, 3)
    except OSError:
        pass
    return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--child", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--index", default="auto", help=argparse.SUPPRESS)
    ap.add_argument("--large", type=int, default=262144, help="token count of the scale run")
    args = ap.parse_args()
    if args.child:
        child(args.child, args.index)
        return
    # The scale run first, while this process is small (see _vm_hwm_gb).
    load_before = os.getloadavg()
    proc = subprocess.run([sys.executable, __file__, "--child", str(args.large), "--index", "auto"],
                          capture_output=True, text=True, check=True)
    large = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"N={args.large} auto: {large['seconds']}s, peak RSS {large['peak_rss_gb']} GB", flush=True)
    # 1024 blobs (more than the 256 clusters asked: a hard, ambiguous clustering) and 64 (an easy one)
    rows = [compare(4096, 5, 1024), compare(4096, 5, 64), compare(16384, 5, 1024), compare(16384, 5, 64)]
    at = {f"{kind}_{r['blobs']}_blobs": v for r in rows if r["n"] == 16384 for kind, v in r["faiss"].items()}
    write_result("dpc_knn", {
        "question": "DPC-KNN without an N×N matrix vs the O(N^2) torch reference, and scale to 262144 tokens",
        "threads": torch.get_num_threads(),
        "load_average_1min": {"start": round(load_before[0], 2), "end": round(os.getloadavg()[0], 2)},
        "compare": rows,
        "large": large,
        "goals": {
            "speedup_at_16384_ge_10x": {k: v["speedup"] >= 10 for k, v in at.items()},
            "agreement_at_16384_ge_99pct": {k: v["assignment_agreement"] >= 0.99 for k, v in at.items()},
            "large_peak_rss_lt_4gb": large["peak_rss_gb"] < 4.0,
        },
    })


if __name__ == "__main__":
    main()

"""DPC-KNN on a CUDA GPU: the O(N²) torch reference there against the engine's GPU search.

On a CUDA device :func:`streamzip.operators.dpc_knn.plan_clusters` searches exactly with blocked torch
matrix products and top-k (blocks of queries, never an N×N matrix); the reference builds the full
distance matrix (``torch.cdist``) on the same GPU. N = 16384 and 65536 tokens of D = 1024, hard (1024
blobs) and easy (64 blobs) data as in ``benchmarks/dpc_knn.py``: median seconds of 3 runs after a warm-up
(CUDA synchronised), speed-up, agreement of the assignments, peak GPU memory of each. float32 products
with TF32 off, as on the CPU. Needs torch with CUDA, numpy and streamzip (FAISS is not used: the GPU
path never imports it). Run: ``python benchmarks/gpu_dpc_knn.py`` (about a minute on an H100); writes
``results/dpc_knn_gpu.json``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import write_result  # noqa: E402
from dpc_knn import DIM, NUM_CLUSTERS, clustered, reference  # noqa: E402

from streamzip.operators.dpc_knn import plan_clusters  # noqa: E402

R = TypeVar("R")


def timed(fn: Callable[[], R], device: torch.device, repeats: int) -> tuple[float, list[float], float, R]:
    """Median seconds of ``repeats`` calls after one warm-up, every time, peak GPU GiB, the last result."""
    out = fn()  # warm-up: CUDA context, cuBLAS handles, allocator
    times = []
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - t)
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else 0.0
    return statistics.median(times), times, peak, out


def compare(n: int, blobs: int, device: torch.device, repeats: int) -> dict:
    x = clustered(n, blobs=blobs).to(device)
    ref_s, ref_all, ref_gib, (centres, assign) = timed(lambda: reference(x, NUM_CLUSTERS), device, repeats)
    ours_s, ours_all, ours_gib, plan = timed(lambda: plan_clusters(x, NUM_CLUSTERS, 5), device, repeats)
    agree = float((plan.centers[plan.assign] == centres[assign]).double().mean())
    row = {"n": n, "dim": DIM, "blobs": blobs, "clusters": NUM_CLUSTERS,
           "reference_s": round(ref_s, 4), "reference_runs_s": [round(t, 4) for t in ref_all],
           "reference_peak_gib": round(ref_gib, 2), "ours_s": round(ours_s, 4),
           "ours_runs_s": [round(t, 4) for t in ours_all], "ours_peak_gib": round(ours_gib, 2),
           "search": plan.search, "speedup": round(ref_s / ours_s, 2), "assignment_agreement": round(agree, 5),
           "same_centres": len(set(plan.centers.tolist()) & set(centres.tolist()))}
    print(f"N={n} blobs={blobs} on {device}: reference {ref_s:.3f}s ({ref_gib:.1f} GiB), ours {ours_s:.3f}s "
          f"({ours_gib:.1f} GiB) -> {ref_s / ours_s:.1f}x, agreement {agree:.4f}", flush=True)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda", help="cuda (default) or cpu (a smoke test of this script)")
    ap.add_argument("--sizes", type=int, nargs="+", default=[16384, 65536], help="token counts")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("no CUDA GPU here: run this on a GPU machine (or --device cpu --sizes 2048 to try the script)")
    torch.backends.cuda.matmul.allow_tf32 = False  # float32 products, as the CPU computes them
    rows = [compare(n, blobs, device, args.repeats) for n in args.sizes for blobs in (1024, 64)]
    name = "dpc_knn_gpu" if device.type == "cuda" else "dpc_knn_gpu_smoke"
    write_result(name, {
        "question": "DPC-KNN on a CUDA GPU: the O(N^2) torch reference vs the engine's blocked exact search",
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "torch": torch.__version__, "faiss_imported": "faiss" in sys.modules and sys.modules["faiss"] is not None,
        "compare": rows,
    })


if __name__ == "__main__":
    main()

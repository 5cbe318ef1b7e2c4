"""(Named ray_runtime.py: a script named ray.py would shadow the ray package.)

What does the Ray runtime cost and buy on this machine? The same pipeline on 8 generated files,
local vs Ray in one run, plus the per-packet overhead of an actor edge and the throughput with 1, 2
and 4 streams at once (each stream its own chain of actors).

Goals: Ray >= 0.7x local with one stream; report the edge overhead and the parallel throughputs.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import write_result  # noqa: E402

from streamzip.packets import Tokens  # noqa: E402
from streamzip.pipeline import load_pipeline  # noqa: E402
from streamzip.runtime.local import LocalRuntime  # noqa: E402
from streamzip.runtime.ray import RayRuntime, init_ray  # noqa: E402
from streamzip.synthetic import make_clip  # noqa: E402


def run_all(rt, pipe, files: list[str]) -> tuple[float, int, int]:  # type: ignore[no-untyped-def]
    """Seconds to run every file, the source packets and the media seconds."""
    t = time.perf_counter()
    packets = 0
    for f in files:
        for p in rt.run(pipe, [f]):
            packets += isinstance(p, Tokens)
    secs = time.perf_counter() - t
    return secs, len(rt.results), int(sum(r.media_s for r in rt.results))


def parallel(pipe, files: list[str], streams: int) -> float:  # type: ignore[no-untyped-def]
    """Media seconds per wall second with ``streams`` chains running at once over the files."""
    chunks = [files[i::streams] for i in range(streams)]
    runtimes = [RayRuntime() for _ in range(streams)]
    for rt in runtimes:  # start the actors before the clock
        list(rt.run(pipe, [files[0]]))
        rt.results.clear()
    t = time.perf_counter()
    threads = [threading.Thread(target=lambda rt=rt, c=c: [None for _ in rt.run(pipe, c)]) for rt, c in zip(runtimes, chunks)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    secs = time.perf_counter() - t
    media = sum(r.media_s for rt in runtimes for r in rt.results)
    for rt in runtimes:
        rt.shutdown()
    return media / secs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--files", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--pipeline", default="default")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    init_ray()
    pipe = load_pipeline(args.pipeline)
    with tempfile.TemporaryDirectory() as tmp:
        half = args.seconds / 2
        files = [make_clip(Path(tmp) / f"f{i}.mp4", scenes=(("static", half), ("motion", half)), width=480,
                           height=270, seed=i).path for i in range(args.files)]
        local_t, ray_t = [], []
        ray_rt = RayRuntime()
        list(ray_rt.run(pipe, [files[0]]))  # actors up before timing
        for _ in range(args.repeats):  # interleaved so load hits both alike
            local_t.append(run_all(LocalRuntime(), pipe, files)[0])
            ray_rt.results.clear()
            ray_t.append(run_all(ray_rt, pipe, files)[0])
        packets = sum(r.stages[0].packets_in for r in ray_rt.results) + sum(
            1 for r in ray_rt.results)  # source packets incl. End
        stages = len(pipe.steps)
        local_med, ray_med = statistics.median(local_t), statistics.median(ray_t)
        # One light pipeline isolates the edge cost: per packet per stage, Ray minus local.
        light = load_pipeline("patch_only")
        lt = statistics.median(run_all(LocalRuntime(), light, files)[0] for _ in range(args.repeats))
        light_rt = RayRuntime()
        list(light_rt.run(light, [files[0]]))
        rts = []
        for _ in range(args.repeats):
            light_rt.results.clear()
            rts.append(run_all(light_rt, light, files)[0])
        light_packets = sum(r.stages[0].packets_in + 1 for r in light_rt.results)
        edge_ms = max(0.0, (statistics.median(rts) - lt) / light_packets * 1000)
        light_rt.shutdown()
        ray_rt.shutdown()
        media = args.files * args.seconds
        par = {str(n): parallel(pipe, files, n) for n in (1, 2, 4)}
        write_result("ray_runtime", {
            "pipeline": args.pipeline, "files": args.files, "seconds_each": args.seconds,
            "local": {"median_s": local_med, "runs_s": local_t, "media_s_per_s": media / local_med},
            "ray": {"median_s": ray_med, "runs_s": ray_t, "media_s_per_s": media / ray_med,
                    "actors_per_stream": stages, "source_packets": packets},
            "ratio_ray_to_local": local_med / ray_med,
            "edge_overhead_ms_per_packet": edge_ms,
            "parallel_streams_media_s_per_s": par,
            "goal": "ratio >= 0.7",
        })


if __name__ == "__main__":
    main()

"""(Named ray_runtime.py: a script named ray.py would shadow the ray package.)

What does the Ray runtime cost and buy on this machine? The same pipeline on 8 generated files,
local vs Ray in one run (Ray with its default of light steps fused into one actor per stream, and
with an actor per step), plus the per-packet overhead of an actor edge, the throughput with 1, 2 and 4
streams at once (one runtime, each stream its own actors for the steps that are not encoders, the
encoders on one pool actor shared by the streams), 4 streams of the encoder alone (`patch_only`) on
pools of 1, 2 and 4 actors, and one long file through `streamzip batch` whole vs cut into segments
(`--segment-s`).

Goals: Ray >= 0.7x local with one stream; report the edge overhead and the parallel throughputs.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import write_result  # noqa: E402

from streamzip.batch import run_batch, segment_length_s  # noqa: E402
from streamzip.packets import Tokens  # noqa: E402
from streamzip.pipeline import load_pipeline  # noqa: E402
from streamzip.registry import get as get_stage  # noqa: E402
from streamzip.runtime.local import LocalRuntime  # noqa: E402
from streamzip.runtime.ray import RayRuntime, init_ray, stage_groups  # noqa: E402
from streamzip.stats import InputResult  # noqa: E402
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


def parallel(rt: RayRuntime, pipe, files: list[str], streams: int) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    """Media seconds per wall second with ``streams`` streams running at once over the files (threads
    on one runtime: its encoders on its pool, the other steps one actor per stream), and the stage
    actors that took."""
    chunks = [files[i::streams] for i in range(streams)]
    results: list[InputResult] = []

    def run(paths: list[str]) -> None:
        for path in paths:
            r = InputResult(input=path, stream=Path(path).name)
            results.append(r)
            for _ in rt.run_input(pipe, path, r):
                pass

    def at_once(parts: list[list[str]]) -> float:
        threads = [threading.Thread(target=run, args=(c,)) for c in parts]
        t = time.perf_counter()
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        return time.perf_counter() - t

    at_once([[files[i % len(files)]] for i in range(streams)])  # every stream's actors up before the clock
    results.clear()
    secs = at_once(chunks)
    groups = stage_groups(pipe, pooled=rt.encoder_pool > 0, fuse=rt.fuse)
    encoders = sum(rt.encoder_pool > 0 and get_stage(pipe.steps[g[0]].op).kind == "encoder" for g in groups)
    actors = rt.encoder_pool * encoders + streams * (len(groups) - encoders)
    return {"media_s_per_s": sum(r.media_s for r in results) / secs, "stage_actors": actors}


def segments(pipe, path: str, seconds: float, segment_s: float, out: Path) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    """One long file through `streamzip batch`, whole and cut into segments (fresh outputs each)."""
    run_batch(pipe, [path], out / "warm", segment_s=segment_s)  # Ray Data's workers up before the clock
    timing = {}
    for label, seg in (("whole", None), ("segments", segment_s)):
        t = time.perf_counter()
        (r,) = run_batch(pipe, [path], out / label, segment_s=seg)
        timing[label] = time.perf_counter() - t
        assert r.ok, r.error
    shutil.rmtree(out, ignore_errors=True)
    return {"seconds": seconds, "segment_s": segment_length_s(pipe, segment_s),
            "whole_s": timing["whole"], "segmented_s": timing["segments"],
            "whole_media_s_per_s": seconds / timing["whole"], "segmented_media_s_per_s": seconds / timing["segments"],
            "speedup": timing["whole"] / timing["segments"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--files", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--pipeline", default="default")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--longer-seconds", type=float, default=60,
                    help="the local/Ray ratio again on 2 files this long (a run's fixed costs amortised)")
    ap.add_argument("--long-seconds", type=float, help="the long file cut into segments (default: 3x the files)")
    ap.add_argument("--segment-s", type=float, help="segment length (default: a quarter of the long file)")
    args = ap.parse_args()
    args.long_seconds = args.long_seconds or 3 * args.files * args.seconds
    args.segment_s = args.segment_s or args.long_seconds / 4
    load_start = os.getloadavg()[0]  # a shared machine: say how busy it was
    init_ray()
    pipe = load_pipeline(args.pipeline)
    with tempfile.TemporaryDirectory() as tmp:
        half = args.seconds / 2
        files = [make_clip(Path(tmp) / f"f{i}.mp4", scenes=(("static", half), ("motion", half)), width=480,
                           height=270, seed=i).path for i in range(args.files)]
        local_t, ray_t, unfused_t = [], [], []
        ray_rt, unfused_rt = RayRuntime(), RayRuntime(fuse=False)
        list(ray_rt.run(pipe, [files[0]]))  # actors up before timing
        list(unfused_rt.run(pipe, [files[0]]))
        for _ in range(args.repeats):  # interleaved so load hits all alike
            local_t.append(run_all(LocalRuntime(), pipe, files)[0])
            ray_rt.results.clear()
            ray_t.append(run_all(ray_rt, pipe, files)[0])
            unfused_t.append(run_all(unfused_rt, pipe, files)[0])
        unfused_rt.shutdown()
        packets = sum(r.stages[0].packets_in for r in ray_rt.results) + sum(
            1 for r in ray_rt.results)  # source packets incl. End
        stages = len(pipe.steps)
        local_med, ray_med, unfused_med = (statistics.median(t) for t in (local_t, ray_t, unfused_t))
        # The same on longer files: what a stream pays once (actors reset, the chain filled and drained)
        # weighs less.
        half_long = args.longer_seconds / 2
        longer = [make_clip(Path(tmp) / f"g{i}.mp4", scenes=(("static", half_long), ("motion", half_long)),
                            width=480, height=270, seed=50 + i).path for i in range(2)]
        longer_local, longer_ray = [], []
        for _ in range(args.repeats):
            longer_local.append(run_all(LocalRuntime(), pipe, longer)[0])
            ray_rt.results.clear()
            longer_ray.append(run_all(ray_rt, pipe, longer)[0])
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
        shared = RayRuntime(encoder_pool=1)  # one runtime: a stream's actors are reused by the next
        par = {str(n): parallel(shared, pipe, files, n) for n in (1, 2, 4)}
        shared.shutdown()
        # The encoder pool alone: `patch_only` is its encoder, so 4 streams use the pool's actors only.
        pools = {}
        for n in (1, 2, 4):
            rt = RayRuntime(encoder_pool=n)
            pools[str(n)] = parallel(rt, light, files, 4)
            rt.shutdown()
        quarter = args.long_seconds / 4
        long = make_clip(Path(tmp) / "long.mp4", width=480, height=270, seed=99,
                         scenes=(("static", quarter), ("pan", quarter), ("motion", quarter), ("static", quarter))).path
        seg = segments(pipe, long, args.long_seconds, args.segment_s, Path(tmp) / "batch")
        write_result("ray_runtime", {
            "pipeline": args.pipeline, "files": args.files, "seconds_each": args.seconds,
            "local": {"median_s": local_med, "runs_s": local_t, "media_s_per_s": media / local_med},
            "ray": {"median_s": ray_med, "runs_s": ray_t, "media_s_per_s": media / ray_med,
                    "steps": stages, "actors_per_stream": len(stage_groups(pipe)), "source_packets": packets},
            "ray_unfused": {"median_s": unfused_med, "runs_s": unfused_t, "media_s_per_s": media / unfused_med,
                            "actors_per_stream": stages},
            "ratio_ray_to_local": local_med / ray_med,
            # each repeat's local and Ray runs are neighbours in time: their ratio shows the spread
            "ratio_per_repeat": [lt_ / rt_ for lt_, rt_ in zip(local_t, ray_t)],
            "ratio_ray_unfused_to_local": local_med / unfused_med,
            "longer_files": {"files": 2, "seconds_each": args.longer_seconds, "local_runs_s": longer_local,
                             "ray_runs_s": longer_ray,
                             "ratio_ray_to_local": statistics.median(longer_local) / statistics.median(longer_ray)},
            "edge_overhead_ms_per_packet": edge_ms,
            "parallel_streams_media_s_per_s": {k: v["media_s_per_s"] for k, v in par.items()},
            "parallel_streams_stage_actors": {k: v["stage_actors"] for k, v in par.items()},
            "encoder_pool_4_streams_pipeline": "patch_only",
            "encoder_pool_4_streams_media_s_per_s": {k: v["media_s_per_s"] for k, v in pools.items()},
            "encoder_pool_4_streams_stage_actors": {k: v["stage_actors"] for k, v in pools.items()},
            "batch_long_file": seg,
            "load_average_1m": {"start": load_start, "end": os.getloadavg()[0]},
            "goal": "ratio >= 0.7",
        })


if __name__ == "__main__":
    main()

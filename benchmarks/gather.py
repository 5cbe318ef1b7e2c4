"""What does gathering buy (the frames of several streams on one encoder pool actor in one pass, see
"Gathering" in streamzip/runtime/ray.py)? N camera-like streams (one frame per packet) at once, each in
its own runtime and thread as `streamzip live` runs cameras, sharing one `hf_encoder` pool actor:
gathering on against off, interleaved, in one run.

On a CPU a pass over many frames costs about as much per frame as passes over one, so the gain here
is the actor calls saved (a call costs milliseconds); a small random-initialised CLIP tower keeps the
encoder's own work small, so the calls show. On a GPU the pass itself gets cheaper per frame with the
batch (benchmarks/encoders.py: batch 1 vs 16 vs 64), which is what gathering is for.

    python benchmarks/gather.py [--streams 8] [--seconds 8] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import ray  # noqa: E402
from _common import write_result  # noqa: E402

from streamzip.encoders.tiny import save_tiny_model  # noqa: E402
from streamzip.packets import Tokens  # noqa: E402
from streamzip.pipeline import Pipeline  # noqa: E402
from streamzip.runtime.ray import RayRuntime, init_ray  # noqa: E402
from streamzip.sources._names import stream_name  # noqa: E402
from streamzip.stats import InputResult  # noqa: E402
from streamzip.synthetic import make_clip  # noqa: E402


def run(runtimes: list[RayRuntime], pipe: Pipeline, clips: list[str]) -> dict[str, Any]:
    """Every clip at once, one runtime and thread each (their actors placed by an earlier run, so
    the start-up is not timed); wall seconds, tokens and the gather's counts over this run."""
    gathers = [g for _, pool in runtimes[0]._pools.values() for g in pool.gathers if g is not None]
    before = (sum(g.calls for g in gathers), sum(g.pushes for g in gathers))
    tokens = [0] * len(clips)
    errors: list[BaseException] = []
    start = threading.Barrier(len(clips) + 1)

    def go(i: int) -> None:
        try:
            result = InputResult(input=clips[i], stream=stream_name(clips[i]))
            packets = runtimes[i].run_input(pipe, clips[i], result)
            start.wait(300)
            tokens[i] = sum(p.num_tokens for p in packets if isinstance(p, Tokens))
        except BaseException as err:  # noqa: BLE001 - reported below
            errors.append(err)

    threads = [threading.Thread(target=go, args=(i,)) for i in range(len(clips))]
    for t in threads:
        t.start()
    start.wait(300)
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    if errors:
        raise errors[0]
    calls = sum(g.calls for g in gathers) - before[0]
    pushes = sum(g.pushes for g in gathers) - before[1]
    return {"gather": bool(gathers), "wall_s": round(wall, 3), "tokens": sum(tokens), "encoder_calls": calls,
            "pushes": pushes, "streams_per_call": round(pushes / calls, 2) if calls else 1.0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--streams", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=10.0, help="media seconds per stream")
    ap.add_argument("--fps", type=float, default=4.0)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    init_ray(num_cpus=2)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        model = save_tiny_model("clip", root / "clip", image_size=32, patch_size=8)
        clips = [make_clip(root / f"cam{i}.mp4", scenes=(("pan", args.seconds / 2), ("motion", args.seconds / 2)),
                           width=96, height=96, audio=False, seed=i).path for i in range(args.streams)]
        pipe = (Pipeline("gather", decode={"fps": args.fps, "width": 32, "height": 32, "batch_frames": 1})
                .add("hf_encoder", id="enc", model=str(model), device="cpu")
                .add("framefusion", threshold=0.95, window_s=1.0))
        sets = {gather: [RayRuntime(encoder_pool=1, encoder_gather=gather, batch_packets=1) for _ in clips]
                for gather in (True, False)}
        for runtimes in sets.values():
            run(runtimes, pipe, clips)  # warm-up: actors placed, imports, the model loaded
        rows: list[dict[str, Any]] = []
        for rep in range(args.repeats):
            for gather in (True, False):
                row = run(sets[gather], pipe, clips)
                rows.append({"repeat": rep, **row})
                print(row, flush=True)
        (actor,) = sets[True][0].pool_actors()["enc"]
        counts = ray.get(actor.gather_counts.remote())
        for runtimes in sets.values():
            for rt in runtimes:
                rt.shutdown()
    on = [r for r in rows if r["gather"]]
    off = [r for r in rows if not r["gather"]]
    med_on = statistics.median(r["wall_s"] for r in on)
    med_off = statistics.median(r["wall_s"] for r in off)
    frames = args.streams * args.seconds * args.fps
    result = {
        "question": "N one-frame-per-packet streams on one hf_encoder pool actor: gathering on vs off",
        "streams": args.streams, "media_s_per_stream": args.seconds, "fps": args.fps, "frames": int(frames),
        "median_wall_s": {"on": round(med_on, 3), "off": round(med_off, 3)},
        "speedup": round(med_off / med_on, 2),
        "frames_per_s": {"on": round(frames / med_on, 1), "off": round(frames / med_off, 1)},
        "streams_per_call_on": statistics.median(r["streams_per_call"] for r in on),
        "same_tokens": len({r["tokens"] for r in rows}) == 1,
        "actor_joint_encodes": counts["calls"], "actor_most_streams_in_a_call": counts["most_streams"],
        "runs": rows,
    }
    write_result("gather", result)
    ray.shutdown()


if __name__ == "__main__":
    main()

"""Does the engine's RAM stay flat over a 2-hour stream, and what does each window cost?

A synthetic 2-hour input (FFmpeg's ``testsrc2`` at the sampled 2 fps, 224×224, so decoding is
fast-forwarded) and a beeping ``sine`` (unless ``--no-audio``) run through the default pipeline: the
patch encoder, FrameFusion and DPC-KNN, the VAD, fbank encoder and A-ToMe (each when registered), then
``window`` (4 s) and ``memory`` (M = 256). ``--only-memory`` keeps the encoders, ``window`` and
``memory`` alone. Measured in one run:

- resident memory (``/proc/self/statm``) at media minute 5 and minute 120, their ratio (goal: within
  5%), and the slope of a line fitted to every window's RSS between them;
- per-window latency: wall seconds per 4 s window for the whole pipeline (p50/p95), and for the
  window + memory stages alone (p50/p95);
- a baseline in the same process: the same source and encoders without any compression stage, over
  ``--baseline-minutes``, for the ratio of per-window latency.

Timings depend on ``--threads`` (torch intra-op threads, default 1: on a shared 2-core machine more
threads only add contention for these small tensors).

Run: ``python benchmarks/memory.py`` (about 4 minutes on 2 cores; ``--minutes 10`` for a quick look).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import torch  # noqa: E402
from _common import write_result  # noqa: E402

from streamzip.packets import Tokens  # noqa: E402
from streamzip.pipeline import Pipeline  # noqa: E402
from streamzip.registry import available  # noqa: E402
from streamzip.runtime.local import StageRunner  # noqa: E402
from streamzip.sources.file import FileSource  # noqa: E402
from streamzip.stats import InputResult  # noqa: E402

WINDOW_S = 4.0
PAGE = os.sysconf("SC_PAGE_SIZE")


def rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * PAGE / 2**20


def source(minutes: float, audio: bool) -> str:
    seconds = int(minutes * 60)
    video = f"testsrc2=size=224x224:rate=2:duration={seconds}"
    if not audio:
        return f"lavfi:{video}"
    return f"lavfi:{video}[out0];sine=frequency=300:beep_factor=6:sample_rate=16000:duration={seconds}[out1]"


def build(compress: bool, audio: bool, *, others: bool = True) -> tuple[Pipeline, list[str]]:
    names = available() if others else {}
    pipe = Pipeline("memory-bench", decode={"fps": 2, "width": 224, "height": 224})
    pipe.add("patch_encoder", id="video_encoder", patch_size=16)
    used = ["patch_encoder"]
    if compress:
        for op in ("framefusion", "dpc_knn"):
            if op in names:
                pipe.add(op)
                used.append(op)
    if audio:
        for op in ("vad", "fbank_encoder", "atome"):
            if op in names and (compress or op == "fbank_encoder"):
                pipe.add(op)
                used.append(op)
    if compress:
        pipe.add("window", window_s=WINDOW_S).add("memory")
        used += ["window", "memory"]
    return pipe, used


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


def run(minutes: float, *, compress: bool, audio: bool, others: bool = True) -> dict[str, Any]:
    pipe, used = build(compress, audio, others=others)
    mods = pipe.modalities()
    src = FileSource(source(minutes, audio), pipe.decode, stream="bench", want_video="video" in mods,
                     want_audio="audio" in mods)
    stages = pipe.build("bench")
    runner = StageRunner(stages, InputResult(input="bench", stream="bench"))
    timed = [i for i, s in enumerate(stages) if s.name in ("window", "memory")]
    per_window_s: list[float] = []  # whole pipeline, wall seconds per 4 s of media
    stage_ms: list[float] = []  # window + memory stages, per video window
    rss: list[tuple[float, float]] = []  # (media end of window, MB)
    tokens: dict[str, Any] = {"memory_max": 0, "read_max": 0}
    memory_now: dict[str, int] = {}
    next_mark, last_wall, last_stage = WINDOW_S, time.perf_counter(), 0.0
    t_start = time.perf_counter()
    for packet in src:
        for out in runner.push(packet):
            if not isinstance(out, Tokens):
                continue
            kind = out.meta.get("kind")
            if kind == "window":
                w = tokens.setdefault(f"{out.modality}_windows", {"count": 0, "empty": 0, "max_tokens": 0,
                                                                  "mean_tokens": 0.0})
                w["count"] += 1
                w["empty"] += out.num_tokens == 0
                w["max_tokens"] = max(w["max_tokens"], out.num_tokens)
                w["mean_tokens"] += (out.num_tokens - w["mean_tokens"]) / w["count"]
            if kind == "window" and out.modality == "video":
                spent = sum(runner.stats[i].seconds for i in timed)
                stage_ms.append(1e3 * (spent - last_stage))
                last_stage = spent
            elif kind == "memory":
                memory_now[out.modality] = out.num_tokens
                tokens["memory_max"] = max(tokens["memory_max"], sum(memory_now.values()))
            elif kind == "read":
                tokens["read_max"] = max(tokens["read_max"], out.num_tokens)
        media = src.stats.duration_s
        while media >= next_mark:  # wall time per 4 s of media, whatever the stages emit
            now = time.perf_counter()
            per_window_s.append(now - last_wall)
            last_wall = now
            rss.append((next_mark, rss_mb()))
            next_mark += WINDOW_S
    wall = time.perf_counter() - t_start
    result: dict[str, Any] = {
        "stages": used, "media_minutes": minutes, "wall_s": round(wall, 1),
        "speed_x_realtime": round(minutes * 60 / wall, 1),
        "pipeline_s_per_window": {"p50": percentile(per_window_s, 0.5), "p95": percentile(per_window_s, 0.95)},
    }
    if compress:
        tokens["memory_at_end"] = dict(memory_now)
        result["window_memory_ms_per_window"] = {"p50": percentile(stage_ms, 0.5), "p95": percentile(stage_ms, 0.95)}
        result["tokens"] = tokens
        result["stage_seconds"] = {s.step_id: round(s.seconds, 2) for s in runner.stats}
    if rss:
        at5 = next((mb for t, mb in rss if t >= 300.0), rss[-1][1])
        end = rss[-1][1]
        late = [(t, mb) for t, mb in rss if t >= 300.0]
        slope = _slope(late) * 3600 if len(late) > 2 else float("nan")
        result["rss_mb"] = {"minute_5": round(at5, 1), f"minute_{int(rss[-1][0] // 60)}": round(end, 1),
                            "ratio_end_to_minute_5": round(end / at5, 4), "max": round(max(mb for _, mb in rss), 1),
                            "slope_mb_per_hour_after_minute_5": round(slope, 2),
                            "every_10_min": [round(mb, 1) for t, mb in rss if t % 600 == 0]}
    return result


def _slope(points: list[tuple[float, float]]) -> float:
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    den = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / den if den else 0.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--minutes", type=float, default=120.0)
    ap.add_argument("--baseline-minutes", type=float, default=10.0)
    ap.add_argument("--no-audio", dest="audio", action="store_false",
                    help="video only (default: a beeping sine too, through VAD, fbank and A-ToMe)")
    ap.add_argument("--only-memory", action="store_true", help="leave out FrameFusion, DPC-KNN and the audio "
                    "compressors: patch encoder, window, memory")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (1: on a busy 2-core machine more threads only add contention)")
    ap.add_argument("--name", default="memory", help="result file name under benchmarks/results/")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    baseline = run(args.baseline_minutes, compress=False, audio=args.audio)
    full = run(args.minutes, compress=True, audio=args.audio, others=not args.only_memory)
    ratio = full["pipeline_s_per_window"]["p50"] / baseline["pipeline_s_per_window"]["p50"]
    rss = full.get("rss_mb", {})
    write_result(args.name, {
        "question": "RSS flat over a 2-hour stream through window + memory; per-window latency",
        "goal": "RSS at minute 120 within 5% of minute 5",
        "met": bool(rss) and abs(rss["ratio_end_to_minute_5"] - 1.0) <= 0.05,
        "torch_threads": args.threads, "full": full, "baseline_encoder_only": baseline,
        "latency_ratio_p50_full_vs_baseline": round(ratio, 2),
    })


if __name__ == "__main__":
    main()

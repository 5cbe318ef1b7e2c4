"""Is the pipeline decode-bound? Decode-only frames/s vs the `run` pipeline (patch encoder, no
compression, same sampling), on a generated 60 s 720p25 H.264 clip, in one run.

Goal: the pipeline reaches >= 0.8 of decode-only throughput (source frames per second).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

import av

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import median_time, write_result  # noqa: E402

from streamzip.pipeline import Pipeline  # noqa: E402
from streamzip.synthetic import make_clip  # noqa: E402


def decode_only(path: str, threads: int) -> int:
    """Decode every video frame with the same threading the source uses; no conversion."""
    n = 0
    with av.open(path) as c:
        s = c.streams.video[0]
        s.thread_type = "AUTO"
        s.codec_context.thread_count = threads
        for _ in c.decode(s):
            n += 1
    return n


def pipeline_run(path: str, pipe: Pipeline) -> int:
    n = 0
    for p in pipe.run(path):
        n += getattr(p, "num_tokens", 0)
    return n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        scenes = [("pan", 10), ("motion", 10), ("static", 10)] * max(1, round(args.seconds / 30))
        info = make_clip(Path(tmp) / "clip720.mp4", scenes=scenes, width=1280, height=720, fps=25, audio=False)
        with av.open(info.path) as c:
            total_frames = c.streams.video[0].frames or int(info.duration_s * 25)
        pipe = Pipeline("decode-bench", decode={"fps": 2, "width": 224, "height": 224, "threads": 2}).add(
            "patch_encoder", patch_size=16)
        # Interleave the two measurements so machine noise hits both alike.
        decode_all, pipe_all = [], []
        for _ in range(args.repeats):
            decode_all += median_time(lambda: decode_only(info.path, 2), 1)[1]
            pipe_all += median_time(lambda: pipeline_run(info.path, pipe), 1)[1]
        decode_t, pipe_t = statistics.median(decode_all), statistics.median(pipe_all)
        decode_fps = total_frames / decode_t
        pipe_fps = total_frames / pipe_t
        write_result("decode", {
            "clip": {"seconds": info.duration_s, "size": "1280x720", "fps": 25, "codec": "h264",
                     "frames": total_frames},
            "decode_only": {"median_s": decode_t, "runs_s": decode_all, "frames_per_s": decode_fps},
            "pipeline": {"median_s": pipe_t, "runs_s": pipe_all, "source_frames_per_s": pipe_fps,
                         "sampling_fps": 2, "encoder": "patch 16px at 224x224"},
            "ratio_pipeline_to_decode": pipe_fps / decode_fps,
            "ratio_per_repeat": [d / p for d, p in zip(decode_all, pipe_all)],
            "goal": ">= 0.8",
        })


if __name__ == "__main__":
    main()

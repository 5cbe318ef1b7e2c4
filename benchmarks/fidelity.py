"""How much of the video do the operators keep at a given token budget?

A 60 s clip at 2 fps, 224x224, made with FFmpeg's lavfi sources through PyAV (no files, no
downloads): still scenes (frozen mandelbrot / test-pattern frames, colour bars), a slow zoom, a camera
pan, moving test patterns and high-motion cellular automata, with hard cuts between them that do not
fall on window boundaries, plus mild sensor noise. The ``patch`` encoder (16 px) gives 196 tokens of 768
values per frame, 1568 per 4 s window.

Each method reduces every window to a budget of 30 %, 10 % and 3 % of its tokens; we report the
fidelity (mean cosine of each original token to its representative, dropped = 0) and the measured
reduction, with :class:`streamzip.operators.fidelity.FidelityMeter`. Methods: framefusion (merge to
the budget, prune the rest), dpc_knn, the default chain framefusion -> dpc_knn (also with event-level
clustering), and the baselines (uniform frame sampling — a kept frame standing for its neighbours, or
with the other frames dropped —, spatial pooling, temporal pooling, ToMe).

Goal: the default chain beats uniform sampling and pooling at every budget.
Run: ``python benchmarks/fidelity.py`` (about a minute on 2 cores).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path

import av
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import write_result  # noqa: E402

from streamzip.encoders.patch import PatchEncoder  # noqa: E402
from streamzip.operator import Operator  # noqa: E402
from streamzip.operators.baselines import (  # noqa: E402
    SpatialPool,
    SpatialPoolConfig,
    TemporalPool,
    TemporalPoolConfig,
    ToMe,
    ToMeConfig,
    UniformSampling,
    UniformSamplingConfig,
)
from streamzip.operators.dpc_knn import DPCKNN, DPCKNNConfig  # noqa: E402
from streamzip.operators.fidelity import FidelityMeter  # noqa: E402
from streamzip.operators.framefusion import FrameFusion, FrameFusionConfig  # noqa: E402
from streamzip.packets import Tokens, VideoFrames  # noqa: E402

FPS, SIZE, WINDOW_S = 2, 224, 4.0
TOKENS_PER_WINDOW = int(WINDOW_S * FPS) * (SIZE // 16) ** 2
BUDGETS = (0.30, 0.10, 0.03)

# (kind, lavfi source, seconds); random sources are seeded so the clip is the same every run. "still" freezes the source's first frame; "pan" slides a
# 224-px view across a wider frame.
SCENES = [
    ("still", "mandelbrot", 10), ("moving", "testsrc2", 7), ("moving", "mandelbrot", 9),
    ("still", "smptehdbars", 6), ("moving", "life=mold=10:ratio=0.3:seed=7", 6), ("pan", "mandelbrot", 8),
    ("still", "testsrc2", 8), ("moving", "cellauto=seed=7", 6),
]


def lavfi(source: str, count: int, size: str) -> list[np.ndarray]:
    name, _, opts = source.partition("=")
    spec = f"{name}=size={size}:rate={FPS}" + (f":{opts}" if opts else "")
    frames: list[np.ndarray] = []
    with av.open(spec, format="lavfi") as container:
        for frame in container.decode(video=0):
            frames.append(frame.to_ndarray(format="rgb24"))
            if len(frames) == count:
                break
    return frames


def make_clip(seed: int = 0) -> tuple[np.ndarray, list[dict]]:
    """``(T, 224, 224, 3)`` uint8 frames and the scene list with times."""
    rng = np.random.default_rng(seed)
    frames, scenes, t = [], [], 0.0
    for kind, source, seconds in SCENES:
        n = seconds * FPS
        if kind == "still":
            part = lavfi(source, 1, f"{SIZE}x{SIZE}") * n
        elif kind == "pan":
            wide = lavfi(source, 1, f"{2 * SIZE}x{SIZE}")[0]
            part = [wide[:, i * SIZE // n: i * SIZE // n + SIZE] for i in range(n)]
        else:
            part = lavfi(source, n, f"{SIZE}x{SIZE}")
        noisy = [np.clip(f.astype(np.float32) + rng.normal(0, 3, f.shape), 0, 255).astype(np.uint8) for f in part]
        frames += noisy
        scenes.append({"kind": kind, "source": source, "start_s": t, "end_s": t + seconds})
        t += seconds
    return np.stack(frames), scenes


def encode(frames: np.ndarray) -> list[Tokens]:
    """Patch tokens, one packet per 4 frames (packets need not match windows)."""
    enc = PatchEncoder(stream="clip")
    out: list[Tokens] = []
    for s in range(0, len(frames), 4):
        chunk = torch.from_numpy(frames[s:s + 4])
        pts = torch.arange(s, s + chunk.shape[0], dtype=torch.float64) / FPS
        out += enc.process(VideoFrames("clip", chunk, pts, 1.0 / FPS))  # type: ignore[arg-type]
    return out


def run_chain(chain: list[Operator], packets: list[Tokens]) -> dict:
    meter = FidelityMeter()

    def push(items: list, start: int) -> list:
        for op in chain[start:]:
            items = [o for p in items for o in op.process(p)]
        return items

    start = time.perf_counter()
    for p in packets:
        meter.add_originals(p)
        for o in push([p], 0):
            meter.add_outputs(o)
    for i, op in enumerate(chain):  # flush in order, pushing each stage's rest down the chain
        for o in push(op.flush(), i + 1):
            meter.add_outputs(o)
    res = meter.result()
    res["seconds"] = round(time.perf_counter() - start, 3)
    res["fidelity"] = round(res["fidelity"], 4)
    res["reduction"] = round(res["reduction"], 4)
    return res


def methods(budget: int, keep: float) -> dict[str, Callable[[], list[Operator]]]:
    return {
        "framefusion": lambda: [FrameFusion(FrameFusionConfig(keep_ratio=keep, max_tokens=budget))],
        "dpc_knn": lambda: [DPCKNN(DPCKNNConfig(max_tokens=budget))],
        "framefusion->dpc_knn": lambda: [FrameFusion(), DPCKNN(DPCKNNConfig(max_tokens=budget))],
        "framefusion->dpc_knn(events)": lambda: [FrameFusion(),
                                                 DPCKNN(DPCKNNConfig(max_tokens=budget, event_level=True))],
        "uniform_sampling": lambda: [UniformSampling(UniformSamplingConfig(max_tokens=budget))],
        "uniform_sampling(drop)": lambda: [UniformSampling(UniformSamplingConfig(max_tokens=budget, drop=True))],
        "spatial_pool": lambda: [SpatialPool(SpatialPoolConfig(max_tokens=budget))],
        "temporal_pool": lambda: [TemporalPool(TemporalPoolConfig(max_tokens=budget))],
        "tome": lambda: [ToMe(ToMeConfig(max_tokens=budget))],
    }


def main() -> None:
    frames, scenes = make_clip()
    packets = encode(frames)
    tokens_in = sum(p.num_tokens for p in packets)
    print(f"clip: {len(frames)} frames, {tokens_in} tokens, {TOKENS_PER_WINDOW} per window", flush=True)
    table: dict[str, dict] = {}
    for frac in BUDGETS:
        budget = round(frac * TOKENS_PER_WINDOW)
        row = {}
        for name, build in methods(budget, frac).items():
            row[name] = run_chain(build(), packets)
            print(f"budget {frac:.0%} ({budget}/window) {name:30s} fidelity {row[name]['fidelity']:.4f} "
                  f"reduction {row[name]['reduction']:.4f} ({row[name]['seconds']}s)", flush=True)
        table[f"{frac:.2f}"] = {"max_tokens_per_window": budget, "methods": row}
    chain = "framefusion->dpc_knn"
    rivals = ("uniform_sampling", "uniform_sampling(drop)", "spatial_pool", "temporal_pool")
    goal = {b: all(r["methods"][chain]["fidelity"] > r["methods"][x]["fidelity"] for x in rivals)
            for b, r in table.items()}
    write_result("fidelity", {
        "question": "fidelity vs reduction of each operator at equal per-window budgets",
        "clip": {"frames": len(frames), "fps": FPS, "size": SIZE, "encoder": "patch_encoder(16)",
                 "tokens": tokens_in, "tokens_per_window": TOKENS_PER_WINDOW, "scenes": scenes},
        "budgets": table,
        "goals": {"default_chain_beats_uniform_and_pooling": goal},
    })


if __name__ == "__main__":
    main()

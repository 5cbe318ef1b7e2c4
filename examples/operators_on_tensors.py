"""The operators called directly on tensors, no pipeline, no media: what a researcher does in a notebook.

    python examples/operators_on_tensors.py
"""

from __future__ import annotations

import torch

from streamzip import Tokens
from streamzip.operators.dpc_knn import reduce_tokens
from streamzip.operators.fidelity import fidelity
from streamzip.operators.framefusion import apply_fusion, plan_fusion
from streamzip.tokens import with_fresh_assignment


def video_tokens(num_frames: int = 8, rows: int = 4, cols: int = 4, dim: int = 32) -> Tokens:
    """A toy video: a static background, one patch that changes every frame, a cut halfway."""
    g = torch.Generator().manual_seed(0)
    scene_a, scene_b = torch.randn(rows * cols, dim, generator=g), torch.randn(rows * cols, dim, generator=g)
    frames = []
    for t in range(num_frames):
        f = (scene_a if t < num_frames // 2 else scene_b).clone()
        f[5] = torch.randn(dim, generator=g)  # the moving object
        frames.append(f + 0.01 * torch.randn(rows * cols, dim, generator=g))
    n = rows * cols
    t0 = torch.arange(num_frames, dtype=torch.float64).repeat_interleave(n) * 0.5
    grid = torch.stack(torch.meshgrid(torch.arange(rows), torch.arange(cols), indexing="ij"), -1).reshape(n, 2)
    tokens = Tokens(stream="toy", modality="video", data=torch.cat(frames), t0=t0, t1=t0 + 0.5,
                    pos=grid.repeat(num_frames, 1).to(torch.int32), size=torch.ones(num_frames * n, dtype=torch.int64))
    return with_fresh_assignment(tokens, 0)


def main() -> None:
    original = video_tokens()
    print(f"original: {original.num_tokens} tokens ({original.num_tokens // 16} frames x 16 patches)")

    # FrameFusion: plan (which token joins which anchor), then apply (size-weighted merge).
    plan = plan_fusion(original, threshold=0.9)
    fused = apply_fusion(original, plan)
    print(f"FrameFusion at 0.9: {fused.num_tokens} tokens; the static background became one token per "
          f"patch and scene, the moving patch stayed: sizes {sorted(set(fused.size.tolist()))}")

    # DPC-KNN (on FAISS) down to a budget of 12 tokens.
    clustered = reduce_tokens(fused, max_tokens=12)
    print(f"DPC-KNN to 12: {clustered.num_tokens} tokens, sizes add up to {int(clustered.size.sum())}, "
          f"time order kept: {bool((clustered.t0[1:] >= clustered.t0[:-1]).all())}")

    # Fidelity: how close each original is to the token that now stands for it.
    for name, out in (("fused", fused), ("clustered", clustered)):
        f = fidelity(original, [out])
        print(f"{name:>9}: fidelity {f['fidelity']:.3f} at {f['reduction']:.0%} fewer tokens")

    # Provenance: which output token represents original token 37?
    j = int((clustered.src == 37).nonzero()[0, 0])
    k = int(clustered.assignment[j])
    print(f"original 37 is represented by output token {k}, covering {float(clustered.t0[k]):.1f}-"
          f"{float(clustered.t1[k]):.1f} s")


if __name__ == "__main__":
    main()

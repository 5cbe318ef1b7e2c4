"""Encoder-bound throughput: frames per second through the ``hf_encoder`` (and seconds of audio per
second through the ``hf_audio_encoder``), on the CPU and, where one is present, on a GPU, in one run.

The towers are random-initialised at the real base sizes, built from configs (no download), so the
compute is that of the real models: SigLIP ViT-B/16 at 224 px (196 tokens of 768 per frame, 12 layers)
and CLIP ViT-B/16 with its [CLS] attention score; Whisper-base's encoder (6 layers of 512, 30 s windows).
Frames are random 224×224 RGB (the encoder's cost does not depend on the pixels).

Also measured, per 4 s window of 8 frames × 196 SigLIP tokens (1,568 tokens): the compression stages
after the encoder, FrameFusion (CPU; one dot product per token) and DPC-KNN (to 128 tokens) on the
CPU and, with ``--device cuda``/``both``, on the GPU, against the encoder's own time for those 8 frames,
so it shows whether the pipeline stays encoder-bound.

Run: ``python benchmarks/encoders.py`` (CPU; about 3 minutes on 2 cores) or
``python benchmarks/encoders.py --device both`` on a GPU machine (writes ``encoders_gpu.json``; the report
shows both).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import median_time, write_result  # noqa: E402

from streamzip.encoders.hf import HFVisionEncoder, HFVisionEncoderConfig  # noqa: E402
from streamzip.encoders.tiny import save_tiny_model  # noqa: E402


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def vision_throughput(folder: Path, device: str, batch: int, frames: int, repeats: int) -> dict[str, Any]:
    enc = HFVisionEncoder(HFVisionEncoderConfig(model=str(folder), device=device, batch_size=batch))
    x = torch.randint(0, 256, (frames, 224, 224, 3), dtype=torch.uint8)
    enc.encode(x[: min(frames, batch)])  # warm-up (kernels, allocator)
    _sync(device)

    def call() -> None:
        enc.encode(x)
        _sync(device)

    med, times = median_time(call, repeats)
    tokens, grid, score = enc.encode(x[:1])
    return {"device": device, "dtype": str(enc.tower.dtype).replace("torch.", ""), "batch_size": batch,
            "frames": frames, "seconds": round(med, 4), "frames_per_s": round(frames / med, 1),
            "tokens_per_frame": grid[0] * grid[1], "dim": int(tokens.shape[-1]),
            "score": score is not None, "times": [round(t, 4) for t in times]}


def audio_throughput(folder: Path, device: str, seconds: float, repeats: int, batch: int = 1) -> dict[str, Any] | None:
    try:
        from streamzip.encoders.hf_audio import HFAudioEncoder, HFAudioEncoderConfig
    except ImportError:
        return None
    from streamzip.packets import AudioChunk

    enc_cfg = HFAudioEncoderConfig(model=str(folder), device=device, batch_size=batch)
    audio = 0.1 * torch.randn(int(seconds * 16000))

    def call() -> None:
        enc = HFAudioEncoder(enc_cfg)
        enc.process(AudioChunk(stream="s", samples=audio, sample_rate_hz=16000, start_s=0.0))
        enc.flush()
        _sync(device)

    call()
    med, times = median_time(call, repeats)
    return {"device": device, "batch_size": batch, "audio_s": seconds, "seconds": round(med, 4),
            "audio_s_per_s": round(seconds / med, 1), "times": [round(t, 4) for t in times]}


def compression_per_window(folder: Path, devices: list[str], repeats: int) -> dict[str, Any]:
    """FrameFusion then DPC-KNN on one window of SigLIP-B tokens, next to the encoder's time for it."""
    from streamzip.operators.dpc_knn import DPCKNN, DPCKNNConfig
    from streamzip.operators.framefusion import FrameFusion, FrameFusionConfig
    from streamzip.packets import VideoFrames

    # A scene that moves a little: consecutive frames share most of their content.
    base = torch.randint(0, 256, (1, 224, 224, 3), dtype=torch.uint8)
    frames = torch.cat([torch.roll(base, shifts=4 * i, dims=2) for i in range(8)])
    packet = VideoFrames(stream="s", frames=frames, pts_s=torch.arange(8, dtype=torch.float64) * 0.5, duration_s=0.5)
    out: dict[str, Any] = {"tokens": 8 * 196, "budget": 128}
    enc = HFVisionEncoder(HFVisionEncoderConfig(model=str(folder), device=devices[-1]))
    (tokens,) = enc.process(packet)
    _sync(devices[-1])
    out["encoder_s"] = round(median_time(lambda: (enc.encode(frames), _sync(devices[-1])), repeats)[0], 4)
    out["encoder_device"] = devices[-1]

    def fuse() -> Any:
        ff = FrameFusion(FrameFusionConfig(threshold=0.9))
        return [*ff.process(tokens), *ff.flush()]

    fused = fuse()
    out["framefusion_s"] = round(median_time(fuse, repeats)[0], 4)
    out["after_framefusion"] = sum(p.num_tokens for p in fused)
    for device in devices:
        def cluster(device: str = device) -> Any:
            op = DPCKNN(DPCKNNConfig(max_tokens=128, device=device))
            res = [*op.process(fused[0]), *op.flush()]
            _sync(device)
            return res

        cluster()
        out[f"dpc_knn_{device}_s"] = round(median_time(cluster, repeats)[0], 4)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", choices=["cpu", "cuda", "both"], default="cpu")
    ap.add_argument("--frames", type=int, default=0, help="frames per measurement (default: 32 CPU, 512 GPU)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--audio-s", type=float, default=60.0)
    ap.add_argument("--out", default=None, help="result name (default encoders, or encoders_gpu with a GPU)")
    args = ap.parse_args()
    devices = {"cpu": ["cpu"], "cuda": ["cuda"], "both": ["cpu", "cuda"]}[args.device]
    if "cuda" in devices and not torch.cuda.is_available():
        sys.exit("--device cuda: PyTorch sees no GPU here")
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        siglip = save_tiny_model("siglip", Path(tmp) / "siglip", size="base", image_size=224, patch_size=16)
        clip = save_tiny_model("clip", Path(tmp) / "clip", size="base", image_size=224, patch_size=16)
        whisper = save_tiny_model("whisper", Path(tmp) / "whisper", size="base")
        vision: list[dict[str, Any]] = []
        audio: list[dict[str, Any]] = []
        for device in devices:
            frames = args.frames or (512 if device == "cuda" else 32)
            batches = [1, 16, 64] if device == "cuda" else [16]
            for name, folder in (("siglip-b16-224", siglip), ("clip-b16-224", clip)):
                for b in batches:
                    row = vision_throughput(folder, device, b, frames, args.repeats)
                    vision.append({"model": name, **row})
                    print(f"{name} {device} batch {b}: {row['frames_per_s']} frames/s", flush=True)
            for b in ([1, 8] if device == "cuda" else [1]):
                a = audio_throughput(whisper, device, args.audio_s * (8 if device == "cuda" else 1), args.repeats, b)
                if a is not None:
                    audio.append({"model": "whisper-base-encoder", **a})
                    print(f"whisper {device} batch {b}: {a['audio_s_per_s']} s of audio per s", flush=True)
        window = compression_per_window(siglip, devices, args.repeats)
    result: dict[str, Any] = {
        "question": "how many frames (and seconds of audio) per second do the hf encoders take, CPU vs GPU?",
        "vision": vision, "audio": audio, "window": window,
        "wall_s": round(time.perf_counter() - t_start, 1),
    }
    if "cuda" in devices:
        result["gpu"] = torch.cuda.get_device_name(0)
        cpu = {r["model"]: r["frames_per_s"] for r in vision if r["device"] == "cpu"}
        gpu = {}
        for r in vision:
            if r["device"] == "cuda":
                gpu[r["model"]] = max(gpu.get(r["model"], 0.0), r["frames_per_s"])
        result["gpu_speedup"] = {m: round(gpu[m] / cpu[m], 1) for m in gpu if m in cpu}
    write_result(args.out or ("encoders_gpu" if "cuda" in devices else "encoders"), result)


if __name__ == "__main__":
    main()

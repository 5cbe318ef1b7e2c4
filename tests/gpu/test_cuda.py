"""The CUDA path: the same stages on a GPU agree with the CPU.

These run only where PyTorch sees a CUDA GPU (CI has none; they were run on a GPU machine, see
docs/benchmarks.md), and are skipped elsewhere: the CPU path is covered by tests/unit.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from streamzip.encoders.hf import HFVisionEncoder, HFVisionEncoderConfig
from streamzip.encoders.tiny import save_tiny_model

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    out = {k: save_tiny_model(k, root / k, image_size=64, patch_size=8) for k in ("clip", "siglip", "dinov2")}  # type: ignore[arg-type]
    out["whisper"] = save_tiny_model("whisper", root / "whisper")
    return out


def frames(t: int = 6) -> torch.Tensor:
    return torch.randint(0, 256, (t, 64, 64, 3), generator=torch.Generator().manual_seed(1), dtype=torch.uint8)


@pytest.mark.parametrize("kind", ["clip", "siglip", "dinov2"])
def test_hf_encoder_on_cuda_in_bf16_agrees_with_the_cpu(models, kind) -> None:  # type: ignore[no-untyped-def]
    gpu = HFVisionEncoder(HFVisionEncoderConfig(model=str(models[kind])))  # auto: cuda, bfloat16
    cpu = HFVisionEncoder(HFVisionEncoderConfig(model=str(models[kind]), device="cpu"))
    assert gpu.tower.device.type == "cuda" and gpu.tower.dtype in (torch.bfloat16, torch.float16)
    assert cpu.tower.dtype == torch.float32
    x = frames()
    tg, grid_g, sg = gpu.encode(x)
    tc, grid_c, sc = cpu.encode(x)
    assert grid_g == grid_c and tg.shape == tc.shape
    assert tg.device.type == "cpu" and tg.dtype == torch.float32  # the packet contract
    cos = F.cosine_similarity(tg.reshape(-1, tg.shape[-1]), tc.reshape(-1, tc.shape[-1]), dim=-1)
    assert float(cos.mean()) > 0.99 and float(cos.min()) > 0.95
    assert sg is not None and sc is not None
    torch.testing.assert_close(sg, sc, rtol=0.05, atol=0.02)


def test_query_relevance_on_cuda_agrees_with_the_cpu(models) -> None:  # type: ignore[no-untyped-def]
    x = frames()
    got = [HFVisionEncoder(HFVisionEncoderConfig(model=str(models["siglip"]), device=d, query="a red car",
                                                 query_level="token")).encode(x)[2] for d in ("cuda", "cpu")]
    torch.testing.assert_close(got[0], got[1], rtol=0.05, atol=0.03)


def test_dpc_knn_on_cuda_agrees_with_the_cpu() -> None:
    from streamzip.operators.dpc_knn import plan_clusters

    g = torch.Generator().manual_seed(0)
    centres = torch.randn(64, 256, generator=g)
    x = centres[torch.randint(0, 64, (6000,), generator=g)] + 0.3 * torch.randn(6000, 256, generator=g)
    cpu = plan_clusters(x, 128, k=5)
    gpu = plan_clusters(x.cuda(), 128, k=5)
    same = (cpu.centers[cpu.assign] == gpu.centers.cpu()[gpu.assign.cpu()]).float().mean()
    assert float(same) >= 0.99


def test_whisper_encoder_on_cuda_agrees_with_the_cpu(models) -> None:  # type: ignore[no-untyped-def]
    from streamzip.encoders.hf_audio import HFAudioEncoder, HFAudioEncoderConfig
    from streamzip.packets import AudioChunk

    audio = 0.1 * torch.randn(16000 * 7, generator=torch.Generator().manual_seed(2))
    outs = []
    for device in ("cuda", "cpu"):
        enc = HFAudioEncoder(HFAudioEncoderConfig(model=str(models["whisper"]), device=device))
        chunk = AudioChunk(stream="s", samples=audio, sample_rate_hz=16000, start_s=0.0)
        outs.append(torch.cat([t.data for t in [*enc.process(chunk), *enc.flush()]]))
    gpu, cpu = outs
    assert gpu.shape == cpu.shape == (350, gpu.shape[1]) and gpu.dtype == torch.float32
    assert float(F.cosine_similarity(gpu, cpu, dim=-1).min()) > 0.99

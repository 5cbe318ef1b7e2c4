"""The CUDA path: the same stages on a GPU agree with the CPU.

These run only where PyTorch sees a CUDA GPU (CI has none; they were run on a GPU machine, see
docs/benchmarks.md), and are skipped elsewhere: the CPU path is covered by tests/unit.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from streamzip.encoders.hf import HFVisionEncoder, HFVisionEncoderConfig
from streamzip.encoders.tiny import save_tiny_model
from streamzip.packets import AUDIO, VIDEO, Gap, Tokens

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


# -- the streaming operators: plans on the GPU, packets on the CPU, the same tokens ------------------

def _video(t: int = 16, p: int = 12, d: int = 48, *, seed: int = 3) -> Tokens:
    """Frames at 2 fps whose patches either stay (a small change: cosine ~0.99 to the previous frame) or
    change (a new vector: cosine ~0), so a threshold of 0.9 has no token near it."""
    from streamzip.tokens import with_fresh_assignment

    g = torch.Generator().manual_seed(seed)
    frame = torch.randn(p, d, generator=g)
    frames = []
    for _ in range(t):
        changed = torch.rand(p, generator=g) < 0.3
        frame = torch.where(changed[:, None], torch.randn(p, d, generator=g),
                            frame + 0.1 * torch.randn(p, d, generator=g))
        frames.append(frame)
    t0 = (torch.arange(t, dtype=torch.float64) / 2).repeat_interleave(p)
    pos = torch.stack([torch.arange(p, dtype=torch.int32) // 4, torch.arange(p, dtype=torch.int32) % 4], 1)
    tok = Tokens(stream="s", modality=VIDEO, data=torch.cat(frames), t0=t0, t1=t0 + 0.5, pos=pos.repeat(t, 1),
                 size=torch.ones(t * p, dtype=torch.int64), score=torch.rand(t * p, generator=g))
    return with_fresh_assignment(tok, 0)


def _audio(n: int = 300, d: int = 32, *, seed: int = 4) -> Tokens:
    """Audio tokens at 25/s with a gap: runs of a slow random walk (steps of distinct sizes, so no two
    pair similarities are near each other) between jumps to a new vector."""
    from streamzip.tokens import with_fresh_assignment

    g = torch.Generator().manual_seed(seed)
    step = torch.linspace(0.05, 0.6, n)[torch.randperm(n, generator=g)]
    x, rows = torch.randn(d, generator=g), []
    for i in range(n):
        x = torch.randn(d, generator=g) * 2 if i % 37 == 0 else x + step[i] * torch.randn(d, generator=g)
        rows.append(x)
    t0 = torch.arange(n, dtype=torch.float64) * 0.04
    t0[200:] += 1.0
    tok = Tokens(stream="s", modality=AUDIO, data=torch.stack(rows), t0=t0, t1=t0 + 0.04,
                 pos=torch.full((n, 2), -1, dtype=torch.int32), size=torch.ones(n, dtype=torch.int64))
    return with_fresh_assignment(tok, 0)


def _packets(tokens: Tokens, per_packet: int) -> list[Tokens]:
    from streamzip.tokens import take

    return [take(tokens, torch.arange(i, min(i + per_packet, tokens.num_tokens)))
            for i in range(0, tokens.num_tokens, per_packet)]


def _run(op: Any, inputs: list[Any]) -> list[Any]:
    out: list[Any] = []
    for p in inputs:
        out += op.on_gap(p) if isinstance(p, Gap) else op.process(p)
    return out + op.flush()


def _assert_same_tokens(gpu: list[Any], cpu: list[Any]) -> None:
    """The same packets: identical merge decisions (sizes, times, positions, provenance) and data to
    float tolerance, every tensor on the CPU (the packet contract)."""
    assert len(gpu) == len(cpu)
    for g, c in zip(gpu, cpu):
        assert type(g) is type(c)
        if not isinstance(c, Tokens):
            assert g == c
            continue
        assert g.meta == c.meta
        for name in ("t0", "t1", "pos", "size", "src", "assignment"):
            a, b = getattr(g, name), getattr(c, name)
            assert (a is None) == (b is None), name
            if b is not None:
                assert a.device.type == "cpu" and torch.equal(a, b), name
        assert g.data.device.type == "cpu" and g.data.dtype == torch.float32
        torch.testing.assert_close(g.data, c.data, rtol=1e-5, atol=1e-5)
        if c.score is not None:
            torch.testing.assert_close(g.score, c.score)


@pytest.mark.parametrize("config", [{"threshold": 0.9}, {"threshold": 0.9, "max_tokens": 40},
                                    {"threshold": 0.9, "prune_ratio": 0.3, "query_embedding": tuple([1.0] * 48)}],
                         ids=str)
def test_framefusion_on_cuda_agrees_with_the_cpu(config) -> None:  # type: ignore[no-untyped-def]
    from streamzip.devices import tokens_on
    from streamzip.operators.framefusion import FrameFusion, FrameFusionConfig, plan_fusion

    tok = _video()
    gpu = FrameFusion(FrameFusionConfig(**config))  # auto: cuda
    assert gpu.device.type == "cuda"
    got = _run(gpu, _packets(tok, 12 * 3))
    assert sum(t.num_tokens for t in got) < tok.num_tokens
    _assert_same_tokens(got, _run(FrameFusion(FrameFusionConfig(**config, device="cpu")), _packets(tok, 12 * 3)))
    plan = plan_fusion(tokens_on(tok, torch.device("cuda")), threshold=0.9)
    assert plan.anchor.device.type == "cuda" and torch.equal(plan.cpu().anchor, plan_fusion(tok, threshold=0.9).anchor)


@pytest.mark.parametrize("config", [{"threshold": 0.8}, {"threshold": 0.9, "max_run_tokens": 30},
                                    {"threshold": None, "max_tokens": 30}], ids=str)
def test_atome_on_cuda_agrees_with_the_cpu(config) -> None:  # type: ignore[no-untyped-def]
    from streamzip.operators.atome import ATome, ATomeConfig, input_cuts, plan_merges

    tok = _audio()
    gpu = ATome(ATomeConfig(**config))
    assert gpu.device.type == "cuda"
    got = _run(gpu, _packets(tok, 7))
    assert sum(t.num_tokens for t in got) < tok.num_tokens
    _assert_same_tokens(got, _run(ATome(ATomeConfig(**config, device="cpu")), _packets(tok, 7)))
    cuts = input_cuts(tok, threshold=0.8, max_gap_s=0.02)
    plan = plan_merges(tok.data.cuda(), tok.size.cuda(), cuts.cuda(), threshold=0.8)
    assert plan.group.device.type == "cuda"
    assert torch.equal(plan.group.cpu(), plan_merges(tok.data, tok.size, cuts, threshold=0.8).group)


def test_window_and_memory_on_cuda_agree_with_the_cpu() -> None:
    from streamzip.operators.memory import MemoryConfig, TokenMemory
    from streamzip.operators.window import Window, WindowConfig, plan_adjacent_merges

    vid, aud = _video(), _audio()
    inputs: list[Any] = []
    for v, a in zip(_packets(vid, 12 * 4), _packets(aud, 50)):
        inputs += [v, a]
    inputs.append(Gap(stream="s", start_s=14.0, end_s=15.0))
    outs = {}
    for device in ("auto", "cpu"):
        win = Window(WindowConfig(max_video_tokens=30, max_audio_tokens=20, device=device))
        mem = TokenMemory(MemoryConfig(max_tokens=24, read_tokens=8, device=device))
        assert win.device.type == mem.device.type == ("cuda" if device == "auto" else "cpu")
        windows = _run(win, inputs)
        outs[device] = (windows, _run(mem, windows))
    assert any(p.meta.get("tokens_in", 0) > 30 for p in outs["cpu"][0] if isinstance(p, Tokens))
    _assert_same_tokens(outs["auto"][0], outs["cpu"][0])
    _assert_same_tokens(outs["auto"][1], outs["cpu"][1])
    # The kernel's torch path on the GPU makes the numpy path's merges.
    args = {"t0": aud.t0, "t1": aud.t1, "recency_weight": 1.0, "barrier": (aud.t0 > 5).to(torch.int64)}
    want = plan_adjacent_merges(aud.data, aud.size, 40, **args)
    got = plan_adjacent_merges(aud.data.cuda(), aud.size.cuda(), 40, **{k: v.cuda() if isinstance(v, torch.Tensor)
                                                                        else v for k, v in args.items()})
    assert got.group.device.type == "cuda" and got.num_groups == want.num_groups == 40
    assert torch.equal(got.group.cpu(), want.group)


def test_learned_memory_on_cuda_agrees_with_the_cpu() -> None:
    from streamzip.operators.ttm_learned import LearnedMemory

    torch.manual_seed(0)
    cpu = LearnedMemory(16, memory_tokens=6, read_tokens=3, input_tokens=5, hidden_dim=16)
    steps = torch.randn(2, 4, 5, 16, generator=torch.Generator().manual_seed(1))
    gpu = copy.deepcopy(cpu).cuda()
    assert gpu.initial_memory(2).device.type == "cuda"
    with torch.no_grad():
        out_g, mem_g = gpu.run(steps.cuda())
        out_c, mem_c = cpu.run(steps)
    assert out_g.device.type == mem_g.device.type == "cuda"
    torch.testing.assert_close(out_g.cpu(), out_c, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(mem_g.cpu(), mem_c, rtol=1e-4, atol=1e-4)


def test_default_pipeline_end_to_end_on_cuda_agrees_with_the_cpu(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The main pipeline on a real clip through the local runtime: its heavy stages (FrameFusion, DPC-KNN,
    A-ToMe, window, memory) on the GPU give the CPU run's windows and memory, to float tolerance (DPC-KNN
    may place a rare tie differently: most packets are identical, every one has the same shape)."""
    from streamzip.pipeline import Pipeline, load_pipeline
    from streamzip.runtime.local import LocalRuntime
    from streamzip.synthetic import make_clip

    clip = tmp_path / "clip.mp4"
    make_clip(clip, scenes=(("static", 4), ("pan", 4), ("motion", 4), ("static", 4)), width=320, height=180)

    def run(device: str) -> list[Tokens]:
        data = load_pipeline("default").to_dict()
        devices = []
        for step in data["steps"]:
            if step["op"] in ("framefusion", "dpc_knn", "atome", "window", "memory"):
                step["device"] = device
                devices.append(step["id"])
        pipe = Pipeline.from_dict(data)
        built = {s.id: op for s, op in zip(pipe.steps, pipe.build("s"))}
        for sid in devices:  # the stage resolves its device when built: auto is the GPU here
            assert built[sid].device.type == ("cuda" if device == "auto" else "cpu"), sid
        return [p for p in LocalRuntime().run(pipe, [str(clip)]) if isinstance(p, Tokens)]

    gpu, cpu = run("auto"), run("cpu")
    assert len(cpu) >= 8 and len(gpu) == len(cpu)
    same = 0
    for g, c in zip(gpu, cpu):
        assert (g.modality, g.meta.get("kind"), g.meta.get("window"), g.num_tokens) == \
               (c.modality, c.meta.get("kind"), c.meta.get("window"), c.num_tokens)
        assert g.data.device.type == "cpu" and g.data.dtype == torch.float32
        cos = F.cosine_similarity(g.data, c.data, dim=1)
        assert float(cos.mean()) > 0.98, (c.meta, float(cos.mean()))
        same += bool(torch.allclose(g.data, c.data, rtol=1e-4, atol=1e-4) and torch.equal(g.size, c.size))
    assert same >= 0.8 * len(cpu), f"{same} of {len(cpu)} packets identical"


def test_gathered_frames_on_cuda_give_what_each_packet_gets_alone(models) -> None:  # type: ignore[no-untyped-def]
    """A pool actor's gather on a GPU: the frames of several packets (streams) in one bfloat16 pass give
    each packet the tokens and scores of its own pass, to bfloat16 tolerance."""
    from streamzip.packets import VideoFrames

    enc = HFVisionEncoder(HFVisionEncoderConfig(model=str(models["clip"]), batch_size=4))  # auto: cuda
    assert enc.tower.device.type == "cuda"
    g = torch.Generator().manual_seed(3)
    packets = [VideoFrames(stream=f"s{i}", frames=torch.randint(0, 256, (n, 64, 64, 3), dtype=torch.uint8, generator=g),
                           pts_s=torch.arange(n, dtype=torch.float64), duration_s=0.5) for i, n in enumerate((1, 3, 2, 5))]
    alone = [enc.process(p)[0] for p in packets]
    enc.prepare([p.frames for p in packets])
    gathered = [enc.process(p)[0] for p in packets]
    assert not enc._ready
    for a, b in zip(alone, gathered):
        assert b.data.device.type == "cpu" and b.data.dtype == torch.float32 and b.data.shape == a.data.shape
        assert b.meta["score_kind"] == a.meta["score_kind"] == "attention"
        torch.testing.assert_close(b.data, a.data, rtol=0.05, atol=0.03)
        torch.testing.assert_close(b.score, a.score, rtol=0.05, atol=0.01)

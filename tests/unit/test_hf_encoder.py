"""The ``hf_encoder`` video encoder on tiny random-initialised SigLIP, CLIP and DINOv2 models (offline)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from streamzip import ConfigError, ModelError, Pipeline
from streamzip.encoders.hf import HFVisionEncoder, HFVisionEncoderConfig
from streamzip.encoders.tiny import save_tiny_model
from streamzip.packets import VideoFrames
from streamzip.runtime.local import LocalRuntime


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    return {kind: save_tiny_model(kind, root / kind)  # type: ignore[arg-type]
            for kind in ("clip", "siglip", "dinov2", "clip_vision")}


def frames(t: int = 4, seed: int = 0, size: int = 40) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (t, size, size, 3), generator=g, dtype=torch.uint8)


def encoder(path: Path, **kw) -> HFVisionEncoder:  # type: ignore[no-untyped-def]
    """On the CPU in float32 (the numeric checks below); tests/gpu checks the CUDA path."""
    return HFVisionEncoder(HFVisionEncoderConfig(model=str(path), **{"device": "cpu", **kw}))


def reference_pixels(enc: HFVisionEncoder, x: torch.Tensor, mean, std) -> torch.Tensor:  # type: ignore[no-untyped-def]
    """The preprocessing written out independently: resize, /255, (x - mean) / std."""
    size = enc.tower.image_size
    p = F.interpolate(x.permute(0, 3, 1, 2).float(), size=(size, size), mode="bilinear", antialias=True,
                      align_corners=False) / 255.0
    return (p - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


@pytest.mark.parametrize("kind, mean, prefix", [
    ("clip", (0.48145466, 0.4578275, 0.40821073), 1),
    ("siglip", (0.5, 0.5, 0.5), 0),
    ("dinov2", (0.485, 0.456, 0.406), 1),
])
def test_patch_tokens_are_the_towers_hidden_states_without_cls(models, kind, mean, prefix) -> None:  # type: ignore[no-untyped-def]
    enc = encoder(models[kind])
    std = {"clip": (0.26862954, 0.26130258, 0.27577711), "siglip": (0.5,) * 3, "dinov2": (0.229, 0.224, 0.225)}[kind]
    x = frames()
    tokens, grid, score = enc.encode(x)
    rows, cols = grid
    assert tokens.shape == (4, rows * cols, 32) and tokens.dtype == torch.float32
    with torch.no_grad():
        ref = enc.tower.vision(pixel_values=reference_pixels(enc, x, mean, std),
                               interpolate_pos_encoding=enc.tower.interpolate or None).last_hidden_state
    assert ref.shape[1] == rows * cols + prefix
    torch.testing.assert_close(tokens, ref[:, prefix:], rtol=1e-4, atol=1e-5)
    assert score is not None and score.shape == (4, rows * cols)


def test_preprocessor_config_mean_and_std_are_used(models, tmp_path) -> None:  # type: ignore[no-untyped-def]
    folder = save_tiny_model("clip_vision", tmp_path / "m")
    (folder / "preprocessor_config.json").write_text(json.dumps({"image_mean": [0.1, 0.2, 0.3],
                                                                 "image_std": [0.5, 0.6, 0.7]}))
    enc = encoder(folder)
    x = frames(2)
    tokens, _, _ = enc.encode(x)
    with torch.no_grad():
        ref = enc.tower.vision(pixel_values=reference_pixels(enc, x, (0.1, 0.2, 0.3), (0.5, 0.6, 0.7))).last_hidden_state
    torch.testing.assert_close(tokens, ref[:, 1:], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kind", ["clip", "dinov2"])
@pytest.mark.parametrize("layer", [-1, -2])
def test_cls_attention_score_matches_the_eager_attention_weights(models, kind, layer) -> None:  # type: ignore[no-untyped-def]
    from transformers import AutoModel

    enc = encoder(models[kind], layer=layer)
    x = frames(3)
    tokens, _, score = enc.encode(x)
    eager = AutoModel.from_pretrained(models[kind], attn_implementation="eager").eval()
    vision = getattr(eager, "vision_model", eager)
    with torch.no_grad():
        out = vision(pixel_values=enc.tower.preprocess(x), output_attentions=True, output_hidden_states=True)
    att = out.attentions[layer]  # (T, heads, N, N) of the layer that made the chosen hidden state
    torch.testing.assert_close(score, att.mean(1)[:, 0, 1:], rtol=1e-4, atol=1e-6)
    # layer -1 is the tower's output (DINOv2's is layer-normed); others are raw hidden states, as LLaVA takes
    want = out.last_hidden_state if layer == -1 else out.hidden_states[layer]
    torch.testing.assert_close(tokens, want[:, 1:], rtol=1e-4, atol=1e-5)


def test_siglip_scores_by_its_pooling_heads_probe_attention(models) -> None:  # type: ignore[no-untyped-def]
    _, _, score = encoder(models["siglip"]).encode(frames(2))
    assert score is not None
    torch.testing.assert_close(score.sum(1), torch.ones(2))  # a distribution over the patches
    assert bool((score > 0).all())


def test_score_none_gives_no_score_and_batches_do_not_change_tokens(models) -> None:  # type: ignore[no-untyped-def]
    x = frames(5)
    a = encoder(models["clip"], score="none", batch_size=2).encode(x)
    b = encoder(models["clip"], score="none", batch_size=16).encode(x)
    assert a[2] is None and b[2] is None
    torch.testing.assert_close(a[0], b[0], rtol=1e-5, atol=1e-6)


def test_image_size_other_than_the_models_interpolates_positions(models) -> None:  # type: ignore[no-untyped-def]
    tokens, grid, _ = encoder(models["clip"], image_size=48).encode(frames(2))
    assert grid == (6, 6) and tokens.shape == (2, 36, 32)


# -- query-guided ------------------------------------------------------------------------------

def text_embedding(enc: HFVisionEncoder, text: str) -> torch.Tensor:
    tok = enc.tower._tokenizer
    pad = "max_length" if enc.tower.family == "siglip" else True
    inputs = tok([text], return_tensors="pt", padding=pad, max_length=16, truncation=True)
    with torch.no_grad():
        out = enc.tower.model.get_text_features(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
    return F.normalize(getattr(out, "pooler_output", out)[0], dim=-1)


def test_clip_frame_query_score_is_the_image_text_cosine(models) -> None:  # type: ignore[no-untyped-def]
    enc = encoder(models["clip"], query="a red car")
    x = frames(3)
    _, _, score = enc.encode(x)
    with torch.no_grad():
        img = enc.tower.model.get_image_features(pixel_values=enc.tower.preprocess(x))
    img = F.normalize(getattr(img, "pooler_output", img), dim=-1)
    want = img @ text_embedding(enc, "a red car")
    torch.testing.assert_close(score, want[:, None].expand(3, score.shape[1]), rtol=1e-4, atol=1e-5)


def test_token_query_scores_each_patch_and_differs_between_queries(models) -> None:  # type: ignore[no-untyped-def]
    for kind in ("clip", "siglip"):
        enc = encoder(models[kind], query="a red car", query_level="token")
        x = frames(2)
        tokens, _, s1 = enc.encode(x)
        assert s1 is not None and s1.shape == (2, tokens.shape[1])
        assert float(s1.std()) > 0  # per patch, not per frame
        assert float(s1.abs().max()) <= 1.0 + 1e-5  # cosines
        enc.set_query("the blue ball")
        tokens2, _, s2 = enc.encode(x)
        assert torch.equal(tokens, tokens2)  # the query changes scores, never the tokens
        assert not torch.allclose(s1, s2)


def test_set_query_none_goes_back_to_attention_scores(models) -> None:  # type: ignore[no-untyped-def]
    enc = encoder(models["clip"])
    x = frames(2)
    att = enc.encode(x)[2]
    enc.set_query("a dog")
    assert not torch.allclose(enc.encode(x)[2], att)
    enc.set_query(None)
    torch.testing.assert_close(enc.encode(x)[2], att)


def test_query_state_travels_in_snapshots(models) -> None:  # type: ignore[no-untyped-def]
    enc = encoder(models["siglip"])
    enc.set_query("a person walking")
    snap = enc.snapshot()
    assert snap["state"]["query"] == "a person walking"
    fresh = encoder(models["siglip"])
    fresh.restore(snap)
    assert fresh.query == "a person walking"
    x = frames(2)
    torch.testing.assert_close(fresh.encode(x)[2], enc.encode(x)[2])


@pytest.mark.parametrize("kind", ["dinov2", "clip_vision"])
def test_query_on_a_model_without_text_tower_is_a_clear_error(models, kind) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ConfigError, match="no text tower.*SigLIP or CLIP"):
        encoder(models[kind], query="a dog")
    enc = encoder(models[kind])
    with pytest.raises(ConfigError, match="no text tower"):
        enc.set_query("a dog")


def test_query_without_a_tokenizer_names_the_fix(models, tmp_path) -> None:  # type: ignore[no-untyped-def]
    import shutil

    folder = tmp_path / "clip"
    shutil.copytree(models["clip"], folder)
    for f in folder.glob("*token*"):
        f.unlink()
    with pytest.raises(ModelError, match="no tokenizer files.*query") as err:
        encoder(folder, query="a dog")
    assert "tokenizer.save_pretrained" in str(err.value)


# -- in a pipeline -------------------------------------------------------------------------------

def test_pipeline_query_reaches_the_encoder_and_steers_pruning(models) -> None:  # type: ignore[no-untyped-def]
    def run(query: str | None) -> list:  # type: ignore[type-arg]
        pipe = (Pipeline("q", decode={"fps": 2, "width": 32, "height": 32}, query=query)
                .add("hf_encoder", id="enc", model=str(models["siglip"]), query_level="token", device="cpu")
                .add("framefusion", threshold=2.0, max_tokens=8, window_s=2.0))
        return [p for p in LocalRuntime().run(pipe, ["lavfi:testsrc2=size=64x64:rate=10:duration=4"])
                if hasattr(p, "data")]
    plain, guided = run(None), run("a red car")
    assert [p.num_tokens for p in guided] == [8, 8]
    for p in guided:  # the kept tokens are the window's most relevant ones
        assert p.score is not None
    assert any(not torch.equal(a.src[a.assignment >= 0], b.src[b.assignment >= 0]) for a, b in zip(plain, guided))


def test_pipeline_query_needs_a_step_that_takes_it() -> None:
    pipe = Pipeline("q", query="a dog").add("patch_encoder")
    with pytest.raises(ConfigError, match="query: no step takes a query"):
        pipe.validate()


def test_yaml_query_round_trip(models) -> None:  # type: ignore[no-untyped-def]
    text = f"""
name: guided
query: a person opening a door
steps:
  - {{id: enc, op: hf_encoder, model: {models['clip']}}}
  - {{id: fuse, op: framefusion, max_tokens: 4}}
"""
    pipe = Pipeline.from_yaml(text)
    assert pipe.query == "a person opening a door" and pipe.query_steps() == ["enc"]
    assert Pipeline.from_yaml(pipe.to_yaml()).query == pipe.query
    enc = pipe.build("s")[0]
    assert isinstance(enc, HFVisionEncoder) and enc.query == "a person opening a door"


def test_local_runtime_set_query_reaches_running_streams(models) -> None:  # type: ignore[no-untyped-def]
    pipe = Pipeline("q", decode={"fps": 2, "width": 32, "height": 32, "batch_frames": 2}).add(
        "hf_encoder", id="enc", model=str(models["clip"]), device="cpu")
    rt = LocalRuntime(prefetch_depth=1)
    assert rt.set_query("a dog") == []  # nothing running
    outs = rt.run(pipe, ["lavfi:testsrc2=size=64x64:rate=10:duration=3"])
    first = next(o for o in outs if hasattr(o, "score"))
    assert rt.set_query("a red car") == ["enc"]
    later = [o for o in outs if hasattr(o, "score")]
    # frame-level relevance: every token of a frame has the same score, unlike [CLS] attention
    n = first.meta["tokens_per_frame"]
    assert float(first.score[:n].std()) > 0
    assert later
    for o in later:
        assert float(o.score.view(-1, n).std(dim=1).max()) < 1e-6


def test_encoder_packet_through_process_carries_scores_and_grid(models) -> None:  # type: ignore[no-untyped-def]
    enc = encoder(models["dinov2"], image_size=32)
    pkt = VideoFrames(stream="s", frames=frames(3), pts_s=torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64),
                      duration_s=0.5)
    (tokens,) = enc.process(pkt)
    assert tokens.meta["grid"] == [4, 4] and tokens.num_tokens == 48
    assert tokens.score is not None and tokens.score.shape == (48,)
    assert torch.equal(tokens.src, torch.arange(48))
    assert tokens.meta["score_kind"] == "attention"
    clip = encoder(models["clip"], query="a dog")
    (guided,) = clip.process(pkt)
    assert guided.meta["score_kind"] == "query"


def test_cli_query_runs_query_guided_and_is_recorded(models, tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    import streamzip
    from streamzip.cli import main

    spec = tmp_path / "guided.yaml"
    spec.write_text(f"""
name: guided
decode: {{fps: 2, width: 32, height: 32}}
steps:
  - {{id: enc, op: hf_encoder, model: {models['clip']}, device: cpu}}
""")
    src = "lavfi:testsrc2=size=64x64:rate=10:duration=3"
    assert main(["run", str(spec), "-i", src, "-o", str(tmp_path / "out"), "--runtime", "local", "-q",
                 "--query", "a red car"]) == 0
    (folder,) = [p for p in (tmp_path / "out").iterdir() if p.is_dir()]
    out = streamzip.load(folder)
    assert out.manifest["pipeline"]["query"] == "a red car"
    tokens = out.tokens("tokens/video")
    assert tokens.score is not None and tokens.num_tokens == 6 * 16
    # frame-level relevance: one score per frame
    assert float(tokens.score.view(6, 16).std(dim=1).max()) < 1e-6

    assert main(["run", "default", "-i", src, "--runtime", "local", "-q", "--query", "a red car"]) == 2
    assert "no step takes a query" in capsys.readouterr().err


def test_a_query_steers_dpc_knn_in_a_pipeline(models) -> None:  # type: ignore[no-untyped-def]
    def run(weight_by: str, query: str | None = "a red car") -> list:  # type: ignore[type-arg]
        pipe = (Pipeline("q", decode={"fps": 4, "width": 32, "height": 32}, query=query)
                .add("hf_encoder", id="enc", model=str(models["clip"]), device="cpu")
                .add("dpc_knn", max_tokens=12, window_s=2.0, weight_by=weight_by))
        return [p for p in LocalRuntime().run(pipe, ["lavfi:testsrc2=size=64x64:rate=10:duration=4"])
                if hasattr(p, "data")]
    steered, plain = run("query"), run("none")
    assert [p.num_tokens for p in steered] == [p.num_tokens for p in plain] == [12, 12]
    assert any(not torch.equal(a.data, b.data) for a, b in zip(steered, plain))
    # attention scores (no query) leave DPC-KNN as it was unless weight_by: score
    assert all(torch.equal(a.data, b.data) for a, b in zip(run("query", None), run("none", None)))

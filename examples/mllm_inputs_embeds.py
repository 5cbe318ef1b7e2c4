"""Feed streamzip's compressed tokens to a ``transformers`` multimodal LLM as ``inputs_embeds``.

    python examples/mllm_inputs_embeds.py          # offline: tiny random models and a synthetic clip
    python examples/mllm_inputs_embeds.py VIDEO --vision google/siglip-so400m-patch14-384 \\
        --llm llava-hf/llava-onevision-qwen2-0.5b-ov-hf --question "What happens in the video?" --download

What it does:

1. streamzip runs the vision tower (``hf_encoder``) on the video at 1 fps and compresses its patch
   tokens: FrameFusion merges what did not change, DPC-KNN clusters each 4 s window to at most 128
   tokens — with ``--question`` as the query, so windows relevant to it keep more resolution.
2. The **projector** maps the tokens from the vision tower's space into the LLM's embedding space. It
   is the plug point: a LLaVA-family ``--llm`` brings its own ``multi_modal_projector`` (its vision tower
   must be the one streamzip ran, e.g. SigLIP-so400m for LLaVA-OneVision); any other LLM gets a
   LLaVA-style two-layer MLP, loaded from ``--projector FILE.safetensors`` (keys ``0.weight``,
   ``0.bias``, ``2.weight``, ``2.bias``) — random when not given, which wires everything up but
   answers nonsense until it is trained.
3. Each window's tokens go into the prompt in time order after a text marker (``<4s-8s>``), then the
   question, and ``generate(inputs_embeds=...)`` answers.

Without arguments it builds tiny random-initialised models (``streamzip.encoders.tiny``): the answer
is random words, but every shape and call is the one a real model gets.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from streamzip import Pipeline, Tokens
from streamzip.encoders.tiny import save_tiny_model
from streamzip.synthetic import make_clip


def compress(video: str, vision: str, question: str | None, *, fps: float, download: bool) -> list[Tokens]:
    """The window packets streamzip makes of the video (video tokens only, in time order)."""
    pipe = (Pipeline("mllm", decode={"fps": fps, "width": 224, "height": 224}, query=question)
            .add("hf_encoder", id="vision", model=vision, download=download)
            .add("framefusion", id="fuse", window_s=4.0)
            .add("dpc_knn", id="cluster", max_tokens=128, window_s=4.0)
            .add("window", id="window", window_s=4.0, max_video_tokens=128))
    return [p for p in pipe.run(video) if isinstance(p, Tokens) and p.meta.get("kind") == "window"]


def load_llm(name: str, *, download: bool) -> tuple[Any, Any]:
    import transformers

    kw = {"local_files_only": not download}
    tokenizer = transformers.AutoTokenizer.from_pretrained(name, **kw)
    try:
        model = transformers.AutoModelForCausalLM.from_pretrained(name, **kw)
    except ValueError:  # a LLaVA-family model is an image-text-to-text model
        model = transformers.AutoModelForImageTextToText.from_pretrained(name, **kw)
    return model.eval(), tokenizer


def projector_for(model: Any, dim: int, projector: str | None) -> nn.Module:
    """The model's own ``multi_modal_projector`` if it has one, else an MLP (from ``projector`` if given)."""
    own = getattr(model, "multi_modal_projector", None) or getattr(getattr(model, "model", None),
                                                                   "multi_modal_projector", None)
    if own is not None:
        first = next(m for m in own.modules() if isinstance(m, nn.Linear))
        if first.in_features != dim:
            raise SystemExit(f"the LLM's projector takes {first.in_features}-d vision tokens but the vision tower "
                             f"gives {dim}-d ones: run streamzip with the MLLM's own vision tower")
        return own
    hidden = model.get_input_embeddings().embedding_dim
    mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, hidden))
    if projector:
        from safetensors.torch import load_file

        mlp.load_state_dict(load_file(projector))
    return mlp.eval()


@torch.inference_mode()
def build_inputs(windows: list[Tokens], question: str, model: Any, tokenizer: Any, proj: nn.Module) -> torch.Tensor:
    """``(1, L, hidden)`` prompt embeddings: a preamble, then per window its time marker and its
    projected tokens, then the question."""
    embed = model.get_input_embeddings()
    dtype = embed.weight.dtype

    def text(s: str) -> torch.Tensor:
        ids = tokenizer(s, add_special_tokens=False, return_tensors="pt").input_ids
        return embed(ids.to(embed.weight.device))[0]

    parts = [text("the video :")]
    for w in windows:
        parts.append(text(f"<{w.meta['window_start_s']:g}s-{w.meta['window_end_s']:g}s>"))
        parts.append(proj(w.data.to(embed.weight.device, next(proj.parameters()).dtype)).to(dtype))
    parts.append(text(f"question : {question} answer :"))
    return torch.cat(parts)[None]


def main() -> None:
    ap = argparse.ArgumentParser(description="streamzip tokens into an MLLM as inputs_embeds")
    ap.add_argument("video", nargs="?", help="a video file (default: a generated 20 s clip)")
    ap.add_argument("--vision", help="vision tower: folder or cached id (default: a tiny random SigLIP)")
    ap.add_argument("--llm", help="language model or MLLM: folder or cached id (default: a tiny random one)")
    ap.add_argument("--projector", help="safetensors of a 2-layer MLP projector (for an LLM without one)")
    ap.add_argument("--question", default="what is moving in the scene", help="the question (also the query)")
    ap.add_argument("--fps", type=float, default=1.0)
    ap.add_argument("--max-new-tokens", type=int, default=24)
    ap.add_argument("--download", action="store_true", help="fetch models that are not cached")
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="streamzip-mllm-"))
    video = args.video or str(make_clip(work / "clip.mp4", width=320, height=240).path)
    vision = args.vision or str(save_tiny_model("siglip", work / "siglip", image_size=64, patch_size=8))
    llm = args.llm or str(save_tiny_model("llm", work / "llm"))

    windows = compress(video, vision, args.question, fps=args.fps, download=args.download)
    n_in = sum(int(w.size.sum()) for w in windows)
    n_out = sum(w.num_tokens for w in windows)
    print(f"streamzip: {len(windows)} windows, {n_in} vision tokens -> {n_out} ({100 * n_out / max(n_in, 1):.1f}%)")

    model, tokenizer = load_llm(llm, download=args.download)
    proj = projector_for(model, windows[0].dim, args.projector)
    embeds = build_inputs(windows, args.question, model, tokenizer, proj)
    print(f"prompt: {embeds.shape[1]} embeddings of {embeds.shape[2]} (the LLM's hidden size)")
    out = model.generate(inputs_embeds=embeds, attention_mask=torch.ones(embeds.shape[:2], dtype=torch.long),
                         max_new_tokens=args.max_new_tokens, do_sample=False,
                         pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id)
    print("answer:", tokenizer.decode(out[0], skip_special_tokens=True).strip() or "(empty)")


if __name__ == "__main__":
    main()

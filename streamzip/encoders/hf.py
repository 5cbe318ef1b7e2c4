"""The ``hf_encoder`` video encoder: a vision tower from ``transformers`` (SigLIP, CLIP, DINOv2), as real
MLLMs use it, and the query scoring of query-guided compression.

- **Tokens**: the patch tokens of one hidden layer (``layer``: -1 the last, -2 the penultimate as LLaVA
  takes from CLIP), without the [CLS] and register tokens, on the tower's ``rows × cols`` grid.
- **Preprocessing**: frames are resized to the tower's input size (bilinear, antialiased; the decoder
  already gives the aspect the pipeline asked for) and normalised with the model's own mean and std
  (``preprocessor_config.json`` when present, else the family's: CLIP's, SigLIP's 0.5, DINOv2's ImageNet).
  It runs on the stage's device, in batches of ``batch_size`` frames.
- **Score** (``Tokens.score``, used by FrameFusion's pruning and DPC-KNN's weights): with no query, the
  [CLS] token's attention to each patch at the chosen layer, averaged over heads (the VisionZip / FastV
  importance), computed from the layer's own query and key projections so the fast attention kernel
  still runs; SigLIP has no [CLS] and scores by its pooling head's probe attention instead. With a
  **query** (a text), the score is the cosine between the text tower's embedding of the query and the
  frame's image embedding (``query_level: frame``, LongVU's rule: relevant frames keep resolution) or
  each patch's projected embedding (``query_level: token``). DINOv2 has no text tower: a query on it is
  a :class:`~streamzip.errors.ConfigError` that says to use SigLIP or CLIP.
- **Device**: ``device: auto`` runs on CUDA when present, in bfloat16 (``dtype: auto``); float32 on the CPU.
  Tokens leave as float32 on the CPU.

A query can change while a stream runs (:meth:`HFVisionEncoder.set_query`, the live endpoint's
``POST /streams/{id}/query``): it applies from the next frames the encoder takes, so the windows that
follow are weighted by the new question.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F

from streamzip.config import Config
from streamzip.devices import DTYPES, check_device, resolve_device, resolve_dtype
from streamzip.encoders._hf import (
    AUDIO_TYPES,
    VISION_TYPES,
    load_config,
    load_model,
    load_tokenizer,
    model_file,
    transformers_module,
)
from streamzip.encoders._video import VideoEncoder
from streamzip.errors import ConfigError, ModelError, Problem
from streamzip.packets import Packet, Tokens, VideoFrames
from streamzip.registry import register

__all__ = ["HFVisionEncoder", "HFVisionEncoderConfig", "VisionTower"]

_FAMILY_NORM = {
    "clip": ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)),
    "siglip": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
    "dinov2": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}


@dataclass(frozen=True)
class HFVisionEncoderConfig(Config):
    # A local folder (save_pretrained) or a Hugging Face id already in the local cache.
    model: str = ""
    # Look the id up on the hub when it is not cached (never when HF_HUB_OFFLINE=1).
    download: bool = False
    # -1: the last hidden layer; -2: the penultimate (LLaVA's choice for CLIP).
    layer: int = -1
    # None: the model's own input size (224 for DINOv2, whose config says 518 but whose processor crops 224).
    image_size: int | None = None
    # Frames per forward pass.
    batch_size: int = 16
    # auto: CUDA when present. dtype auto: bfloat16 on a GPU, float32 on the CPU.
    device: str = "auto"
    dtype: str = "auto"
    # auto: [CLS] attention (SigLIP: its pooling head's probe attention); none: no score.
    score: Literal["auto", "none"] = "auto"
    # A text; tokens are then scored by relevance to it (needs a model with a text tower: SigLIP, CLIP).
    query: str | None = None
    # frame: one relevance per frame (LongVU); token: per patch.
    query_level: Literal["frame", "token"] = "frame"

    def check(self) -> Iterator[tuple[str, str]]:
        if not self.model:
            yield "model", "give a model folder or a cached Hugging Face id (e.g. google/siglip-base-patch16-224)"
        if self.image_size is not None and not 8 <= self.image_size <= 4096:
            yield "image_size", f"must be in [8, 4096], got {self.image_size}"
        if not 1 <= self.batch_size <= 4096:
            yield "batch_size", f"must be in [1, 4096], got {self.batch_size}"
        if (msg := check_device(self.device)) is not None:
            yield "device", msg
        if self.dtype not in DTYPES:
            yield "dtype", f"must be one of {', '.join(DTYPES)}, got {self.dtype!r}"
        if self.query is not None and not self.query.strip():
            yield "query", "must be a non-empty text (leave it out for no query)"


def _find_linear(module: torch.nn.Module, names: tuple[str, ...]) -> torch.nn.Linear | None:
    for child_name, child in module.named_modules():
        if child_name.rsplit(".", 1)[-1] in names and isinstance(child, torch.nn.Linear):
            return child
    return None


class VisionTower:
    """A loaded vision tower (and text tower, when the model has one), ready to encode frames.

    Holds the model on its device; :meth:`encode` is ``frames (T, H, W, 3) uint8 → tokens (T, N, D),
    grid, score (T, N) | None``. Separate from the stage so a benchmark or a notebook can use it bare.
    """

    def __init__(self, config: HFVisionEncoderConfig, *, stage: str = "hf_encoder") -> None:
        tf = transformers_module(stage)
        self.config, self.stage = config, stage
        mcfg, name = load_config(config.model, stage=stage, download=config.download)
        mtype = getattr(mcfg, "model_type", "")
        if mtype in AUDIO_TYPES:
            raise ModelError(f"model {config.model!r} is an audio model ({mtype}), not a vision tower",
                             stage=stage, fix="use it with hf_audio_encoder; for video give a SigLIP, CLIP or DINOv2 model")
        if mtype not in VISION_TYPES:
            raise ModelError(f"model {config.model!r} holds no vision tower streamzip can read (model_type {mtype!r})",
                             stage=stage, fix="give a SigLIP, CLIP or DINOv2 model (model_type one of "
                                              f"{', '.join(sorted(VISION_TYPES))})")
        self.family = VISION_TYPES[mtype]
        self.device = resolve_device(config.device, field=f"{stage}.device")
        self.dtype = resolve_dtype(config.dtype, self.device, field=f"{stage}.dtype")
        cls = {"clip": tf.CLIPModel, "clip_vision_model": tf.CLIPVisionModel, "siglip": tf.SiglipModel,
               "siglip_vision_model": tf.SiglipVisionModel, "dinov2": tf.AutoModel,
               "dinov2_with_registers": tf.AutoModel}[mtype]
        self.model = load_model(cls, name, stage=stage, download=config.download, dtype=self.dtype).to(self.device)
        self.has_text = mtype in ("clip", "siglip")
        self.vision = getattr(self.model, "vision_model", self.model)
        vcfg = getattr(mcfg, "vision_config", mcfg)
        self.patch_size = int(vcfg.patch_size)
        native = int(vcfg.image_size) if self.family != "dinov2" else 224
        self.image_size = config.image_size or native
        if self.image_size < self.patch_size:
            raise ConfigError([Problem(f"{stage}.image_size", f"{self.image_size} is smaller than one "
                                                              f"{self.patch_size} px patch")])
        self.interpolate = self.image_size != int(vcfg.image_size)
        self.num_layers = int(vcfg.num_hidden_layers)
        self.dim = int(vcfg.hidden_size)
        if not -self.num_layers <= config.layer <= self.num_layers or config.layer == 0:
            raise ConfigError([Problem(f"{stage}.layer", f"must be in [-{self.num_layers}, -1] or "
                                                         f"[1, {self.num_layers}] for this model, got {config.layer}")])
        self.layer_index = config.layer if config.layer > 0 else self.num_layers + 1 + config.layer  # 1-based
        self.prefix = (1 + int(getattr(vcfg, "num_register_tokens", 0) or 0)) if self.family in ("clip", "dinov2") else 0
        self.heads = int(vcfg.num_attention_heads)
        norm = model_file(name, "preprocessor_config.json", download=config.download) or {}
        mean, std = _FAMILY_NORM[self.family]
        self.mean = torch.tensor(norm.get("image_mean", mean), dtype=torch.float32, device=self.device).view(1, 3, 1, 1)
        self.std = torch.tensor(norm.get("image_std", std), dtype=torch.float32, device=self.device).view(1, 3, 1, 1)
        # The chosen layer's attention block and its q/k projections, found once: [CLS] attention is
        # computed from them on the block's input, which a forward pre-hook catches.
        block = self._encoder_layers()[self.layer_index - 1]
        self._attn: torch.nn.Module | None = getattr(block, "self_attn", None) or getattr(block, "attention", None)
        self._qk = ((_find_linear(self._attn, ("q_proj", "query")), _find_linear(self._attn, ("k_proj", "key")))
                    if self._attn is not None else (None, None))
        self._captured: dict[str, torch.Tensor] = {}
        self._lock = threading.Lock()  # a live query may be set from another thread
        self._text_name = name
        self._tokenizer: Any = None
        self.query_embedding: torch.Tensor | None = None
        #: what the last :meth:`encode` scored by: "query", "attention" or None (no score).
        self.last_score_kind: str | None = None
        if config.query is not None:
            self.set_query(config.query)

    # -- model plumbing -----------------------------------------------------------------------
    def _encoder_layers(self) -> torch.nn.ModuleList:
        enc = self.vision.encoder
        layers = getattr(enc, "layers", None) or getattr(enc, "layer", None)
        if layers is None:  # pragma: no cover - every supported family has one of them
            raise ModelError(f"cannot find the encoder layers of {self.config.model!r}", stage=self.stage)
        return layers

    @property
    def grid(self) -> tuple[int, int]:
        side = self.image_size // self.patch_size
        return side, side

    def _grab(self, _module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        """Forward pre-hook: keep the attention block's input (the normed hidden states)."""
        hidden = kwargs.get("hidden_states", args[0] if args else None)
        if isinstance(hidden, torch.Tensor):
            self._captured["h"] = hidden

    def _cls_attention(self, hidden: torch.Tensor) -> torch.Tensor | None:
        """``(B, P)`` attention of the [CLS] token to each patch in the chosen layer, from its q/k
        projections applied to the block's attention input ``hidden`` (the fast kernel returns no weights)."""
        q_lin, k_lin = self._qk
        if q_lin is None or k_lin is None:
            return None
        b, n, d = hidden.shape
        hd = d // self.heads
        q = q_lin(hidden[:, :1]).view(b, 1, self.heads, hd).transpose(1, 2)
        k = k_lin(hidden).view(b, n, self.heads, hd).transpose(1, 2)
        att = torch.softmax((q @ k.transpose(-1, -2)).float() * hd ** -0.5, dim=-1)  # (B, H, 1, N)
        return att.mean(dim=1)[:, 0, self.prefix:]

    def _probe_attention(self, last: torch.Tensor) -> torch.Tensor | None:
        """SigLIP: the pooling head's probe attention to each patch, averaged over heads."""
        head = getattr(self.vision, "head", None)
        if head is None or not hasattr(head, "probe"):
            return None
        probe = head.probe.expand(last.shape[0], -1, -1)
        _, weights = head.attention(probe, last, last, need_weights=True, average_attn_weights=True)
        return weights[:, 0, :].float()

    # -- queries ------------------------------------------------------------------------------
    def set_query(self, text: str | None) -> None:
        """Score by relevance to ``text`` from now on (None: back to attention scores)."""
        if text is None:
            with self._lock:
                self.query_embedding = None
            return
        if not isinstance(text, str) or not text.strip():
            raise ConfigError([Problem(f"{self.stage}.query", "must be a non-empty text")])
        if not self.has_text:
            raise ConfigError([Problem(f"{self.stage}.query", f"model {self.config.model!r} ({self.family}) has no "
                                                              "text tower to embed a query; use a SigLIP or CLIP model "
                                                              "(full model, not *_vision_model) for query-guided compression")])
        if self._tokenizer is None:
            self._tokenizer = load_tokenizer(self._text_name, stage=self.stage, download=self.config.download,
                                             why="a query is embedded by the model's text tower")
        # SigLIP's text tower was trained on max-length padding; CLIP pools at the end-of-text token.
        enc = self._tokenizer([text], truncation=True, return_tensors="pt",
                              max_length=int(self.model.config.text_config.max_position_embeddings),
                              padding="max_length" if self.family == "siglip" else True)
        with torch.inference_mode():
            out = self.model.get_text_features(**{k: v.to(self.device) for k, v in enc.items()
                                                  if k in ("input_ids", "attention_mask")})
        emb = getattr(out, "pooler_output", out)
        with self._lock:
            self.query_embedding = F.normalize(emb[0].float(), dim=-1)

    def _relevance(self, last: torch.Tensor, pooled: torch.Tensor | None, query: torch.Tensor) -> torch.Tensor:
        """``(B, P)`` cosine of the query to each frame (broadcast) or patch, in the joint space."""
        if self.family == "clip":
            post, proj = self.vision.post_layernorm, self.model.visual_projection
            if self.config.query_level == "frame":
                emb = proj(post(last[:, 0]))[:, None, :]
            else:
                emb = proj(post(last[:, self.prefix:]))
        else:  # siglip: last_hidden_state is already post-layernormed; the head pools it
            emb = pooled[:, None, :] if self.config.query_level == "frame" and pooled is not None else last
        cos = F.normalize(emb.float(), dim=-1) @ query.to(emb.device)
        return cos.expand(last.shape[0], last.shape[1] - self.prefix)

    # -- encoding -----------------------------------------------------------------------------
    def preprocess(self, frames: torch.Tensor) -> torch.Tensor:
        x = frames.to(self.device, non_blocking=True).permute(0, 3, 1, 2).float()
        if tuple(x.shape[-2:]) != (self.image_size, self.image_size):
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear", antialias=True,
                              align_corners=False)
        return ((x / 255.0 - self.mean) / self.std).to(self.dtype)

    @torch.inference_mode()
    def encode(self, frames: torch.Tensor, *, use_query: bool = True
               ) -> tuple[torch.Tensor, tuple[int, int], torch.Tensor | None]:
        """``frames (T, H, W, 3) uint8`` → patch tokens ``(T, P, D)`` float32 on the CPU, the grid, and
        the scores ``(T, P)`` (None when not scored). ``use_query=False``: scored as if no query were
        set (frames of several streams encoded together, see :meth:`HFVisionEncoder.encode_joint`).

        On a GPU the batches are queued back to back and each one's tokens are copied, already float32,
        into one page-locked CPU tensor without waiting (the copy engine works while the next batch
        computes); the call waits once, at the end. A plain ``.cpu()`` per batch waited after every batch
        and copied through pageable memory, which measured as most of a batch's time on an H200."""
        with self._lock:
            query = self.query_embedding if use_query else None
        want_score = self.config.score != "none" or query is not None
        attn = self._attn if want_score and query is None and self.prefix else None
        rows, cols = self.grid
        cuda = self.device.type == "cuda"
        total = frames.shape[0]
        tokens: torch.Tensor | None = None
        scores: torch.Tensor | None = None  # every batch is scored, or none (the same settings)
        for s in range(0, total, self.config.batch_size):
            pixels = self.preprocess(frames[s:s + self.config.batch_size])
            self._captured.clear()
            hook = attn.register_forward_pre_hook(self._grab, with_kwargs=True) if attn is not None else None
            try:
                kw: dict[str, Any] = {"output_hidden_states": self.layer_index != self.num_layers}
                if self.interpolate:
                    kw["interpolate_pos_encoding"] = True
                out = self.vision(pixel_values=pixels, **kw)
            finally:
                if hook is not None:
                    hook.remove()
            last = out.last_hidden_state
            hidden = last if self.layer_index == self.num_layers else out.hidden_states[self.layer_index]
            patches = hidden[:, self.prefix:]
            if patches.shape[1] != rows * cols:  # pragma: no cover - a tower with an unexpected token layout
                raise ModelError(f"model {self.config.model!r} gave {patches.shape[1]} patch tokens per frame, "
                                 f"expected {rows}x{cols}", stage=self.stage)
            if tokens is None:
                tokens = torch.empty((total, *patches.shape[1:]), dtype=torch.float32, pin_memory=cuda)
            tokens[s:s + patches.shape[0]].copy_(patches, non_blocking=cuda)
            score = None
            if query is not None:
                score = self._relevance(last, getattr(out, "pooler_output", None), query)
            elif want_score:
                if "h" in self._captured:
                    score = self._cls_attention(self._captured["h"])
                elif self.family == "siglip":
                    score = self._probe_attention(last)
            if score is not None:
                if scores is None:
                    scores = torch.empty((total, score.shape[1]), dtype=torch.float32, pin_memory=cuda)
                scores[s:s + score.shape[0]].copy_(score, non_blocking=cuda)
        if cuda:  # the copies above were queued, not waited for
            torch.cuda.current_stream(self.device).synchronize()
        self.last_score_kind = None if scores is None else "query" if query is not None else "attention"
        if tokens is None:  # no frames
            tokens = torch.empty((0, rows * cols, self.dim), dtype=torch.float32)
        return tokens, (rows, cols), scores


@register("hf_encoder", kind="encoder")
class HFVisionEncoder(VideoEncoder):
    """Patch tokens of a ``transformers`` vision tower (SigLIP, CLIP, DINOv2), scored by [CLS]
    attention or by relevance to a text query."""

    config_class = HFVisionEncoderConfig
    config: HFVisionEncoderConfig
    accepts_query = True
    resources = {"num_cpus": 1.0}

    def __init__(self, config: HFVisionEncoderConfig | None = None, **kw: Any) -> None:
        super().__init__(config, **kw)
        self.tower = VisionTower(self.config, stage=self.step_id)
        self._query = self.config.query

    gathers = True

    def encode(self, frames: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int], torch.Tensor | None]:
        return self.tower.encode(frames)

    def may_gather(self, state: dict[str, Any] | None) -> bool:
        """Frames of streams without a query (scored by attention, the same for every stream)."""
        return state is not None and state.get("query") is None

    def encode_joint(self, frames: Sequence[torch.Tensor]) -> list[Any]:
        """One pass per frame size over the frames of every packet; each packet's share, as
        :meth:`encode` gives it (no query), with its score kind."""
        out: list[Any] = [None] * len(frames)
        sizes: dict[tuple[int, ...], list[int]] = {}
        for i, f in enumerate(frames):
            sizes.setdefault(tuple(f.shape[1:]), []).append(i)
        for idx in sizes.values():
            joined = torch.cat([frames[i] for i in idx]) if len(idx) > 1 else frames[idx[0]]
            tokens, grid, score = self.tower.encode(joined, use_query=False)
            kind, start = self.tower.last_score_kind, 0
            for i in idx:
                end = start + frames[i].shape[0]
                out[i] = (tokens[start:end], grid, None if score is None else score[start:end], kind)
                start = end
        return out

    def process(self, packet: Packet) -> list[Packet]:
        ready = self._ready.get(id(packet.frames)) if isinstance(packet, VideoFrames) else None
        out = super().process(packet)
        kind = ready[3] if ready is not None else self.tower.last_score_kind
        for tokens in out:  # later stages weight by a query's relevance only (DPC-KNN's weight_by)
            if isinstance(tokens, Tokens) and kind is not None:
                tokens.meta["score_kind"] = kind
        return out

    def set_query(self, text: str | None) -> None:
        """Weight the following frames by relevance to ``text`` (None: back to attention scores)."""
        self.tower.set_query(text)
        self._query = text

    @property
    def query(self) -> str | None:
        return self._query

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "query": self._query}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict({"next_id": state["next_id"]})
        if state.get("query") != self._query:
            self.set_query(state.get("query"))

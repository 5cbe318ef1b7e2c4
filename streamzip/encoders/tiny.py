"""Tiny random-initialised ``transformers`` models, written to a folder, for tests, examples and
benchmarks that must run offline.

Each folder is what ``save_pretrained`` writes (``config.json`` + safetensors), plus, for models with a
text tower, a small word-level tokenizer, so ``hf_encoder`` / ``hf_audio_encoder`` load it exactly as
they load a real model. The weights are random: the tokens carry no meaning, but shapes, dtypes, the
[CLS] / query plumbing and the speed of a given size are real. ``size="base"`` gives the layer sizes of
the real base models (ViT-B/16: 12 layers of 768; Whisper-base's encoder: 6 layers of 512) for
encoder-bound benchmarks without a download.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import torch

from streamzip.encoders._hf import transformers_module

__all__ = ["TINY_WORDS", "save_tiny_model"]

Kind = Literal["clip", "siglip", "dinov2", "clip_vision", "whisper", "bert", "llm"]

#: the vocabulary of the tiny tokenizer (anything else is [UNK]).
TINY_WORDS = ("a person walking dog cat car red blue green door opening closing ball moving static scene "
              "the of in on with and what is who where when how many").split()

_SIZES = {
    "tiny": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4},
    "base": {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12, "num_attention_heads": 12},
}


def _tokenizer(folder: Path, max_length: int) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers

    tf = transformers_module("tiny")
    special = ["[PAD]", "[UNK]", "[BOS]", "[EOS]"]
    vocab = {w: i for i, w in enumerate(special + list(TINY_WORDS))}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = tf.PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]",
                                      bos_token="[BOS]", eos_token="[EOS]", model_max_length=max_length)
    fast.save_pretrained(folder)


def save_tiny_model(kind: Kind, folder: str | Path, *, size: Literal["tiny", "base"] = "tiny",
                    image_size: int = 32, patch_size: int = 8, seed: int = 0, **overrides: Any) -> Path:
    """Write a random-initialised model of ``kind`` to ``folder`` and return the folder.

    ``clip`` / ``siglip``: vision + text towers (and a tokenizer); ``clip_vision``: a CLIP vision tower
    alone; ``dinov2``: a DINOv2 backbone; ``whisper``: a Whisper model (the audio encoder uses its
    encoder); ``bert``: a text-only model (for the error of a model with no vision tower); ``llm``: a
    decoder-only language model with a tokenizer (an MLLM's LLM, for the ``inputs_embeds`` example).
    """
    tf = transformers_module("tiny")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    s = dict(_SIZES[size])
    text = {**s, "vocab_size": len(TINY_WORDS) + 4, "max_position_embeddings": 16,
            "pad_token_id": 0, "bos_token_id": 2, "eos_token_id": 3}
    vision = {**s, "image_size": image_size, "patch_size": patch_size}
    if kind == "clip":
        model = tf.CLIPModel(tf.CLIPConfig(text_config=text, vision_config=vision,
                                           projection_dim=overrides.pop("projection_dim", min(s["hidden_size"], 512))))
    elif kind == "clip_vision":
        model = tf.CLIPVisionModel(tf.CLIPVisionConfig(**vision))
    elif kind == "siglip":
        model = tf.SiglipModel(tf.SiglipConfig(text_config=text, vision_config=vision))
    elif kind == "dinov2":
        model = tf.Dinov2Model(tf.Dinov2Config(**vision, **overrides))
        overrides = {}
    elif kind == "whisper":
        w = {"d_model": s["hidden_size"], "encoder_layers": s["num_hidden_layers"] // 2 or 1,
             "decoder_layers": 1, "encoder_attention_heads": s["num_attention_heads"],
             "decoder_attention_heads": s["num_attention_heads"], "encoder_ffn_dim": s["intermediate_size"],
             "decoder_ffn_dim": s["intermediate_size"], "num_mel_bins": 80, "vocab_size": 64,
             "max_source_positions": 1500, "max_target_positions": 16, "pad_token_id": 0,
             "bos_token_id": 1, "eos_token_id": 2, "decoder_start_token_id": 1}
        if size == "base":
            w.update(encoder_layers=6, d_model=512, encoder_attention_heads=8, encoder_ffn_dim=2048,
                     decoder_attention_heads=8, decoder_ffn_dim=2048)
        model = tf.WhisperModel(tf.WhisperConfig(**{**w, **overrides}))
        overrides = {}
    elif kind == "llm":  # a decoder-only LM (Llama layout), the shape of an MLLM's language model
        model = tf.LlamaForCausalLM(tf.LlamaConfig(
            vocab_size=text["vocab_size"], hidden_size=s["hidden_size"] * 2, intermediate_size=s["intermediate_size"] * 2,
            num_hidden_layers=s["num_hidden_layers"], num_attention_heads=s["num_attention_heads"],
            num_key_value_heads=s["num_attention_heads"], max_position_embeddings=2048,
            pad_token_id=0, bos_token_id=2, eos_token_id=3))
    elif kind == "bert":
        model = tf.BertModel(tf.BertConfig(**{**s, "vocab_size": len(TINY_WORDS) + 4}))
    else:
        raise ValueError(f"unknown tiny model kind {kind!r}; use clip, siglip, dinov2, clip_vision, whisper or bert")
    if overrides:
        raise ValueError(f"unused options for {kind}: {sorted(overrides)}")
    model.save_pretrained(folder, safe_serialization=True)
    if kind in ("clip", "siglip", "llm"):
        _tokenizer(folder, text["max_position_embeddings"] if kind != "llm" else 2048)
    return folder

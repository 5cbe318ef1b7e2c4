"""Loading ``transformers`` models for the ``hf`` encoders: by local folder or cached id, never by
surprise download, with errors that say what to do.

- A folder (a path that exists, or that looks like one: ``./x``, ``/x``, ``~/x``) must hold the
  ``config.json`` and safetensors weights ``save_pretrained`` writes.
- Anything else is a Hugging Face id, looked up in the local cache only (``local_files_only``) unless
  the stage's ``download`` option is on. With ``HF_HUB_OFFLINE=1`` (or ``TRANSFORMERS_OFFLINE=1``) no
  download is attempted even then, and the error says the machine is offline.
- Weights load from safetensors only: a pickled ``pytorch_model.bin`` can run code when loaded, so it is
  refused with the conversion to do.

``transformers`` is imported here, lazily: ``import streamzip`` stays fast without it, and a missing
install is a :class:`~streamzip.errors.DependencyError` naming the extra.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from streamzip.errors import DependencyError, ModelError

__all__ = ["AUDIO_TYPES", "VISION_TYPES", "is_offline", "load_config", "load_model", "load_tokenizer",
           "model_file", "transformers_module"]

#: model types holding a vision tower we know how to read (patch tokens, CLS or not).
VISION_TYPES = {
    "clip": "clip", "clip_vision_model": "clip",
    "siglip": "siglip", "siglip_vision_model": "siglip",
    "dinov2": "dinov2", "dinov2_with_registers": "dinov2",
}
#: speech models, for the error when one is given as a video encoder (and for the audio encoder).
AUDIO_TYPES = {"whisper", "wav2vec2", "hubert", "wavlm", "data2vec-audio", "seamless_m4t", "speech_to_text",
               "qwen2_audio_encoder", "clap", "audio-spectrogram-transformer"}


def transformers_module(stage: str) -> Any:
    try:
        import transformers
    except ModuleNotFoundError as err:  # pragma: no cover - the dev install has it
        raise DependencyError("the hf encoders need the transformers package", stage=stage,
                              fix="pip install 'streamzip[hf]'") from err
    # Our own progress bar and summary speak for the run; transformers' per-load bars would interleave.
    transformers.utils.logging.disable_progress_bar()
    return transformers


def is_offline() -> bool:
    """Whether the environment forbids downloads (``HF_HUB_OFFLINE`` or ``TRANSFORMERS_OFFLINE``)."""
    return any(os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on")
               for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def _looks_like_path(model: str) -> bool:
    return model.startswith(("/", "./", "../", "~", ".\\")) or os.sep * 2 in model or model.count("/") > 1


def _where(model: str, stage: str) -> tuple[str, bool]:
    """``(name to load, is a folder)``; a folder that is missing or holds no config is a ModelError."""
    path = Path(model).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelError(f"model folder {model!r} holds no config.json, so it is not a transformers model",
                             stage=stage, fix="give the folder that model.save_pretrained() (or a hub "
                                              "download) wrote, with config.json and *.safetensors")
        return str(path), True
    if path.exists():
        raise ModelError(f"model {model!r} is a file, not a model folder", stage=stage,
                         fix="give the folder holding config.json and the safetensors weights")
    if _looks_like_path(model):
        raise ModelError(f"model folder {model!r} does not exist", stage=stage,
                         fix="check the path, or give a Hugging Face id such as google/siglip-base-patch16-224 "
                             "(video) or openai/whisper-base (audio)")
    return model, False


def _not_available(model: str, stage: str, download: bool, err: BaseException) -> ModelError:
    from huggingface_hub.constants import HF_HUB_CACHE

    if download and is_offline():
        return ModelError(f"model {model!r} is not in the local Hugging Face cache ({HF_HUB_CACHE}) and the "
                          "environment is offline (HF_HUB_OFFLINE/TRANSFORMERS_OFFLINE), so no download was "
                          "attempted", stage=stage,
                          fix=f"download it on a connected machine (hf download {model}) and copy the cache "
                              "here, or give a local model folder")
    if not download:
        return ModelError(f"model {model!r} is not a local folder and not in the local Hugging Face cache "
                          f"({HF_HUB_CACHE}); downloads are off for this stage, so none was attempted",
                          stage=stage,
                          fix=f"download it once (hf download {model}), give a local model folder, or set "
                              "download: true on the step")
    return ModelError(f"model {model!r} could not be fetched: {err}", stage=stage,
                      fix="check the id and the network, or give a local model folder")


def load_config(model: str, *, stage: str, download: bool = False) -> tuple[Any, str]:
    """The model's ``PretrainedConfig`` and the name to load it by (a folder or an id)."""
    tf = transformers_module(stage)
    name, _ = _where(model, stage)
    local_only = not download or is_offline()
    try:
        return tf.AutoConfig.from_pretrained(name, local_files_only=local_only), name
    except (OSError, ValueError) as err:
        if Path(name).is_dir():
            raise ModelError(f"cannot read the config of model folder {model!r}: {err}", stage=stage,
                             fix="give a folder written by save_pretrained()") from err
        raise _not_available(model, stage, download, err) from err


def load_model(cls: Any, name: str, *, stage: str, download: bool, dtype: Any) -> Any:
    """``cls.from_pretrained`` from safetensors only, weights in ``dtype``, in eval mode."""
    local_only = not download or is_offline()
    if Path(name).is_dir() and not any(Path(name).glob("*.safetensors")):
        pickled = [p.name for p in Path(name).glob("*.bin")]
        raise ModelError(f"model folder {name!r} holds no safetensors weights"
                         + (f" (only pickled {', '.join(pickled)}, which can run code when loaded)" if pickled else ""),
                         stage=stage, fix="convert it: load once where you trust it and call "
                                          "save_pretrained(folder, safe_serialization=True)")
    try:
        model = cls.from_pretrained(name, local_files_only=local_only, use_safetensors=True, dtype=dtype)
    except (OSError, ValueError) as err:
        if Path(name).is_dir():
            raise ModelError(f"cannot load the weights of model folder {name!r}: {err}", stage=stage,
                             fix="give a folder written by save_pretrained(safe_serialization=True)") from err
        raise _not_available(name, stage, download, err) from err
    return model.eval()


def load_tokenizer(name: str, *, stage: str, download: bool, why: str) -> Any:
    """The model's tokenizer; a ModelError saying ``why`` it is needed when there is none."""
    tf = transformers_module(stage)
    local_only = not download or is_offline()
    # transformers builds an empty tokenizer (every word unknown) when the files are missing: refuse that.
    if not any(_file_at_hand(name, f, download=download) for f in _TOKENIZER_FILES):
        raise ModelError(f"model {name!r} has no tokenizer files ({', '.join(_TOKENIZER_FILES)}); {why}",
                         stage=stage, fix="save the tokenizer into the model folder "
                                          "(tokenizer.save_pretrained(folder)) or use the model's full hub id")
    try:
        return tf.AutoTokenizer.from_pretrained(name, local_files_only=local_only)
    except (OSError, ValueError, TypeError) as err:
        raise ModelError(f"model {name!r} has no usable tokenizer ({type(err).__name__}: {err}); {why}",
                         stage=stage, fix="save the tokenizer into the model folder "
                                          "(tokenizer.save_pretrained(folder)) or use the model's full hub id") from err


_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "spiece.model", "tokenizer.model")


def _local_file(name: str, filename: str, *, download: bool) -> Path | None:
    """Where ``filename`` of the model is on this machine (a folder's file, or the hub cache's copy,
    fetched first only when ``download`` allows it), or None."""
    if Path(name).is_dir():
        path = Path(name) / filename
        return path if path.is_file() else None
    try:
        from huggingface_hub import hf_hub_download

        return Path(hf_hub_download(name, filename, local_files_only=not download or is_offline()))
    except Exception:  # noqa: BLE001 - not there
        return None


def _file_at_hand(name: str, filename: str, *, download: bool) -> bool:
    return _local_file(name, filename, download=download) is not None


def model_file(name: str, filename: str, *, download: bool) -> dict[str, Any] | None:
    """A small JSON file of the model (e.g. ``preprocessor_config.json``) when it is at hand, else None
    (the defaults of the model type apply)."""
    path = _local_file(name, filename, download=download)
    return dict(json.loads(path.read_text())) if path is not None else None

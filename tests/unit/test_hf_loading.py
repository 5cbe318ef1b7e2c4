"""Loading models for the hf encoders (:mod:`streamzip.encoders._hf`, shared by ``hf_encoder`` and
``hf_audio_encoder``): every check runs for both towers, on tiny random-initialised models (offline).
What only one tower does (its tokens, its own options) is tested in ``test_hf_encoder.py`` and
``test_hf_audio.py``."""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch

from streamzip import ConfigError, ModelError, Operator
from streamzip.encoders.hf import HFVisionEncoder
from streamzip.encoders.hf_audio import HFAudioEncoder
from streamzip.encoders.tiny import save_tiny_model


@dataclass(frozen=True)
class Tower:
    """One hf encoder and what its loading errors say."""

    encoder: type[HFVisionEncoder] | type[HFAudioEncoder]
    model: str  # a tiny model it takes
    wrong_model: str  # a tiny model of the other modality
    wrong_model_error: str  # the error that names the other encoder
    text_model_error: str  # the error for a text model (bert)
    never_cached: str  # a hub id that no cache holds
    bad_options: dict[str, Any] = field(default_factory=dict)  # options of its own, each wrong

    def build(self, model: str | Path, **kw: Any) -> Operator:
        """On the CPU unless ``device`` says otherwise."""
        return self.encoder(self.encoder.config_class(model=str(model), **{"device": "cpu", **kw}))


TOWERS = {
    "vision": Tower(HFVisionEncoder, "clip_vision", "whisper", r"audio model \(whisper\).*hf_audio_encoder",
                    r"no vision tower.*'bert'.*SigLIP, CLIP or DINOv2", "nobody-xyz/siglip-never-cached"),
    "audio": Tower(HFAudioEncoder, "whisper", "clip", r"vision model \(clip\).*hf_encoder",
                   r"no Whisper audio encoder.*'bert'", "nobody-xyz/whisper-never-cached", {"segment_s": 45}),
}


@pytest.fixture(params=sorted(TOWERS))
def tower(request: pytest.FixtureRequest) -> Tower:
    return TOWERS[request.param]


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    return {kind: save_tiny_model(kind, root / kind)  # type: ignore[arg-type]
            for kind in ("clip", "clip_vision", "whisper", "bert")}


def test_missing_folder_names_the_fix(tower, tmp_path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ModelError, match="does not exist") as err:
        tower.build(tmp_path / "nowhere" / "model")
    assert err.value.fix and "check the path" in err.value.fix


def test_folder_without_config(tower, tmp_path) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "weights.safetensors").write_bytes(b"")
    with pytest.raises(ModelError, match="no config.json"):
        tower.build(tmp_path)


def test_model_of_the_other_modality_names_the_other_encoder(tower, models) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ModelError, match=tower.wrong_model_error):
        tower.build(models[tower.wrong_model])


def test_text_model_holds_no_tower(tower, models) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ModelError, match=tower.text_model_error):
        tower.build(models["bert"])


def test_pickled_weights_are_refused(tower, models, tmp_path) -> None:  # type: ignore[no-untyped-def]
    folder = tmp_path / "pickled"
    shutil.copytree(models[tower.model], folder)
    for f in folder.glob("*.safetensors"):
        f.rename(folder / "pytorch_model.bin")
    with pytest.raises(ModelError, match="no safetensors weights.*pytorch_model.bin"):
        tower.build(folder)


def test_uncached_id_with_downloads_off_attempts_no_download(tower, monkeypatch, tmp_path) -> None:  # type: ignore[no-untyped-def]
    import huggingface_hub

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))

    def no_network(*a, **k):  # type: ignore[no-untyped-def]
        raise AssertionError("a download was attempted")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", no_network)
    with pytest.raises(ModelError, match="downloads are off.*none was attempted") as err:
        tower.build(tower.never_cached)
    assert "download: true" in str(err.value)


def test_offline_environment_is_named_when_a_download_would_be_needed(tower, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelError, match="offline.*no download was attempted"):
        tower.build(tower.never_cached, download=True)


def test_cuda_asked_for_without_a_gpu(tower, models) -> None:  # type: ignore[no-untyped-def]
    if torch.cuda.is_available():
        pytest.skip("this check is for machines without a GPU")
    with pytest.raises(ConfigError, match="no CUDA GPU"):
        tower.build(models[tower.model], device="cuda")


def test_config_problems_are_listed(tower) -> None:  # type: ignore[no-untyped-def]
    bad = {"batch_size": 0, "device": "tpu", "dtype": "int8", **tower.bad_options}
    with pytest.raises(ConfigError) as err:
        tower.encoder.config_class.from_mapping(bad)
    text = str(err.value)
    for name in ("model", *bad):
        assert name in text


"""The ``patch`` video encoder: fixed-size patches of the (already resized) frame, normalised.

No weights, deterministic and fast, and meaningful for redundancy: a static region gives identical
tokens from frame to frame, motion and cuts change them. Each token is the patch's pixels in
``[0, 1]``, normalised per channel with the ImageNet mean and std (as CLIP-style towers are fed), then
flattened to ``patch_size² · 3`` values.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch

from streamzip.config import Config
from streamzip.encoders._video import VideoEncoder
from streamzip.registry import register

_MEAN = torch.tensor([0.485, 0.456, 0.406])
_STD = torch.tensor([0.229, 0.224, 0.225])
_SCALE = 1.0 / (255.0 * _STD)
_SHIFT = _MEAN / _STD


@dataclass(frozen=True)
class PatchEncoderConfig(Config):
    # 16 px patches on a 224 px frame give the 14×14 grid of ViT-B/16-style towers.
    patch_size: int = 16
    # ImageNet statistics: the convention of the vision towers whose tokens these stand in for.
    normalize: bool = True

    def check(self) -> Iterator[tuple[str, str]]:
        if not 1 <= self.patch_size <= 512:
            yield "patch_size", f"must be in [1, 512], got {self.patch_size}"


@register("patch_encoder", kind="encoder")
class PatchEncoder(VideoEncoder):
    """Fixed-size normalised pixel patches as tokens (no weights)."""

    config_class = PatchEncoderConfig
    config: PatchEncoderConfig
    threads = 1  # small tensor ops (Operator.threads)

    def encode(self, frames: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int], None]:
        return patchify(frames, self.config.patch_size, normalize=self.config.normalize)


def patchify(frames: torch.Tensor, patch_size: int, *, normalize: bool = True) -> tuple[torch.Tensor, tuple[int, int], None]:
    """``(T, H, W, 3)`` uint8 → ``(T, N, patch_size²·3)`` float32 and the grid ``(rows, cols)``.

    Pixels beyond the last whole patch (H or W not a multiple of ``patch_size``) are cropped.
    """
    t, h, w, c = frames.shape
    p = patch_size
    rows, cols = h // p, w // p
    if rows == 0 or cols == 0:
        raise ValueError(f"frames of {w}x{h} are smaller than one {p}px patch; decode at a larger size "
                         f"or use a smaller patch_size")
    # Patches laid out while still bytes (a quarter of the float copy), then converted in place.
    x = (frames[:, : rows * p, : cols * p, :].reshape(t, rows, p, cols, p, c).permute(0, 1, 3, 2, 4, 5)
         .reshape(t, rows * cols, p * p * c).to(torch.float32))
    if normalize:  # (x/255 - mean)/std as one multiply-add, in place; the channel is the last axis
        x.mul_(_SCALE.repeat(p * p)).sub_(_SHIFT.repeat(p * p))
    else:
        x.div_(255.0)
    return x, (rows, cols), None

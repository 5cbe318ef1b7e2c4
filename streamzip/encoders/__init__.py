"""Encoders: stages that turn decoded frames or audio into tokens.

- ``patch_encoder`` (default for video, no weights): fixed-size patches of the resized frame.
- ``function_encoder``: any callable ``frames (T, H, W, 3) uint8 -> tokens (T, N, D)``.
"""

from __future__ import annotations

from streamzip.encoders.function import FunctionEncoder, FunctionEncoderConfig
from streamzip.encoders.patch import PatchEncoder, PatchEncoderConfig

__all__ = ["FunctionEncoder", "FunctionEncoderConfig", "PatchEncoder", "PatchEncoderConfig"]

# Optional encoders register themselves on import when their module exists.
for _mod in ("streamzip.encoders.fbank", "streamzip.encoders.hf", "streamzip.encoders.hf_audio"):
    try:
        __import__(_mod)
    except ModuleNotFoundError as _err:  # only the module itself missing is fine
        if _err.name != _mod:
            raise

"""streamzip: bounded streams of compressed multimodal tokens from long or live video and audio."""

from __future__ import annotations

from streamzip._version import __version__
from streamzip.config import Config
from streamzip.errors import (
    BackendError,
    ConfigError,
    CorruptMediaError,
    DependencyError,
    InputError,
    InputNotFoundError,
    ModelError,
    NoStreamError,
    NotMediaError,
    OutputError,
    Problem,
    SnapshotError,
    StreamzipError,
    TokenError,
)
from streamzip.operator import Operator
from streamzip.output import load
from streamzip.packets import AUDIO, VIDEO, AudioChunk, End, Gap, Packet, Tokens, VideoFrames
from streamzip.pipeline import Pipeline, load_pipeline
from streamzip.registry import register
from streamzip.sources import DecodeConfig, FileSource

__all__ = [
    "AUDIO",
    "VIDEO",
    "AudioChunk",
    "BackendError",
    "Config",
    "DecodeConfig",
    "FileSource",
    "Pipeline",
    "load",
    "load_pipeline",
    "ConfigError",
    "CorruptMediaError",
    "DependencyError",
    "End",
    "Gap",
    "InputError",
    "InputNotFoundError",
    "ModelError",
    "NoStreamError",
    "NotMediaError",
    "Operator",
    "OutputError",
    "Packet",
    "Problem",
    "SnapshotError",
    "StreamzipError",
    "TokenError",
    "Tokens",
    "VideoFrames",
    "__version__",
    "register",
]

"""The plug-in interface: any callable ``frames -> tokens`` becomes a video encoder.

The callable takes ``(T, H, W, 3)`` uint8 RGB frames and returns either ``(T, N, D)`` tokens, or a
tuple ``(tokens, (rows, cols))`` with the patch grid, or ``(tokens, (rows, cols), scores)`` with
``(T, N)`` importance scores. In YAML it is named by an import path ``"package.module:function"``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch

from streamzip.config import Config
from streamzip.encoders._video import VideoEncoder
from streamzip.errors import ConfigError, Problem
from streamzip.registry import register

EncodeFn = Callable[[torch.Tensor], Any]


@dataclass(frozen=True)
class FunctionEncoderConfig(Config):
    # "package.module:function"; empty when the callable is given directly in Python.
    function: str = ""

    def check(self) -> Iterator[tuple[str, str]]:
        if self.function and ":" not in self.function:
            yield "function", f"must look like 'package.module:function', got {self.function!r}"


def resolve_function(path: str) -> EncodeFn:
    module, _, attr = path.partition(":")
    try:
        fn = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError, ValueError, TypeError) as err:  # ':f' and '.mod:f' raise the last two
        raise ConfigError([Problem("function", f"cannot import {path!r}: {err}")]) from err
    if not callable(fn):
        raise ConfigError([Problem("function", f"{path!r} is not callable")])
    return fn  # type: ignore[no-any-return]


@register("function_encoder", kind="encoder")
class FunctionEncoder(VideoEncoder):
    """Any callable frames → tokens, as a video encoder."""

    config_class = FunctionEncoderConfig
    config: FunctionEncoderConfig

    def __init__(self, config: FunctionEncoderConfig | None = None, *, fn: EncodeFn | None = None,
                 **kw: Any) -> None:
        super().__init__(config, **kw)
        if fn is None:
            if not self.config.function:
                raise ConfigError([Problem("function", "give a callable or an import path 'module:function'")])
            fn = resolve_function(self.config.function)
        self.fn = fn

    def encode(self, frames: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int], torch.Tensor | None]:
        out = self.fn(frames)
        score = None
        if isinstance(out, tuple):
            feats, grid = out[0], tuple(out[1])
            if len(out) > 2:
                score = out[2]
        else:
            feats = out
            n = int(feats.shape[1])
            grid = (1, n)
        feats = torch.as_tensor(feats)
        if feats.dim() != 3 or feats.shape[0] != frames.shape[0]:
            raise ValueError(f"encoder function must return (T={frames.shape[0]}, N, D) tokens, "
                             f"got shape {tuple(feats.shape)}")
        return feats, (int(grid[0]), int(grid[1])), score

"""Where the heavy stages compute: ``device`` and ``dtype`` options, resolved once.

``device: auto`` is CUDA when PyTorch sees a GPU, else the CPU. ``dtype: auto`` is bfloat16 on a GPU
that supports it (float16 on older ones) and float32 on the CPU, where half precision is slower and
less accurate. Tokens always leave a stage as float32 on the CPU (the packet contract), whatever the
stage computed in: an operator plans on its device (:func:`tokens_on` puts there what a kernel reads) and
applies the plan to the packet on the CPU.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

from streamzip.errors import ConfigError, Problem
from streamzip.packets import Tokens

__all__ = ["DEVICES", "DTYPES", "OnDevice", "check_device", "resolve_device", "resolve_dtype", "tokens_on",
           "torch_threads"]

DEVICES = ("auto", "cpu", "cuda")
DTYPES = {"auto": None, "float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def check_device(value: str) -> str | None:
    """A message when ``value`` is not ``auto``, ``cpu``, ``cuda`` or ``cuda:N`` (for config checks)."""
    if value in DEVICES or (value.startswith("cuda:") and value[5:].isdigit()):
        return None
    return f"must be auto, cpu, cuda or cuda:N, got {value!r}"


def resolve_device(value: str = "auto", *, field: str = "device") -> torch.device:
    """``auto`` → ``cuda`` when available else ``cpu``; a CUDA device asked for on a machine without one
    is a :class:`ConfigError` (silently running on the CPU would hide a broken install)."""
    problem = check_device(value)
    if problem:
        raise ConfigError([Problem(field, problem)])
    if value == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(value)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError([Problem(field, f"{value!r} asked for but PyTorch sees no CUDA GPU here; "
                                              "use device: auto (CUDA when present) or cpu")])
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError([Problem(field, f"{value!r} asked for but only {torch.cuda.device_count()} "
                                              "GPU(s) are visible")])
    return device


def resolve_dtype(value: str, device: torch.device, *, field: str = "dtype") -> torch.dtype:
    """``auto`` → bfloat16 (or float16) on CUDA, float32 on the CPU; other names map one to one."""
    if value not in DTYPES:
        raise ConfigError([Problem(field, f"must be one of {', '.join(DTYPES)}, got {value!r}")])
    chosen = DTYPES[value]
    if chosen is not None:
        return chosen
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def tokens_on(tokens: Tokens, device: torch.device) -> Tokens:
    """What a kernel reads of ``tokens`` (``data``, ``t0``, ``t1``, ``pos``, ``size``, ``score``) on
    ``device``, to plan there; ``tokens`` itself when it is already there (no copy). Provenance
    (``src``, ``assignment``) stays behind: plans come back to the CPU and apply to the packet there."""
    if tokens.data.device == device:
        return tokens
    return Tokens(stream=tokens.stream, modality=tokens.modality, data=tokens.data.to(device),
                  t0=tokens.t0.to(device), t1=tokens.t1.to(device), pos=tokens.pos.to(device),
                  size=tokens.size.to(device), score=None if tokens.score is None else tokens.score.to(device),
                  meta=dict(tokens.meta))


@contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """torch's intra-op CPU threads set to ``threads`` for the block (or, as a decorator, the call),
    then set back (None: unchanged).

    The setting is per thread once a thread has used torch, so other threads keep theirs; a thread
    that first uses torch inside the block starts from it. See :attr:`Operator.threads` for why small
    ops run on one thread."""
    before = torch.get_num_threads() if threads is not None else 0
    if threads is None or threads == before:
        yield
        return
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class OnDevice:
    """Mix-in of the operators with a ``device`` option (``config.device``): :attr:`device`, resolved on
    first use, so that a missing GPU is an error naming the step when the stage first computes."""

    config: Any
    step_id: str
    _device: torch.device | None = None

    @property
    def device(self) -> torch.device:
        """Where the stage computes: ``config.device`` resolved (an error names this step)."""
        if self._device is None:
            self._device = resolve_device(self.config.device, field=f"{self.step_id}.device")
        return self._device

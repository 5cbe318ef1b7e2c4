"""Runtimes run a :class:`~streamzip.pipeline.Pipeline` over inputs.

- ``local``: in-process; the reference semantics.
- ``ray``: stages as Ray actors (:mod:`streamzip.runtime.ray`, with its actor side in ``_ray_actor`` and
  its per-stream driver side in ``_ray_chain``: the only runtime modules that import Ray).
"""

from __future__ import annotations

from typing import Any

from streamzip.errors import ConfigError, Problem
from streamzip.runtime.local import LocalRuntime

__all__ = ["LocalRuntime", "RUNTIMES", "get_runtime"]

RUNTIMES = ("local", "ray")


def get_runtime(name: str, **options: Any):  # type: ignore[no-untyped-def]
    """A runtime by name: ``local`` or ``ray``."""
    if name == "local":
        return LocalRuntime(**options)
    if name == "ray":
        from streamzip.runtime.ray import RayRuntime

        return RayRuntime(**options)
    raise ConfigError([Problem("runtime", f"unknown runtime {name!r}; choose one of {', '.join(RUNTIMES)}")])

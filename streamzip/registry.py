"""The registry of stages, keyed by the name used in the DSL and in YAML.

Built-in stages register with the :func:`register` decorator when their module is imported; the
registry imports the built-in modules on first lookup. Third-party operators arrive through the
``streamzip.operators`` entry-point group: each entry point names a module (or an object) whose import
registers its operators.
"""

from __future__ import annotations

import difflib
import importlib
import threading
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from typing import TypeVar

from streamzip.errors import ConfigError, Problem
from streamzip.operator import Operator

__all__ = ["ENTRY_POINT_GROUP", "StageInfo", "available", "get", "register"]

ENTRY_POINT_GROUP = "streamzip.operators"
_BUILTIN_MODULES = ("streamzip.encoders", "streamzip.operators")

OpT = TypeVar("OpT", bound=type[Operator])


@dataclass(frozen=True)
class StageInfo:
    name: str
    cls: type[Operator]
    kind: str  # "encoder" or "operator"

    @property
    def summary(self) -> str:
        doc = (self.cls.__doc__ or "").strip().splitlines()
        return doc[0] if doc else ""


_REGISTRY: dict[str, StageInfo] = {}
_loaded = False
# The first lookup imports the built-in modules; lookups from other threads meanwhile (cameras of
# `streamzip live` starting at once) wait for it rather than see a half-filled registry.
_LOAD_LOCK = threading.RLock()


def register(name: str, *, kind: str = "operator") -> Callable[[OpT], OpT]:
    """Class decorator: make an :class:`Operator` subclass available as ``name``."""

    def deco(cls: OpT) -> OpT:
        if not (isinstance(cls, type) and issubclass(cls, Operator)):
            raise TypeError(f"@register({name!r}) decorates Operator subclasses, got {cls!r}")
        existing = _REGISTRY.get(name)
        if existing is not None and existing.cls is not cls:
            raise ValueError(f"stage name {name!r} is taken by {existing.cls.__module__}.{existing.cls.__name__}")
        cls.name = name
        _REGISTRY[name] = StageInfo(name=name, cls=cls, kind=kind)
        return cls

    return deco


def _load() -> None:
    global _loaded
    if _loaded:
        return
    with _LOAD_LOCK:
        if _loaded:
            return
        for mod in _BUILTIN_MODULES:
            importlib.import_module(mod)
        for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
            ep.load()
        _loaded = True


def available() -> dict[str, StageInfo]:
    """Every registered stage by name."""
    _load()
    return dict(sorted(_REGISTRY.items()))


def get(name: str, *, path: str = "op") -> StageInfo:
    """The stage registered as ``name``; a :class:`ConfigError` with suggestions otherwise."""
    _load()
    try:
        return _REGISTRY[name]
    except KeyError:
        close = difflib.get_close_matches(name, list(_REGISTRY), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ConfigError([Problem(path, f"unknown step {name!r}{hint} Known steps: "
                                         f"{', '.join(sorted(_REGISTRY))}")]) from None

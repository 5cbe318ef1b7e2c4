"""Ready pipelines, importable as ``streamzip.pipelines``: YAML files beside this module.

``load("default")`` gives the :class:`~streamzip.pipeline.Pipeline` of ``default.yaml``.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["builtin_names", "builtin_path", "load"]

_HERE = Path(__file__).resolve().parent


def builtin_names() -> list[str]:
    """Names of the built-in pipelines."""
    return sorted(p.stem for p in _HERE.glob("*.yaml"))


def builtin_path(name: str) -> str | None:
    """The YAML file of the built-in pipeline ``name``, or None."""
    path = _HERE / f"{name}.yaml"
    return str(path) if path.is_file() else None


def load(name: str):  # type: ignore[no-untyped-def]
    """The built-in pipeline ``name`` as a :class:`~streamzip.pipeline.Pipeline`."""
    from streamzip.pipeline import load_pipeline

    return load_pipeline(name)

"""The compression algorithms, importable as ``streamzip.operators``.

Each algorithm is a kernel (pure tensor functions: a plan, then its application) plus a streaming
operator registered under the name used in pipelines. Importing this package registers them all.
"""

from __future__ import annotations

import importlib

_MODULES = ("framefusion", "dpc_knn", "baselines", "vad", "atome", "window", "memory")

for _name in _MODULES:
    try:
        importlib.import_module(f"{__name__}.{_name}")
    except ModuleNotFoundError as _err:  # TODO(lead): make strict once every module exists
        if _err.name != f"{__name__}.{_name}":
            raise

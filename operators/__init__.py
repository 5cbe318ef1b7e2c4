"""The compression algorithms, importable as ``streamzip.operators``.

Each algorithm is a kernel (pure tensor functions: a plan, then its application) plus a streaming
operator registered under the name used in pipelines. Importing this package registers them all.
"""

from __future__ import annotations

"""Sources: where packets come from (files and synthetic ``lavfi:`` graphs; live sources later)."""

from __future__ import annotations

from streamzip.sources._names import display_name, redact, stream_name
from streamzip.sources.file import DecodeConfig, FileSource, SourceStats

__all__ = ["DecodeConfig", "FileSource", "SourceStats", "display_name", "redact", "stream_name"]

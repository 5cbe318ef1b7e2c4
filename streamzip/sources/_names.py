"""Names of inputs as they appear in messages, manifests and logs: credentials never do."""

from __future__ import annotations

import os
import re
from urllib.parse import urlsplit, urlunsplit

_URL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")


def redact(text: str) -> str:
    """Replace ``user:password@`` in any URL inside ``text`` by ``***@``."""
    return re.sub(r"([a-zA-Z][a-zA-Z0-9+.-]*://)[^/@\s]*@", r"\1***@", text)


def display_name(path: str) -> str:
    """How an input is named to users: a redacted URL, or the path as given."""
    if _URL.match(path):
        parts = urlsplit(path)
        netloc = parts.hostname or ""
        if parts.port:
            netloc = f"{netloc}:{parts.port}"
        if parts.username or parts.password:
            netloc = f"***@{netloc}"
        return urlunsplit((parts.scheme, netloc, parts.path, parts.query, ""))
    return path


def stream_name(path: str) -> str:
    """A short stream id for an input: its file name (or the URL's last path part)."""
    if path.startswith("lavfi:"):
        return "lavfi"
    if _URL.match(path):
        tail = urlsplit(path).path.rstrip("/").rsplit("/", 1)[-1]
        return tail or (urlsplit(path).hostname or "stream")
    return os.path.basename(os.path.normpath(path)) or path

"""Names of inputs as they appear in messages, manifests and logs: credentials never do."""

from __future__ import annotations

import os
import re
from urllib.parse import urlsplit

_URL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")


def redact(text: str) -> str:
    """Replace ``user:password@`` in any URL inside ``text`` by ``***@``. Up to the URL's last ``@``: a
    password may hold a raw ``@`` or ``/`` (hiding too much is safe, showing a piece of it is not)."""
    return re.sub(r"([a-zA-Z][a-zA-Z0-9+.-]*://)[^\s'\"]*@", r"\1***@", text)


def display_name(path: str) -> str:
    """How an input is named to users: a URL with its credentials replaced by ``***@``, or the path as
    given. Never raises (a URL whose port is not a number is still named)."""
    m = _URL.match(path)
    if not m:
        return path
    rest = path[m.end():]
    cut = min((i for i in (rest.find("?"), rest.find("#")) if i >= 0), default=len(rest))
    _, at, after = rest[:cut].rpartition("@")
    if not at:
        return path
    return f"{path[:m.end()].lower()}***@{after}{rest[cut:]}"


def stream_name(path: str) -> str:
    """A short stream id for an input: its file name (or the URL's last path part)."""
    if path.startswith("lavfi:"):
        return "lavfi"
    if _URL.match(path):
        tail = urlsplit(path).path.rstrip("/").rsplit("/", 1)[-1]
        return tail or (urlsplit(path).hostname or "stream")
    return os.path.basename(os.path.normpath(path)) or path

"""The live endpoint's wire format: token packets as safetensors bytes (:func:`pack_tokens`) and back
(:func:`unpack_tokens`), as served by ``/streams/{id}/context``, the SSE events and the WebSocket messages."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from streamzip.output import plain_data as _plain
from streamzip.packets import Tokens

FORMAT = "streamzip-live"
FORMAT_VERSION = "1"


def pack_tokens(packets: Sequence[Tokens], extra: Sequence[dict[str, Any]] | None = None,
                **header: Any) -> bytes:
    """Token packets as safetensors bytes: tensors ``{i}.data``, ``{i}.t0``, ``{i}.t1``, ``{i}.pos``,
    ``{i}.size`` (and ``src``/``assignment``/``score`` when present) for packet ``i``; the metadata
    holds ``format``, the ``header`` values and ``packets`` (JSON: kind, modality, meta, and ``extra[i]``)."""
    tensors: dict[str, torch.Tensor] = {}
    entries = []
    for i, p in enumerate(packets):
        for key in ("data", "t0", "t1", "pos", "size", "src", "assignment", "score"):
            value = getattr(p, key)
            if value is not None:
                tensors[f"{i}.{key}"] = value.contiguous()
        entry = {"index": i, "stream": p.stream, "modality": p.modality, "kind": p.meta.get("kind", "tokens"),
                 "num_tokens": p.num_tokens, "meta": _plain(p.meta)}
        if extra is not None:
            entry.update(extra[i])
        entries.append(entry)
    meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "packets": json.dumps(entries)}
    meta.update({k: json.dumps(_plain(v)) for k, v in header.items()})
    return st_save(tensors, metadata=meta)


def unpack_tokens(blob: bytes) -> tuple[list[Tokens], dict[str, Any]]:
    """The inverse of :func:`pack_tokens`: the packets and the header (``packets`` = their entries)."""
    tensors = st_load(blob)
    header = _read_metadata(blob)
    entries = json.loads(header.pop("packets", "[]"))
    out = []
    for e in entries:
        i = e["index"]
        out.append(Tokens(stream=e["stream"], modality=e["modality"], data=tensors[f"{i}.data"],
                          t0=tensors[f"{i}.t0"], t1=tensors[f"{i}.t1"], pos=tensors[f"{i}.pos"],
                          size=tensors[f"{i}.size"], src=tensors.get(f"{i}.src"),
                          assignment=tensors.get(f"{i}.assignment"), score=tensors.get(f"{i}.score"),
                          meta=dict(e["meta"])))
    parsed: dict[str, Any] = {k: (v if k in ("format", "format_version") else json.loads(v)) for k, v in header.items()}
    parsed["packets"] = entries
    return out, parsed


def _read_metadata(blob: bytes) -> dict[str, str]:
    n = int.from_bytes(blob[:8], "little")
    return dict(json.loads(blob[8:8 + n]).get("__metadata__", {}))

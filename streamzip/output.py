"""Outputs: per input, a folder with ``tokens.safetensors`` and ``manifest.json``, written atomically.

Tokens are stored by group, ``KIND/MODALITY`` (``tokens/video``, ``window/audio``, ``memory/video``…;
KIND is the packet's ``meta['kind']``, ``tokens`` by default), each group's packets concatenated:
``GROUP.data (n, D)``, ``.t0``, ``.t1``, ``.pos``, ``.size``, ``.packet`` (the packet index of each token),
and when kept ``.src``/``.assignment`` (assignment indexes the group's concatenated data). The manifest
lists every packet (group, offset, count, meta), the pipeline, the versions and the run's summary.
No pickle anywhere: safetensors for tensors, JSON for the rest.

A folder appears only when complete: it is written under a hidden temporary name and renamed into
place, so a crash never leaves a partial output that a re-run would take for finished.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import os
import re
import shutil
import uuid
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from streamzip.errors import InputError, OutputError
from streamzip.packets import Tokens
from streamzip.tokens import check_dim, join

__all__ = ["MANIFEST", "TOKENS", "Output", "load", "output_name", "versions", "write_output"]

MANIFEST = "manifest.json"
TOKENS = "tokens.safetensors"
FORMAT = "streamzip-tokens"
FORMAT_VERSION = 1
_MAX_NAME = 120


def versions() -> dict[str, str]:
    """Versions of streamzip and the libraries that shape its output."""
    import numpy

    from streamzip._av import av
    from streamzip._version import __version__

    out = {"streamzip": __version__, "torch": torch.__version__, "av": av.__version__,
           "ffmpeg": getattr(av, "ffmpeg_version_info", ""), "numpy": numpy.__version__}
    try:
        import faiss

        out["faiss"] = faiss.__version__
    except ImportError:
        pass
    return out


def output_name(input_name: str) -> str:
    """A safe folder name for an input: its file name with anything odd replaced.

    The result never contains a path separator, never starts with a dot and is at most 120
    characters, so it cannot escape the output folder (``../x``, ``/etc/passwd``, NUL…).
    """
    base = input_name.replace("\\", "/").rstrip("/").rsplit("/", 1)[-1]
    base = re.sub(r"[^A-Za-z0-9._-]", "_", base).lstrip(".")
    if not base.strip("._-"):
        base = "input"
    if len(base) > _MAX_NAME:
        digest = uuid.uuid5(uuid.NAMESPACE_URL, input_name).hex[:8]
        base = f"{base[: _MAX_NAME - 9]}-{digest}"
    return base


def _group_of(packet: Tokens) -> str:
    return f"{packet.meta.get('kind', 'tokens')}/{packet.modality}"


def _with_dim(packet: Tokens, dim: int) -> Tokens:
    """``packet`` with ``(n, dim)`` data: an empty packet may be of any dimension; a packet with tokens
    of another dimension than its group's is a :class:`TokenError`."""
    if packet.data.shape[1:] == (dim,):
        return packet
    if not packet.num_tokens:
        return dataclasses.replace(packet, data=packet.data.reshape(0, dim))
    check_dim(packet, dim, stage="output")
    return dataclasses.replace(packet, data=packet.data.reshape(-1, dim))


def plain_data(value: Any) -> Any:
    """JSON-safe copy of packet meta (tensors become lists)."""
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if isinstance(value, dict):
        return {str(k): plain_data(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain_data(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return repr(value)


def write_output(out_dir: str | os.PathLike[str], name: str, packets: Iterable[Tokens], *,
                 manifest: dict[str, Any] | None = None, keep_assignment: bool = True) -> Path:
    """Write token packets to ``out_dir/name/`` atomically; returns the folder."""
    out_dir = Path(out_dir)
    final = out_dir / name
    if name != output_name(name):
        raise OutputError(f"unsafe output name {name!r}", fix="derive names with output_name()")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OutputError(f"cannot create the output folder ({err.strerror})", input=str(out_dir),
                          fix="choose a folder you can write to") from err
    by_group: dict[str, list[Tokens]] = defaultdict(list)
    group_tokens: dict[str, int] = defaultdict(int)  # tokens of each group so far: the next packet's start
    entries: list[dict[str, Any]] = []
    for p in packets:
        g = _group_of(p)
        entries.append({"group": g, "index": len(by_group[g]), "start": group_tokens[g], "count": p.num_tokens,
                        "t0": float(p.t0.min()) if p.num_tokens else None,
                        "t1": float(p.t1.max()) if p.num_tokens else None,
                        "meta": plain_data(p.meta)})
        by_group[g].append(p)
        group_tokens[g] += p.num_tokens
    tensors: dict[str, torch.Tensor] = {}
    groups: dict[str, Any] = {}
    for g, parts in by_group.items():
        dim = next((q.dim for q in parts if q.num_tokens), parts[0].dim)
        whole = join([_with_dim(q, dim) for q in parts], provenance=keep_assignment)
        tensors[f"{g}.data"] = whole.data.to(torch.float32)
        for key in ("t0", "t1", "pos", "size"):
            tensors[f"{g}.{key}"] = getattr(whole, key)
        tensors[f"{g}.packet"] = torch.cat([torch.full((q.num_tokens,), i, dtype=torch.int64)
                                            for i, q in enumerate(parts)])
        if whole.src is not None and whole.assignment is not None:
            tensors[f"{g}.src"] = whole.src
            tensors[f"{g}.src_packet"] = torch.cat([torch.full((q.src.numel(),), i, dtype=torch.int64)  # type: ignore[union-attr]
                                                    for i, q in enumerate(parts)])
            tensors[f"{g}.assignment"] = whole.assignment
        if whole.score is not None:
            tensors[f"{g}.score"] = whole.score
        groups[g] = {"num_tokens": int(tensors[f"{g}.data"].shape[0]), "dim": dim,
                     "num_packets": len(parts), "assignment": f"{g}.assignment" in tensors}
    doc = {"format": FORMAT, "format_version": FORMAT_VERSION,
           "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
           "versions": versions(), **(manifest or {}), "groups": groups, "packets": entries}
    tmp = out_dir / f".{name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        tmp.mkdir()
        # One metadata key: safetensors writes its metadata map in a random order, so two keys would
        # make the bytes of identical outputs differ from run to run.
        save_file(tensors, str(tmp / TOKENS), metadata={"format": f"{FORMAT}/{FORMAT_VERSION}"})
        os.chmod(tmp / TOKENS, 0o644)  # safetensors writes 0600; outputs are meant to be shared
        with open(tmp / MANIFEST, "w", encoding="utf-8") as fh:
            json.dump(doc, fh, indent=1)
            fh.flush()
            os.fsync(fh.fileno())
        _replace_dir(tmp, final)
    except OSError as err:
        shutil.rmtree(tmp, ignore_errors=True)
        raise OutputError(f"cannot write the output ({err.strerror or err})", input=str(final),
                          fix="check free space and permissions of the output folder") from err
    return final


def _replace_dir(tmp: Path, final: Path) -> None:
    """Move ``tmp`` to ``final``; an older ``final`` is swapped out first and then removed."""
    if final.exists():
        old = final.parent / f".{final.name}.old-{uuid.uuid4().hex[:8]}"
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)
    try:  # make the rename itself durable
        fd = os.open(final.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass


def ensure_writable(out_dir: str | os.PathLike[str]) -> Path:
    """Create ``out_dir`` if needed and prove a file can be written there, before any work starts."""
    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        probe = out_dir / f".write-probe-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise OutputError(f"the output folder is not writable ({err.strerror or err})", input=str(out_dir),
                          stage="output", fix="choose a folder you can write to, or fix its permissions") from err
    return out_dir


def is_complete(folder: str | os.PathLike[str]) -> bool:
    """Whether ``folder`` holds a finished output (what a re-run skips)."""
    folder = Path(folder)
    return (folder / MANIFEST).is_file() and (folder / TOKENS).is_file()


@dataclass
class Output:
    """A written output, read back: ``manifest`` and the tensors by group."""

    path: Path
    manifest: dict[str, Any]
    tensors: dict[str, torch.Tensor]

    @property
    def groups(self) -> list[str]:
        return list(self.manifest.get("groups", {}))

    def tokens(self, group: str = "tokens/video") -> Tokens:
        """All tokens of a group as one :class:`Tokens`."""
        if group not in self.manifest.get("groups", {}):
            raise KeyError(f"no group {group!r} in {self.path}; groups: {', '.join(self.groups) or '(none)'}")
        t = self.tensors
        kind, modality = group.split("/", 1)
        return Tokens(stream=self.manifest.get("stream", ""), modality=modality,
                      data=t[f"{group}.data"], t0=t[f"{group}.t0"], t1=t[f"{group}.t1"], pos=t[f"{group}.pos"],
                      size=t[f"{group}.size"], src=t.get(f"{group}.src"), assignment=t.get(f"{group}.assignment"),
                      score=t.get(f"{group}.score"), meta={"kind": kind})

    def packets(self, group: str = "tokens/video") -> list[Tokens]:
        """The group's packets as written, each with its meta."""
        whole = self.tokens(group)
        src_packet = self.tensors.get(f"{group}.src_packet")
        out = []
        for entry in self.manifest["packets"]:
            if entry["group"] != group:
                continue
            a, n = entry["start"], entry["count"]
            src = assignment = None
            if whole.src is not None and whole.assignment is not None and src_packet is not None:
                mine = src_packet == entry["index"]
                src = whole.src[mine]
                assignment = whole.assignment[mine]
                assignment = torch.where(assignment >= 0, assignment - a, assignment)
            out.append(Tokens(stream=whole.stream, modality=whole.modality, data=whole.data[a:a + n],
                              t0=whole.t0[a:a + n], t1=whole.t1[a:a + n], pos=whole.pos[a:a + n],
                              size=whole.size[a:a + n], src=src, assignment=assignment,
                              score=whole.score[a:a + n] if whole.score is not None else None,
                              meta=dict(entry["meta"])))
        return out


def load(path: str | os.PathLike[str]) -> Output:
    """Read an output folder (or its manifest or tensors file) written by streamzip."""
    path = Path(path)
    folder = path.parent if path.name in (MANIFEST, TOKENS) else path
    if not is_complete(folder):
        raise InputError(f"no streamzip output here (need {MANIFEST} and {TOKENS})", input=str(folder),
                         fix="pass the folder that `streamzip run --output` wrote for this input")
    with open(folder / MANIFEST, encoding="utf-8") as fh:
        manifest = json.load(fh)
    if manifest.get("format") != FORMAT:
        raise InputError(f"not a streamzip manifest (format {manifest.get('format')!r})", input=str(folder))
    if manifest.get("format_version", 0) > FORMAT_VERSION:
        raise InputError(f"written by a newer streamzip (format {manifest['format_version']})",
                         input=str(folder), fix="upgrade streamzip to read it")
    return Output(path=folder, manifest=manifest, tensors=load_file(str(folder / TOKENS)))

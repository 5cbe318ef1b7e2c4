"""``streamzip inspect``: pictures of what a run kept, from its output folder.

From an output written by ``streamzip run`` (with the assignment kept), it draws:

- ``frames.png``: a contact sheet of sampled frames, each 16 px patch shaded by what became of its
  original token: *kept* (it anchors the token that represents it: same frame and position as the
  token's first member), *merged* (another token represents it), or *dropped* (assignment -1);
- ``timeline.png``: tokens per window, video and audio, after each stage the output records (encoder
  originals, tokens entering the window stage, tokens out), and the per-stage totals of the summary;
- ``vad.png``: the VAD's speech segments over the waveform;
- ``memory.png``: the memory's composition over time (which stream spans its tokens stand for);
- ``overview.png``: all four on one page, and ``index.html``, one self-contained page with every PNG
  embedded as a ``data:`` URI (no network assets, no external CSS or JS).

The frames and the waveform are decoded again from the input when it still exists (or from
``media=``); without it the patch grid and the segments are drawn alone.

Original video token ids are frame-major (``frame * rows * cols + row * cols + col``), as the video
encoders number them, so the frame and the patch of every original are known from its id alone.

Matplotlib draws through its object API on an Agg canvas (no ``pyplot``, no global backend change).
"""

from __future__ import annotations

import argparse
import base64
import html
import io
import math
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from streamzip.errors import DependencyError, InputNotFoundError, StreamzipError
from streamzip.output import Output, load

__all__ = ["DROPPED", "KEPT", "MERGED", "PatchStates", "add_cli", "frame_grid", "inspect_output",
           "memory_composition", "patch_states", "state_fractions", "video_patch_states", "window_counts"]

KEPT, MERGED, DROPPED = 0, 1, 2
STATE_NAMES = ("kept", "merged", "dropped")
# Over pixels: kept patches clear with a green outline, merged ones shaded, dropped ones red, so the
# kept ones stand out whatever the picture's colours. Without pixels: green, grey, red.
_KEPT_EDGE = (0.0, 0.75, 0.2)
_RGBA = {KEPT: (0.30, 0.80, 0.35, 0.0), MERGED: (0.0, 0.0, 0.0, 0.5), DROPPED: (0.85, 0.08, 0.08, 0.8)}
_RGBA_NO_PIXELS = {KEPT: (0.30, 0.80, 0.35, 0.9), MERGED: (0.82, 0.82, 0.82, 1.0), DROPPED: (0.85, 0.08, 0.08, 0.9)}
_MAX_FRAMES = 12  # a contact sheet of more frames gets too small to read
_MAX_MEMORY_BINS = 60  # columns of the memory composition before windows are grouped
_WAVE_BINS = 2000  # min/max envelope bins of the waveform


# -- what the output says -----------------------------------------------------------------------
@dataclass(frozen=True)
class PatchStates:
    """The fate of every original video token of a group.

    Attributes:
        ids: ``(m,)`` original token ids.
        state: ``(m,)`` KEPT, MERGED or DROPPED.
        frame, row, col: ``(m,)`` where each original sat (from its id).
        grid: ``(rows, cols)`` patches per frame.
        group: the output group read.
    """

    ids: np.ndarray
    state: np.ndarray
    frame: np.ndarray
    row: np.ndarray
    col: np.ndarray
    grid: tuple[int, int]
    group: str

    @property
    def num_frames(self) -> int:
        return int(self.frame.max()) + 1 if self.frame.size else 0


def patch_states(src: np.ndarray, assignment: np.ndarray, pos: np.ndarray, grid: tuple[int, int],
                 group: str = "") -> PatchStates:
    """Classify originals ``src (m,)`` given ``assignment (m,)`` into tokens at ``pos (n, 2)``.

    A token is anchored at its earliest original that sits at the token's own position (the merge
    rule gives a token the position of its first member): that original is *kept*, the token's other
    members are *merged*, and an original with assignment -1 is *dropped*. So a group has exactly
    one kept original per token that represents anything.
    """
    rows, cols = grid
    per_frame = rows * cols
    src = np.asarray(src, dtype=np.int64)
    assignment = np.asarray(assignment, dtype=np.int64)
    pos = np.asarray(pos, dtype=np.int64).reshape(-1, 2)
    frame, rest = np.divmod(src, per_frame)
    row, col = np.divmod(rest, cols)
    live = assignment >= 0
    a = np.where(live, assignment, 0)
    at_anchor_pos = live & (pos[a, 0] == row) & (pos[a, 1] == col) if len(pos) else np.zeros_like(live)
    anchor = np.full(len(pos), np.iinfo(np.int64).max, dtype=np.int64)
    np.minimum.at(anchor, a[at_anchor_pos], src[at_anchor_pos])
    kept = at_anchor_pos & (src == anchor[a])
    state = np.where(~live, DROPPED, np.where(kept, KEPT, MERGED)).astype(np.int8)
    return PatchStates(src, state, frame, row, col, (rows, cols), group)


def _video_group(out: Output) -> str | None:
    groups = out.manifest.get("groups", {})
    order = ["window/video", "tokens/video"] + sorted(g for g in groups if g.endswith("/video"))
    return next((g for g in order if g in groups and groups[g].get("assignment")), None)


def _grid(out: Output, group: str) -> tuple[int, int]:
    for entry in out.manifest.get("packets", []):
        grid = entry["group"] == group and entry.get("meta", {}).get("grid")
        if grid:
            return int(grid[0]), int(grid[1])
    pipe = out.manifest.get("pipeline", {})
    decode = pipe.get("decode", {})
    patch = next((s.get("patch_size", 16) for s in pipe.get("steps", []) if s.get("op") == "patch_encoder"), 16)
    return int(decode.get("height", 224)) // int(patch), int(decode.get("width", 224)) // int(patch)


def video_patch_states(out: Output) -> PatchStates | None:
    """:func:`patch_states` of the output's video group (``window/video`` first); None without one."""
    group = _video_group(out)
    if group is None:
        return None
    tok = out.tokens(group)
    assert tok.src is not None and tok.assignment is not None
    return patch_states(tok.src.numpy(), tok.assignment.numpy(), tok.pos.numpy(), _grid(out, group), group)


def state_fractions(states: PatchStates) -> dict[str, float]:
    """Fractions of originals kept, merged and dropped (they add up to 1)."""
    total = max(1, states.state.size)
    return {name: float((states.state == k).sum()) / total for k, name in enumerate(STATE_NAMES)}


def frame_grid(states: PatchStates, frame: int) -> np.ndarray:
    """``(rows, cols)`` int8 states of one frame's patches; -1 where the output has no such original."""
    out = np.full(states.grid, -1, dtype=np.int8)
    mine = states.frame == frame
    out[states.row[mine], states.col[mine]] = states.state[mine]
    return out


def window_counts(out: Output, modality: str) -> list[dict[str, Any]]:
    """Per window packet of ``window/MODALITY``: index, start/end (s), and tokens after each stage.

    ``originals``: encoder tokens the window covers (its ``src``; None without the assignment);
    ``entering``: tokens that reached the window stage (after the compressors); ``out``: tokens written.
    """
    group = f"window/{modality}"
    if group not in out.manifest.get("groups", {}):
        return []
    rows: list[dict[str, Any]] = []
    for p in out.packets(group):
        m = p.meta
        rows.append({"window": int(m.get("window", len(rows))),
                     "start_s": float(m.get("window_start_s", float(p.t0.min()) if p.num_tokens else 0.0)),
                     "end_s": float(m.get("window_end_s", float(p.t1.max()) if p.num_tokens else 0.0)),
                     "originals": int(p.src.numel()) if p.src is not None else None,
                     "entering": int(m["tokens_in"]) if "tokens_in" in m else None,
                     "out": p.num_tokens, "size": int(p.size.sum())})
    return rows


def _window_s(out: Output) -> float:
    for step in out.manifest.get("pipeline", {}).get("steps", []):
        if step.get("op") == "window" and "window_s" in step:
            return float(step["window_s"])
    return 4.0


def memory_composition(out: Output, modality: str, *, weight: str = "tokens"
                       ) -> tuple[list[float], np.ndarray, np.ndarray]:
    """Which stream time each emitted memory packet of MODALITY covers.

    Returns ``(emitted_s, edges (B+1,), share (E, B))``: per emitted packet (at its window's end), the
    share of its tokens (``weight="tokens"``: where the memory spends its slots) or of the originals
    they stand for (``weight="size"``) that falls in each time bin, each token spread evenly over its
    ``[t0, t1]``. Bins are windows, grouped when there would be more than 60. Rows add up to 1 (0 for
    an empty memory).
    """
    if weight not in ("tokens", "size"):
        raise ValueError(f"weight must be 'tokens' or 'size', got {weight!r}")
    group = f"memory/{modality}"
    if group not in out.manifest.get("groups", {}):
        return [], np.zeros(1), np.zeros((0, 0))
    packets = out.packets(group)
    window_s = _window_s(out)
    ends = [float(p.meta["window_end_s"]) for p in packets if "window_end_s" in p.meta]
    end_s = max(ends) if ends else max((float(p.t1.max()) for p in packets if p.num_tokens), default=window_s)
    num_windows = max(1, math.ceil(end_s / window_s - 1e-9))
    step = window_s * math.ceil(num_windows / _MAX_MEMORY_BINS)
    edges = np.arange(0.0, end_s + step, step)
    if edges[-1] < end_s:
        edges = np.append(edges, edges[-1] + step)
    share = np.zeros((len(packets), len(edges) - 1))
    emitted = []
    for i, p in enumerate(packets):
        emitted.append(float(p.meta.get("window_end_s", float(p.t1.max()) if p.num_tokens else 0.0)))
        if not p.num_tokens:
            continue
        t0, t1 = p.t0.numpy(), p.t1.numpy()
        size = p.size.numpy().astype(np.float64) if weight == "size" else np.ones(p.num_tokens)
        # a token's tail past its window's end (an audio frame, a video frame's duration) is not coverage
        t0, t1 = np.minimum(t0, emitted[-1]), np.minimum(t1, emitted[-1])
        span = np.maximum(t1 - t0, 1e-9)
        overlap = np.clip(np.minimum(t1[:, None], edges[None, 1:]) - np.maximum(t0[:, None], edges[None, :-1]), 0, None)
        frac = overlap / span[:, None]
        point = (t1 - t0) <= 1e-9  # a token of no duration counts in the bin that ends at or after it
        if point.any():
            idx = np.clip(np.searchsorted(edges, t0[point], side="left") - 1, 0, len(edges) - 2)
            frac[point] = 0.0
            frac[np.flatnonzero(point), idx] = 1.0
        mass = (frac * size[:, None]).sum(0)
        share[i] = mass / mass.sum() if mass.sum() > 0 else 0.0
    return emitted, edges, share


# -- media ----------------------------------------------------------------------------------------
def _media_path(out: Output, media: str | os.PathLike[str] | None) -> str | None:
    if media is not None:
        path = os.fspath(media)
        if not (path.startswith("lavfi:") or os.path.isfile(path)):
            raise InputNotFoundError("no such media file", input=path, stage="inspect",
                                     fix="pass the input the run read, or leave --media out to draw without pixels")
        return path
    recorded = str(out.manifest.get("input") or "")
    if recorded and (recorded.startswith("lavfi:") or os.path.isfile(recorded)):
        return recorded
    return None


def _decode_config(out: Output) -> Any:
    from streamzip.sources import DecodeConfig

    decode = dict(out.manifest.get("pipeline", {}).get("decode", {}))
    return DecodeConfig.from_mapping(decode, "decode")


def _decode_frames(path: str, out: Output, wanted: Sequence[int]) -> dict[int, tuple[np.ndarray, float]]:
    """The ``wanted`` frames (by index in the sampled stream) as ``(H, W, 3)`` uint8 and their pts."""
    from streamzip.packets import VideoFrames
    from streamzip.sources import FileSource

    want, last, got = set(wanted), max(wanted, default=-1), {}
    index = 0
    for packet in FileSource(path, _decode_config(out), want_audio=False):
        if not isinstance(packet, VideoFrames):
            continue
        for k in range(packet.num_frames):
            if index in want:
                got[index] = (packet.frames[k].numpy(), float(packet.pts_s[k]))
            index += 1
        if index > last:
            break
    return got


def _decode_envelope(path: str, out: Output, duration_s: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Min/max envelope of the mono audio: ``(t_s (B,), lo (B,), hi (B,))``, bins of equal time."""
    from streamzip.packets import AudioChunk
    from streamzip.sources import FileSource

    bin_s = max(duration_s, 1e-3) / _WAVE_BINS
    lo = np.zeros(_WAVE_BINS + 1, dtype=np.float32)
    hi = np.zeros(_WAVE_BINS + 1, dtype=np.float32)
    for packet in FileSource(path, _decode_config(out), want_video=False):
        if not isinstance(packet, AudioChunk) or packet.samples.numel() == 0:
            continue
        x = packet.samples.numpy()
        b = np.clip(((packet.start_s + np.arange(len(x)) / packet.sample_rate_hz) / bin_s).astype(np.int64),
                    0, _WAVE_BINS)
        starts = np.flatnonzero(np.r_[True, b[1:] != b[:-1]])
        np.minimum.at(lo, b[starts], np.minimum.reduceat(x, starts))
        np.maximum.at(hi, b[starts], np.maximum.reduceat(x, starts))
    return (np.arange(_WAVE_BINS + 1) + 0.5) * bin_s, lo, hi


# -- drawing --------------------------------------------------------------------------------------
def _figure(width_in: float, height_in: float) -> Any:
    try:
        from matplotlib.figure import Figure
    except ImportError as err:
        raise DependencyError("streamzip inspect draws with matplotlib, which is not installed",
                              fix="pip install 'streamzip[viz]'") from err
    return Figure(figsize=(width_in, height_in), dpi=100, layout="constrained")


def _sample_frames(num_frames: int, count: int) -> list[int]:
    if num_frames <= count:
        return list(range(num_frames))
    return sorted({round(i * (num_frames - 1) / (count - 1)) for i in range(count)})


@dataclass
class _Frames:
    indices: list[int]
    grids: dict[int, np.ndarray]
    pixels: dict[int, tuple[np.ndarray, float]]
    fps: float
    start_s: float


def _collect_frames(out: Output, states: PatchStates | None, media: str | None, count: int) -> _Frames:
    decode = out.manifest.get("pipeline", {}).get("decode", {})
    fps, start = float(decode.get("fps", 2.0)), float(decode.get("start_s", 0.0))
    if states is None:
        return _Frames([], {}, {}, fps, start)
    indices = _sample_frames(states.num_frames, count)
    pixels: dict[int, tuple[np.ndarray, float]] = {}
    if media is not None:
        try:
            pixels = _decode_frames(media, out, indices)
        except StreamzipError:
            pixels = {}
    return _Frames(indices, {f: frame_grid(states, f) for f in indices}, pixels, fps, start)


def _draw_frame(ax: Any, grid: np.ndarray, pixels: np.ndarray | None, title: str) -> None:
    rows, cols = grid.shape
    colors = _RGBA if pixels is not None else _RGBA_NO_PIXELS
    overlay = np.zeros((rows, cols, 4))
    for state, rgba in colors.items():
        overlay[grid == state] = rgba
    overlay[grid < 0] = (0.6, 0.6, 0.6, 0.5)
    if pixels is not None:
        ax.imshow(pixels, extent=(0, cols, rows, 0), interpolation="bilinear")
    ax.imshow(overlay, extent=(0, cols, rows, 0), interpolation="nearest")
    if pixels is not None:
        from matplotlib.collections import PatchCollection
        from matplotlib.patches import Rectangle

        kept = [Rectangle((c + 0.06, r + 0.06), 0.88, 0.88) for r, c in zip(*np.nonzero(grid == KEPT))]
        ax.add_collection(PatchCollection(kept, facecolor="none", edgecolor=_KEPT_EDGE, linewidth=0.8))
    ax.vlines(np.arange(1, cols), 0, rows, color="white", linewidth=0.3, alpha=0.5)
    ax.hlines(np.arange(1, rows), 0, cols, color="white", linewidth=0.3, alpha=0.5)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_xlim(0, cols)
    ax.set_ylim(rows, 0)
    ax.set_title(title, fontsize=8)


def _frame_title(frames: _Frames, f: int) -> str:
    grid = frames.grids[f]
    t = frames.pixels[f][1] if f in frames.pixels else frames.start_s + f / frames.fps
    n = max(1, int((grid >= 0).sum()))
    return f"frame {f} · {t:.1f} s\nkept {(grid == KEPT).sum() / n:.0%} merged {(grid == MERGED).sum() / n:.0%}"


def _legend(fig: Any, with_pixels: bool) -> None:
    from matplotlib.patches import Patch

    colors = _RGBA if with_pixels else _RGBA_NO_PIXELS
    handles = [Patch(facecolor=colors[k][:3], alpha=max(colors[k][3], 0.15), edgecolor="0.4", label=name)
               for k, name in enumerate(STATE_NAMES)]
    if with_pixels:
        handles[KEPT] = Patch(facecolor="none", edgecolor=_KEPT_EDGE, linewidth=1.5, label="kept (clear, outlined)")
        handles[MERGED].set_label("merged (shaded)")
    fig.legend(handles=handles, loc="outside lower center", ncol=3, fontsize=8, frameon=False)


def _draw_sheet(fig: Any, frames: _Frames, states: PatchStates | None, ncols: int) -> None:
    if not frames.indices:
        ax = fig.add_subplot()
        ax.text(0.5, 0.5, "no video group with an assignment in this output", ha="center", va="center")
        ax.set_axis_off()
        return
    nrows = math.ceil(len(frames.indices) / ncols)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    for ax, f in zip(axes.flat, frames.indices):
        px = frames.pixels.get(f)
        _draw_frame(ax, frames.grids[f], px[0] if px else None, _frame_title(frames, f))
    for ax in list(axes.flat)[len(frames.indices):]:
        ax.set_axis_off()
    assert states is not None
    fr = state_fractions(states)
    fig.suptitle(f"patches ({states.group}): kept {fr['kept']:.1%}, merged {fr['merged']:.1%}, "
                 f"dropped {fr['dropped']:.1%}" + ("" if frames.pixels else " — media not found, grid only"),
                 fontsize=10)
    _legend(fig, bool(frames.pixels))


def _draw_windows(ax: Any, rows: list[dict[str, Any]], modality: str, budget: int | None) -> None:
    ax.set_title(f"{modality} tokens per window", fontsize=9)
    if not rows:
        ax.text(0.5, 0.5, f"no window/{modality} packets", ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
        return
    series = [(key, label, color) for key, label, color in
              (("originals", "encoder", "0.7"), ("entering", "into the window stage", "tab:orange"),
               ("out", "window out", "tab:blue")) if all(r[key] is not None for r in rows)]
    width = min(r["end_s"] - r["start_s"] for r in rows) * 0.85 / len(series)
    for i, (key, label, color) in enumerate(series):
        x = np.array([r["start_s"] for r in rows]) + i * width
        values = [r[key] for r in rows]
        bars = ax.bar(x, values, width=width, align="edge", color=color, label=label)
        if key == "out" and len(rows) <= 30:
            ax.bar_label(bars, fontsize=6, padding=1)
    if budget:
        ax.axhline(budget, color="tab:red", linestyle="--", linewidth=1, label=f"budget {budget}")
    ax.set_xlabel("stream time (s)", fontsize=8)
    ax.set_ylabel("tokens", fontsize=8)
    ax.tick_params(labelsize=7)
    top = max([budget or 0] + [r[key] for r in rows for key, _, _ in series])
    ax.set_ylim(0, top * 1.3 + 1)  # room for the legend above the bars
    ax.legend(fontsize=7, loc="upper center", ncol=len(series) + bool(budget), frameon=False)


def _budget(out: Output, modality: str) -> int | None:
    for step in out.manifest.get("pipeline", {}).get("steps", []):
        if step.get("op") == "window" and f"max_{modality}_tokens" in step:
            return int(step[f"max_{modality}_tokens"])
    return None


def _draw_stages(ax: Any, out: Output) -> None:
    stages = out.manifest.get("summary", {}).get("stages", [])
    ax.set_title("tokens in → out per stage (whole run)", fontsize=9)
    if not stages:
        ax.text(0.5, 0.5, "no stage statistics in the summary", ha="center", va="center", transform=ax.transAxes)
        return
    names = [f"{s['step_id']} ({s['op']})" for s in stages]
    y = np.arange(len(stages))
    ax.barh(y + 0.2, [s["tokens_in"] for s in stages], height=0.4, color="0.7", label="in")
    ax.barh(y - 0.2, [s["tokens_out"] for s in stages], height=0.4, color="tab:blue", label="out")
    for yi, s in zip(y, stages):
        ax.text(max(s["tokens_in"], s["tokens_out"], 1), yi, f" {s['tokens_in']:,} → {s['tokens_out']:,}",
                va="center", fontsize=6)
    ax.set_yticks(y, names, fontsize=7)
    ax.invert_yaxis()
    ax.set_xscale("symlog", linthresh=10)
    ax.set_xlim(0, max(max(s["tokens_in"], s["tokens_out"]) for s in stages) * 8 + 10)  # room for the labels
    ax.tick_params(axis="x", labelsize=7)
    ax.legend(fontsize=7, loc="lower right")


def _speech_segments(out: Output) -> list[tuple[float, float]] | None:
    reports = out.manifest.get("summary", {}).get("reports", {}) or {}
    for rep in reports.values():
        if isinstance(rep, dict) and "speech_segments" in rep:
            return [(float(a), float(b)) for a, b in rep["speech_segments"]]
    return None


def _draw_vad(ax: Any, out: Output, envelope: tuple[np.ndarray, np.ndarray, np.ndarray] | None) -> None:
    segments = _speech_segments(out)
    duration = float(out.manifest.get("summary", {}).get("media_s") or 0.0)
    speech = sum(b - a for a, b in segments or [])
    if segments is None:
        title = "waveform (no VAD report in this output)"
    else:
        title = f"VAD speech segments (green): {speech:.1f} s of {duration:.1f} s kept"
    ax.set_title(title + (" — no waveform (media not found, or no audio)" if envelope is None else ""), fontsize=9)
    if envelope is not None:
        t, lo, hi = envelope
        ax.fill_between(t, lo, hi, color="0.35", linewidth=0)
        ax.set_ylabel("amplitude", fontsize=8)
    else:
        ax.set_yticks([])
    for a, b in segments or []:
        ax.axvspan(a, b, color="tab:green", alpha=0.25, linewidth=0)
    ax.set_xlim(0, max(duration, max((b for _, b in segments or []), default=0.0), 1e-3))
    ax.set_xlabel("stream time (s)", fontsize=8)
    ax.tick_params(labelsize=7)


def _draw_memory(axes: Sequence[Any], out: Output) -> None:
    for ax, modality in zip(axes, ("video", "audio")):
        emitted, edges, share = memory_composition(out, modality)
        if not emitted:
            ax.set_title(f"memory/{modality}", fontsize=9)
            ax.text(0.5, 0.5, f"no memory/{modality} packets", ha="center", va="center", transform=ax.transAxes)
            ax.set_axis_off()
            continue
        last = out.packets(f"memory/{modality}")[-1]
        ax.set_title(f"memory/{modality}: share of its tokens per {edges[1] - edges[0]:g} s of stream "
                     f"({len(emitted)} emitted, last {last.num_tokens} tokens)", fontsize=9)
        ax.imshow(share, aspect="auto", cmap="Blues", vmin=0, vmax=max(float(share.max()), 1e-9),
                  interpolation="nearest",
                  extent=(edges[0], edges[-1], len(emitted) - 0.5, -0.5))
        if share.shape[1] <= 20 and share.shape[0] <= 6:
            for i in range(share.shape[0]):
                for j in range(share.shape[1]):
                    ax.text((edges[j] + edges[j + 1]) / 2, i, f"{share[i, j]:.0%}", ha="center", va="center",
                            fontsize=8, color="white" if share[i, j] > share.max() * 0.6 else "black")
        step = max(1, len(emitted) // 8)
        ax.set_yticks(range(0, len(emitted), step), [f"at {emitted[i]:.0f} s" for i in range(0, len(emitted), step)],
                      fontsize=7)
        ax.set_xlabel("stream time the memory covers (s)", fontsize=8)
        ax.tick_params(axis="x", labelsize=7)


def _png(fig: Any, path: Path) -> Path:
    """Save as a 256-colour PNG: a third of the size of matplotlib's RGBA, no visible loss for charts."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", facecolor="white")
    from PIL import Image  # matplotlib depends on Pillow

    with Image.open(buf) as img:
        img.convert("RGB").quantize(colors=256, method=Image.Quantize.FASTOCTREE, dither=Image.Dither.NONE).save(
            path, format="PNG", optimize=True)
    return path


def _render(out: Output, out_dir: Path, media: str | None) -> list[Path]:
    states = video_patch_states(out)
    frames = _collect_frames(out, states, media, _MAX_FRAMES)
    duration = float(out.manifest.get("summary", {}).get("media_s") or 0.0)
    envelope = None
    if media is not None and duration > 0:
        try:
            envelope = _decode_envelope(media, out, duration)
        except StreamzipError:
            envelope = None
    if envelope is not None and not (envelope[1].any() or envelope[2].any()):
        envelope = None  # no audio stream decoded
    windows = {m: window_counts(out, m) for m in ("video", "audio")}
    paths = []

    ncols = min(6, max(1, len(frames.indices)))
    fig = _figure(2.0 * ncols, 2.3 * max(1, math.ceil(len(frames.indices) / ncols)) + 0.8)
    _draw_sheet(fig, frames, states, ncols)
    paths.append(_png(fig, out_dir / "frames.png"))

    fig = _figure(11, 7)
    axes = fig.subplots(3, 1, height_ratios=[1, 1, 1.2])
    for ax, m in zip(axes, ("video", "audio")):
        _draw_windows(ax, windows[m], m, _budget(out, m))
    _draw_stages(axes[2], out)
    paths.append(_png(fig, out_dir / "timeline.png"))

    fig = _figure(11, 2.6)
    _draw_vad(fig.add_subplot(), out, envelope)
    paths.append(_png(fig, out_dir / "vad.png"))

    fig = _figure(11, 4)
    _draw_memory(fig.subplots(2, 1), out)
    paths.append(_png(fig, out_dir / "memory.png"))

    # One page of everything (the picture for a README): six frames, then the curves.
    few = _Frames(_sample_frames(len(frames.indices), 6) if frames.indices else [], {}, {}, frames.fps, frames.start_s)
    few.indices = [frames.indices[i] for i in few.indices]
    few.grids = {f: frames.grids[f] for f in few.indices}
    few.pixels = {f: frames.pixels[f] for f in few.indices if f in frames.pixels}
    fig = _figure(12, 11)
    top, mid, bottom = fig.subfigures(3, 1, height_ratios=[1.25, 1.5, 1.6])
    _draw_sheet(top, few, states, max(1, len(few.indices)))
    wa = mid.subplots(1, 2)
    for ax, m in zip(wa, ("video", "audio")):
        _draw_windows(ax, windows[m], m, _budget(out, m))
    bl = bottom.subplots(3, 1, height_ratios=[1, 1, 1])
    _draw_vad(bl[0], out, envelope)
    _draw_memory(bl[1:], out)
    fig.suptitle(f"streamzip inspect — {out.manifest.get('stream', out.path.name)} "
                 f"({out.manifest.get('pipeline', {}).get('name', '?')} pipeline)", fontsize=12, weight="bold")
    paths.append(_png(fig, out_dir / "overview.png"))
    return paths


# -- the page -------------------------------------------------------------------------------------
def _html(out: Output, pngs: list[Path], states: PatchStates | None, media: str | None) -> str:
    m = out.manifest
    s = m.get("summary", {})
    esc = html.escape
    rows = [("input", m.get("input", "")), ("pipeline", m.get("pipeline", {}).get("name", "")),
            ("runtime", m.get("runtime", "")), ("written", m.get("created", "")),
            ("media", f"{s.get('media_s', 0):.1f} s, {s.get('frames', 0)} frames"),
            ("tokens", f"{s.get('tokens_in', 0):,} in → {s.get('tokens_out', 0):,} out"),
            ("fidelity", f"{s['fidelity']:.3f}" if s.get("fidelity") is not None else "-"),
            ("versions", ", ".join(f"{k} {v}" for k, v in m.get("versions", {}).items())),
            ("pixels", "decoded from " + media if media else "media not found: patch grid only")]
    if states is not None:
        fr = state_fractions(states)
        rows.append(("patches", ", ".join(f"{k} {v:.1%}" for k, v in fr.items()) + f" ({states.group})"))
    info = "".join(f"<tr><th>{esc(k)}</th><td>{esc(str(v))}</td></tr>" for k, v in rows)
    stage_rows = "".join(
        f"<tr><td>{esc(st['step_id'])}</td><td>{esc(st['op'])}</td><td>{st['tokens_in']:,}</td>"
        f"<td>{st['tokens_out']:,}</td><td>{st.get('seconds', 0):.2f}</td></tr>" for st in s.get("stages", []))
    captions = {"frames": "Sampled frames: each patch shaded by the fate of its original token.",
                "timeline": "Tokens per window after each stage, and per-stage totals.",
                "vad": "VAD speech segments over the waveform.",
                "memory": "Memory composition: which stream time the memory tokens stand for.",
                "overview": "Everything on one page."}
    figures = "".join(
        f'<figure><img alt="{esc(p.stem)}" src="data:image/png;base64,{base64.b64encode(p.read_bytes()).decode()}">'
        f"<figcaption>{esc(captions.get(p.stem, p.stem))}</figcaption></figure>" for p in pngs)
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>streamzip inspect: {esc(str(m.get('stream', '')))}</title><style>"
            "body{font-family:sans-serif;max-width:1200px;margin:1em auto;color:#222}"
            "table{border-collapse:collapse;margin:.5em 0}th,td{border:1px solid #ccc;padding:2px 8px;"
            "text-align:left;font-size:90%}img{max-width:100%}figure{margin:1em 0}"
            "figcaption{color:#555;font-size:90%}</style></head><body>"
            f"<h1>streamzip inspect: {esc(str(m.get('stream', '')))}</h1><table>{info}</table>"
            "<h2>Stages</h2><table><tr><th>step</th><th>op</th><th>tokens in</th><th>tokens out</th>"
            f"<th>busy s</th></tr>{stage_rows}</table>{figures}</body></html>\n")


def inspect_output(output_folder: str | os.PathLike[str], out_dir: str | os.PathLike[str] | None = None, *,
                   media: str | os.PathLike[str] | None = None) -> list[Path]:
    """Draw the pictures of one output folder; returns the PNG files and then ``index.html``.

    Args:
        output_folder: a folder written by ``streamzip run`` (``manifest.json`` + ``tokens.safetensors``).
        out_dir: where to write (default: ``OUTPUT/inspect``).
        media: the input media, when it moved since the run (default: the manifest's ``input``).
    """
    out = load(output_folder)
    target = Path(out_dir) if out_dir is not None else out.path / "inspect"
    target.mkdir(parents=True, exist_ok=True)
    media_path = _media_path(out, media)
    pngs = _render(out, target, media_path)
    page = target / "index.html"
    page.write_text(_html(out, pngs, video_patch_states(out), media_path), encoding="utf-8")
    return [*pngs, page]


# -- command line ---------------------------------------------------------------------------------
def _cmd_inspect(args: argparse.Namespace) -> int:
    from streamzip.output import is_complete

    folder = Path(args.output)
    if is_complete(folder):
        targets = [(folder, Path(args.out) if args.out else None)]
    else:  # a job's output folder: one sub-folder per input
        subs = sorted(p for p in folder.iterdir() if p.is_dir() and is_complete(p)) if folder.is_dir() else []
        if not subs:
            load(folder)  # raises the clear "no streamzip output here" error
        targets = [(p, Path(args.out) / p.name if args.out else None) for p in subs]
        if args.media and len(subs) > 1:
            print("warning: --media applies to every input of this folder", file=sys.stderr)
    for path, dest in targets:
        files = inspect_output(path, dest, media=args.media)
        print(f"{path}: {files[-1]} ({', '.join(f.name for f in files[:-1])})")
    return 0


def add_cli(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``streamzip inspect OUTPUT [--out DIR] [--media PATH]``."""
    p = subparsers.add_parser("inspect", help="draw what a run kept: patches, token timeline, VAD, memory",
                              description=__doc__.split("\n\n")[0].replace("``", "") if __doc__ else None)
    p.add_argument("output", help="an output folder written by `streamzip run` (or the job folder above it)")
    p.add_argument("--out", help="where to write the PNGs and index.html (default: OUTPUT/inspect)")
    p.add_argument("--media", help="the input media, if it moved since the run (pixels and waveform)")
    p.set_defaults(func=_cmd_inspect)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="streamzip")
    add_cli(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["inspect", *(sys.argv[1:] if argv is None else argv)])
    try:
        return int(args.func(args))
    except StreamzipError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

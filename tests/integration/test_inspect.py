"""`streamzip inspect`: the pictures and the page, from a real default-pipeline run on a generated clip."""

from __future__ import annotations

import argparse
import base64
import json
import shutil
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from streamzip.inspect import (
    DROPPED,
    KEPT,
    MERGED,
    add_cli,
    frame_grid,
    inspect_output,
    memory_composition,
    patch_states,
    state_fractions,
    video_patch_states,
    window_counts,
)
from streamzip.job import run_job
from streamzip.output import load
from streamzip.pipeline import load_pipeline
from streamzip.synthetic import make_clip

PNGS = {"frames.png", "timeline.png", "vad.png", "memory.png", "overview.png"}


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(the clip, its output folder) of the default pipeline, run locally on an 8 s clip."""
    base = tmp_path_factory.mktemp("inspect")
    clip = make_clip(base / "clip.mp4", scenes=(("static", 4), ("motion", 4)), width=320, height=240)
    [result] = run_job(load_pipeline("default"), [clip.path], base / "out", runtime="local")
    assert result.ok, result.error
    return Path(clip.path), Path(result.output)


@pytest.fixture(scope="module")
def pictures(run: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return inspect_output(run[1], tmp_path_factory.mktemp("view"))


class _Refs(HTMLParser):
    """Every tag and every src/href value of a page."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.refs: list[tuple[str, str, str]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        self.refs += [(tag, k, v or "") for k, v in attrs if k in ("src", "href", "srcset", "data")]


def test_pngs_and_one_page_are_written(pictures: list[Path]) -> None:
    assert {p.name for p in pictures} == PNGS | {"index.html"}
    assert pictures[-1].name == "index.html"
    for p in pictures[:-1]:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        with Image.open(p) as img:
            img.verify()
        with Image.open(p) as img:
            w, h = img.size
        assert 600 <= w <= 2000 and 200 <= h <= 2000, (p.name, w, h)
        assert 5_000 < p.stat().st_size < 1_500_000, p.name
        with Image.open(p) as img:  # not a blank canvas
            assert len(img.convert("RGB").getcolors(1 << 16) or range(1 << 16)) > 20


def test_the_page_references_only_local_content(pictures: list[Path]) -> None:
    page = pictures[-1].read_text(encoding="utf-8")
    parser = _Refs()
    parser.feed(page)
    assert "script" not in parser.tags and "link" not in parser.tags and "iframe" not in parser.tags
    assert "http://" not in page and "https://" not in page and "url(" not in page and "@import" not in page
    imgs = [v for tag, k, v in parser.refs if tag == "img" and k == "src"]
    assert len(imgs) == len(PNGS)
    assert all(v.startswith("data:image/png;base64,") for v in imgs)
    assert [r for r in parser.refs if not r[2].startswith("data:")] == []
    # each embedded image is exactly one of the PNG files
    embedded = {base64.b64decode(v.split(",", 1)[1]) for v in imgs}
    assert embedded == {p.read_bytes() for p in pictures[:-1]}


def test_patch_states_on_a_hand_made_case() -> None:
    # grid 1x2, three frames: id = frame * 2 + col
    # token 0 at (0,1) holds {0, 1, 3}: anchored at id 1 (its earliest member at (0,1)); 0 and 3 merged
    # token 1 at (0,0) holds {2, 4}: anchored at 2, 4 merged (same place, later frame); id 5 dropped
    st = patch_states(np.array([0, 1, 2, 3, 4, 5]), np.array([0, 0, 1, 0, 1, -1]), np.array([[0, 1], [0, 0]]),
                      (1, 2))
    assert st.state.tolist() == [MERGED, KEPT, KEPT, MERGED, MERGED, DROPPED]
    assert st.frame.tolist() == [0, 0, 1, 1, 2, 2] and st.col.tolist() == [0, 1, 0, 1, 0, 1]
    assert frame_grid(st, 1).tolist() == [[KEPT, MERGED]] and frame_grid(st, 2).tolist() == [[MERGED, DROPPED]]
    assert state_fractions(st) == pytest.approx({"kept": 2 / 6, "merged": 3 / 6, "dropped": 1 / 6})


def test_the_shading_matches_the_assignment(run: tuple[Path, Path]) -> None:
    out = load(run[1])
    st = video_patch_states(out)
    assert st is not None and st.group == "window/video" and st.grid == (14, 14)
    tok = out.tokens("window/video")
    src, assign = tok.src.numpy(), tok.assignment.numpy()  # type: ignore[union-attr]
    fr = state_fractions(st)
    assert sum(fr.values()) == pytest.approx(1.0)
    m = src.size
    represented = int((tok.size > 0).sum())
    # one kept original per token; the rest of each token's size merged; -1 dropped
    assert fr["kept"] * m == pytest.approx(represented)
    assert fr["merged"] * m == pytest.approx(int(tok.size.sum()) - represented)
    assert fr["dropped"] * m == pytest.approx(int((assign < 0).sum()))
    # brute force: the kept original of each token is its earliest member at the token's own position
    pos = tok.pos.numpy()
    expected = np.full(m, DROPPED)
    for j in range(tok.num_tokens):
        members = np.flatnonzero(assign == j)
        at = [i for i in members if divmod(int(src[i]) % 196, 14) == tuple(pos[j])]
        expected[members] = MERGED
        expected[min(at, key=lambda i: src[i])] = KEPT
    assert (st.state == expected).all()
    # each frame's grid (what the contact sheet shades) is the same per patch
    for f in (0, st.num_frames // 2, st.num_frames - 1):
        grid = np.full((14, 14), -1)
        for i in np.flatnonzero(src // 196 == f):
            r, c = divmod(int(src[i]) % 196, 14)
            grid[r, c] = expected[i]
        assert (frame_grid(st, f) == grid).all()
    assert (frame_grid(st, 0) == KEPT).any()  # the first frame anchors tokens


def test_window_counts_and_memory_composition(run: tuple[Path, Path]) -> None:
    out = load(run[1])
    summary = {s["step_id"]: s for s in out.manifest["summary"]["stages"]}
    video = window_counts(out, "video")
    assert [r["window"] for r in video] == [0, 1]
    assert sum(r["originals"] for r in video) == summary["video_encoder"]["tokens_out"]
    assert all(r["out"] <= 128 and r["size"] == r["originals"] for r in video)
    audio = window_counts(out, "audio")
    assert sum(r["originals"] for r in audio) == summary["audio_encoder"]["tokens_out"]
    assert sum(r["out"] for r in audio) == out.tokens("window/audio").num_tokens
    for modality in ("video", "audio"):
        emitted, edges, share = memory_composition(out, modality)
        assert emitted and share.shape == (len(emitted), len(edges) - 1)
        assert edges[0] == 0 and np.allclose(np.diff(edges), 4.0)
        assert np.allclose(share.sum(1), 1.0) and (share >= 0).all()
        _, _, by_size = memory_composition(out, modality, weight="size")
        assert np.allclose(by_size.sum(1), 1.0)


def test_without_the_media_the_grid_is_drawn_alone(run: tuple[Path, Path], tmp_path: Path) -> None:
    moved = tmp_path / "out"
    shutil.copytree(run[1], moved)
    manifest = json.loads((moved / "manifest.json").read_text())
    manifest["input"] = str(tmp_path / "gone.mp4")
    (moved / "manifest.json").write_text(json.dumps(manifest))
    files = inspect_output(moved)  # default: OUTPUT/inspect
    assert files[0].parent == moved / "inspect" and {p.name for p in files} == PNGS | {"index.html"}
    assert "media not found" in files[-1].read_text()


def test_the_command_line(run: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser(prog="streamzip")
    add_cli(parser.add_subparsers(dest="command", required=True))
    # a job's folder (one sub-folder per input) is inspected input by input
    args = parser.parse_args(["inspect", str(run[1].parent), "--out", str(tmp_path / "v"), "--media", str(run[0])])
    assert args.func(args) == 0
    assert {p.name for p in (tmp_path / "v" / run[1].name).iterdir()} == PNGS | {"index.html"}
    assert "index.html" in capsys.readouterr().out

"""`streamzip batch --segment-s`: one long file cut into time segments, run in parallel over Ray Data,
stitched back into one output. Ray starts once here."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import ray
import torch

from streamzip.batch import cut_unit_s, plan_segments, run_batch
from streamzip.output import load
from streamzip.packets import Tokens
from streamzip.pipeline import Pipeline, load_pipeline
from streamzip.runtime.local import LocalRuntime
from streamzip.runtime.ray import init_ray
from streamzip.synthetic import make_clip

# Video only, every stage window-local: FrameFusion with a given threshold, DPC-KNN and the windows
# restart at each 4 s window, so a cut on a window boundary changes nothing.
WINDOW_LOCAL = {
    "name": "window_local", "decode": {"fps": 2, "width": 224, "height": 224, "streams": "video"},
    "steps": [
        {"id": "video_encoder", "op": "patch_encoder", "patch_size": 16},
        {"id": "fuse", "op": "framefusion", "threshold": 0.95, "window_s": 4.0},
        {"id": "cluster", "op": "dpc_knn", "max_tokens": 64, "window_s": 4.0},
        {"id": "window", "op": "window", "window_s": 4.0, "max_video_tokens": 64},
    ],
}

HELPERS = '''
def encode(frames):
    """Fails on a batch of (nearly) identical frames: a static scene, as an encoder might choke on some input."""
    if frames.shape[0] > 1 and float((frames.float() - frames[:1].float()).abs().mean()) < 2.0:
        raise ValueError("this encoder refuses static scenes")
    return frames.float().reshape(frames.shape[0], -1, 48)[:, :16] / 255.0
'''


@pytest.fixture(scope="module", autouse=True)
def ray_started(tmp_path_factory):  # type: ignore[no-untyped-def]
    # A module the Ray workers can import (for the failing function encoder): on PYTHONPATH before
    # Ray starts, so its workers inherit it.
    helpers = tmp_path_factory.mktemp("helpers")
    (helpers / "segment_helpers.py").write_text(textwrap.dedent(HELPERS))
    saved = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(helpers), saved) if p)
    sys.path.insert(0, str(helpers))
    init_ray(num_cpus=2)
    yield helpers
    ray.shutdown()
    sys.path.remove(str(helpers))
    if saved is None:
        os.environ.pop("PYTHONPATH", None)
    else:
        os.environ["PYTHONPATH"] = saved


def test_cuts_fall_on_multiples_of_the_windows_and_the_frame_step() -> None:
    default = load_pipeline("default")
    assert cut_unit_s(default) == 4.0
    assert plan_segments(default, 20.0, 8) == [(0.0, 8.0), (8.0, 16.0), (16.0, None)]
    assert plan_segments(default, 20.0, 9) == plan_segments(default, 20.0, 8)  # rounded to 2 windows
    assert plan_segments(default, 20.0, 1) == [(0.0, 4.0), (4.0, 8.0), (8.0, 12.0), (12.0, 16.0), (16.0, None)]
    assert plan_segments(default, 16.0, 8) == [(0.0, 8.0), (8.0, None)]
    assert plan_segments(default, 7.0, 8) == [(0.0, None)]  # not longer than a segment: whole
    assert plan_segments(default, None, 8) == [(0.0, None)]  # duration unknown (lavfi): whole
    odd = Pipeline.from_dict({"decode": {"fps": 2.5}, "steps": [{"op": "patch_encoder"},
                                                                 {"op": "window", "window_s": 3.0}]})
    assert cut_unit_s(odd) == 6.0  # the first common multiple of a 0.4 s frame step and 3 s windows
    selected = Pipeline.from_dict({"decode": {"start_s": 2.0, "end_s": 18.0}, "steps": [{"op": "patch_encoder"}]})
    assert plan_segments(selected, 20.0, 8) == [(2.0, 8.0), (8.0, 16.0), (16.0, 18.0)]


def test_segments_of_a_window_local_pipeline_stitch_to_the_whole_file_output(clip, tmp_path) -> None:  # type: ignore[no-untyped-def]
    pipe = Pipeline.from_dict(WINDOW_LOCAL)
    whole = run_batch(pipe, [clip.path], tmp_path / "whole")
    segs: list[tuple[int, int]] = []
    inputs_done: list[int] = []
    cut = run_batch(pipe, [clip.path], tmp_path / "cut", segment_s=8,
                    on_segment=lambda r, done, total: segs.append((done, total)),
                    progress=lambda results, total: inputs_done.append(len(results)))
    assert whole[0].ok and cut[0].ok, (whole[0].error, cut[0].error)
    assert segs == [(1, 3), (2, 3), (3, 3)] and inputs_done[-1] == 1
    a, b = load(tmp_path / "whole" / "clip.mp4"), load(tmp_path / "cut" / "clip.mp4")
    # The same tensors: tokens, times, positions, sizes, token ids (offset per segment) and assignments.
    assert sorted(a.tensors) == sorted(b.tensors)
    for key in a.tensors:
        assert torch.equal(a.tensors[key], b.tensors[key]), key
    assert [e["meta"] for e in a.manifest["packets"]] == [e["meta"] for e in b.manifest["packets"]]
    assert [e["meta"]["window"] for e in b.manifest["packets"]] == [0, 1, 2, 3, 4]
    # ...which are the local runtime's over the whole file.
    local = [p for p in LocalRuntime().run(pipe, [clip.path]) if isinstance(p, Tokens)]
    assert torch.equal(b.tokens("window/video").data, torch.cat([p.data for p in local]))
    assert b.manifest["segments"] == [
        {"start_s": 0.0, "end_s": 8.0, "src_offset": {}, "frames": 16, "tokens_in": 3136, "tokens_out": 128},
        {"start_s": 8.0, "end_s": 16.0, "src_offset": {"video": 3136}, "frames": 16, "tokens_in": 3136,
         "tokens_out": 128},
        {"start_s": 16.0, "end_s": None, "src_offset": {"video": 6272}, "frames": 8, "tokens_in": 1568,
         "tokens_out": 64}]
    assert b.manifest["segment_s"] == 8.0
    # The summary adds up the segments; the parts are gone once stitched.
    w, c = whole[0], cut[0]
    assert (c.frames, c.tokens_in, c.tokens_out, c.media_s) == (w.frames, w.tokens_in, w.tokens_out, w.media_s)
    assert c.fidelity == pytest.approx(w.fidelity, abs=1e-9)
    assert [s.tokens_out for s in c.stages] == [s.tokens_out for s in w.stages]
    assert sorted(os.listdir(tmp_path / "cut")) == ["clip.mp4"]
    # A re-run skips the finished file, segmented or not.
    mtime = (tmp_path / "cut" / "clip.mp4" / "tokens.safetensors").stat().st_mtime_ns
    again = run_batch(pipe, [clip.path], tmp_path / "cut", segment_s=8)
    assert again[0].skipped and (tmp_path / "cut" / "clip.mp4" / "tokens.safetensors").stat().st_mtime_ns == mtime


def test_segments_through_the_memory_give_a_valid_ordered_bounded_stream(clip, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The memory (and the audio stages, and a calibrated FrameFusion) start afresh at each cut, so the
    output is not the whole-file one; it is a valid stream all the same."""
    pipe = load_pipeline("default")
    whole = run_batch(pipe, [clip.path], tmp_path / "whole")[0]
    r = run_batch(pipe, [clip.path], tmp_path / "cut", segment_s=8, parquet=True)[0]
    assert r.ok, r.error
    out = load(tmp_path / "cut" / "clip.mp4")
    assert (tmp_path / "cut" / "clip.mp4" / "tokens.parquet").is_file()
    assert len(out.manifest["segments"]) == 3
    for modality, budget in (("video", 128), ("audio", 64)):
        windows = out.packets(f"window/{modality}")
        # Every window of the 20 s once, in time order, within its budget.
        assert [p.meta["window"] for p in windows] == [0, 1, 2, 3, 4]
        assert all(p.num_tokens <= budget for p in windows)
        assert all(bool((p.t0[1:] >= p.t0[:-1]).all()) for p in windows if p.num_tokens > 1)
        # Token ids: unique, and rising from window to window (segment after segment).
        src = out.tokens(f"window/{modality}").src
        assert src is not None and torch.unique(src).numel() == src.numel()
        firsts = [int(p.src.min()) for p in windows if p.src is not None and p.src.numel()]
        assert firsts == sorted(firsts)
        made = sum(s.tokens_out for s in r.stages if s.step_id == f"{modality}_encoder")
        # Sizes add up to the originals the encoder made; ids are exactly 0..made-1.
        assert int(out.tokens(f"window/{modality}").size.sum()) == made == src.numel()
        assert int(src.max()) == made - 1
    # The same frames as a whole-file run: as many video originals.
    assert int(out.tokens("window/video").size.sum()) == 40 * 196 == whole.stages[0].tokens_out
    memory = out.packets("memory/video") + out.packets("memory/audio")
    assert memory and all(p.num_tokens <= 256 for p in memory)
    assert r.reports["vad"]["speech_segments"] == sorted(r.reports["vad"]["speech_segments"])


def test_a_failing_segment_fails_its_input_alone_and_keeps_the_finished_parts(short_clip, tmp_path) -> None:  # type: ignore[no-untyped-def]
    # 24 s: a pan, a static scene (the encoder refuses it), a pan.
    clip = make_clip(tmp_path / "long.mp4", scenes=(("pan", 8), ("static", 8), ("pan", 8)), width=160,
                     height=120, audio=False)
    pipe = Pipeline.from_dict({"name": "picky", "decode": {"fps": 2, "width": 32, "height": 32},
                               "steps": [{"op": "function_encoder", "function": "segment_helpers:encode"}]})
    out = tmp_path / "out"
    results = run_batch(pipe, [clip.path, short_clip.path], out, segment_s=8)
    assert [r.ok for r in results] == [False, True]
    bad = results[0]
    assert bad.error_type == "ValueError" and "segment 2/3 (8–16 s)" in (bad.error or "")
    errors = [json.loads(x) for x in (out / "errors.jsonl").read_text().splitlines()]
    assert len(errors) == 1 and errors[0]["input"].endswith("long.mp4")
    assert "segment 2/3" in errors[0]["message"] and "refuses static scenes" in errors[0]["message"]
    # No output for the file, not even a partial one; its finished parts wait for the re-run.
    assert not (out / "long.mp4").exists() and (out / "short.mp4" / "manifest.json").is_file()
    (parts,) = [p for p in out.iterdir() if p.name.startswith(".long.mp4.parts-")]
    assert sorted(p.name for p in parts.iterdir()) == ["part-00000", "part-00002"]
    with pytest.raises(ValueError, match="no streamzip output here"):
        load(parts)  # a parts folder is not an output
    mtimes = {p.name: (p / "tokens.safetensors").stat().st_mtime_ns for p in parts.iterdir()}
    again = run_batch(pipe, [clip.path, short_clip.path], out, segment_s=8)
    assert not again[0].ok and again[1].skipped
    assert {p.name: (p / "tokens.safetensors").stat().st_mtime_ns for p in parts.iterdir()} == mtimes


def test_the_cli_takes_segment_s_and_encoder_pool(clip, short_clip, tmp_path) -> None:  # type: ignore[no-untyped-def]
    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "streamzip", *args], capture_output=True, text=True,
                              timeout=300)

    res = cli("batch", "-p", "patch_only", "--segment-s", "8", clip.path, "-o", str(tmp_path / "b"))
    assert res.returncode == 0, res.stderr
    assert "1 inputs: 1 done" in res.stdout and "clip.mp4" in res.stdout
    out = load(tmp_path / "b" / "clip.mp4")
    assert len(out.manifest["segments"]) == 3 and out.tokens("tokens/video").num_tokens == 40 * 196
    res = cli("run", "patch_only", "-i", short_clip.path, "--encoder-pool", "2", "-o", str(tmp_path / "r"))
    assert res.returncode == 0, res.stderr
    assert load(tmp_path / "r" / "short.mp4").tokens("tokens/video").num_tokens == 12 * 196
    for args, needle in ((("batch", "x.mp4", "-o", str(tmp_path / "x"), "--segment-s", "0"), "--segment-s"),
                         (("run", "patch_only", "-i", "x.mp4", "--runtime", "local", "--encoder-pool", "2"),
                          "--encoder-pool"),
                         (("run", "patch_only", "-i", "x.mp4", "--encoder-pool", "-1"), "--encoder-pool"),
                         (("run", "patch_only", "-i", "x.mp4", "--runtime", "local", "--no-encoder-gather"),
                          "--no-encoder-gather")):
        res = cli(*args)
        assert res.returncode == 2 and needle in res.stderr and "Traceback" not in res.stderr

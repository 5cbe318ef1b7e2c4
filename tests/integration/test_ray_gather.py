"""Gathering: the frames of several streams on one encoder pool actor go through the encoder in one
pass (``push_many``), and every stream still gets what it would alone. Ray starts once here."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import ray
import torch
from _ray_helpers import ray_started, tokens_of  # noqa: F401 - ray_started: the module's fixture

from streamzip.encoders.tiny import save_tiny_model
from streamzip.packets import Tokens
from streamzip.pipeline import Pipeline
from streamzip.runtime.local import LocalRuntime
from streamzip.runtime.ray import RayRuntime
from streamzip.sources._names import stream_name
from streamzip.stats import InputResult
from streamzip.synthetic import make_clip

STREAMS = 3
WARM_UP = "lavfi:testsrc2=size=96x96:rate=4:duration=1"


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("gather")
    clips = [make_clip(root / f"cam{i}.mp4", scenes=(("pan", 2), ("motion", 2), ("static", 2)), width=96,
                       height=96, audio=False, seed=i).path for i in range(STREAMS)]
    return {"clips": clips, "model": save_tiny_model("clip", root / "clip", image_size=32, patch_size=8)}


def pipeline(model: Path) -> Pipeline:
    # One frame per packet, as a camera sends them, at 4 fps: many small encoder calls.
    return (Pipeline("gather", decode={"fps": 4, "width": 32, "height": 32, "batch_frames": 1})
            .add("hf_encoder", id="enc", model=str(model), device="cpu")
            .add("framefusion", threshold=0.95, window_s=1.0))


def assert_close(got: list[Tokens], want: list[Tokens]) -> None:
    """The same packets; the encoder's floats may differ in the last bits between a batch of one
    stream's frames and a batch of several streams' frames."""
    assert len(got) == len(want) and want
    for g, w in zip(got, want):
        assert g.meta == w.meta and g.stream == w.stream
        for key in ("t0", "t1", "pos", "size", "src", "assignment"):
            a, b = getattr(g, key), getattr(w, key)
            assert (a is None) == (b is None) and (a is None or torch.equal(a, b)), key
        torch.testing.assert_close(g.data, w.data, rtol=1e-4, atol=1e-5)
        assert (g.score is None) == (w.score is None)
        if w.score is not None:
            torch.testing.assert_close(g.score, w.score, rtol=1e-4, atol=1e-6)


def run_streams(pipe: Pipeline, clips: list[str], *, gather: bool = True,
                hooks: dict[int, Callable[[RayRuntime], Any]] | None = None
                ) -> tuple[list[list[Tokens]], list[InputResult], dict[str, int]]:
    """Each clip through its own runtime in its own thread (as `streamzip live` runs cameras), the
    runtimes sharing one encoder pool actor; the tokens, results and the actor's gather counts.
    ``hooks``: per stream, the runtime's ``on_packet`` made from the runtime."""
    runtimes = [RayRuntime(encoder_pool=1, encoder_gather=gather, max_inflight=2, batch_packets=1)
                for _ in clips]
    # Each runtime places its actors first, on a 1 s input (one runtime at a time, as the runtime
    # does): the streams measured below then start together and overlap from their first packet.
    for rt in runtimes:
        tokens_of(rt.run(pipe, [WARM_UP]))
    (actor,) = runtimes[0].pool_actors()["enc"]
    before = ray.get(actor.gather_counts.remote())
    for i, make in (hooks or {}).items():
        runtimes[i].on_packet = make(runtimes[i])
    outs: list[list[Tokens]] = [[] for _ in clips]
    results = [InputResult(input=c, stream=stream_name(c)) for c in clips]
    errors: list[BaseException] = []
    barrier = threading.Barrier(len(clips))

    def go(i: int) -> None:
        try:
            packets = runtimes[i].run_input(pipe, clips[i], results[i])
            barrier.wait(60)
            outs[i] = tokens_of(packets)
        except BaseException as err:  # noqa: BLE001 - reported below
            errors.append(err)

    try:
        threads = [threading.Thread(target=go, args=(i,)) for i in range(len(clips))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(180)
        assert not errors, errors
        assert all(rt.pool_actors() == {"enc": [actor]} for rt in runtimes)
        after = ray.get(actor.gather_counts.remote())
        counts = {k: after[k] - before[k] for k in ("calls", "frames")}
        counts["most_streams"] = after["most_streams"]
    finally:
        for rt in runtimes:
            rt.shutdown()
    return outs, results, counts


def local_runs(pipe: Pipeline, clips: list[str]) -> tuple[list[list[Tokens]], list[InputResult]]:
    runs = [(rt := LocalRuntime(), tokens_of(rt.run(pipe, [c]))) for c in clips]
    return [t for _, t in runs], [rt.results[0] for rt, _ in runs]


def test_streams_on_one_pool_actor_are_encoded_together_and_each_gets_its_own_tokens(media) -> None:  # type: ignore[no-untyped-def]
    pipe = pipeline(media["model"])
    expected, alone = local_runs(pipe, media["clips"])
    got, results, counts = run_streams(pipe, media["clips"])
    # Calls carried the frames of several streams (the encoder ran fewer, bigger passes)...
    assert counts["calls"] >= 1 and counts["most_streams"] >= 2, counts
    assert counts["frames"] >= 2 * counts["calls"]
    # ...and every stream got the tokens of a run of its own, with its own counters.
    for g, e, r, a in zip(got, expected, results, alone):
        assert_close(g, e)
        assert r.restarts == 0
        assert [(s.frames_in, s.tokens_out) for s in r.stages] == [(s.frames_in, s.tokens_out) for s in a.stages]


def test_gathering_off_sends_one_stream_per_call_with_the_same_tokens(media) -> None:  # type: ignore[no-untyped-def]
    pipe = pipeline(media["model"])
    on, _, counts_on = run_streams(pipe, media["clips"])
    off, _, counts_off = run_streams(pipe, media["clips"], gather=False)
    assert counts_off == {"calls": 0, "frames": 0, "most_streams": 0} and counts_on["calls"] >= 1
    for a, b in zip(on, off):
        assert_close(a, b)


def test_a_stream_with_a_query_is_encoded_alone_and_keeps_its_relevance_scores(media) -> None:  # type: ignore[no-untyped-def]
    """A query of one camera re-weights that camera alone: its frames are scored by relevance to it,
    so they are not encoded with the others' (scored by attention); the others still gather."""
    pipe = pipeline(media["model"])

    def ask(rt: RayRuntime) -> Callable[[int, list[Any]], None]:
        def hook(seq: int, actors: list[Any]) -> None:
            if seq == 2:
                assert rt.set_query("a red car") == ["enc"]
        return hook

    on, _, counts = run_streams(pipe, media["clips"], hooks={0: ask})
    off, _, _ = run_streams(pipe, media["clips"], gather=False, hooks={0: ask})
    assert counts["calls"] >= 1
    for a, b in zip(on, off):
        assert_close(a, b)
    # After the query, the asked stream's frames are scored by relevance to it; the others' by
    # [CLS] attention, all along.
    assert on[0][0].meta["score_kind"] == "attention" and on[0][-1].meta["score_kind"] == "query"
    assert all(p.meta["score_kind"] == "attention" for stream in on[1:] for p in stream)


def test_a_stream_that_lost_its_state_recovers_alone(media) -> None:  # type: ignore[no-untyped-def]
    """The pool actor forgets one stream mid-run: that stream's part of a gathered call raises, it
    restores and replays, and the streams it was gathered with go on undisturbed."""
    pipe = pipeline(media["model"])
    expected, _ = local_runs(pipe, media["clips"])
    name = stream_name(media["clips"][0])
    forgot: list[str] = []

    def forget(_: RayRuntime) -> Callable[[int, list[Any]], None]:
        def hook(seq: int, actors: list[Any]) -> None:
            if seq == 4 and not forgot:
                key = next(k for k in ray.get(actors[0].streams.remote()) if k.startswith(name + "#"))
                ray.get(actors[0].release.remote(key))
                forgot.append(key)
        return hook

    got, results, counts = run_streams(pipe, media["clips"], hooks={0: forget})
    assert forgot and counts["calls"] >= 1
    for g, e in zip(got, expected):
        assert_close(g, e)
    assert results[0].restarts >= 1
    assert [r.restarts for r in results[1:]] == [0] * (STREAMS - 1)

"""The Ray runtime's encoder pool: encoder actors shared by streams. Ray starts once here."""

from __future__ import annotations

import threading
from typing import Any

import pytest
import ray
import ray._private.state
import torch
from _ray_helpers import assert_same as same
from _ray_helpers import kill_and_wait, ray_started, tokens_of  # noqa: F401 - ray_started: the module's fixture

from streamzip.packets import Tokens
from streamzip.pipeline import Pipeline, load_pipeline
from streamzip.runtime import ray as ray_runtime
from streamzip.runtime.local import LocalRuntime
from streamzip.runtime.ray import RayRuntime
from streamzip.stats import InputResult

# Both encoders (video and audio, the fbank one carrying samples from packet to packet) pooled, and
# per-stream stages that hold state across packets (the webrtc VAD between the encoders, whose state is
# the bounded audio it rebuilds webrtcvad's from on restore).
POOLED = {
    "name": "pooled", "decode": {"fps": 2, "width": 224, "height": 224},
    "steps": [
        {"id": "video_encoder", "op": "patch_encoder", "patch_size": 32},
        {"id": "vad", "op": "vad", "backend": "webrtc"},
        {"id": "audio_encoder", "op": "fbank_encoder", "tokens_per_s": 25},
        {"id": "merge_audio", "op": "atome", "threshold": 0.8, "window_s": 4.0},
        {"id": "window", "op": "window", "window_s": 4.0, "max_video_tokens": 32, "max_audio_tokens": 32},
    ],
}


def assert_same(a: list[Tokens], b: list[Tokens]) -> None:
    same(a, b, same_stream=True)


def local(pipe: Pipeline, path: str) -> list[Tokens]:
    return tokens_of(LocalRuntime().run(pipe, [path]))


def stream(rt: RayRuntime, pipe: Pipeline, path: str) -> tuple[InputResult, Any]:
    result = InputResult(input=path, stream=path.rsplit("/", 1)[-1])
    return result, rt.run_input(pipe, path, result)


def interleave(*gens: Any, each_round: Any = None) -> list[list[Any]]:
    """Advance the generators in turn, one output each, until all are done: their calls to a shared
    actor interleave, deterministically."""
    outs: list[list[Any]] = [[] for _ in gens]
    live = list(range(len(gens)))
    while live:
        for i in list(live):
            try:
                outs[i].append(next(gens[i]))
            except StopIteration:
                live.remove(i)
        if each_round is not None:
            each_round()
    return outs


def stage_actors_made() -> int:
    """StageActor actors this job ever created (dead ones included: the count only grows)."""
    return sum(1 for a in ray._private.state.actors().values() if a["ActorClassName"] == "StageActor")


def test_two_streams_through_one_pool_actor_give_the_tokens_of_separate_runs(clip, short_clip) -> None:  # type: ignore[no-untyped-def]
    pipe = Pipeline.from_dict(POOLED)
    expected = [local(pipe, clip.path), local(pipe, short_clip.path)]
    seen: list[set[str]] = [set() for _ in pipe.steps]

    def note(seq: int, actors: list[Any]) -> None:
        for i, a in enumerate(actors):
            seen[i].add(a._actor_id.hex())

    rt = RayRuntime(encoder_pool=1, max_inflight=2, on_packet=note)
    held: list[int] = []
    try:
        (ra, ga), (rb, gb) = stream(rt, pipe, clip.path), stream(rt, pipe, short_clip.path)
        pools = rt.pool_actors

        def sample() -> None:
            if pools():
                held.append(len(ray.get(pools()["audio_encoder"][0].streams.remote())))

        a, b = interleave(ga, gb, each_round=sample)
        assert [len(v) for v in rt.pool_actors().values()] == [1, 1]
    finally:
        rt.shutdown()
    # One actor per encoder step served both streams, at the same time; the other steps had one each.
    assert [len(s) for s in seen] == [1, 2, 1, 2, 2]
    assert max(held) == 2
    assert_same(expected[0], tokens_of(a))
    assert_same(expected[1], tokens_of(b))
    lrt = LocalRuntime()
    list(lrt.run(pipe, [clip.path]))
    assert (ra.tokens_in, ra.tokens_out, ra.frames) == (lrt.results[0].tokens_in, lrt.results[0].tokens_out,
                                                         lrt.results[0].frames)
    assert ra.fidelity == pytest.approx(lrt.results[0].fidelity, abs=1e-6)
    assert [s.tokens_out for s in ra.stages] == [s.tokens_out for s in lrt.results[0].stages]
    assert rb.stages[0].tokens_out == 12 * 49  # 6 s at 2 fps, 7x7 patches of 32 px: its own counters


def test_the_pool_has_the_configured_size_whatever_the_streams_and_runtimes(clip, short_clip) -> None:  # type: ignore[no-untyped-def]
    pipe = load_pipeline("patch_only")  # one step, the encoder: a stream has no actor of its own
    expected = {clip.path: local(pipe, clip.path), short_clip.path: local(pipe, short_clip.path)}
    paths = [clip.path, short_clip.path, clip.path]  # the same file twice: two streams of one name
    used: list[str] = []
    before = stage_actors_made()
    rt = RayRuntime(encoder_pool=2, on_packet=lambda seq, actors: used.append(actors[0]._actor_id.hex()))
    other = RayRuntime(encoder_pool=2)
    outs: dict[int, list[Tokens]] = {}
    errors: list[BaseException] = []

    def run(i: int, path: str) -> None:
        try:
            outs[i] = tokens_of(stream(rt, pipe, path)[1])
        except BaseException as err:  # noqa: BLE001 - reported below
            errors.append(err)

    try:
        threads = [threading.Thread(target=run, args=(i, p)) for i, p in enumerate(paths)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, errors
        # A second runtime of this process running the same encoder step joins the pool.
        assert_same(expected[short_clip.path], tokens_of(other.run(pipe, [short_clip.path])))
        assert other.pool_actors() == rt.pool_actors()
        assert len(rt.pool_actors()["video_encoder"]) == 2
        assert stage_actors_made() - before == 2
        assert len(set(used)) == 2
    finally:
        rt.shutdown()
        assert ray_runtime._POOLS, "the pool goes when its last runtime does"
        other.shutdown()
    assert not ray_runtime._POOLS
    for i, path in enumerate(paths):
        assert_same(expected[path], outs[i])
    # 0: no pool, an encoder actor per stream.
    alone = RayRuntime(encoder_pool=0)
    try:
        assert_same(expected[short_clip.path], tokens_of(alone.run(pipe, [short_clip.path])))
        assert alone.pool_actors() == {} and not ray_runtime._POOLS
    finally:
        alone.shutdown()


def test_more_streams_at_once_than_the_cpu_shares_fit_all_run(short_clip) -> None:  # type: ignore[no-untyped-def]
    """Embedded Ray: the first stream's actors take the machine's CPU shares, each later stream what is
    left, and once nothing is left actors that ask for no CPU (a floor above what is free once left the
    fourth stream's actors unplaceable: 'could not start')."""
    pipe = Pipeline.from_dict(POOLED)
    expected = local(pipe, short_clip.path)
    rt = RayRuntime(encoder_pool=1)
    outs: dict[int, list[Tokens]] = {}
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            outs[i] = tokens_of(stream(rt, pipe, short_clip.path)[1])
        except BaseException as err:  # noqa: BLE001 - reported below
            errors.append(err)

    try:
        threads = [threading.Thread(target=run, args=(i,)) for i in range(5)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, errors
        assert len(rt._made) == 5  # five streams at once: five sets of stream actors
    finally:
        rt.shutdown()
    for i in range(5):
        assert_same(expected, outs[i])


def test_a_killed_pool_actor_restarts_and_every_stream_it_served_ends_identical(clip, short_clip) -> None:  # type: ignore[no-untyped-def]
    pipe = Pipeline.from_dict(POOLED)
    expected = [local(pipe, clip.path), local(pipe, short_clip.path)]
    started: list[int] = []
    killed: list[int] = []

    def kill(seq: int, actors: list[Any]) -> None:
        if seq == 3 and started and not killed:
            kill_and_wait(actors[0])  # the video encoder's pool actor
            killed.append(seq)

    # Two runtimes, as two cameras of `streamzip live` have, share the encoder pool. (A packet per call:
    # the kill lands at a known packet.)
    rt_a = RayRuntime(encoder_pool=1, max_inflight=2, snapshot_every=2, batch_packets=1,
                      on_packet=lambda seq, actors: started.append(seq))
    rt_b = RayRuntime(encoder_pool=1, max_inflight=2, snapshot_every=2, batch_packets=1, on_packet=kill)
    try:
        (ra, ga), (rb, gb) = stream(rt_a, pipe, clip.path), stream(rt_b, pipe, short_clip.path)
        a, b = interleave(ga, gb)
        assert rt_a.pool_actors() == rt_b.pool_actors()
    finally:
        rt_a.shutdown()
        rt_b.shutdown()
    assert killed
    assert_same(expected[0], tokens_of(a))
    assert_same(expected[1], tokens_of(b))
    # Both streams recovered (one saw the death, the other a state the restarted actor no longer had),
    # and each counts the encoder's restart once.
    for r in (ra, rb):
        assert r.restarts >= 1
        assert [s.restarts for s in r.stages] == [1, 0, 0, 0, 0]


def test_a_live_query_is_replayed_in_place_after_a_kill(clip, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A query set after the last snapshot is not in the restored state: the recovery sets it again right
    before the packet it first applied to, so the killed run ends with the undisturbed run's scores."""
    from streamzip.encoders.tiny import save_tiny_model

    model = save_tiny_model("clip", tmp_path / "clip")
    pipe = (Pipeline("q", decode={"fps": 2, "width": 32, "height": 32, "batch_frames": 2})
            .add("hf_encoder", id="enc", model=str(model), device="cpu")
            .add("window", window_s=2.0))

    def run(kill_at: int | None) -> list[Tokens]:
        holder: dict[str, Any] = {}

        def hook(seq: int, actors: list[Any]) -> None:
            if seq == 5:  # after the cut behind packet 3 (snapshot_every=4), before the next one
                assert holder["rt"].set_query("a red car") == ["enc"]
            if seq == kill_at:
                ray.kill(actors[1], no_restart=False)  # the window stage: the whole chain is restored

        rt = holder["rt"] = RayRuntime(encoder_pool=1, max_inflight=8, snapshot_every=4, batch_packets=1,
                                       on_packet=hook)
        try:
            return tokens_of(rt.run(pipe, [clip.path]))
        finally:
            rt.shutdown()

    undisturbed, killed = run(None), run(6)
    assert_same(undisturbed, killed)
    for a, b in zip(undisturbed, killed):
        assert torch.equal(a.score, b.score)
    n = undisturbed[0].meta.get("tokens_per_frame") or 16
    last = undisturbed[-1]  # after the query: one relevance per frame
    assert float(last.score.view(-1, n).std(dim=1).max()) < 1e-6
    first = undisturbed[0]  # before it: [CLS] attention, varying within a frame
    assert float(first.score.view(-1, n).std(dim=1).max()) > 0


def test_runtimes_started_at_once_all_place_their_actors(short_clip) -> None:  # type: ignore[no-untyped-def]
    """Eight runtimes (as eight cameras of `streamzip live` have) start their streams at the same moment
    on this 2-CPU embedded Ray: each sizes its actors' CPU shares from what the ones placed before left
    free, so every actor is placed and every stream ends. (Sized at once from the whole machine, each
    asked for all of it and the later ones could not be placed.)"""
    pipe = Pipeline.from_dict(POOLED)
    expected = local(pipe, short_clip.path)
    runtimes = [RayRuntime(encoder_pool=1, restart_timeout_s=10.0) for _ in range(8)]
    outs: list[list[Tokens]] = [[] for _ in runtimes]
    errors: list[BaseException] = []
    barrier = threading.Barrier(len(runtimes))

    def go(i: int) -> None:
        try:
            barrier.wait(60)
            outs[i] = tokens_of(runtimes[i].run(pipe, [short_clip.path]))
        except BaseException as err:  # noqa: BLE001 - reported below
            errors.append(err)

    threads = [threading.Thread(target=go, args=(i,)) for i in range(len(runtimes))]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(300)
    finally:
        for rt in runtimes:
            rt.shutdown()
    assert not errors, errors[0]
    for out in outs:
        assert_same(expected, out)

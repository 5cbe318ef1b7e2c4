"""The Ray runtime against the local one, faults, backpressure and batch. Ray starts once here."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import ray
import torch
from _ray_helpers import assert_same, kill_and_wait, ray_started, tokens_of  # noqa: F401 - ray_started: the module's fixture

from streamzip.batch import run_batch
from streamzip.errors import BackendError, OutputError
from streamzip.output import load
from streamzip.packets import Tokens
from streamzip.pipeline import Pipeline, load_pipeline
from streamzip.pipelines import builtin_names
from streamzip.runtime.groups import encoder_groups
from streamzip.runtime.local import LocalRuntime
from streamzip.runtime.ray import (
    STORE_BYTES,
    RayRuntime,
    StageActor,
    _check_reachable,
    _lost,
    _store,
    _Stored,
    stage_groups,
)


@pytest.mark.parametrize("name", builtin_names())
def test_ray_and_local_give_identical_tokens(name, clip) -> None:  # type: ignore[no-untyped-def]
    pipe = load_pipeline(name)
    lrt = LocalRuntime()
    local = tokens_of(lrt.run(pipe, [clip.path]))
    rt = RayRuntime()
    try:
        remote = tokens_of(rt.run(pipe, [clip.path]))
    finally:
        rt.shutdown()
    assert_same(local, remote)
    # The summary agrees too: counts and fidelity (computed actor-to-actor under Ray).
    a, b = lrt.results[0], rt.results[0]
    assert (a.tokens_in, a.tokens_out, a.frames) == (b.tokens_in, b.tokens_out, b.frames)
    assert a.fidelity is not None and b.fidelity == pytest.approx(a.fidelity, abs=1e-6)


def test_light_steps_share_an_actor_and_encoders_run_alone() -> None:
    pipe = load_pipeline("default")
    steps = [s.id for s in pipe.steps]
    assert steps[:3] == ["video_encoder", "vad", "audio_encoder"]
    # Pooled encoders alone; the light steps between and after them fused.
    assert stage_groups(pipe) == [[0], [1], [2], [3, 4, 5, 6, 7]]
    assert encoder_groups(pipe, stage_groups(pipe)) == [0, 2]  # the groups served by encoder pools
    # Without a pool an encoder may close the group before it (it produces: the group ends with it).
    assert stage_groups(pipe, pooled=False) == [[0], [1, 2], [3, 4, 5, 6, 7]]
    assert stage_groups(pipe, fuse=False) == [[i] for i in range(8)]
    # A step that asks for a GPU gets an actor of its own.
    spec = pipe.to_dict()
    spec["steps"][4]["resources"] = {"num_gpus": 1}
    assert stage_groups(Pipeline.from_dict(spec)) == [[0], [1], [2], [3], [4], [5, 6, 7]]


@pytest.mark.parametrize(("victim", "fuse"), [(0, True), (-1, True), (-1, False), (1, True)],
                         ids=["encoder", "fused-tail", "unfused-tail", "webrtc-vad"])
def test_a_killed_stage_restarts_and_the_run_ends_identical(victim, fuse, clip) -> None:  # type: ignore[no-untyped-def]
    pipe = load_pipeline("default")  # webrtc VAD included: its state is restored exactly too
    lrt = LocalRuntime()
    local = tokens_of(lrt.run(pipe, [clip.path]))
    killed: list[int] = []

    def kill(seq, actors):  # type: ignore[no-untyped-def]
        if seq == 3 and not killed:
            kill_and_wait(actors[victim])
            killed.append(seq)

    rt = RayRuntime(on_packet=kill, snapshot_every=2, fuse=fuse)
    try:
        remote = tokens_of(rt.run(pipe, [clip.path]))
    finally:
        rt.shutdown()
    assert killed and rt.results[0].restarts >= 1
    # Each step of the killed actor counts one restart; the others none.
    group = next(g for g in stage_groups(pipe, fuse=fuse) if range(len(pipe.steps))[victim] in g)
    assert [st.restarts for st in rt.results[0].stages] == [int(i in group) for i in range(len(pipe.steps))]
    assert_same(local, remote)
    # The fidelity meter (in the last actor, part of its snapshots) counted every token once.
    assert rt.results[0].fidelity == pytest.approx(lrt.results[0].fidelity, abs=1e-6)
    assert rt.results[0].tokens_in == lrt.results[0].tokens_in


@ray.remote(num_cpus=0.05)
class _Owner:
    def store(self, packet: Tokens) -> list[object]:
        return [_store(packet)]

    def never(self) -> None:
        time.sleep(600)


def test_big_packets_skip_the_actors_that_do_not_take_them() -> None:
    """A batch of video tokens is left in the store as a handle: the audio actors pass the handle on
    without fetching it, the video actors fetch it."""
    pipe = load_pipeline("default")
    n = 200  # 200 x 768 float32: 600 KB, a stored packet
    t0 = torch.arange(n, dtype=torch.float64) / 100
    big = Tokens(stream="s", modality="video", data=torch.randn(n, 768), t0=t0, t1=t0 + 0.01,
                 pos=torch.zeros(n, 2, dtype=torch.int32), size=torch.ones(n, dtype=torch.int64))
    spec = pipe.to_dict()
    vad, tail = (StageActor.options(num_cpus=0.05).remote(spec, {}, g, 1) for g in ([1], [3, 4, 5, 6, 7]))
    owner = _Owner.remote()
    try:
        (handle,) = ray.get(owner.store.remote(big))
        assert isinstance(handle, _Stored) and handle.modality == "video" and handle.kind is Tokens
        assert isinstance(_store(Tokens.empty("s", "video", 768)), Tokens)  # small ones ride inline
        ray.get([vad.reset.remote("k", "s", "in"), tail.reset.remote("k", "s", "in", False, True)])
        # A handle whose packet never comes: whoever fetches it waits.
        pending = _Stored(Tokens, "video", owner.never.remote())
        (out,) = ray.get(vad.push.remote("k", [pending]), timeout=120)  # the VAD takes no video
        assert isinstance(out, _Stored) and out.ref == pending.ref
        with pytest.raises(ray.exceptions.GetTimeoutError):  # FrameFusion takes video: it waits
            ray.get(tail.push.remote("k", [pending]), timeout=3)
        # A real one passes the VAD as the same handle.
        (out,) = ray.get(vad.push.remote("k", [handle]))
        assert out == handle
    finally:
        for a in (vad, tail, owner):
            ray.kill(a)
    # A packet lost with the actor that stored it is a lost actor: the chain restores and replays.
    assert _lost(ray.exceptions.OwnerDiedError("00" * 28, "", ""))


@pytest.fixture
def ray_gate():  # type: ignore[no-untyped-def]
    """The test-only ``_test_gate`` stage (``_ray_gate.py``), registered for one test: the registry
    the other tests see stays the package's own."""
    import _ray_gate

    from streamzip import registry

    yield _ray_gate
    registry._REGISTRY.pop("_test_gate", None)
    sys.modules.pop("_ray_gate", None)  # imported again, it registers again


def test_a_stored_packet_lost_with_its_owner_is_replayed_and_the_run_ends_identical(monkeypatch, ray_gate) -> None:  # type: ignore[no-untyped-def]
    """The encoder actor stores its big token packets in Ray's store (it owns them) and is killed
    after storing two that the next actor has not fetched yet: Ray loses them with their owner, the
    next actor's fetch fails with ``OwnerDiedError``, and the chain restores from its last cut and
    replays, ending with the tokens of an undisturbed run."""
    from streamzip.runtime._ray_chain import _Chain

    src = "lavfi:testsrc2=s=64x64:r=4:d=4"  # 16 frames, one per packet, no audio

    def pipeline(latch: str) -> Pipeline:
        # The gate holds its actor at the frame of 1 s (source packet 4) until the test opens the latch.
        return (Pipeline("lost", decode={"fps": 4, "width": 64, "height": 64, "batch_frames": 1})
                .encode_with(ray_gate.encode_big).add("_test_gate", latch=latch, from_s=0.9))

    lrt = LocalRuntime()
    local = tokens_of(lrt.run(pipeline(""), [src]))
    assert len(local) == 16 and local[0].data.nbytes >= STORE_BYTES  # every packet is stored

    causes: list[BaseException | None] = []
    recover = _Chain._recover

    def spy(chain: _Chain) -> None:  # called in the except block that caught the failed batch
        causes.append(sys.exc_info()[1])
        recover(chain)

    monkeypatch.setattr(_Chain, "_recover", spy)
    name = f"latch-{os.getpid()}"
    latch = ray_gate.Latch.options(name=name).remote()  # type: ignore[attr-defined]
    killed: list[int] = []

    def lose_stored_packets(seq: int, actors: list[object]) -> None:
        if seq != 6 or killed:
            return
        # The gate's actor holds source packet 4 (fetched: the gate is running on it); packets 5
        # and 6 wait behind it in that actor's queue as handles, not fetched.
        assert ray.get(latch.arrived.remote(), timeout=120) == 1.0
        # Calls from one caller run in order: the encoder has stored packets 5 and 6 once it answers.
        ray.get(actors[0].ping.remote(), timeout=120)  # type: ignore[attr-defined]
        kill_and_wait(actors[0])  # their owner is gone: Ray has lost them
        ray.get(latch.open.remote())
        killed.append(seq)

    rt = RayRuntime(on_packet=lose_stored_packets, batch_packets=1, snapshot_every=2, max_inflight=4)
    try:
        remote = tokens_of(rt.run(pipeline(name), [src]))
    finally:
        rt.shutdown()
        ray.kill(latch)
    assert killed == [6]
    # One recovery, for the lost packet: the gate's fetch of packet 5 found its owner dead.
    assert len(causes) == 1
    cause = causes[0] if isinstance(causes[0], ray.exceptions.ObjectLostError) else getattr(causes[0], "cause", None)
    assert isinstance(cause, ray.exceptions.OwnerDiedError), causes
    result = rt.results[0]
    assert result.restarts == 1 and [st.restarts for st in result.stages] == [1, 0]
    assert_same(local, remote)
    assert result.fidelity == pytest.approx(lrt.results[0].fidelity, abs=1e-6)
    assert result.tokens_in == lrt.results[0].tokens_in


def _kill_after_a_cut(rt: RayRuntime, victim: int, killed: list[list[Any]]) -> Callable[[int, list[Any]], None]:
    """An ``on_packet`` hook that kills the stream's actor of step ``victim`` once, at the first packet
    after the chain has committed a cut (so that its recovery restores the stages from a snapshot, and
    calls their ``load_state_dict``); ``killed`` gets the stream's actors per step."""

    def hook(seq: int, actors: list[Any]) -> None:
        (chain,) = rt._running
        if not killed and chain.committed is not None:
            kill_and_wait(actors[victim])
            killed.append(actors)

    return hook


def _restoring_gate(ray_gate, **gate: object) -> Pipeline:  # type: ignore[no-untyped-def]
    return (Pipeline("refault", decode={"fps": 4, "width": 64, "height": 64, "batch_frames": 1})
            .encode_with(ray_gate.encode_big).add("_test_gate", **gate))


@pytest.mark.parametrize(("first", "stage_restarts"), [(0, [1, 1]), (1, [0, 2])], ids=["encoder", "gate-twice"])
def test_an_actor_lost_while_the_chain_restores_starts_the_recovery_over(ray_gate, first, stage_restarts) -> None:  # type: ignore[no-untyped-def]
    """The encoder (or the gate) is killed mid-run; while the chain restores, the gate's restore waits
    at a latch and the test kills the gate (again). That restore fails with the gate's death: the
    recovery starts over, a second one, and the run ends with the tokens of an undisturbed run. Each
    stage counts the processes that died under it: the gate killed twice before a new cut counts 2."""
    src = "lavfi:testsrc2=s=64x64:r=4:d=4"  # 16 frames, one per packet
    lrt = LocalRuntime()
    local = tokens_of(lrt.run(_restoring_gate(ray_gate), [src]))
    name = f"restore-latch-{os.getpid()}"
    latch = ray_gate.Latch.options(name=name).remote()
    killed: list[list[Any]] = []
    rt = RayRuntime(batch_packets=1, snapshot_every=2, max_inflight=4)
    rt.on_packet = _kill_after_a_cut(rt, first, killed)

    def kill_the_gate_while_it_restores() -> None:
        ray.get(latch.arrivals.remote(1), timeout=120)  # the first recovery: the gate waits in its restore
        ray.kill(killed[0][1], no_restart=False)
        # Its restarted process waits there again: the second recovery, which the latch lets through.
        assert ray.get(latch.arrivals.remote(2), timeout=120) == 2
        ray.get(latch.open.remote())

    with ThreadPoolExecutor(1) as pool:
        killer = pool.submit(kill_the_gate_while_it_restores)
        try:
            remote = tokens_of(rt.run(_restoring_gate(ray_gate, restore_latch=name), [src]))
        finally:
            rt.shutdown()
            ray.kill(latch)  # a waiting killer fails rather than hangs
        killer.result()
    result = rt.results[0]
    # Two recoveries; each stage counts its actor's deaths (the encoder, restored twice, once).
    assert result.restarts == 2 and [st.restarts for st in result.stages] == stage_restarts
    assert_same(local, remote)
    assert result.fidelity == pytest.approx(lrt.results[0].fidelity, abs=1e-6)
    assert result.tokens_in == lrt.results[0].tokens_in


def test_an_actor_that_dies_at_every_restore_is_a_clear_error(ray_gate) -> None:  # type: ignore[no-untyped-def]
    """The gate is killed mid-run and its process dies again in each restore: the chain starts the
    recovery over a bounded number of times, then fails with a clear error, not a loop."""
    from streamzip.runtime._ray_chain import RESTORE_ATTEMPTS

    killed: list[list[Any]] = []
    rt = RayRuntime(batch_packets=1, snapshot_every=2, max_inflight=4)
    rt.on_packet = _kill_after_a_cut(rt, 1, killed)
    try:
        with pytest.raises(BackendError, match="did not come back after a crash") as err:
            list(rt.run(_restoring_gate(ray_gate, die_on_restore=True), ["lavfi:testsrc2=s=64x64:r=4:d=4"]))
    finally:
        rt.shutdown()
    assert killed and rt.results[0].restarts == RESTORE_ATTEMPTS
    assert f"each of {RESTORE_ATTEMPTS} restores" in str(err.value) and "Fix:" in str(err.value)


class _FakeActor:
    """Records the calls a chain makes; a call's result is a string naming the call."""

    def __init__(self, name: str, log: list[tuple[str, tuple[object, ...]]]) -> None:
        self.name, self.log = name, log
        self.push = self.snapshot = self

    def remote(self, key: str, *args: object) -> str:
        self.log.append((self.name, args))
        return f"{self.name}({args[0] if args else ''})"


def test_a_batch_skips_the_actors_that_take_none_of_its_packets() -> None:
    from streamzip.packets import AudioChunk, VideoFrames
    from streamzip.runtime.ray import _Chain
    from streamzip.stats import InputResult

    pipe = load_pipeline("default")  # actors: video encoder, VAD, audio encoder, the fused rest
    log: list[tuple[str, tuple[object, ...]]] = []
    actors = [_FakeActor(n, log) for n in ("video", "vad", "audio", "rest")]
    chain = _Chain(RayRuntime(), actors, stage_groups(pipe), InputResult(input="x", stream="x"), pipe)
    calls = lambda: [(n, a[0]) for n, a in log]  # noqa: E731

    chain._send(0, "b", frozenset({(AudioChunk, "audio")}))  # no frames: past the video encoder
    assert calls() == [("vad", "b"), ("audio", "vad(b)"), ("rest", "audio(vad(b))")]
    log.clear()
    chain._send(1, "b", frozenset({(VideoFrames, "video")}))  # no audio: past the VAD and the fbank
    assert calls() == [("video", "b"), ("rest", "video(b)")]
    # The meter's originals: each encoder's output, the skipped one's being its input as it passed.
    assert log[-1][1][1:] == ([("video",), ("audio",)], "video(b)", "video(b)")
    log.clear()
    chain._send(2, "b", None)  # an end or a gap: every stage sees it
    assert [n for n, _ in log] == ["video", "vad", "audio", "rest"]


def test_a_source_failing_midway_flushes_the_stages_then_raises_as_local() -> None:
    """The source fails mid-stream: the actors flush what they hold (the open window comes out, no
    End), the run's counters are collected, then the source's error is raised, as the local runtime
    does."""
    from _cut_source import INPUT, PIPELINE, CutSource

    from streamzip.errors import CorruptMediaError
    from streamzip.packets import End
    from streamzip.stats import InputResult

    def run(runtime: Any) -> tuple[list[Any], InputResult]:
        result, out = InputResult(input="cut", stream="cut"), []
        with pytest.raises(CorruptMediaError) as err:
            for p in runtime.run_source(PIPELINE, CutSource(result, keep=5, fail=True), result):
                out.append(p)
        assert err.value.input == INPUT and err.value.stage == "source"
        return out, result

    local, local_result = run(LocalRuntime())
    rt = RayRuntime(batch_packets=1)
    try:
        remote, remote_result = run(rt)
    finally:
        rt.shutdown()
    assert not any(isinstance(p, End) for p in remote)
    assert len(local) == 2  # the closed window and the flushed open one
    assert_same(tokens_of(local), tokens_of(remote))
    assert remote_result.tokens_out == local_result.tokens_out
    assert [st.packets_in for st in remote_result.stages] == [st.packets_in for st in local_result.stages]


def test_stage_actors_ray_cannot_place_are_a_clear_error(clip) -> None:  # type: ignore[no-untyped-def]
    spec = load_pipeline("patch_only").to_dict()
    spec["steps"][0]["resources"] = {"num_gpus": 1}  # this machine has none
    rt = RayRuntime(restart_timeout_s=1)
    try:
        with pytest.raises(BackendError, match="could not start within 2 s") as err:
            list(rt.run(Pipeline.from_dict(spec), [clip.path]))
        assert "0 GPUs free" in str(err.value) and "Fix:" in str(err.value)
    finally:
        rt.shutdown()


def test_a_file_source_waits_for_the_slowest_stage(clip) -> None:  # type: ignore[no-untyped-def]
    submitted: list[int] = []
    rt = RayRuntime(max_inflight=2, on_packet=lambda seq, actors: submitted.append(seq))
    pipe = load_pipeline("patch_only")
    try:
        received = 0
        for _ in rt.run(pipe, [clip.path]):
            received += 1
            # The source never runs more than max_inflight packets ahead of what came out.
            assert len(submitted) <= received + 2 + 1
    finally:
        rt.shutdown()


def test_no_cluster_at_the_address_is_a_clear_error() -> None:
    with pytest.raises(BackendError, match="no Ray cluster at '127.0.0.1:9'") as err:
        _check_reachable("127.0.0.1:9")
    assert "Fix:" in str(err.value)
    res = subprocess.run([sys.executable, "-m", "streamzip", "run", "patch_only", "-i", "x.mp4", "--address",
                          "127.0.0.1:9"], capture_output=True, text=True, timeout=120)
    assert res.returncode == 1 and "no Ray cluster" in res.stderr and "Traceback" not in res.stderr


def test_batch_writes_each_input_skips_finished_and_records_errors(clip, tmp_path) -> None:  # type: ignore[no-untyped-def]
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    os.link(clip.path, a / "clip.mp4")
    os.link(clip.path, b / "clip.mp4")  # same file name in two folders
    (a / "notes.txt").write_text("not media\n")
    out = tmp_path / "out"
    pipe = load_pipeline("patch_only")
    results = run_batch(pipe, [str(a), str(b)], out)
    assert [r.ok for r in results] == [True, False, True]
    folders = sorted(p.name for p in out.iterdir() if p.is_dir())
    assert len(folders) == 2 and all(f.startswith("clip.mp4-") for f in folders)
    errors = [json.loads(x) for x in (out / "errors.jsonl").read_text().splitlines()]
    assert errors[0]["input"].endswith("notes.txt") and errors[0]["error_type"] == "NotMediaError"
    first = {f: (out / f / "tokens.safetensors").stat().st_mtime_ns for f in folders}
    again = run_batch(pipe, [str(a), str(b)], out)
    assert [r.skipped for r in again] == [True, False, True]
    assert first == {f: (out / f / "tokens.safetensors").stat().st_mtime_ns for f in folders}
    local = tokens_of(LocalRuntime().run(pipe, [clip.path]))
    assert torch.equal(load(out / folders[0]).tokens("tokens/video").data, torch.cat([t.data for t in local]))


def test_batch_into_an_unwritable_place_is_an_output_error(clip, tmp_path) -> None:  # type: ignore[no-untyped-def]
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(OutputError):
        run_batch(load_pipeline("patch_only"), [clip.path], blocker / "out")


def test_a_dying_worker_costs_only_its_input(tmp_path) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "crashy.py").write_text(textwrap.dedent('''
        import os
        def encode(frames):
            if float(frames.float().mean()) < 5:   # black frames: die like a segfaulting codec would
                os._exit(3)
            return frames.float().reshape(frames.shape[0], -1, 3)[:, :16]
    '''))
    pipe = tmp_path / "p.yaml"
    pipe.write_text("name: crashy\ndecode: {fps: 1, width: 8, height: 8}\n"
                    "steps:\n  - {op: function_encoder, function: 'crashy:encode'}\n")
    env = dict(os.environ, PYTHONPATH=f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    res = subprocess.run([sys.executable, "-m", "streamzip", "batch", "-p", str(pipe), "-o", str(tmp_path / "out"),
                          "lavfi:color=c=black:s=64x64:d=2", "lavfi:testsrc2=s=64x64:d=2"],
                         capture_output=True, text=True, timeout=300, env=env)
    assert res.returncode == 1, res.stderr
    errors = [json.loads(x) for x in (tmp_path / "out" / "errors.jsonl").read_text().splitlines()]
    assert len(errors) == 1 and "color" in errors[0]["input"] and errors[0]["error_type"] == "WorkerDied"
    assert any((tmp_path / "out" / d / "manifest.json").is_file() for d in os.listdir(tmp_path / "out"))


def test_embedded_ray_listens_on_loopback_only() -> None:
    from streamzip.runtime.ray import embedded_addresses

    gcs, node_ip = embedded_addresses()
    assert gcs.startswith("127.0.0.1:") and node_ip == "127.0.0.1"

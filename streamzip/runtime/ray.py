"""The Ray runtime: every stage of a stream is a Ray actor; the only module that imports Ray.

The driver decodes (in a prefetch thread) and sends each source packet down the chain of stage
actors as one call per stage, each call taking the previous call's result by reference, so packets
flow actor to actor through the object store without passing the driver. Calls from one caller to
one actor run in submission order, which keeps every stage's input in stream order.

- **Backpressure**: at most ``max_inflight`` packets are between the source and the last stage; a
  file source then waits (nothing is lost).
- **Snapshots**: every ``snapshot_every`` packets the driver queues a ``snapshot`` call on every actor
  right behind that packet, which gives a consistent cut of the whole chain at that packet without
  stopping the flow. The source packets after the last complete cut are kept for replay.
- **Faults**: when a call fails because an actor died, Ray restarts the actor (``max_restarts``); the
  driver waits for the chain to settle, restores *every* actor from the last complete cut, replays the
  kept packets and drops the outputs it had already passed on. Stages are deterministic, so the run
  ends with the same tokens as an undisturbed one: no window missing, none duplicated.
- ``ray.init()`` with no address starts Ray embedded on this machine, listening on loopback only;
  ``address`` joins a running cluster (KubeRay).

The per-stage semantics are those of :class:`~streamzip.runtime.local.StageRunner`: this module only
moves packets.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import ray
import ray.exceptions

from streamzip._prefetch import Prefetch
from streamzip.errors import BackendError, StreamzipError
from streamzip.packets import Packet, Tokens
from streamzip.runtime.local import (
    Source,
    StageRunner,
    count_output,
    is_stream_output,
    open_source,
    update_from_source,
)
from streamzip.sources._names import stream_name
from streamzip.sources.file import FileSource
from streamzip.stats import InputResult, StageStats

if TYPE_CHECKING:
    from streamzip.pipeline import Pipeline

__all__ = ["RayRuntime", "init_ray", "quiet_ray_logs"]

_DEATH = (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError)


def _check_reachable(address: str, timeout_s: float = 3.0) -> None:
    """Fail fast with a clear error when nothing listens at ``host:port`` (Ray itself retries for
    minutes before giving up)."""
    if address == "auto" or address.startswith("local"):
        return
    hostport = address.split("://", 1)[-1].rsplit("/", 1)[0]
    host, sep, port = hostport.rpartition(":")
    if not sep or not port.isdigit():
        raise BackendError(f"cannot read the Ray address {address!r}", stage="runtime",
                           fix="give host:port (GCS, e.g. head:6379), ray://host:10001, or 'auto'")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s).close()
    except OSError as err:
        raise BackendError(f"no Ray cluster at {address!r} ({err.strerror or err})", stage="runtime",
                           fix="start the cluster (ray start --head) or correct --address; "
                               "leave --address out to run Ray embedded on this machine") from err


class _QuietRay(logging.Filter):
    """Drop Ray's start-up chatter from the user's terminal (it stays in Ray's own log files)."""

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        return not (msg.startswith("Token authentication is enabled") or "Starting execution of Dataset" in msg
                    or "Execution plan of Dataset" in msg or "Progress bars disabled" in msg
                    or "execution finished in" in msg)


def quiet_ray_logs() -> None:
    """Attach :class:`_QuietRay` to the handlers Ray installed on its loggers."""
    for name in ("ray", "ray.data"):
        for handler in logging.getLogger(name).handlers:
            if not any(isinstance(f, _QuietRay) for f in handler.filters):
                handler.addFilter(_QuietRay())


def _init_on_loopback(num_cpus: int | None) -> None:
    """Start Ray embedded with every service bound to 127.0.0.1.

    Ray turns an explicit 127.0.0.1 into the machine's routable address, except where it treats the
    machine as a single-node laptop install; we ask for that behaviour while the node starts (Ray is
    pinned in pyproject.toml, and a test checks the addresses it ends up with)."""
    from ray._private import ray_constants

    saved = ray_constants.ENABLE_RAY_CLUSTER
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING,
                 _node_ip_address="127.0.0.1")
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = saved


def embedded_addresses() -> list[str]:
    """The addresses the running Ray node listens on (GCS and this node's IP), for checks."""
    node = ray._private.worker.global_worker.node
    return [node.gcs_address, node.node_ip_address]


def init_ray(address: str | None = None, *, num_cpus: int | None = None) -> None:
    """Start embedded Ray (loopback only) or join the cluster at ``address``; no-op if running."""
    if ray.is_initialized():
        return
    quiet_ray_logs()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if address:
        _check_reachable(address)
    try:
        if address:
            ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING)
        else:
            _init_on_loopback(num_cpus)
    except (ConnectionError, TimeoutError, RuntimeError, ValueError) as err:
        where = f"at {address!r}" if address else "embedded on this machine"
        fix = ("check the address (ray://host:10001 or host:6379, or 'auto' on a cluster node) and that "
               "the cluster is up" if address else "check free memory and /tmp space, or join a cluster with --address")
        raise BackendError(f"cannot start or reach Ray {where}: {err}", stage="runtime", fix=fix) from err


@ray.remote(max_restarts=-1, max_task_retries=0)
class StageActor:
    """One stage of one stream. ``push`` takes and returns lists of packets (a batch edge)."""

    def __init__(self, spec: dict[str, Any], fns: dict[int, Any], index: int, threads: int = 1) -> None:
        import torch

        # One stage is one share of a core: torch's default of a thread per core in every actor
        # oversubscribes the machine (measured 6x slower merges on 2 busy cores).
        torch.set_num_threads(max(1, threads))
        self.spec, self.fns, self.index = spec, fns, index
        self.runner: StageRunner | None = None
        self.restarted = bool(ray.get_runtime_context().was_current_actor_reconstructed)
        self._metrics: dict[str, Any] | None = None

    def _metric(self) -> dict[str, Any]:
        if self._metrics is None:
            from ray.util import metrics

            keys = ("stage", "stream")
            self._metrics = {
                "packets": metrics.Counter("streamzip_stage_packets", "packets a stage took", tag_keys=keys),
                "tokens_in": metrics.Counter("streamzip_stage_tokens_in", "tokens into a stage", tag_keys=keys),
                "tokens_out": metrics.Counter("streamzip_stage_tokens_out", "tokens out of a stage", tag_keys=keys),
                "frames": metrics.Counter("streamzip_stage_frames", "video frames into a stage", tag_keys=keys),
                "restarts": metrics.Counter("streamzip_stage_restarts", "actor restarts", tag_keys=keys),
            }
        return self._metrics

    def reset(self, stream: str, input_name: str) -> bool:
        """Fresh state for a new stream; returns whether this actor process is a restart."""
        from streamzip.pipeline import Pipeline

        pipe = Pipeline.from_dict(self.spec)
        for i, fn in self.fns.items():
            pipe.steps[i].fn = fn
        stage = pipe.build_step(self.index, stream)
        self.runner = StageRunner([stage], InputResult(input=input_name, stream=stream))
        if self.restarted:
            self._metric()["restarts"].inc(tags={"stage": stage.step_id, "stream": stream})
        return self.restarted

    def push(self, packets: list[Packet]) -> list[Packet]:
        assert self.runner is not None, "reset() first"
        st = self.runner.stats[0]
        before = (st.packets_in, st.tokens_in, st.tokens_out, st.frames_in)
        out = [o for p in packets for o in self.runner.push(p)]
        m, tags = self._metric(), {"stage": st.step_id, "stream": self.runner.result.stream}
        for name, b, a in zip(("packets", "tokens_in", "tokens_out", "frames"), before,
                              (st.packets_in, st.tokens_in, st.tokens_out, st.frames_in)):
            if a > b:
                m[name].inc(a - b, tags=tags)
        return out

    def snapshot(self) -> dict[str, Any]:
        assert self.runner is not None
        return {"stage": self.runner.stages[0].snapshot(), "stats": self.runner.stats[0].to_dict()}

    def restore(self, snap: dict[str, Any] | None, stream: str, input_name: str) -> None:
        self.reset(stream, input_name)
        if snap is not None:
            assert self.runner is not None
            self.runner.stages[0].restore(snap["stage"])
            for k, v in snap["stats"].items():
                setattr(self.runner.stats[0], k, v)
        if self.restarted:  # count this process's restart once, on top of the restored counters
            assert self.runner is not None
            self.runner.stats[0].restarts += 1
            self.restarted = False

    def stats(self) -> dict[str, Any]:
        assert self.runner is not None
        return self.runner.stats[0].to_dict()

    def report(self) -> dict[str, Any]:
        assert self.runner is not None
        return self.runner.stages[0].report()

    def ping(self) -> bool:
        return True


@ray.remote(num_cpus=0, max_restarts=0)
class MeterActor:
    """Fidelity of one stream, fed actor-to-actor (the tokens never pass the driver). Calls carry the
    packet's sequence number, so a replay after a restart is not counted twice."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        from streamzip.operators.fidelity import FidelityMeter

        self.meter = FidelityMeter()
        self.seen: set[tuple[str, int]] = set()

    def originals(self, seq: int, key: str, packets: list[Packet], modalities: tuple[str, ...]) -> None:
        if (key, seq) in self.seen:
            return
        self.seen.add((key, seq))
        for p in packets:
            if isinstance(p, Tokens) and p.modality in modalities and p.meta.get("kind", "tokens") == "tokens":
                self.meter.add_originals(p)

    def outputs(self, seq: int, packets: list[Packet]) -> None:
        if ("out", seq) in self.seen:
            return
        self.seen.add(("out", seq))
        for p in packets:
            if is_stream_output(p):
                self.meter.add_outputs(p)  # type: ignore[arg-type]

    def result(self) -> float | None:
        return self.meter.result()["fidelity"]  # type: ignore[no-any-return]


_DRIVER_METRICS: dict[str, Any] = {}


def _driver_metrics() -> dict[str, Any]:
    """Gauges and counters the driver exports through Ray's metrics (Prometheus on a cluster)."""
    if not _DRIVER_METRICS:
        from ray.util import metrics

        _DRIVER_METRICS["queue_depth"] = metrics.Gauge(
            "streamzip_queue_depth", "packets between a stream's source and its last stage", tag_keys=("stream",))
        _DRIVER_METRICS["recoveries"] = metrics.Counter(
            "streamzip_recoveries", "chain restores after a stage actor died", tag_keys=("stream",))
        _DRIVER_METRICS["drops"] = metrics.Counter(
            "streamzip_source_drops", "source packets dropped under load (live sources)", tag_keys=("stream",))
    return _DRIVER_METRICS


class RayRuntime:
    """Runs each stage of a stream as a Ray actor.

    Args:
        address: a Ray cluster to join; None starts Ray embedded on this machine.
        progress: called after each source packet with the input's :class:`InputResult` so far.
        max_inflight: source packets allowed between the source and the last stage (backpressure).
        live_inflight: the same bound for live sources, kept short so that latency stays bounded.
        snapshot_every: packets between consistent snapshots of the chain (the replay window).
        restart_timeout_s: how long to wait for a dead actor to come back before giving up.
        on_packet: test hook, called with (sequence number, actors) after each packet is submitted.
    """

    name = "ray"

    def __init__(self, *, address: str | None = None, progress: Callable[[InputResult], None] | None = None,
                 max_inflight: int = 16, live_inflight: int = 2, snapshot_every: int = 8,
                 restart_timeout_s: float = 60.0,
                 prefetch_depth: int = 4, num_cpus: int | None = None,
                 on_packet: Callable[[int, list[Any]], None] | None = None) -> None:
        if max_inflight < 1 or snapshot_every < 1:
            raise ValueError("max_inflight and snapshot_every must be >= 1")
        self.address, self.progress = address, progress
        self.max_inflight, self.live_inflight, self.snapshot_every = max_inflight, live_inflight, snapshot_every
        self.restart_timeout_s, self.prefetch_depth, self.num_cpus = restart_timeout_s, prefetch_depth, num_cpus
        self.on_packet = on_packet
        self.results: list[InputResult] = []
        self._actors: list[Any] = []
        self._meter: Any = None
        self._spec: dict[str, Any] | None = None

    # -- actors -------------------------------------------------------------------------------
    def _actors_for(self, pipeline: Pipeline) -> list[Any]:
        init_ray(self.address, num_cpus=self.num_cpus)
        spec = pipeline.to_dict()
        if self._actors and spec == self._spec:
            return self._actors
        self.shutdown()
        fns = {i: s.fn for i, s in enumerate(pipeline.steps) if s.fn is not None}
        resources = pipeline.resources()
        scale = self._cpu_scale(sum(r.get("num_cpus", 0.25) for r in resources.values()))
        actors = []
        for i, step in enumerate(pipeline.steps):
            res = resources[step.id]
            opts: dict[str, Any] = {"num_cpus": max(0.001, round(res.get("num_cpus", 0.25) * scale, 4)), "name": None}
            if res.get("num_gpus"):
                opts["num_gpus"] = res["num_gpus"]
            if res.get("memory_mb"):
                opts["memory"] = int(res["memory_mb"] * 2**20)
            opts.pop("name")
            threads = max(1, int(res.get("num_cpus", 0.25)))
            actors.append(StageActor.options(**opts).remote(spec, fns, i, threads))
        self._actors, self._spec = actors, spec
        # One fidelity meter per runtime, reset per input (an actor start costs a second or two).
        self._meter = MeterActor.remote() if pipeline.keep_assignment else None
        return actors

    def _cpu_scale(self, wanted: float) -> float:
        """On embedded Ray, shrink the stages' CPU requests to fit this machine: a CPU request is a
        scheduling share, and a pipeline asking 2.5 CPUs must still run on 2 cores. On a cluster the
        requests stand (the autoscaler adds nodes)."""
        if self.address:
            return 1.0
        # What is free now (other streams' chains may hold some), with room for the meter actor.
        have = max(0.02, float(ray.available_resources().get("CPU", 0.0)) - 0.05)
        return min(1.0, have / wanted) if wanted > 0 else 1.0

    def shutdown(self) -> None:
        """Kill this runtime's actors (Ray itself keeps running)."""
        for a in [*self._actors, *([self._meter] if self._meter is not None else [])]:
            try:
                ray.kill(a, no_restart=True)
            except Exception:  # noqa: BLE001 - already gone
                pass
        self._actors, self._meter, self._spec = [], None, None

    def __del__(self) -> None:  # pragma: no cover - best effort at interpreter exit
        try:
            if ray.is_initialized():
                self.shutdown()
        except Exception:  # noqa: BLE001
            pass

    # -- running ------------------------------------------------------------------------------
    def run(self, pipeline: Pipeline, inputs: Sequence[str]) -> Iterator[Packet]:
        """Yield the final packets of every input in turn; raise on the first bad input."""
        pipeline.validate()
        for path in inputs:
            result = InputResult(input=FileSource(path).name, stream=stream_name(path))
            self.results.append(result)
            yield from self.run_input(pipeline, path, result)

    def run_input(self, pipeline: Pipeline, path: str, result: InputResult) -> Iterator[Packet]:
        """Decode the file (or ``lavfi:`` graph) at ``path`` and run the pipeline on it."""
        yield from self.run_source(pipeline, open_source(pipeline, path, result), result)

    def run_source(self, pipeline: Pipeline, source: Source, result: InputResult, *,
                   live: bool = False) -> Iterator[Packet]:
        """Run the pipeline on any packet source. ``live``: drop the oldest queued media packets
        (counted in ``result.drops``) rather than make the source wait."""
        actors = self._actors_for(pipeline)
        chain = _Chain(self, actors, result, pipeline)
        t_start = time.perf_counter()

        def on_drop(_: Packet) -> None:
            _driver_metrics()["drops"].inc(tags={"stream": result.stream})

        feed = Prefetch(lambda: source, depth=self.prefetch_depth, drop_oldest=live, on_drop=on_drop)
        # Packets between actors are never dropped: a live source keeps that queue short, so that
        # the backlog builds up in the prefetch queue, where the oldest media is dropped.
        limit = min(self.max_inflight, self.live_inflight) if live else self.max_inflight
        try:
            chain.reset()
            for packet in feed:
                chain.submit(packet)
                if self.on_packet is not None:
                    self.on_packet(chain.next_seq - 1, actors)
                while chain.inflight_count() >= limit:
                    yield from chain.complete_oldest()
                update_from_source(result, source, feed, t_start)
                if self.progress is not None:
                    self.progress(result)
            while chain.inflight_count():
                yield from chain.complete_oldest()
            chain.collect_stats(pipeline)
        except StreamzipError as err:
            err.with_context(input=result.input)
            raise
        finally:
            feed.close()
            chain.close()
            update_from_source(result, source, feed, t_start)
            result.audio_s = source.stats.audio_samples / pipeline.decode.sample_rate_hz


class _Chain:
    """The packets of one stream in flight through the actors, with snapshots and replay."""

    def __init__(self, rt: RayRuntime, actors: list[Any], result: InputResult, pipeline: Pipeline) -> None:
        from streamzip.registry import get as get_stage

        self.rt, self.actors, self.result = rt, actors, result
        self.produces = [tuple(get_stage(step.op).cls.produces) for step in pipeline.steps]
        self.meter = rt._meter
        self.next_seq = 0
        self.emitted = -1  # highest sequence number whose outputs were passed on
        self.inflight: deque[tuple[int, Any]] = deque()
        self.replay: deque[tuple[int, Any]] = deque()  # source packets after the committed cut
        self.cuts: deque[tuple[int, list[Any]]] = deque()  # pending snapshot cuts (seq, refs)
        self.committed: tuple[int, list[Any]] | None = None

    def reset(self) -> None:
        refs = [a.reset.remote(self.result.stream, self.result.input) for a in self.actors]
        if self.meter is not None:
            refs.append(self.meter.reset.remote())
        try:
            ray.get(refs, timeout=self.rt.restart_timeout_s * 2)
        except ray.exceptions.GetTimeoutError as err:
            have = ray.available_resources()
            raise BackendError(
                f"the stage actors could not start within {self.rt.restart_timeout_s * 2:.0f} s "
                f"(Ray has {have.get('CPU', 0):g} CPUs and {have.get('GPU', 0):g} GPUs free)",
                input=self.result.input, stage="runtime",
                fix="lower the steps' `resources` in the pipeline, or join a larger cluster with --address") from err

    def inflight_count(self) -> int:
        return len(self.inflight)

    def _send(self, seq: int, ref: Any) -> None:
        r = ref
        for i, a in enumerate(self.actors):
            r = a.push.remote(r)
            if self.meter is not None and self.produces[i]:
                self.meter.originals.remote(seq, str(i), r, self.produces[i])
        if self.meter is not None:
            self.meter.outputs.remote(seq, r)
        self.inflight.append((seq, r))
        depth = len(self.inflight)
        self.result.max_queue_depth = max(self.result.max_queue_depth, depth)
        _driver_metrics()["queue_depth"].set(depth, tags={"stream": self.result.stream})

    def submit(self, packet: Packet) -> None:
        seq = self.next_seq
        self.next_seq += 1
        ref = ray.put([packet])
        self.replay.append((seq, ref))
        self._send(seq, ref)
        if (seq + 1) % self.rt.snapshot_every == 0:
            self.cuts.append((seq, [a.snapshot.remote() for a in self.actors]))

    def complete_oldest(self) -> Iterator[Packet]:
        seq, ref = self.inflight[0]
        try:
            outs = ray.get(ref)
        except _DEATH:
            self._recover()
            return
        except ray.exceptions.RayTaskError as err:
            cause = err.cause if isinstance(getattr(err, "cause", None), BaseException) else None
            if isinstance(cause, _DEATH):
                self._recover()
                return
            if isinstance(cause, StreamzipError):
                raise cause from None
            raise
        self.inflight.popleft()
        if seq > self.emitted:
            self.emitted = seq
            for p in outs:
                count_output(self.result, p)
                yield p
        self._commit_ready_cuts()

    def _commit_ready_cuts(self) -> None:
        while self.cuts and self.cuts[0][0] <= self.emitted:
            seq, refs = self.cuts[0]
            ready, _ = ray.wait(refs, num_returns=len(refs), timeout=0)
            if len(ready) < len(refs):
                return
            try:
                ray.get(refs)
            except _DEATH:
                self.cuts.popleft()  # a stage died taking it: the older cut stays
                continue
            self.cuts.popleft()
            self.committed = (seq, refs)
            while self.replay and self.replay[0][0] <= seq:
                self.replay.popleft()

    def _recover(self) -> None:
        """An actor died: wait for the restart, restore every actor from the committed cut, replay."""
        self.result.restarts += 1
        _driver_metrics()["recoveries"].inc(tags={"stream": self.result.stream})
        pending = [r for _, r in self.inflight] + [r for _, refs in self.cuts for r in refs]
        if pending:
            ray.wait(pending, num_returns=len(pending), timeout=self.rt.restart_timeout_s)
        deadline = time.monotonic() + self.rt.restart_timeout_s
        for a in self.actors:
            while True:
                try:
                    ray.get(a.ping.remote(), timeout=max(1.0, deadline - time.monotonic()))
                    break
                except (*_DEATH, ray.exceptions.GetTimeoutError) as err:
                    if time.monotonic() > deadline:
                        raise BackendError(f"a stage actor did not come back after a crash ({err})",
                                           input=self.result.input, stage="runtime",
                                           fix="check the Ray logs for why the worker keeps dying") from err
                    time.sleep(0.2)
        snap_refs = self.committed[1] if self.committed is not None else [None] * len(self.actors)
        ray.get([a.restore.remote(s, self.result.stream, self.result.input)
                 for a, s in zip(self.actors, snap_refs)])
        self.inflight.clear()
        self.cuts.clear()
        for seq, ref in list(self.replay):
            self._send(seq, ref)
            if (seq + 1) % self.rt.snapshot_every == 0:
                self.cuts.append((seq, [a.snapshot.remote() for a in self.actors]))

    def collect_stats(self, pipeline: Pipeline) -> None:
        stats = ray.get([a.stats.remote() for a in self.actors])
        self.result.stages = [StageStats(**s) for s in stats]
        self.result.tokens_in = sum(s.tokens_out for s, p in zip(self.result.stages, self.produces) if p)
        reports = ray.get([a.report.remote() for a in self.actors])
        self.result.reports = {st.step_id: r for st, r in zip(self.result.stages, reports) if r}
        if self.meter is not None:
            try:
                self.result.fidelity = ray.get(self.meter.result.remote())
            except ray.exceptions.RayError:
                self.result.fidelity = None  # the meter is best effort: it never fails a run

    def close(self) -> None:
        self.meter = None  # the runtime owns it

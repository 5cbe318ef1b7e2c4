"""The Ray runtime: the stages of a stream run as Ray actors; the only module that imports Ray.

The driver decodes (in a prefetch thread) and sends the source packets down the chain of actors in
batches (every packet the source has ready, up to ``batch_packets``), one call per actor, each call
taking the previous call's result by reference, so packets flow actor to actor through the object
store without passing the driver. Calls from one caller to one actor run in submission order, which
keeps every stage's input in stream order.

- **Fusion**: consecutive light steps of a stream share one actor and pass packets in process
  (:func:`stage_groups`), as Ray Data fuses consecutive map operators: an actor edge costs a few
  milliseconds per call on a small machine, more than a light stage's work on a packet. Encoders, and
  steps that ask for a GPU, run alone; ``fuse=False`` gives every step its own actor.
- **Fidelity**: the chain's last actor holds the stream's fidelity meter; its call for a batch also
  takes the encoders' outputs for that batch by reference (Ray hands them over from the object store),
  so the tokens never pass the driver, and the meter is part of that actor's snapshot (a replay counts
  nothing twice).
- **Actors**: the step groups that are not encoders get one actor per stream (a stream's actors are kept
  for its runtime's next stream). **Encoders** (registry kind ``encoder``) run on a pool of
  ``encoder_pool`` actors per encoder step, shared by every stream of the run: every runtime of this
  process running the same encoder step shares its pool (two cameras of ``streamzip live``, streams run
  from threads, benchmarks), so a model is loaded once per pool actor, not once per stream. A stream
  is pinned to one pool actor (the one serving the fewest streams when it starts), so its packets
  stay in order. A pool actor holds one operator and one *state per stream*: when consecutive calls
  come from different streams it parks the current stream's ``snapshot()`` and ``restore()``s the
  next one's, so each stream sees exactly the operator a per-stream actor would run (token ids, the
  fbank encoder's carried samples…), and encoders need no change: sharing relies on an encoder's
  ``state_dict`` being complete, which fault recovery already requires (``encoder_pool=0`` gives
  every stream its own encoder actor instead).
- **Big packets skip the actors that do not take them**: a packet holding more than
  :data:`STORE_BYTES` of tensors (a batch of frames, a batch of video tokens) travels as its own
  object in Ray's store, and the batch carries a :class:`_Stored` handle with its type and modality.
  An actor fetches a handle only when one of its stages may take such a packet (the stages' declared
  ``accepts`` and ``modalities``) and passes the others on as handles, so the audio actors never
  deserialise and store again the video tokens that pass them (measured: that pass-through was about
  a third of the CPU of a 10 s file on 2 cores). Whatever is still a handle after the last actor the
  driver fetches. Each actor still sees every packet in stream order; only the bytes skip it.
- **Backpressure**: at most ``max_inflight`` batches are between the source and the last stage; a
  file source then waits (nothing is lost).
- **Snapshots**: every ``snapshot_every`` batches the driver queues a ``snapshot`` call on every actor
  of the stream's chain right behind that batch (on a pool actor, for that stream's state), which
  gives a consistent cut of the whole chain at that batch without stopping the flow. The source
  packets after the last complete cut are kept for replay.
- **Faults**: when a call fails because an actor died, Ray restarts the actor (``max_restarts``); the
  driver waits for the chain to settle, restores *every* actor from the last complete cut, replays the
  kept packets and drops the outputs it had already passed on. A restarted pool actor has lost the
  state of every stream it served: each of those streams finds out at its next call (the actor
  answers :class:`StreamStateLost`) and recovers the same way, independently. Stages are
  deterministic and restore exactly, so the run ends with the same tokens as an undisturbed one: no
  window missing, none duplicated (the webrtc VAD included: its decisions depend only on the last
  few seconds of audio, which its snapshot holds; ``docs/reliability.md``).
- ``ray.init()`` with no address starts Ray embedded on this machine, listening on loopback only;
  ``address`` joins a running cluster (KubeRay).

The per-stage semantics are those of :class:`~streamzip.runtime.local.StageRunner`: this module only
moves packets.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import socket
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import ray
import ray.exceptions
import torch

from streamzip._prefetch import Prefetch
from streamzip.errors import BackendError, StreamzipError
from streamzip.packets import AudioChunk, End, Gap, Packet, Tokens, VideoFrames, wire
from streamzip.runtime.groups import group_resources, stage_groups
from streamzip.runtime.local import (
    Source,
    StageRunner,
    count_output,
    is_stream_output,
    open_source,
    set_query_on,
    update_from_source,
)
from streamzip.sources._names import stream_name
from streamzip.sources.file import FileSource
from streamzip.stats import InputResult, StageStats

if TYPE_CHECKING:
    from streamzip.pipeline import Pipeline

__all__ = ["RayRuntime", "StreamStateLost", "init_ray", "quiet_ray_logs", "stage_groups"]

_DEATH = (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError)
#: a packet whose tensors hold at least this many bytes leaves a batch for its own object in Ray's
#: store while it passes actors that do not take it (smaller ones ride inline: a handle costs more).
STORE_BYTES = 256 * 1024
#: packets a live source may queue ahead of the chain before the oldest is dropped.
LIVE_PREFETCH = 4


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


class StreamStateLost(RuntimeError):
    """A stage actor holds no state for the stream a call names: its process restarted (a pool actor
    restarted for another stream's sake), so the stream must restore its chain from its last cut."""


# A stored packet put by an actor that died since is gone with it: the chain replays, as for the death.
_GONE = (*_DEATH, StreamStateLost, ray.exceptions.ObjectLostError)


def _lost(err: BaseException) -> bool:
    """Whether a failed call means an actor lost the stream's state (it died, or it restarted)."""
    if isinstance(err, _GONE):
        return True
    return isinstance(err, ray.exceptions.RayTaskError) and isinstance(getattr(err, "cause", None), _GONE)


@dataclass(frozen=True)
class _Stored:
    """A big packet left in Ray's object store (see the module notes): its header, and its object."""

    kind: type
    modality: str | None
    ref: Any


def _store(packet: Any) -> Any:
    """``packet`` as a :class:`_Stored` handle when its tensors are big, else as it is."""
    if not isinstance(packet, (VideoFrames, AudioChunk, Tokens)):
        return packet
    size = sum(v.nbytes for v in vars(packet).values() if isinstance(v, torch.Tensor))
    if size < STORE_BYTES:
        return packet
    return _Stored(type(packet), packet.modality, ray.put(packet))


def _fetch(items: Sequence[Any], wanted: Callable[[_Stored], bool] = lambda _: True) -> list[Any]:
    """``items`` with the handles that ``wanted`` picks replaced by their packets (one ``ray.get``)."""
    picks = [i for i, p in enumerate(items) if isinstance(p, _Stored) and wanted(p)]
    if not picks:
        return list(items)
    out = list(items)
    for i, packet in zip(picks, ray.get([items[i].ref for i in picks])):
        out[i] = packet
    return out


_Rules = list[tuple[tuple[type, ...], "tuple[str, ...] | None"]]


def _take_rules(classes: Sequence[type]) -> _Rules:
    """What stages of these operator classes declare they take: ``accepts`` and ``modalities`` (an
    operator's own ``takes`` may only narrow those, see :meth:`Operator.takes`)."""
    return [(tuple(c.accepts), c.modalities) for c in classes]  # type: ignore[attr-defined]


def _may_take(rules: _Rules, kind: type, modality: str | None) -> bool:
    """Whether a stage with ``rules`` may take a packet of type ``kind`` and ``modality`` (None: any)."""
    return any(issubclass(kind, accepts) and (mods is None or modality is None or modality in mods)
               for accepts, mods in rules)


@ray.remote(max_restarts=-1, max_task_retries=0)
class StageActor:
    """Consecutive stages of one stream (a *group*, see :func:`stage_groups`) or, ``shared``, an
    encoder serving many streams (a pool actor).

    Every call names the stream by ``key``. ``push`` takes and returns lists of packets (a batch
    edge) and runs them through the group's stages in process, as the local runtime does. A shared
    actor holds one operator (one model in memory) and a state per stream: the state of the stream it
    served last is in the operator, the others are parked as snapshots and swapped in when their
    stream calls (``Operator.snapshot``/``restore``, a few small tensors for encoders).
    """

    def __init__(self, spec: dict[str, Any], fns: dict[int, Any], indices: list[int], threads: int = 1,
                 shared: bool = False) -> None:
        import torch

        # One stage is one share of a core: torch's default of a thread per core in every actor
        # oversubscribes the machine (measured 6x slower merges on 2 busy cores).
        torch.set_num_threads(max(1, threads))
        if shared and len(indices) != 1:
            raise ValueError("a shared (pool) actor runs exactly one stage")
        self.spec, self.fns, self.indices, self.shared = spec, fns, list(indices), shared
        self.stages: list[Any] = []  # the Operators, in chain order
        self.fresh: dict[str, Any] | None = None  # shared: the snapshot of a new stream's state
        self.loaded: str | None = None  # the stream whose state the operator holds
        self.parked: dict[str, dict[str, Any]] = {}  # shared: the other streams' snapshots
        self.runners: dict[str, StageRunner] = {}  # per stream: its counters (and the operators)
        self.restarted = bool(ray.get_runtime_context().was_current_actor_reconstructed)
        self.counted: set[str] = set()  # streams whose counters include this process's restart
        self.ends: set[str] = set()  # streams whose chain this actor ends
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

    def _build(self, stream: str) -> list[Any]:
        from streamzip.pipeline import Pipeline

        pipe = Pipeline.from_dict(self.spec)
        for i, fn in self.fns.items():
            pipe.steps[i].fn = fn
        return [pipe.build_step(i, stream) for i in self.indices]

    def _lost(self, key: str) -> StreamStateLost:
        ids = ", ".join(str(i) for i in self.indices)
        return StreamStateLost(f"stage(s) {ids} hold no state for stream {key!r} (their actor restarted)")

    def reset(self, key: str, stream: str, input_name: str, meter: bool = False, last: bool = False) -> bool:
        """Fresh state for a new stream; returns whether this actor process is a restart. ``meter``:
        this actor measures the stream's fidelity (see :meth:`push`). ``last``: it ends the chain, so
        what it returns goes to the driver whole (no :class:`_Stored` handles)."""
        if self.shared:
            if not self.stages:
                self.stages = self._build("")
                self.fresh = self.stages[0].snapshot()
            if self.loaded == key:
                self.loaded = None
            self.parked[key] = copy.deepcopy(self.fresh)  # type: ignore[arg-type]
        else:  # one stream at a time: fresh operators, as the local runtime builds
            self.stages, self.loaded = self._build(stream), key
            self.runners.clear()
        fidelity = None
        if meter:
            from streamzip.operators.fidelity import FidelityMeter

            fidelity = FidelityMeter()
        self.runners[key] = StageRunner(self.stages, InputResult(input=input_name, stream=stream), meter=fidelity)
        if last:
            self.ends.add(key)
        else:
            self.ends.discard(key)
        return self.restarted

    def _select(self, key: str) -> StageRunner:
        """The stream's runner, with its state in the operator."""
        runner = self.runners.get(key)
        if runner is None:
            raise self._lost(key)
        if self.loaded != key:  # only a shared actor serves several streams
            stage = self.stages[0]
            if self.loaded is not None and self.loaded in self.runners:
                self.parked[self.loaded] = copy.deepcopy(stage.snapshot())
            stage.restore(self.parked.pop(key))
            stage.stream = runner.result.stream
            self.loaded = key
        return runner

    def push(self, key: str, packets: list[Packet], modalities: Sequence[tuple[str, ...]] = (),
             *originals: list[Packet]) -> list[Packet]:
        """Run a batch through the group's stages. The chain's last actor also feeds the stream's
        fidelity meter: the outputs of the encoders upstream (``originals``, one list per entry of
        ``modalities``, handed over by Ray from the object store), its own stages' fresh tokens, and
        the chain's final packets: the same meter, fed the same way, as the local runtime's."""
        runner = self._select(key)
        fields = ("packets_in", "tokens_in", "tokens_out", "frames_in")
        before = [[getattr(st, f) for f in fields] for st in runner.stats]
        meter = runner.meter
        if meter is not None:
            for batch, mods in zip(originals, modalities):
                def fresh(h: _Stored, mods: tuple[str, ...] = mods) -> bool:
                    return issubclass(h.kind, Tokens) and h.modality in mods

                for p in _fetch(batch, fresh):
                    if isinstance(p, Tokens) and p.modality in mods and p.meta.get("kind", "tokens") == "tokens":
                        meter.add_originals(p)
        last = key in self.ends
        # A stored packet none of the stages takes would pass them unchanged: it stays in the store.
        rules = _take_rules([type(st) for st in self.stages])
        packets = _fetch(packets) if last else _fetch(packets, lambda h: _may_take(rules, h.kind, h.modality))
        out = [o for p in packets for o in ([p] if isinstance(p, _Stored) else runner.push(p))]
        if not last:
            out = [_store(o) for o in out]
        if meter is not None:
            for o in out:
                if is_stream_output(o):
                    meter.add_outputs(o)  # type: ignore[arg-type]
        m = self._metric()
        for st, b in zip(runner.stats, before):
            tags = {"stage": st.step_id, "stream": runner.result.stream}
            for name, f, v in zip(("packets", "tokens_in", "tokens_out", "frames"), fields, b):
                if getattr(st, f) > v:
                    m[name].inc(getattr(st, f) - v, tags=tags)
        return out

    def snapshot(self, key: str) -> dict[str, Any]:
        runner = self.runners.get(key)
        if runner is None:
            raise self._lost(key)
        states = [s.snapshot() for s in self.stages] if self.loaded == key else [self.parked[key]]
        # The meter goes with the cut (Ray serialises the reply now), so a replay counts nothing twice.
        return {"stages": wire(states), "stats": [st.to_dict() for st in runner.stats], "meter": runner.meter}

    def restore(self, key: str, snap: dict[str, Any] | None, stream: str, input_name: str,
                meter: bool = False, last: bool = False) -> None:
        self.reset(key, stream, input_name, meter, last)
        runner = self.runners[key]
        if snap is not None:
            runner.meter = snap["meter"]
            if self.shared:
                self.parked[key] = snap["stages"][0]  # swapped in at the stream's next call
            else:
                for stage, state in zip(self.stages, snap["stages"]):
                    stage.restore(state)
            for st, saved in zip(runner.stats, snap["stats"]):
                for k, v in saved.items():
                    setattr(st, k, v)
        if self.restarted and key not in self.counted:
            # Count this process's restart once per stream, on top of the restored counters.
            self.counted.add(key)
            for st in runner.stats:
                st.restarts += 1
                self._metric()["restarts"].inc(tags={"stage": st.step_id, "stream": stream})

    def summary(self, key: str) -> dict[str, Any]:
        """The stream's counters and reports of the group's stages, after its last packet; then the
        actor forgets the stream (:meth:`release`)."""
        runner = self._select(key)
        out = {"stats": [st.to_dict() for st in runner.stats], "reports": [s.report() for s in self.stages],
               "fidelity": runner.meter.result()["fidelity"] if runner.meter is not None else None}
        self.release(key)
        return out

    def set_query(self, key: str, text: str | None) -> list[str]:
        """Query-guided compression: the stream's stages weight their next packets by ``text``."""
        self._select(key)
        return set_query_on(self.stages, text)

    def release(self, key: str) -> None:
        """Forget a finished stream (a pool actor outlives many streams)."""
        self.runners.pop(key, None)
        self.parked.pop(key, None)
        if self.loaded == key:
            self.loaded = None

    def streams(self) -> list[str]:
        """The streams this actor holds a state for (a pool actor: every stream pinned to it)."""
        return list(self.runners)

    def ping(self) -> bool:
        return True


class _EncoderPool:
    """The actors of one encoder step, shared by the streams of every runtime of this process that
    runs the same step (see :func:`_acquire_pool`). Streams are pinned to the least busy actor."""

    def __init__(self, actors: list[Any]) -> None:
        self.actors = actors
        self.streams = [0] * len(actors)  # streams pinned to each actor now
        self.users = 0  # runtimes holding the pool
        self.lock = threading.Lock()

    def assign(self) -> Any:
        with self.lock:
            i = min(range(len(self.actors)), key=self.streams.__getitem__)
            self.streams[i] += 1
            return self.actors[i]

    def unassign(self, actor: Any) -> None:
        with self.lock:
            for i, a in enumerate(self.actors):
                if a is actor:
                    self.streams[i] -= 1
                    return


_POOLS: dict[tuple[Any, ...], _EncoderPool] = {}
_POOLS_LOCK = threading.Lock()


def _acquire_pool(key: tuple[Any, ...], make: Callable[[], list[Any]]) -> _EncoderPool:
    """The pool for ``key`` (created with ``make`` the first time), held until :func:`_release_pool`."""
    with _POOLS_LOCK:
        pool = _POOLS.get(key)
        if pool is None:
            pool = _POOLS[key] = _EncoderPool(make())
        pool.users += 1
        return pool


def _release_pool(key: tuple[Any, ...]) -> None:
    with _POOLS_LOCK:
        pool = _POOLS.get(key)
        if pool is None:
            return
        pool.users -= 1
        if pool.users > 0:
            return
        del _POOLS[key]
    _kill(pool.actors)


def _kill(actors: Sequence[Any]) -> None:
    for a in actors:
        try:
            ray.kill(a, no_restart=True)
        except Exception:  # noqa: BLE001 - already gone, or Ray already shut down
            pass


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



class _StreamActors:
    """The actors one stream has to itself (every group of steps but the pooled encoders), and its
    fidelity meter."""

    def __init__(self, actors: dict[int, Any], generation: int) -> None:
        self.actors, self.generation = actors, generation

    def all(self) -> list[Any]:
        return list(self.actors.values())


class RayRuntime:
    """Runs the stages of a stream as Ray actors (light ones fused); encoders on a pool shared by streams.

    Several streams may run at once, each :meth:`run_source` (or :meth:`run_input`) call from its own
    thread: each stream gets its own actors for the steps that are not encoders (kept for the
    runtime's next stream) and is pinned to one actor of each encoder step's pool.

    Args:
        address: a Ray cluster to join; None starts Ray embedded on this machine.
        progress: called after each batch of source packets with the input's :class:`InputResult` so far.
        max_inflight: batches of source packets allowed between the source and the last stage
            (backpressure). Small on purpose: while the chain is busy, the source's packets queue up
            in the prefetch queue (``prefetch_depth``) and go on as one batch, fewer actor calls.
        live_inflight: the same bound for live sources, kept short so that latency stays bounded.
        snapshot_every: batches between consistent snapshots of the chain (the replay window).
        restart_timeout_s: how long to wait for a dead actor to come back before giving up.
        encoder_pool: actors per encoder step, shared by every stream of every runtime of this process
            that runs the same step. 1 (the default): one copy of the encoder (one model in memory)
            serves every stream, which is what a CPU patch encoder or one GPU wants; raise it when the
            encoder is the bottleneck (e.g. one per GPU, or one per few busy cameras). 0: no pool, an
            encoder actor per stream like the other steps (for an encoder whose ``state_dict`` is not
            complete, which sharing needs as fault recovery does).
        prefetch_depth: source packets decoded ahead of the chain (a live source: at most
            :data:`LIVE_PREFETCH`, then the oldest media packet is dropped).
        batch_packets: source packets sent down the chain in one call at most: a call takes every
            packet the source has ready, up to this many (a live source's packets go on as they come).
        fuse: run consecutive light steps of a stream in one actor (:func:`stage_groups`); False:
            an actor per step.
        on_packet: test hook, called with (sequence number, the stream's actor per step) after each
            batch is submitted.
    """

    name = "ray"

    def __init__(self, *, address: str | None = None, progress: Callable[[InputResult], None] | None = None,
                 max_inflight: int = 4, live_inflight: int = 2, snapshot_every: int = 8,
                 restart_timeout_s: float = 60.0, encoder_pool: int = 1,
                 prefetch_depth: int = 16, num_cpus: int | None = None, fuse: bool = True,
                 batch_packets: int = 8,
                 on_packet: Callable[[int, list[Any]], None] | None = None) -> None:
        if max_inflight < 1 or snapshot_every < 1 or batch_packets < 1:
            raise ValueError("max_inflight, snapshot_every and batch_packets must be >= 1")
        if isinstance(encoder_pool, bool) or not isinstance(encoder_pool, int) or encoder_pool < 0:
            raise ValueError(f"encoder_pool must be an int >= 0 (actors per encoder step; 0: one per stream), "
                             f"got {encoder_pool!r}")
        self.address, self.progress = address, progress
        self.max_inflight, self.live_inflight, self.snapshot_every = max_inflight, live_inflight, snapshot_every
        self.restart_timeout_s, self.prefetch_depth, self.num_cpus = restart_timeout_s, prefetch_depth, num_cpus
        self.encoder_pool, self.fuse, self.batch_packets = encoder_pool, fuse, batch_packets
        self.on_packet = on_packet
        self.results: list[InputResult] = []
        self._lock = threading.Lock()
        self._spec: dict[str, Any] | None = None
        self._fns: dict[int, Any] = {}
        self._res: list[dict[str, float]] = []  # per group: what its actor asks of Ray
        self._groups: list[list[int]] = []  # the steps each actor of a stream runs
        self._keep_assignment = True
        self._pools: dict[int, tuple[tuple[Any, ...], _EncoderPool]] = {}  # encoder group -> (key, pool)
        self._free: list[_StreamActors] = []  # idle per-stream actors, kept for the next stream
        self._made: list[_StreamActors] = []  # every set made for the current pipeline
        self._busy = 0  # streams running now
        self._running: set[_Chain] = set()  # the chains of the streams running now (set_query)
        self._generation = 0  # bumped at shutdown: sets of an older generation are not reused
        self._first_scale = 1.0

    # -- actors -------------------------------------------------------------------------------
    def _prepare(self, pipeline: Pipeline) -> None:
        """Actor groups and options for the pipeline's steps and its encoder pools (first use, or a
        new pipeline)."""
        from streamzip.registry import get as get_stage

        init_ray(self.address, num_cpus=self.num_cpus)
        spec = pipeline.to_dict()
        with self._lock:
            if spec == self._spec:
                return
            if self._busy:
                raise BackendError("this Ray runtime is running streams of another pipeline", stage="runtime",
                                   fix="use one RayRuntime per pipeline when running pipelines at once")
            self._shutdown_locked()
            resources = pipeline.resources()
            self._groups = stage_groups(pipeline, pooled=self.encoder_pool > 0, fuse=self.fuse)
            self._res = [group_resources([resources[pipeline.steps[i].id] for i in g]) for g in self._groups]
            self._fns = {i: s.fn for i, s in enumerate(pipeline.steps) if s.fn is not None}
            self._keep_assignment = pipeline.keep_assignment
            pooled = [g for g, steps in enumerate(self._groups) if self.encoder_pool
                      and get_stage(pipeline.steps[steps[0]].op).kind == "encoder"]
            cpus = [r["num_cpus"] for r in self._res]
            self._first_scale = self._cpu_scale(sum(cpus[g] for g in pooled) * self.encoder_pool
                                                + self._stream_cpus(pooled))
            session = ray.get_runtime_context().get_job_id()
            for g in pooled:
                (i,) = self._groups[g]
                step = pipeline.steps[i]
                # Runtimes share a pool when its actors would build the same operator.
                key = (session, self.address, json.dumps(step.to_dict(), sort_keys=True, default=repr),
                       spec.get("query"), id(step.fn) if step.fn is not None else None, self.encoder_pool)
                opts, threads = self._options(g, self._first_scale)

                def make(i: int = i, opts: dict[str, Any] = opts, threads: int = threads) -> list[Any]:
                    return [StageActor.options(**opts).remote(spec, self._fns, [i], threads, True)  # type: ignore[attr-defined]
                            for _ in range(self.encoder_pool)]

                self._pools[g] = (key, _acquire_pool(key, make))
            self._spec = spec

    def _stream_cpus(self, pooled: Sequence[int] | None = None) -> float:
        skip = set(self._pools) if pooled is None else set(pooled)
        return sum(r["num_cpus"] for g, r in enumerate(self._res) if g not in skip)

    def _options(self, group: int, scale: float) -> tuple[dict[str, Any], int]:
        """Ray options of the actors of step group ``group``, and the torch threads they may use."""
        res = self._res[group]
        opts: dict[str, Any] = {"num_cpus": max(0.001, round(res["num_cpus"] * scale, 4))}
        if res.get("num_gpus"):
            opts["num_gpus"] = res["num_gpus"]
        if res.get("memory_mb"):
            opts["memory"] = int(res["memory_mb"] * 2**20)
        return opts, max(1, int(res["num_cpus"]))

    def _checkout(self) -> tuple[_StreamActors, dict[int, _EncoderPool]]:
        """Actors for one stream (reused or new) and the encoder pools, for :meth:`run_source`."""
        with self._lock:
            assert self._spec is not None
            pools = {g: pool for g, (_, pool) in self._pools.items()}
            if self._free:
                mine = self._free.pop()
                self._busy += 1
                return mine, pools
            scale = self._first_scale if not self._made else self._cpu_scale(self._stream_cpus())
            actors = {}
            for g, steps in enumerate(self._groups):
                if g not in pools:
                    opts, threads = self._options(g, scale)
                    actors[g] = StageActor.options(**opts).remote(  # type: ignore[attr-defined]
                        self._spec, self._fns, steps, threads)
            mine = _StreamActors(actors, self._generation)
            self._made.append(mine)
            self._busy += 1
            # Wait until they are placed, so the next stream's share is computed from what is left.
            try:
                ray.get([a.ping.remote() for a in actors.values()], timeout=self.restart_timeout_s * 2)
            except ray.exceptions.GetTimeoutError:
                pass  # reported, with what Ray has free, when the stream resets its actors
            return mine, pools

    def _checkin(self, mine: _StreamActors) -> None:
        with self._lock:
            self._busy -= 1
            if mine.generation == self._generation:
                self._free.append(mine)
            else:
                _kill(mine.all())

    def _cpu_scale(self, wanted: float) -> float:
        """On embedded Ray, shrink the stages' CPU requests to fit this machine: a CPU request is a
        scheduling share, and a pipeline asking 2.5 CPUs must still run on 2 cores. On a cluster the
        requests stand (the autoscaler adds nodes)."""
        if self.address:
            return 1.0
        # What is free now (other streams' chains may hold some), with a little headroom.
        have = max(0.02, float(ray.available_resources().get("CPU", 0.0)) - 0.05)
        return min(1.0, have / wanted) if wanted > 0 else 1.0

    def pool_actors(self) -> dict[str, list[Any]]:
        """The encoder pools in use: the actors of each encoder step, by step id."""
        from streamzip.pipeline import Pipeline

        with self._lock:
            if self._spec is None:
                return {}
            steps = Pipeline.from_dict(self._spec).steps
            return {steps[self._groups[g][0]].id: list(pool.actors) for g, (_, pool) in self._pools.items()}

    def shutdown(self) -> None:
        """Kill this runtime's actors and give back its encoder pools (Ray itself keeps running)."""
        with self._lock:
            self._shutdown_locked()

    def _shutdown_locked(self) -> None:
        for mine in self._made:
            _kill(mine.all())
        for key, _ in self._pools.values():
            _release_pool(key)
        self._made, self._free, self._pools, self._spec = [], [], {}, None
        self._generation += 1

    def __del__(self) -> None:  # pragma: no cover - best effort at interpreter exit
        try:
            if ray.is_initialized():
                self.shutdown()
        except Exception:  # noqa: BLE001
            pass

    # -- running ------------------------------------------------------------------------------
    def set_query(self, text: str | None) -> list[str]:
        """Weight what the running streams take next by relevance to ``text`` (None: drop the query);
        the ids of the steps that took it. Safe to call from another thread (the live endpoint does)."""
        took: list[str] = []
        for chain in list(self._running):
            chain.query_events.append((chain.next_seq, text))
            try:
                for ids in ray.get(chain.send_query(text), timeout=self.restart_timeout_s):
                    took.extend(i for i in ids if i not in took)
            except ray.exceptions.RayError as err:
                if not _lost(err):
                    raise
                # the actor died: the stream's recovery replays this query at its place in the stream
                took.extend(i for i in chain.query_step_ids if i not in took)
        return took

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
        self._prepare(pipeline)
        mine, pools = self._checkout()
        pinned = {g: pool.assign() for g, pool in pools.items()}
        actors = [pinned[g] if g in pinned else mine.actors[g] for g in range(len(self._groups))]
        chain = _Chain(self, actors, self._groups, result, pipeline)
        per_step = [actors[g] for g, steps in enumerate(self._groups) for _ in steps]
        self._running.add(chain)
        t_start = time.perf_counter()

        def on_drop(_: Packet) -> None:
            _driver_metrics()["drops"].inc(tags={"stream": result.stream})

        # A live source's queue stays short: what waits there is latency, and the oldest is dropped.
        depth = min(self.prefetch_depth, LIVE_PREFETCH) if live else self.prefetch_depth
        feed = Prefetch(lambda: source, depth=depth, drop_oldest=live, on_drop=on_drop)
        # Packets between actors are never dropped: a live source keeps that queue short, so that
        # the backlog builds up in the prefetch queue, where the oldest media is dropped.
        limit = min(self.max_inflight, self.live_inflight) if live else self.max_inflight
        try:
            chain.reset()
            for packet in feed:
                chain.submit([packet, *feed.ready(self.batch_packets - 1)])
                if self.on_packet is not None:
                    self.on_packet(chain.next_seq - 1, per_step)
                while chain.inflight_count() >= limit:
                    yield from chain.complete_oldest()
                update_from_source(result, source, feed, t_start)
                if self.progress is not None:
                    self.progress(result)
            while chain.inflight_count():
                yield from chain.complete_oldest()
            chain.finish()
        except StreamzipError as err:
            err.with_context(input=result.input)
            raise
        finally:
            self._running.discard(chain)
            feed.close()
            chain.close()
            for g, a in pinned.items():
                pools[g].unassign(a)
            self._checkin(mine)
            update_from_source(result, source, feed, t_start)
            result.audio_s = source.stats.audio_samples / pipeline.decode.sample_rate_hz


class _Chain:
    """The packets of one stream in flight through the actors, with snapshots and replay."""

    def __init__(self, rt: RayRuntime, actors: list[Any], groups: list[list[int]], result: InputResult,
                 pipeline: Pipeline) -> None:
        from streamzip.registry import get as get_stage

        self.rt, self.actors, self.result = rt, actors, result
        # The last actor measures fidelity, fed the upstream encoders' outputs (their modalities, in order).
        self.meters = [pipeline.keep_assignment and a == len(actors) - 1 for a in range(len(actors))]
        # What reset and restore tell each actor: whether it measures fidelity, whether it ends the chain.
        self.roles = [(m, a == len(actors) - 1) for a, m in enumerate(self.meters)]
        # The stream's name in the actors: unique, since pool actors serve several streams at once
        # and two inputs may share a file name.
        self.key = f"{result.stream}#{uuid.uuid4().hex[:12]}"
        self.step_produces = [tuple(get_stage(step.op).cls.produces) for step in pipeline.steps]
        # What each actor's output holds fresh from an encoder (only a group's last step produces).
        self.produces = [self.step_produces[g[-1]] for g in groups]
        self.upstream = [m for m in self.produces[:-1] if m]
        # What each actor's stages declare they take and may emit, to skip an actor for a batch with
        # nothing it takes (see :meth:`_send`).
        classes = [[get_stage(pipeline.steps[i].op).cls for i in g] for g in groups]
        self.takes = [_take_rules(group) for group in classes]
        self.emits = [{(t, m) for c in group for t in c.accepts for m in (c.modalities or (None,))}
                      | {(Tokens, m) for c in group for m in c.produces} for group in classes]
        takes_query = [get_stage(step.op).cls.accepts_query for step in pipeline.steps]
        self.query_steps = [a for a, g in enumerate(groups) if any(takes_query[i] for i in g)]
        self.query_step_ids = [step.id for step, q in zip(pipeline.steps, takes_query) if q]
        # (first packet it applies to, query) for every set_query of the run, replayed after a recovery
        self.query_events: list[tuple[int, str | None]] = []
        self.next_seq = 0
        self.emitted = -1  # highest sequence number whose outputs were passed on
        self.inflight: deque[tuple[int, Any]] = deque()
        # source packets after the committed cut: (seq, batch, the kinds of its packets)
        self.replay: deque[tuple[int, Any, frozenset[tuple[type, str | None]] | None]] = deque()
        self.cuts: deque[tuple[int, list[Any]]] = deque()  # pending snapshot cuts (seq, refs)
        self.committed: tuple[int, list[Any]] | None = None
        self.released = False  # the actors forgot the stream (its summary is in)
        self.starting: list[Any] = []  # the actors' reset calls, until confirmed

    def reset(self) -> None:
        """Fresh state in every actor of the chain for this stream. Not waited for: the first batch
        goes right behind (an actor runs its calls in order); :meth:`_started` checks it came."""
        self.starting = [a.reset.remote(self.key, self.result.stream, self.result.input, *role)
                         for a, role in zip(self.actors, self.roles)]

    def _started(self) -> None:
        """Raise a clear error if the actors never started (Ray cannot place them)."""
        refs, self.starting = self.starting, []
        if not refs:
            return
        try:
            ray.get(refs, timeout=self.rt.restart_timeout_s * 2)
        except ray.exceptions.RayError as err:
            if _lost(err):
                return  # it died already: the stream's first call finds out and recovers
            if not isinstance(err, ray.exceptions.GetTimeoutError):
                raise
            have = ray.available_resources()
            raise BackendError(
                f"the stage actors could not start within {self.rt.restart_timeout_s * 2:.0f} s "
                f"(Ray has {have.get('CPU', 0):g} CPUs and {have.get('GPU', 0):g} GPUs free)",
                input=self.result.input, stage="runtime",
                fix="lower the steps' `resources` in the pipeline, or join a larger cluster with --address") from err

    def inflight_count(self) -> int:
        return len(self.inflight)

    def send_query(self, text: str | None) -> list[Any]:
        """``set_query`` on the stream's query-taking actors, queued behind the packets sent so far."""
        return [self.actors[i].set_query.remote(self.key, text) for i in self.query_steps]

    def _send(self, seq: int, ref: Any, kinds: frozenset[tuple[type, str | None]] | None) -> None:
        """Send batch ``ref`` down the chain. ``kinds``: the (type, modality) of its packets, or None
        when it holds a control packet (an end or a gap, which every stage sees). An actor none of
        whose stages may take any kind that can reach it is skipped: its output would be its input
        unchanged (an audio chunk past the video encoder), so the next actor takes that input, a call
        saved. What can reach an actor: the batch's kinds plus what each actor called before it may
        emit (its stages' ``accepts`` and ``produces``). The last actor is always called."""
        r = ref
        reach = None if kinds is None else set(kinds)
        originals: list[Any] = []  # the upstream encoders' outputs, for the last actor's meter
        last = len(self.actors) - 1
        for i, a in enumerate(self.actors):
            if reach is None or i == last or any(_may_take(self.takes[i], t, m) for t, m in reach):
                if self.meters[i] and originals:
                    r = a.push.remote(self.key, r, self.upstream, *originals)
                else:
                    r = a.push.remote(self.key, r)
                if reach is not None:
                    reach |= self.emits[i]
            if self.produces[i]:
                originals.append(r)
        self.inflight.append((seq, r))
        depth = len(self.inflight)
        self.result.max_queue_depth = max(self.result.max_queue_depth, depth)
        _driver_metrics()["queue_depth"].set(depth, tags={"stream": self.result.stream})
        if (seq + 1) % self.rt.snapshot_every == 0:
            self.cuts.append((seq, [a.snapshot.remote(self.key) for a in self.actors]))

    def submit(self, packets: list[Packet]) -> None:
        """Send source packets down the chain as one batch (one call per actor)."""
        seq = self.next_seq
        self.next_seq += 1
        ref = ray.put([_store(p) for p in packets])
        kinds = None if any(isinstance(p, (End, Gap)) for p in packets) else frozenset(
            (type(p), getattr(p, "modality", None)) for p in packets)
        self.replay.append((seq, ref, kinds))
        self._send(seq, ref, kinds)

    def complete_oldest(self) -> Iterator[Packet]:
        self._started()
        seq, ref = self.inflight[0]
        try:
            outs = ray.get(ref)
        except ray.exceptions.RayError as err:
            if _lost(err):
                self._recover()
                return
            cause = getattr(err, "cause", None)
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
            except ray.exceptions.RayError as err:
                if not _lost(err):
                    raise
                self.cuts.popleft()  # a stage died, or lost the stream, taking it: the older cut stays
                continue
            self.cuts.popleft()
            self.committed = (seq, refs)
            while self.replay and self.replay[0][0] <= seq:
                self.replay.popleft()

    def _recover(self) -> None:
        """An actor died or lost the stream's state: wait for the restart, restore every actor of the
        chain from the committed cut, replay."""
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
        ray.get([a.restore.remote(self.key, s, self.result.stream, self.result.input, *role)
                 for a, s, role in zip(self.actors, snap_refs, self.roles)])
        self.inflight.clear()
        self.cuts.clear()
        # Live queries set after the cut are not in the restored state: each goes in again right before
        # the packet it first applied to, so the replay weights every packet as the first run did.
        cut = self.committed[0] if self.committed is not None else -1
        events = [(s, q) for s, q in list(self.query_events) if s > cut]
        for seq, ref, kinds in list(self.replay):
            while events and events[0][0] <= seq:
                self.send_query(events.pop(0)[1])
            self._send(seq, ref, kinds)
        for _, q in events:
            self.send_query(q)

    def finish(self) -> None:
        """The stages' counters and reports, after the last packet. A pool actor that restarted for
        another stream's sake since this stream's last call has lost its state: restore and replay
        (nothing new comes out), then ask again."""
        self._started()
        for attempt in range(3):
            try:
                self._collect()
                return
            except ray.exceptions.RayError as err:
                if not _lost(err) or attempt == 2:
                    raise
                self._recover()
                while self.inflight:
                    for _ in self.complete_oldest():
                        pass  # replayed packets: their outputs were passed on already

    def _collect(self) -> None:
        summaries = ray.get([a.summary.remote(self.key) for a in self.actors])
        self.released = True
        self.result.stages = [StageStats(**s) for group in summaries for s in group["stats"]]
        self.result.tokens_in = sum(s.tokens_out for s, p in zip(self.result.stages, self.step_produces) if p)
        reports = [r for group in summaries for r in group["reports"]]
        self.result.reports = {st.step_id: r for st, r in zip(self.result.stages, reports) if r}
        self.result.fidelity = summaries[-1]["fidelity"]

    def close(self) -> None:
        """Let the actors forget the stream (pool actors outlive it), unless the summary did."""
        if self.released:
            return
        for a in self.actors:
            try:
                a.release.remote(self.key)
            except Exception:  # noqa: BLE001 - a dead actor has forgotten it already
                pass

"""The Ray runtime: the stages of a stream run as Ray actors. Its modules are the only ones of the
package that import Ray (with the batch command's Ray Data).

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
- **Gathering**: a pool actor's encoder that ``gathers`` (``hf_encoder``: a model, on a GPU most of
  all) encodes the frames of several streams in one forward pass. The driver sends the pushes of the
  streams pinned to one pool actor through one :class:`~streamzip.runtime._ray_gather.Gather`: a push goes
  out at once while that actor has none of the gather's calls in hand, else it waits for the call in
  hand and goes out with the others that waited, as one ``push_many`` call (continuous batching; a
  lone stream never waits). The actor encodes their frames together (streams with a query of their
  own are encoded alone: their scores depend on it), then runs each stream's batch with its state as
  a push does; each stream gets its own result object, so cuts, replay and recovery are unchanged,
  and what one stream's batch raised goes to that stream alone. ``encoder_gather=False`` turns it off.
- **Big packets skip the actors that do not take them**: a packet holding more than
  :data:`STORE_BYTES` of tensors (a batch of frames, a batch of video tokens) travels as its own
  object in Ray's store, and the batch carries a :class:`_Stored` handle with its type and modality.
  An actor fetches a handle only when one of its stages may take such a packet (the stages' declared
  ``accepts`` and ``modalities``) and passes the others on as handles, so the audio actors never
  deserialise and store again the video tokens that pass them (measured: that pass-through was about
  a third of the CPU of a 10 s file on 2 cores). The chain's last actor fetches whatever is still a
  handle, so the driver gets whole packets. Each actor still sees every packet in stream order; only
  the bytes skip it.
- **Backpressure**: at most ``max_inflight`` batches are between the source and the last stage; a
  file source then waits (nothing is lost).
- **Snapshots**: every ``snapshot_every`` batches the driver queues a ``snapshot`` call on every actor
  of the stream's chain right behind that batch (on a pool actor, for that stream's state), which
  gives a consistent cut of the whole chain at that batch without stopping the flow. The source
  packets after the last complete cut are kept for replay.
- **Faults**: when a call fails because an actor died, Ray restarts the actor (``max_restarts``); the
  driver waits until every actor answers, restores *every* actor from the last complete cut (a live
  actor restores after the calls queued before: an actor runs one caller's calls in order), replays
  the kept packets and drops the outputs it had already passed on. A restarted pool actor has lost the
  state of every stream it served: each of those streams finds out at its next call (the actor
  answers :class:`StreamStateLost`) and recovers the same way, independently. The stored packets a
  dead actor had put and no one had fetched yet are lost with it (Ray's ``OwnerDiedError``, an
  ``ObjectLostError``): the actor that fetches one fails, and the stream recovers the same way. An
  actor lost while the chain is being restored starts the recovery over, up to ``RESTORE_ATTEMPTS``
  in a row; then the run fails with a :class:`~streamzip.errors.BackendError`, never a loop. A
  stage's ``restarts`` are the processes the driver saw serve the stream less one (reset answers and
  the pings of each recovery name their process), so an actor that dies twice before a new cut counts 2.
  Stages are deterministic and restore exactly, so the run ends with the same tokens as an
  undisturbed one: no window missing, none duplicated (the webrtc VAD included: its decisions depend
  only on the last few seconds of audio, which its snapshot holds; ``docs/reliability.md``).
- ``ray.init()`` with no address starts Ray embedded on this machine, listening on loopback only;
  ``address`` joins a running cluster (KubeRay).

The per-stage semantics are those of :class:`~streamzip.runtime.local.StageRunner`: this runtime only
moves packets. It is three modules:

- this one: :class:`RayRuntime` (a stream's actors, the encoder pools, the run loop), and starting or
  joining Ray (:func:`init_ray`);
- :mod:`~streamzip.runtime._ray_actor`, the actor side: :class:`StageActor`, the :class:`_Stored`
  handles and the routing rule it shares with the driver, :class:`StreamStateLost`;
- :mod:`~streamzip.runtime._ray_chain`, the driver side of one stream: its batches in flight, the
  snapshot cuts, recovery and replay.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import ray
import ray.exceptions

from streamzip._prefetch import Prefetch
from streamzip.errors import BackendError, StreamzipError
from streamzip.packets import Packet
from streamzip.registry import get as get_stage
from streamzip.runtime._ray_actor import STORE_BYTES as STORE_BYTES  # re-exported, as are _store and _Stored
from streamzip.runtime._ray_actor import StageActor, StreamStateLost, _lost
from streamzip.runtime._ray_actor import _store as _store
from streamzip.runtime._ray_actor import _Stored as _Stored
from streamzip.runtime._ray_chain import _Chain, _driver_metrics
from streamzip.runtime._ray_gather import Gather
from streamzip.runtime.groups import encoder_groups, group_resources, stage_groups
from streamzip.runtime.local import Source, open_source, past_failure, until_source_fails, update_from_source
from streamzip.sources._names import stream_name
from streamzip.sources.file import FileSource
from streamzip.stats import InputResult

if TYPE_CHECKING:
    from streamzip.pipeline import Pipeline

__all__ = ["RayRuntime", "StreamStateLost", "init_ray", "quiet_ray_logs", "stage_groups"]

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

class _EncoderPool:
    """The actors of one encoder step, shared by the streams of every runtime of this process that
    runs the same step (see :func:`_acquire_pool`). Streams are pinned to the least busy actor."""

    def __init__(self, actors: list[Any], gather: bool = False) -> None:
        self.actors = actors
        # Per actor, the driver's gather of the pushes to it (its encoder gathers), else None.
        self.gathers = [Gather(a) if gather else None for a in actors]
        self.streams = [0] * len(actors)  # streams pinned to each actor now
        self.users = 0  # runtimes holding the pool
        self.lock = threading.Lock()

    def assign(self) -> tuple[Any, Gather | None]:
        """Pin a stream to the least busy actor: the actor, and the gather its pushes go through."""
        with self.lock:
            i = min(range(len(self.actors)), key=self.streams.__getitem__)
            self.streams[i] += 1
            gather = self.gathers[i]
            if gather is not None:
                gather.join()
            return self.actors[i], gather

    def unassign(self, actor: Any) -> None:
        with self.lock:
            for i, a in enumerate(self.actors):
                if a is actor:
                    self.streams[i] -= 1
                    gather = self.gathers[i]
                    if gather is not None:
                        gather.leave()
                    return


_POOLS: dict[tuple[Any, ...], _EncoderPool] = {}
_POOLS_LOCK = threading.Lock()
#: new actors are placed one runtime and stream at a time in this process (:meth:`RayRuntime._prepare`,
#: :meth:`RayRuntime._checkout`), each sized from what Ray has free after the ones before.
_PLACING = threading.Lock()


def _acquire_pool(key: tuple[Any, ...], make: Callable[[], list[Any]], gather: bool = False) -> _EncoderPool:
    """The pool for ``key`` (created with ``make`` the first time), held until :func:`_release_pool`."""
    with _POOLS_LOCK:
        pool = _POOLS.get(key)
        if pool is None:
            pool = _POOLS[key] = _EncoderPool(make(), gather)
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
        encoder_gather: the frames of the streams on one pool actor go through its encoder together
            when the encoder supports it ("Gathering" above); False: one stream's packet per call.
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
                 restart_timeout_s: float = 60.0, encoder_pool: int = 1, encoder_gather: bool = True,
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
        self.encoder_gather = encoder_gather
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

    # -- actors -------------------------------------------------------------------------------
    def _prepare(self, pipeline: Pipeline) -> None:
        """Actor groups and options for the pipeline's steps and its encoder pools (first use, or a
        new pipeline)."""
        init_ray(self.address, num_cpus=self.num_cpus)
        spec = pipeline.to_dict()
        with self._lock:
            if spec == self._spec:
                return
        # Placing actors is one runtime at a time in this process (cameras of `streamzip live` start
        # their runtimes at once): each sizes its CPU shares from what the one before left free.
        with _PLACING, self._lock:
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
            pooled = encoder_groups(pipeline, self._groups) if self.encoder_pool else []
            cpus = [r["num_cpus"] for r in self._res]
            scale = self._cpu_scale(sum(cpus[g] for g in pooled) * self.encoder_pool + self._stream_cpus(pooled))
            made: list[Any] = []  # pool actors made here (a pool another runtime made is placed already)
            session = ray.get_runtime_context().get_job_id()
            for g in pooled:
                (i,) = self._groups[g]
                step = pipeline.steps[i]
                # Runtimes share a pool when its actors would build the same operator.
                gather = self.encoder_gather and bool(getattr(get_stage(step.op).cls, "gathers", False))
                key = (session, self.address, json.dumps(step.to_dict(), sort_keys=True, default=repr),
                       spec.get("query"), id(step.fn) if step.fn is not None else None, self.encoder_pool, gather)
                opts, threads = self._options(g, scale)

                def make(i: int = i, opts: dict[str, Any] = opts, threads: int = threads) -> list[Any]:
                    made.extend(StageActor.options(**opts).remote(spec, self._fns, [i], threads, True)  # type: ignore[attr-defined]
                                for _ in range(self.encoder_pool))
                    return made[-self.encoder_pool:]

                self._pools[g] = (key, _acquire_pool(key, make, gather))
            self._spec = spec
            self._await_placed(made)

    def _await_placed(self, actors: Sequence[Any]) -> None:
        """Wait until ``actors`` are placed (so that what Ray has free counts them); one that cannot
        be placed is reported, with what Ray has free, when its stream resets it."""
        try:
            ray.get([a.ping.remote() for a in actors], timeout=self.restart_timeout_s * 2)
        except ray.exceptions.GetTimeoutError:
            pass

    def _stream_cpus(self, pooled: Sequence[int] | None = None) -> float:
        skip = set(self._pools) if pooled is None else set(pooled)
        return sum(r["num_cpus"] for g, r in enumerate(self._res) if g not in skip)

    def _options(self, group: int, scale: float) -> tuple[dict[str, Any], int]:
        """Ray options of the actors of step group ``group``, and the torch threads they may use."""
        res = self._res[group]
        # A share under Ray's resolution is 0: such an actor is placed even on a full node (the OS
        # shares the cores; on embedded Ray a CPU request is only a scheduling share).
        opts: dict[str, Any] = {"num_cpus": round(res["num_cpus"] * scale, 4)}
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
            self._busy += 1
        # New actors, one stream at a time: each waits until its actors are placed, so the next
        # stream's share is computed from what is left. Streams that finish meanwhile check in freely.
        with _PLACING:
            with self._lock:
                scale = self._cpu_scale(self._stream_cpus())
                actors = {}
                for g, steps in enumerate(self._groups):
                    if g not in pools:
                        opts, threads = self._options(g, scale)
                        actors[g] = StageActor.options(**opts).remote(  # type: ignore[attr-defined]
                            self._spec, self._fns, steps, threads)
                mine = _StreamActors(actors, self._generation)
                self._made.append(mine)
            self._await_placed(list(actors.values()))
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
        # What is free now (other streams' chains may hold some), with a little headroom. Nothing left:
        # 0, actors that ask for no CPU (a floor above what is free would leave them unplaceable).
        have = max(0.0, float(ray.available_resources().get("CPU", 0.0)) - 0.05)
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
        pinned = {g: pool.assign() for g, pool in pools.items()}  # group -> (actor, gather)
        actors = [pinned[g][0] if g in pinned else mine.actors[g] for g in range(len(self._groups))]
        gathers = [pinned[g][1] if g in pinned else None for g in range(len(self._groups))]
        chain = _Chain(self, actors, self._groups, result, pipeline, gathers)
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
        failed: list[StreamzipError] = []  # the source's error: the stages flush, then it is raised

        def outputs() -> Iterator[Packet]:
            return past_failure(chain.complete_oldest(), failed)

        try:
            chain.reset()
            for packet in until_source_fails(feed, result.stream, failed):
                chain.submit([packet, *feed.ready(self.batch_packets - 1)])
                if self.on_packet is not None:
                    self.on_packet(chain.next_seq - 1, per_step)
                while chain.inflight_count() >= limit:
                    yield from outputs()
                update_from_source(result, source, feed, t_start)
                if self.progress is not None:
                    self.progress(result)
            while chain.inflight_count():
                yield from outputs()
            chain.finish()
            if failed:
                raise failed[0]
        except StreamzipError as err:
            err.with_context(input=result.input)
            raise
        finally:
            self._running.discard(chain)
            feed.close()
            chain.close()
            for g, (a, _) in pinned.items():
                pools[g].unassign(a)
            self._checkin(mine)
            update_from_source(result, source, feed, t_start)
            result.audio_s = source.stats.audio_samples / pipeline.decode.sample_rate_hz


"""The driver side of one stream on the Ray runtime: :class:`_Chain` sends the stream's batches down
its actors, keeps the snapshot cuts and the packets after the last one, and after a fault restores
every actor from that cut and replays (see "Snapshots" and "Faults" in :mod:`streamzip.runtime.ray`).
"""

from __future__ import annotations

import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import ray
import ray.exceptions

from streamzip.errors import BackendError, StreamzipError
from streamzip.packets import End, Gap, Packet, Tokens
from streamzip.runtime._ray_actor import _DEATH, _check, _lost, _may_take, _store, _take_rules
from streamzip.runtime.local import count_output
from streamzip.stats import InputResult, StageStats

if TYPE_CHECKING:
    from streamzip.pipeline import Pipeline
    from streamzip.runtime._ray_gather import Gather
    from streamzip.runtime.ray import RayRuntime

_DRIVER_METRICS: dict[str, Any] = {}
#: recoveries in a row that an actor lost during the restore may start over before the run fails:
#: a plain second fault is survived, an actor that dies at every restore is an error, not a loop.
RESTORE_ATTEMPTS = 3


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


class _Chain:
    """The packets of one stream in flight through the actors, with snapshots and replay."""

    def __init__(self, rt: RayRuntime, actors: list[Any], groups: list[list[int]], result: InputResult,
                 pipeline: Pipeline, gathers: list[Gather | None] | None = None) -> None:
        from streamzip.registry import get as get_stage

        self.rt, self.actors, self.result = rt, actors, result
        # Per actor, the gather its pushes go through (a pool actor whose encoder gathers), or None.
        self.gathers = gathers if gathers is not None else [None] * len(actors)
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
        # Per actor, the processes seen serving the stream (reset, and the pings of each recovery), and
        # whether the first one died before its reset answered: the stages' restarts.
        self.workers: list[set[str]] = [set() for _ in actors]
        self.died_at_start = [False] * len(actors)

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
        ready, _ = ray.wait(refs, num_returns=len(refs), timeout=self.rt.restart_timeout_s * 2)
        if len(ready) == len(refs):
            for a, ref in enumerate(refs):
                try:
                    self.workers[a].add(ray.get(ref))
                except ray.exceptions.RayError as err:
                    if not _lost(err):
                        raise
                    self.died_at_start[a] = True  # the stream's first call finds out and recovers
        else:
            have = ray.available_resources()
            raise BackendError(
                f"the stage actors could not start within {self.rt.restart_timeout_s * 2:.0f} s "
                f"(Ray has {have.get('CPU', 0):g} CPUs and {have.get('GPU', 0):g} GPUs free)",
                input=self.result.input, stage="runtime",
                fix="lower the steps' `resources` in the pipeline, or join a larger cluster with --address")

    def inflight_count(self) -> int:
        return len(self.inflight)

    def send_query(self, text: str | None) -> list[Any]:
        """``set_query`` on the stream's query-taking actors, queued behind the packets sent so far."""
        def send(i: int) -> Any:
            gather = self.gathers[i]
            if gather is None:
                return self.actors[i].set_query.remote(self.key, text)
            return gather.call(lambda: self.actors[i].set_query.remote(self.key, text))

        return [send(i) for i in self.query_steps]

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
                gather = self.gathers[i]
                if self.meters[i] and originals:
                    r = a.push.remote(self.key, r, self.upstream, *originals)
                elif gather is not None:
                    r = gather.push(self.key, r)
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
            _check(outs)  # a gathered call's result for this stream may be what it raised
        except Exception as err:
            if _lost(err):
                self._recover()
                return
            cause = getattr(err, "cause", None) if isinstance(err, ray.exceptions.RayError) else err
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
        chain from the committed cut, replay. An actor lost while the chain restores (another death,
        or the same actor again) starts the recovery over, a recovery of its own in the counts, up to
        :data:`RESTORE_ATTEMPTS` in a row."""
        def attempt() -> None:
            self.result.restarts += 1
            _driver_metrics()["recoveries"].inc(tags={"stream": self.result.stream})
            self._restore()

        self._retry_lost(attempt, "restores")
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

    def _restore(self) -> None:
        """Wait for every actor to answer, then restore them all from the committed cut (a fresh state
        if there is none). Raises what a restore call raised.

        The calls still in flight are not waited for: an actor runs one caller's calls in the order
        they were sent, so a live actor restores after the pushes queued before, and a push sent to
        an actor that died fails (``max_task_retries=0``); their results are dropped with
        :attr:`inflight`. Waiting for them gained nothing and could cost ``restart_timeout_s`` when
        Ray left a call sent during the restart pending."""
        deadline = time.monotonic() + self.rt.restart_timeout_s
        for a, actor in enumerate(self.actors):
            while True:
                try:
                    self.workers[a].add(ray.get(actor.ping.remote(), timeout=max(1.0, deadline - time.monotonic())))
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

    def finish(self) -> None:
        """The stages' counters and reports, after the last packet. A pool actor that restarted for
        another stream's sake since this stream's last call has lost its state: restore and replay
        (nothing new comes out), then ask again."""
        self._started()
        def replay() -> None:
            self._recover()
            while self.inflight:
                for _ in self.complete_oldest():
                    pass  # replayed packets: their outputs were passed on already

        self._retry_lost(self._collect, "tries to collect the stream's summary", between=replay)

    def _retry_lost(self, call: Callable[[], None], what: str, between: Callable[[], None] | None = None) -> None:
        """``call()`` until it does not lose an actor (``between()`` after each loss), at most
        :data:`RESTORE_ATTEMPTS` times; then the clear error. Errors other than a loss go through."""
        for attempt in range(1, RESTORE_ATTEMPTS + 1):
            try:
                call()
                return
            except ray.exceptions.RayError as err:
                if not _lost(err):
                    raise
                if attempt == RESTORE_ATTEMPTS:
                    raise BackendError(
                        f"a stage actor did not come back after a crash: the chain lost an actor again in "
                        f"each of {RESTORE_ATTEMPTS} {what} in a row ({err})",
                        input=self.result.input, stage="runtime",
                        fix="check the Ray logs for why the worker keeps dying (memory, a crash in native "
                            "code)") from err
                if between is not None:
                    between()

    def _collect(self) -> None:
        summaries = ray.get([a.summary.remote(self.key) for a in self.actors])
        self.released = True
        for a, group in enumerate(summaries):
            for s in group["stats"]:
                s["restarts"] = max(len(self.workers[a]) - 1, 0) + self.died_at_start[a]
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

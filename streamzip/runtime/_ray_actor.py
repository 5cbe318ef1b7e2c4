"""The actor side of the Ray runtime: :class:`StageActor` runs a group of a stream's stages (or, in
a pool, one encoder for many streams), and what it shares with the driver: the :class:`_Stored`
handle a big packet travels as, the routing rule that says which actor may take it
(:func:`_take_rules`, :func:`_may_take`), and what counts as a lost stream state (:func:`_lost`).

The design (batches, fusion, pools, stored packets, snapshots, recovery) is in
:mod:`streamzip.runtime.ray`; this module only runs stages on the packets a call brings.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import ray
import ray.exceptions
import torch

from streamzip.packets import AudioChunk, Packet, Tokens, VideoFrames, wire
from streamzip.runtime.local import StageRunner, is_stream_output, set_query_on
from streamzip.stats import InputResult

__all__ = ["STORE_BYTES", "StageActor", "StreamStateLost"]

# A call failed because its actor died (Ray restarts it: ``max_restarts``).
_DEATH = (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError)
#: a packet whose tensors hold at least this many bytes leaves a batch for its own object in Ray's
#: store while it passes actors that do not take it (smaller ones ride inline: a handle costs more).
STORE_BYTES = 256 * 1024


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
class _Raised:
    """What one stream's batch raised in a :meth:`StageActor.push_many` that served several streams:
    the call's other streams keep their results, and whoever takes this one raises ``error``."""

    error: BaseException


def _check(*batches: Any) -> None:
    """Raise what an upstream ``push_many`` raised for this stream's batch (see :class:`_Raised`)."""
    for batch in batches:
        if isinstance(batch, _Raised):
            raise batch.error


@dataclass(frozen=True)
class _Stored:
    """A big packet left in Ray's object store (see "Big packets" in :mod:`streamzip.runtime.ray`): its
    header, and its object."""

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
        self.worker = ray.get_runtime_context().get_worker_id()  # this process, named in its snapshots
        self.counted: set[str] = set()  # streams whose restart metric counts this process already
        self.ends: set[str] = set()  # streams whose chain this actor ends
        self._metrics: dict[str, Any] | None = None
        self.gathered = {"calls": 0, "frames": 0, "most_streams": 0}  # push_many's joint encodes

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

    def reset(self, key: str, stream: str, input_name: str, meter: bool = False, last: bool = False) -> str:
        """Fresh state for a new stream; returns this actor's process (:meth:`ping`). ``meter``:
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
        return self.worker

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
        _check(packets, *originals)
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

    def push_many(self, keys: list[str], *batches: list[Packet]) -> Any:
        """:meth:`push` for several streams' batches at once (a pool actor's gather, see "Gathering"
        in :mod:`streamzip.runtime.ray`): the frames of those streams whose encoding does not depend
        on their state are encoded together first (:meth:`VideoEncoder.prepare`), then each batch
        runs as :meth:`push` runs it. One result per stream (a single one is returned as it is,
        since Ray gives one object per return); a stream whose batch raised gets :class:`_Raised`."""
        # the pool's encoder, when it gathers
        stage = self.stages[0] if self.shared and self.stages and getattr(self.stages[0], "gathers", False) else None
        fetched = [b if isinstance(b, _Raised) else _fetch(b) for b in batches]
        if stage is not None:
            frames = []
            for key, batch in zip(keys, fetched):
                if isinstance(batch, _Raised) or key not in self.runners:
                    continue
                state = stage.state_dict() if self.loaded == key else self.parked.get(key, {}).get("state")
                if stage.may_gather(state):
                    frames += [p.frames for p in batch if isinstance(p, VideoFrames) and p.num_frames]
            if len(frames) > 1:
                stage.prepare(frames)
                self.gathered["calls"] += 1
                self.gathered["frames"] += sum(f.shape[0] for f in frames)
                self.gathered["most_streams"] = max(self.gathered["most_streams"], len(keys))
        out: list[Any] = []
        try:
            for key, batch in zip(keys, fetched):
                try:
                    out.append(self.push(key, batch))  # type: ignore[arg-type]
                except Exception as err:  # noqa: BLE001 - the stream's own error, raised where it is taken
                    out.append(_Raised(err))
        finally:
            if stage is not None:
                stage.unprepare()
        return out[0] if len(out) == 1 else out

    def gather_counts(self) -> dict[str, int]:
        """How many gathered encodes this actor ran, over how many frames, and the most streams in one
        call (tests and benchmarks)."""
        return dict(self.gathered)

    def snapshot(self, key: str) -> dict[str, Any]:
        runner = self.runners.get(key)
        if runner is None:
            raise self._lost(key)
        states = [s.snapshot() for s in self.stages] if self.loaded == key else [self.parked[key]]
        # The meter goes with the cut (Ray serialises the reply now), so a replay counts nothing twice.
        return {"stages": wire(states), "stats": [st.to_dict() for st in runner.stats], "meter": runner.meter,
                "worker": self.worker}

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
        if self.restarted and key not in self.counted and (snap is None or snap["worker"] != self.worker):
            # The metric counts this process's restart once per stream; the stats' restarts are the
            # driver's count (:meth:`ping`).
            for st in runner.stats:
                self._metric()["restarts"].inc(tags={"stage": st.step_id, "stream": stream})
            self.counted.add(key)

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

    def ping(self) -> str:
        """This actor's process: the driver counts a stage's restarts as the processes it has seen
        serve the stream, less one (a restore from an old cut cannot count them: the cut does not
        know of the processes after it)."""
        return self.worker

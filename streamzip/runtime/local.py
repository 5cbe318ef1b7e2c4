"""The local runtime: every stage in this process, packets pushed depth-first through the chain.

It defines the reference semantics every other runtime must reproduce:

- a stage gets the packets it :meth:`~streamzip.operator.Operator.takes`; others pass straight on;
- a :class:`~streamzip.packets.Gap` goes to every stage's ``on_gap``;
- at :class:`~streamzip.packets.End` each stage's ``flush()`` output goes down the chain first, then End.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from streamzip._prefetch import Prefetch
from streamzip.devices import torch_threads
from streamzip.errors import StreamzipError
from streamzip.operator import Operator
from streamzip.packets import AudioChunk, End, Gap, Packet, Tokens, VideoFrames
from streamzip.sources._names import stream_name
from streamzip.sources.file import FileSource, SourceStats
from streamzip.stats import InputResult, StageStats

if TYPE_CHECKING:
    from streamzip.pipeline import Pipeline

__all__ = ["LocalRuntime", "Source", "StageRunner", "open_source", "packet_time"]

#: called after each source packet with the input's result so far (for progress bars).
ProgressFn = Callable[[InputResult], None]


def packet_time(packet: Packet) -> float | None:
    if isinstance(packet, Tokens):
        return float(packet.t0[0]) if packet.num_tokens else packet.meta.get("window_start_s")
    if isinstance(packet, (VideoFrames, AudioChunk)):
        return packet.start_s
    if isinstance(packet, Gap):
        return packet.start_s
    return None


class StageRunner:
    """Pushes packets through a chain of stages and counts what each one does."""

    def __init__(self, stages: Sequence[Operator], result: InputResult, *, meter: Any = None) -> None:
        self.stages = list(stages)
        self.result = result
        self.stats = [StageStats(step_id=s.step_id, op=s.name or type(s).__name__) for s in self.stages]
        result.stages = self.stats
        #: a FidelityMeter fed with every encoder's fresh tokens (the originals), or None.
        self.meter = meter

    def push(self, packet: Packet, start: int = 0) -> Iterator[Packet]:
        """Send ``packet`` into stage ``start``; yield what comes out of the last stage."""
        if start == len(self.stages):
            yield packet
            return
        stage, st = self.stages[start], self.stats[start]
        t = time.perf_counter()
        try:
            with torch_threads(stage.threads):
                outs = self._call(stage, st, packet)
        except StreamzipError as err:
            err.with_context(input=self.result.input, stage=stage.step_id, time_s=packet_time(packet))
            raise
        except Exception as err:
            err.add_note(f"streamzip: in stage {stage.step_id!r} ({type(stage).__name__}) of input "
                         f"{self.result.input!r} at {packet_time(packet)} s")
            raise
        finally:
            st.seconds += time.perf_counter() - t
        for out in outs:
            if isinstance(out, Tokens) and out is not packet:
                st.tokens_out += out.num_tokens
                if self.meter is not None and out.modality in stage.produces:
                    self.meter.add_originals(out)
            yield from self.push(out, start + 1)

    @staticmethod
    def _call(stage: Operator, st: StageStats, packet: Packet) -> list[Packet]:
        if isinstance(packet, End):
            return [*stage.flush(), packet]
        if isinstance(packet, Gap):
            return stage.on_gap(packet)
        if not stage.takes(packet):
            return [packet]
        st.packets_in += 1
        if isinstance(packet, Tokens):
            st.tokens_in += packet.num_tokens
        elif isinstance(packet, VideoFrames):
            st.frames_in += packet.num_frames
        return stage.process(packet)


def is_stream_output(packet: Packet) -> bool:
    """Whether a final packet is part of the compressed stream (memory and read packets re-present
    tokens the stream already holds, so counts and fidelity leave them out)."""
    return isinstance(packet, Tokens) and packet.meta.get("kind", "tokens") in ("tokens", "window")


def count_output(result: InputResult, packet: Packet, meter: Any = None) -> None:
    """Add a final packet to the input's token-out count (and to the fidelity meter, if any)."""
    if is_stream_output(packet):
        assert isinstance(packet, Tokens)
        result.tokens_out += packet.num_tokens
        if meter is not None:
            meter.add_outputs(packet)


def collect_reports(stages: Sequence[Operator]) -> dict[str, Any]:
    """Every stage's non-empty report, by step id."""
    return {s.step_id: r for s in stages if (r := s.report())}


def new_meter(pipeline: Pipeline) -> Any:
    """A fidelity meter when the pipeline keeps provenance, else None."""
    if not pipeline.keep_assignment:
        return None
    from streamzip.operators.fidelity import FidelityMeter

    return FidelityMeter()


def finish_meter(result: InputResult, meter: Any) -> None:
    if meter is not None:
        result.fidelity = meter.result()["fidelity"]


def set_query_on(stages: Sequence[Operator], text: str | None) -> list[str]:
    """``set_query(text)`` on every stage that takes a query; their step ids."""
    took = []
    for stage in stages:
        if stage.accepts_query:
            stage.set_query(text)
            took.append(stage.step_id)
    return took


def encoder_tokens(runner: StageRunner) -> int:
    return sum(s.tokens_out for s, stage in zip(runner.stats, runner.stages) if stage.produces)


class LocalRuntime:
    """Runs pipelines in this process, one input after another.

    Args:
        progress: called after each source packet with the input's :class:`InputResult` so far.
        prefetch_depth: packets the decoder thread may run ahead of the stages (decode overlaps work).
    """

    name = "local"

    def __init__(self, *, progress: ProgressFn | None = None, prefetch_depth: int = 4) -> None:
        self.progress = progress
        self.prefetch_depth = prefetch_depth
        self.results: list[InputResult] = []
        self._running: list[StageRunner] = []   # the chains of the streams running now (set_query)

    def set_query(self, text: str | None) -> list[str]:
        """Weight what the running streams take next by relevance to ``text`` (None: drop the query).

        Safe to call from another thread (the live endpoint does): each query-taking stage applies it
        from its next packet on. Returns the ids of the steps that took it."""
        return set_query_on([s for r in list(self._running) for s in r.stages], text)

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
        """Run the pipeline on any packet source (a file, a camera, a microphone).

        ``live``: the source cannot wait, so when the stages fall behind the oldest queued media
        packets are dropped (and counted in ``result.drops``) instead of blocking the source.
        A source that fails with a typed error ends the stream there: the stages flush, their
        outputs come out (no :class:`End`), then the error is raised (:func:`until_source_fails`).
        """
        meter = new_meter(pipeline)
        runner = StageRunner(pipeline.build(result.stream), result, meter=meter)
        t_start = time.perf_counter()
        feed = Prefetch(lambda: source, depth=self.prefetch_depth, drop_oldest=live)
        self._running.append(runner)
        failed: list[StreamzipError] = []
        try:
            for packet in until_source_fails(feed, result.stream, failed):
                for out in past_failure(runner.push(packet), failed):
                    count_output(result, out, meter)
                    yield out
                update_from_source(result, source, feed, t_start)
                result.tokens_in = encoder_tokens(runner)
                if self.progress is not None:
                    self.progress(result)
            finish_meter(result, meter)
            result.reports = collect_reports(runner.stages)
            if failed:
                raise failed[0]
        except StreamzipError as err:
            err.with_context(input=result.input)
            raise
        finally:
            self._running.remove(runner)
            feed.close()
            update_from_source(result, source, feed, t_start)
            result.audio_s = source.stats.audio_samples / pipeline.decode.sample_rate_hz


class Source(Protocol):
    """What a runtime needs of a source: packets, a name and running counters."""

    name: str
    stream: str
    stats: SourceStats

    def __iter__(self) -> Iterator[Packet]: ...


def open_source(pipeline: Pipeline, path: str, result: InputResult) -> FileSource:
    """The file source for ``path``, decoding only the modalities the pipeline's encoders take."""
    mods = pipeline.modalities()
    return FileSource(path, pipeline.decode, stream=result.stream,
                      want_video="video" in mods, want_audio="audio" in mods)


def until_source_fails(packets: Iterable[Packet], stream: str, failed: list[StreamzipError]) -> Iterator[Packet]:
    """The source's packets; if the source fails with a typed error (a camera or microphone gone
    for good, a file broken mid-way), an :class:`End` in its place, so that the stages flush what
    they hold (the open window, the audio stretch: nothing the source delivered is lost), and the
    error in ``failed``, for the runtime to raise once the stages have flushed. Other exceptions
    (bugs) go through at once."""
    try:
        yield from packets
    except StreamzipError as err:
        failed.append(err)
        yield End(stream)


def past_failure(outputs: Iterable[Packet], failed: list[StreamzipError]) -> Iterator[Packet]:
    """``outputs`` without the :class:`End` that :func:`until_source_fails` put in place of a failed
    source's rest: that stream did not end (its error is raised once the stages have flushed)."""
    return (out for out in outputs if not (failed and isinstance(out, End)))


def update_from_source(result: InputResult, source: Source, feed: Prefetch, t_start: float) -> None:
    result.media_s = source.stats.duration_s
    result.frames = source.stats.frames_sampled
    result.corrupt_packets = source.stats.corrupt_packets
    result.drops = feed.drops
    result.wall_s = time.perf_counter() - t_start

"""Batch preprocessing: many files fanned out over Ray Data, one task per input (or per segment).

Each input runs the whole pipeline in one task (for thousands of files, parallelism across files beats
splitting one file's stages over actors) and writes its output folder atomically. A re-run skips
inputs whose output is complete. An input that fails — bad media, a bug, a worker process that died
(after Ray's task retries) — becomes a record in ``OUTPUT/errors.jsonl`` and the job goes on.

**Segments** (``segment_s``, ``streamzip batch --segment-s``): a long file is cut on the stream clock
into segments that run as tasks of their own, in parallel, and are stitched back into one output.

- *Cuts* fall on multiples of the segment length, which is ``segment_s`` rounded to a whole number of
  the pipeline's *cut unit*: the least common multiple of the frame step (``1 / decode.fps``) and
  every step's ``window_s`` (4 s for the built-in pipelines). So a cut is a window boundary of every
  windowed stage and a sample time of the video. A file not longer than one segment, or whose
  duration cannot be read from its header (``lavfi:`` graphs), runs whole, as without the option.
  ``decode.start_s``/``end_s`` still select the span; segments cut it.
- *Each segment* runs the whole pipeline from fresh state on its span, selected as
  ``decode.start_s``/``end_s`` select it (the file source seeks, then drops what comes before), and is
  written atomically as a part under ``OUTPUT/.NAME.parts-HASH/``. A finished part is not redone by a
  re-run (the hash covers the pipeline, the file's path, size and time, and the cuts).
- *Stitching*, once every part is done: the parts' packets in time order, each modality's token ids
  (``src``) offset by the tokens its encoder made in the parts before, so ids are unique and increase
  from part to part as in a whole-file run. Windows keep their numbers: they are numbered on the
  stream clock. The output is written atomically like any other, its manifest lists the segments, and
  the parts are deleted. A segment that fails makes the input fail (one record in ``errors.jsonl``
  naming the segment): no output is written for it, and its finished parts stay for the re-run.
- *What the result equals.* For a pipeline whose stages keep no state from one window to the next —
  the encoders' video tokens, FrameFusion with a given ``threshold``, DPC-KNN, the baselines, the
  ``window`` stage — the stitched output is the whole-file output: the same tokens, times, sizes,
  ids, assignments and window numbers (tested). Stages whose state crosses windows start fresh at
  each cut: the memory restarts empty (its packets summarise the segment so far, and
  ``emit_memory_every`` counts from the cut), a calibrated FrameFusion threshold is calibrated per
  segment, and the audio stages (VAD hangover, the fbank encoder's stretches and blocks, A-ToMe's held
  token) end their work at the cut and start again after it. The output is still a valid stream:
  packets in time order, every window within its budget, the memory within ``max_tokens``, sizes
  adding up to the originals, ids unique.

Ray is imported inside :func:`run_batch` only, so this module stays importable without starting Ray.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import traceback
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

from streamzip.errors import ConfigError, CorruptMediaError, InputNotFoundError, Problem, StreamzipError
from streamzip.job import _write_errors, input_names, output_names
from streamzip.output import ensure_writable, is_complete, load, write_output
from streamzip.packets import Tokens
from streamzip.pipeline import Pipeline
from streamzip.sources._names import redact
from streamzip.stats import InputResult, StageStats

__all__ = ["MAX_RETRIES", "cut_unit_s", "expand_inputs", "plan_segments", "process_input", "run_batch",
           "stitch_results"]

#: how often an input whose worker process died is tried again before it becomes an error record.
MAX_RETRIES = 1


def expand_inputs(inputs: Sequence[str]) -> list[str]:
    """Files as given, folders expanded to the regular files under them (sorted, hidden ones skipped).

    A missing path is kept, so that it is reported as an error record, not silently dropped.
    """
    out: list[str] = []
    for item in inputs:
        if os.path.isdir(item):
            for root, dirs, files in os.walk(item):
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                out.extend(os.path.join(root, f) for f in sorted(files) if not f.startswith("."))
        else:
            out.append(item)
    return out


def process_input(spec: dict[str, Any], path: str, name: str, output_dir: str, *, parquet: bool = False) -> dict[str, Any]:
    """Run the pipeline on one input and write its output; never raises for the input's problems.

    Returns the :class:`InputResult` as a dict (plain data, so it travels as a Ray Data row).
    """
    from streamzip.runtime.local import LocalRuntime

    pipeline = Pipeline.from_dict(spec)
    shown, stream = input_names(path)
    result = InputResult(input=shown, stream=stream)
    try:
        packets = [p for p in LocalRuntime(prefetch_depth=2).run_input(pipeline, path, result)
                   if isinstance(p, Tokens)]
        _write(result, output_dir, name, packets, pipeline, spec, parquet=parquet)
    except StreamzipError as err:
        _fail(result, type(err).__name__, str(err), err.stage)
    except Exception as err:  # noqa: BLE001 - a bug must not cost the other inputs
        _fail(result, type(err).__name__, f"{err} — {traceback.format_exc(limit=3)}", None)
    return result.to_dict()


def _write(result: InputResult, output_dir: str, name: str, packets: list[Tokens], pipeline: Pipeline,
           spec: dict[str, Any], *, parquet: bool, **extra: Any) -> None:
    """Write one input's output folder (``extra``: more manifest fields) and note it in ``result``."""
    manifest = {"input": result.input, "stream": result.stream, "pipeline": spec, "runtime": "batch",
                "summary": result.to_dict(), **extra}
    folder = write_output(output_dir, name, packets, manifest=manifest, keep_assignment=pipeline.keep_assignment)
    if parquet:
        write_parquet(folder, packets)
    result.output = str(folder)


def _fail(result: InputResult, kind: str, message: str, stage: str | None) -> None:
    result.ok, result.error_type, result.error, result.stage = False, kind, redact(message), stage


def write_parquet(folder: Path, packets: Sequence[Tokens]) -> Path:
    """``tokens.parquet`` beside the safetensors: one row per token (modality, kind, times, position,
    size, packet, data), for tools that read tables. Written under a temporary name, then renamed."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    cols: dict[str, list[Any]] = {k: [] for k in ("modality", "kind", "packet", "t0", "t1", "row", "col", "size", "data")}
    for i, p in enumerate(packets):
        n = p.num_tokens
        cols["modality"] += [p.modality] * n
        cols["kind"] += [str(p.meta.get("kind", "tokens"))] * n
        cols["packet"] += [i] * n
        cols["t0"] += p.t0.tolist()
        cols["t1"] += p.t1.tolist()
        cols["row"] += p.pos[:, 0].tolist()
        cols["col"] += p.pos[:, 1].tolist()
        cols["size"] += p.size.tolist()
        cols["data"] += p.data.tolist()
    table = pa.table(cols)
    tmp = folder / f".tokens.parquet.tmp-{os.getpid()}"
    pq.write_table(table, tmp)
    final = folder / "tokens.parquet"
    os.replace(tmp, final)
    return final


def _result_from(row: dict[str, Any]) -> InputResult:
    stages = [StageStats(**s) for s in row.pop("stages", [])]
    row.pop("reduction", None)
    r = InputResult(**row)
    r.stages = stages
    return r


# -- segments of one long file ----------------------------------------------------------------------
def _fraction(x: float) -> Fraction:
    return Fraction(x).limit_denominator(10_000)


def cut_unit_s(pipeline: Pipeline) -> float:
    """The least common multiple of the frame step (``1 / decode.fps``) and every step's ``window_s``:
    a multiple of it is a window boundary of every windowed stage and a video sample time. When that
    multiple exceeds an hour (window lengths with no short common multiple), the longest of them."""
    from streamzip.registry import get as get_stage

    values = [1 / _fraction(pipeline.decode.fps)]
    for i, step in enumerate(pipeline.steps):
        config = get_stage(step.op).cls.config_class.from_mapping(step.params, f"steps[{i}]")
        window_s = getattr(config, "window_s", None)
        if isinstance(window_s, (int, float)) and not isinstance(window_s, bool) and window_s > 0:
            values.append(_fraction(window_s))
    unit = values[0]
    for v in values[1:]:
        unit = Fraction(math.lcm(unit.numerator * v.denominator, v.numerator * unit.denominator),
                        unit.denominator * v.denominator)
    return float(unit) if unit <= 3600 else float(max(values))


def segment_length_s(pipeline: Pipeline, segment_s: float) -> float:
    """``segment_s`` rounded to a whole number (at least one) of :func:`cut_unit_s`."""
    unit = cut_unit_s(pipeline)
    return max(1, round(segment_s / unit)) * unit


def plan_segments(pipeline: Pipeline, duration_s: float | None, segment_s: float) -> list[tuple[float, float | None]]:
    """The spans ``(start_s, end_s)`` (``end_s`` None: to the end of the file) that cut the pipeline's
    ``decode.start_s``/``end_s`` selection of an input lasting ``duration_s`` at the multiples of
    :func:`segment_length_s`; one span when there is no cut to make or the duration is unknown."""
    d = pipeline.decode
    whole: list[tuple[float, float | None]] = [(d.start_s, d.end_s)]
    if duration_s is None or not math.isfinite(duration_s):
        return whole
    length = segment_length_s(pipeline, segment_s)
    end = duration_s if d.end_s is None else min(d.end_s, duration_s)
    cuts = []
    k = math.floor(d.start_s / length + 1e-9) + 1
    while k * length < end - 1e-6:
        cuts.append(k * length)
        k += 1
    if not cuts:
        return whole
    return list(zip([d.start_s, *cuts], [*cuts, d.end_s]))


def probe_duration_s(path: str) -> float | None:
    """The input's duration from its header; None for ``lavfi:`` graphs, headers without one, and
    what is not media (its task then reports why)."""
    if path.startswith("lavfi:") or not os.path.isfile(path):
        return None
    from streamzip._av import av

    try:
        with av.open(path, metadata_errors="ignore") as container:
            if container.duration:
                return float(container.duration) / 1_000_000  # AV_TIME_BASE
            spans = [float(s.duration * s.time_base) for s in container.streams if s.duration and s.time_base]
            return max(spans) if spans else None
    except Exception:  # noqa: BLE001 - not media: the input runs whole and fails with its own error
        return None


def _part_name(k: int) -> str:
    return f"part-{k:05d}"


def _segment_spec(spec: dict[str, Any], start_s: float, end_s: float | None) -> dict[str, Any]:
    decode = {**(spec.get("decode") or {}), "start_s": start_s}
    if end_s is None:
        decode.pop("end_s", None)
    else:
        decode["end_s"] = end_s
    return {**spec, "decode": decode}


def _span(start_s: float, end_s: float | None) -> str:
    return f"{start_s:g}–{end_s:g} s" if end_s is not None else f"{start_s:g} s–end"


@dataclass
class _SegmentedInput:
    """An input cut into segments: where its parts go, and the parts' results as they finish."""

    index: int
    path: str
    name: str
    folder: Path  # OUTPUT/.NAME.parts-HASH
    spans: list[tuple[float, float | None]]
    length_s: float
    done: dict[int, InputResult] = field(default_factory=dict)

    @property
    def finished(self) -> bool:
        return len(self.done) == len(self.spans)


def _plan_input(pipeline: Pipeline, spec: dict[str, Any], index: int, path: str, name: str, output_dir: str,
                segment_s: float) -> _SegmentedInput | None:
    """The segments of one input, the parts a previous run finished already loaded; None: run it whole."""
    spans = plan_segments(pipeline, probe_duration_s(path), segment_s)
    if len(spans) < 2:
        return None
    st = os.stat(path)
    key = json.dumps({"pipeline": spec, "path": os.path.abspath(path), "size": st.st_size,
                      "mtime_ns": st.st_mtime_ns, "spans": spans}, sort_keys=True, default=repr)
    folder = Path(output_dir) / f".{name}.parts-{hashlib.sha1(key.encode()).hexdigest()[:10]}"
    item = _SegmentedInput(index, path, name, folder, spans, segment_length_s(pipeline, segment_s))
    for k in range(len(spans)):
        part = folder / _part_name(k)
        if is_complete(part):
            try:
                with open(part / "manifest.json", encoding="utf-8") as fh:
                    item.done[k] = _result_from(dict(json.load(fh)["summary"]))
            except (OSError, ValueError, KeyError, TypeError):
                pass  # unreadable: the part is done again
    return item


def stitch_results(parts: Sequence[InputResult], *, input: str, stream: str,  # noqa: A002
                   starts_s: Sequence[float] | None = None) -> InputResult:
    """One input's summary from its segments' summaries: counts added up, fidelity averaged over the
    segments' encoder tokens, stage counters added per step, the stages' reports joined (lists
    concatenated in time order, values the segments disagree on listed per segment). With the
    segments' ``starts_s``, the media duration runs from the first start to the end of the last
    segment that decoded something, as a whole-file run counts it."""
    r = InputResult(input=input, stream=stream)
    stages: dict[str, StageStats] = {}
    for k, p in enumerate(parts):
        for key in ("frames", "audio_s", "tokens_in", "tokens_out", "wall_s", "corrupt_packets", "restarts", "drops"):
            setattr(r, key, getattr(r, key) + getattr(p, key))
        if starts_s is None:
            r.media_s += p.media_s
        elif p.media_s > 0:
            r.media_s = max(r.media_s, starts_s[k] - starts_s[0] + p.media_s)
        r.max_queue_depth = max(r.max_queue_depth, p.max_queue_depth)
        for st in p.stages:
            acc = stages.setdefault(st.step_id, StageStats(step_id=st.step_id, op=st.op))
            for key in ("packets_in", "frames_in", "tokens_in", "tokens_out", "seconds", "restarts"):
                setattr(acc, key, getattr(acc, key) + getattr(st, key))
    r.stages = list(stages.values())
    counted = [p for p in parts if p.tokens_in]
    weighted = [(p.fidelity, p.tokens_in) for p in counted if p.fidelity is not None]
    if counted and len(weighted) == len(counted):
        r.fidelity = sum(f * n for f, n in weighted) / sum(n for _, n in weighted)
    for step in dict.fromkeys(k for p in parts for k in p.reports):
        merged: dict[str, Any] = {}
        for key in dict.fromkeys(k for p in parts for k in p.reports.get(step, {})):
            values = [p.reports[step][key] for p in parts if key in p.reports.get(step, {})]
            if all(isinstance(v, list) for v in values):
                merged[key] = [x for v in values for x in v]
            else:
                merged[key] = values[0] if all(v == values[0] for v in values) else values
        r.reports[step] = merged
    return r


def _stitch(pipeline: Pipeline, spec: dict[str, Any], item: _SegmentedInput, output_dir: str, *,
            parquet: bool) -> InputResult:
    """Write the input's output from its finished parts (see the module docstring); never raises."""
    from streamzip.registry import get as get_stage

    shown, stream = input_names(item.path)
    parts = [item.done[k] for k in range(len(item.spans))]
    failed = [(k, r) for k, r in enumerate(parts) if not r.ok]
    result = stitch_results(parts, input=shown, stream=stream, starts_s=[a for a, _ in item.spans])
    if failed:
        k, bad = failed[0]
        more = f" ({len(failed) - 1} more segment{'s' if len(failed) > 2 else ''} failed)" if len(failed) > 1 else ""
        _fail(result, bad.error_type or "Error",
              f"segment {k + 1}/{len(parts)} ({_span(*item.spans[k])}): {bad.error}{more}", bad.stage)
        return result
    try:
        if not result.frames and not result.audio_s:
            raise CorruptMediaError("nothing decoded: no frame or audio sample came out of any segment",
                                    input=shown, stage="decode", fix="re-encode or re-copy the file")
        packets: list[Tokens] = []
        offsets: dict[str, int] = {}  # per modality: the tokens its encoder made in earlier segments
        segments = []
        for k, ((start_s, end_s), part) in enumerate(zip(item.spans, parts)):
            out = load(item.folder / _part_name(k))
            groups = {g: out.packets(g) for g in out.groups}
            for entry in out.manifest["packets"]:
                p = groups[entry["group"]][entry["index"]]
                if p.src is not None and offsets.get(p.modality):
                    p.src = p.src + offsets[p.modality]
                packets.append(p)
            segments.append({"start_s": start_s, "end_s": end_s, "src_offset": dict(offsets), "frames": part.frames,
                             "tokens_in": part.tokens_in, "tokens_out": part.tokens_out})
            for st in part.stages:
                for modality in get_stage(st.op).cls.produces:
                    offsets[modality] = offsets.get(modality, 0) + st.tokens_out
        _write(result, output_dir, item.name, packets, pipeline, spec, parquet=parquet,
               segment_s=item.length_s, segments=segments)
    except StreamzipError as err:
        _fail(result, type(err).__name__, str(err), err.stage)
        return result
    except Exception as err:  # noqa: BLE001 - a bug must not cost the other inputs
        _fail(result, type(err).__name__, f"stitching the segments: {err} — {traceback.format_exc(limit=3)}", None)
        return result
    for old in Path(output_dir).glob(f".{item.name}.parts-*"):  # this run's parts, and any left by other cuts
        shutil.rmtree(old, ignore_errors=True)
    return result


# -- the job --------------------------------------------------------------------------------------
#: called as each segment finishes: (its result, segments finished, segments to run in this job).
SegmentFn = Callable[[InputResult, int, int], None]


def run_batch(pipeline: Pipeline, inputs: Sequence[str], output_dir: str | os.PathLike[str], *,
              address: str | None = None, cpus_per_input: float = 1.0, parquet: bool = False,
              segment_s: float | None = None,
              progress: Callable[[list[InputResult], int], None] | None = None,
              on_segment: SegmentFn | None = None) -> list[InputResult]:
    """Process every input over Ray Data; returns one :class:`InputResult` per input, in input order.

    Finished outputs are skipped (``skipped=True``). ``segment_s``: cut inputs longer than that into
    segments processed in parallel and stitched back (see the module docstring); ``cpus_per_input``
    is then what each segment's task reserves. ``progress(results_so_far, total)`` is called as inputs
    finish, ``on_segment`` as segments finish.
    """
    pipeline.validate()
    if segment_s is not None and (isinstance(segment_s, bool) or not isinstance(segment_s, (int, float))
                                  or not math.isfinite(segment_s) or segment_s <= 0):
        raise ConfigError([Problem("segment_s", f"must be a number of seconds > 0, got {segment_s!r}")])
    output_dir = os.fspath(ensure_writable(output_dir))
    spec = pipeline.to_dict()
    paths = expand_inputs(inputs)
    names = output_names(paths)
    results: dict[int, InputResult] = {}
    todo: list[dict[str, Any]] = []
    segmented: dict[int, _SegmentedInput] = {}
    for i, (path, name) in enumerate(zip(paths, names)):
        shown, stream = input_names(path)
        if is_complete(Path(output_dir) / name):
            results[i] = InputResult(input=shown, stream=stream, skipped=True, output=str(Path(output_dir) / name))
        elif not os.path.exists(path) and not path.startswith("lavfi:"):
            r = InputResult(input=shown, stream=stream)
            err = InputNotFoundError("no such file", input=shown, stage="decode", fix="check the path")
            _fail(r, type(err).__name__, str(err), "decode")
            results[i] = r
        elif segment_s is not None and (item := _plan_input(pipeline, spec, i, path, name, output_dir, segment_s)):
            segmented[i] = item
            for k, (start_s, end_s) in enumerate(item.spans):
                if k not in item.done:
                    todo.append({"index": i, "path": path, "name": name, "part": k, "dir": str(item.folder),
                                 "start_s": float(start_s), "end_s": -1.0 if end_s is None else float(end_s)})
            if item.finished:  # every part was done by an earlier run
                results[i] = _stitch(pipeline, spec, item, output_dir, parquet=parquet)
        else:
            todo.append({"index": i, "path": path, "name": name, "part": -1, "dir": "", "start_s": 0.0,
                         "end_s": -1.0})
    if progress is not None:
        progress(list(results.values()), len(paths))
    if todo:
        _run_on_ray(pipeline, spec, todo, output_dir, results, segmented, address=address,
                    cpus_per_input=cpus_per_input, parquet=parquet, progress=progress, on_segment=on_segment,
                    total=len(paths))
    ordered = [results[i] for i in range(len(paths))]
    _write_errors(Path(output_dir), [r for r in ordered if not r.ok])
    return ordered


def _worker_died(path: str) -> InputResult:
    shown, stream = input_names(path)
    r = InputResult(input=shown, stream=stream)
    _fail(r, "WorkerDied", "the worker processing this input died on every try (out of memory, or a crash "
                           "in native code); see the Ray logs", "runtime")
    return r


def _run_on_ray(pipeline: Pipeline, spec: dict[str, Any], todo: list[dict[str, Any]], output_dir: str,
                results: dict[int, InputResult], segmented: dict[int, _SegmentedInput], *, address: str | None,
                cpus_per_input: float, parquet: bool, progress: Callable[[list[InputResult], int], None] | None,
                on_segment: SegmentFn | None, total: int) -> None:
    import ray.data

    from streamzip.runtime.ray import init_ray, quiet_ray_logs

    init_ray(address)
    quiet_ray_logs()
    ctx = ray.data.DataContext.get_current()
    ctx.max_errored_blocks = len(todo)  # a dead worker costs its own input only
    ctx.enable_progress_bars = False

    def work(row: dict[str, Any]) -> dict[str, Any]:
        if row["part"] < 0:
            out = process_input(spec, row["path"], row["name"], output_dir, parquet=parquet)
        else:
            end_s = None if row["end_s"] < 0 else row["end_s"]
            out = process_input(_segment_spec(spec, row["start_s"], end_s), row["path"], _part_name(row["part"]),
                                row["dir"])
        return {"index": row["index"], "part": row["part"], "result": out}

    def finish(item: _SegmentedInput) -> None:
        results[item.index] = _stitch(pipeline, spec, item, output_dir, parquet=parquet)

    with warnings.catch_warnings():
        # Ray Data retries a task whose worker died forever by default; a file that crashes its
        # decoder would stall the job. `max_retries` is still passed this way in Ray < 2.64.
        warnings.simplefilter("ignore", DeprecationWarning)
        ds = ray.data.from_items(todo, override_num_blocks=len(todo)).map(
            work, num_cpus=cpus_per_input, max_retries=MAX_RETRIES)
    parts_total = sum(1 for t in todo if t["part"] >= 0)
    parts_done = 0
    for row in ds.iter_rows():
        r = _result_from(dict(row["result"]))
        index, k = int(row["index"]), int(row["part"])
        if k < 0:
            results[index] = r
        else:
            item = segmented[index]
            item.done[k] = r
            parts_done += 1
            if on_segment is not None:
                on_segment(r, parts_done, parts_total)
            if item.finished:
                finish(item)
        if progress is not None:
            progress(list(results.values()), total)
    for t in todo:  # tasks whose worker died on every try
        index, k = t["index"], t["part"]
        if k < 0 and index not in results:
            results[index] = _worker_died(t["path"])
        elif k >= 0 and k not in segmented[index].done:
            segmented[index].done[k] = _worker_died(t["path"])
            if segmented[index].finished:
                finish(segmented[index])

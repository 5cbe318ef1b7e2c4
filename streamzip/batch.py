"""Batch preprocessing: many files fanned out over Ray Data, one task per input.

Each input runs the whole pipeline in one task (for thousands of files, parallelism across files beats
splitting one file's stages over actors) and writes its output folder atomically. A re-run skips
inputs whose output is complete. An input that fails — bad media, a bug, a worker process that died
(after Ray's task retries) — becomes a record in ``OUTPUT/errors.jsonl`` and the job goes on.

Ray is imported inside :func:`run_batch` only, so this module stays importable without starting Ray.
"""

from __future__ import annotations

import os
import traceback
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from streamzip.errors import InputNotFoundError, StreamzipError
from streamzip.job import _write_errors, input_names, output_names
from streamzip.output import ensure_writable, is_complete, write_output
from streamzip.packets import Tokens
from streamzip.pipeline import Pipeline
from streamzip.sources._names import redact
from streamzip.stats import InputResult, StageStats

__all__ = ["MAX_RETRIES", "expand_inputs", "process_input", "run_batch"]

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
        manifest = {"input": result.input, "stream": result.stream, "pipeline": spec, "runtime": "batch",
                    "summary": result.to_dict()}
        folder = write_output(output_dir, name, packets, manifest=manifest,
                              keep_assignment=pipeline.keep_assignment)
        if parquet:
            write_parquet(folder, packets)
        result.output = str(folder)
    except StreamzipError as err:
        _fail(result, type(err).__name__, str(err), err.stage)
    except Exception as err:  # noqa: BLE001 - a bug must not cost the other inputs
        _fail(result, type(err).__name__, f"{err} — {traceback.format_exc(limit=3)}", None)
    return result.to_dict()


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


def run_batch(pipeline: Pipeline, inputs: Sequence[str], output_dir: str | os.PathLike[str], *,
              address: str | None = None, cpus_per_input: float = 1.0, parquet: bool = False,
              progress: Callable[[list[InputResult], int], None] | None = None) -> list[InputResult]:
    """Process every input over Ray Data; returns one :class:`InputResult` per input, in input order.

    Finished outputs are skipped (``skipped=True``). ``progress(results_so_far, total)`` is called
    as inputs finish.
    """
    pipeline.validate()
    output_dir = os.fspath(ensure_writable(output_dir))
    paths = expand_inputs(inputs)
    names = output_names(paths)
    results: dict[int, InputResult] = {}
    todo: list[dict[str, Any]] = []
    for i, (path, name) in enumerate(zip(paths, names)):
        shown, stream = input_names(path)
        if is_complete(Path(output_dir) / name):
            results[i] = InputResult(input=shown, stream=stream, skipped=True, output=str(Path(output_dir) / name))
        elif not os.path.exists(path) and not path.startswith("lavfi:"):
            r = InputResult(input=shown, stream=stream)
            err = InputNotFoundError("no such file", input=shown, stage="decode", fix="check the path")
            _fail(r, type(err).__name__, str(err), "decode")
            results[i] = r
        else:
            todo.append({"index": i, "path": path, "name": name})
    if progress is not None:
        progress(list(results.values()), len(paths))
    if todo:
        _run_on_ray(pipeline, todo, output_dir, results, address=address, cpus_per_input=cpus_per_input,
                    parquet=parquet, progress=progress, total=len(paths))
    ordered = [results[i] for i in range(len(paths))]
    _write_errors(Path(output_dir), [r for r in ordered if not r.ok])
    return ordered


def _run_on_ray(pipeline: Pipeline, todo: list[dict[str, Any]], output_dir: str, results: dict[int, InputResult],
                *, address: str | None, cpus_per_input: float, parquet: bool,
                progress: Callable[[list[InputResult], int], None] | None, total: int) -> None:
    import ray.data

    from streamzip.runtime.ray import init_ray, quiet_ray_logs

    init_ray(address)
    quiet_ray_logs()
    spec = pipeline.to_dict()
    ctx = ray.data.DataContext.get_current()
    ctx.max_errored_blocks = len(todo)  # a dead worker costs its own input only
    ctx.enable_progress_bars = False

    def work(row: dict[str, Any]) -> dict[str, Any]:
        out = process_input(spec, row["path"], row["name"], output_dir, parquet=parquet)
        return {"index": row["index"], "result": out}

    with warnings.catch_warnings():
        # Ray Data retries a task whose worker died forever by default; a file that crashes its
        # decoder would stall the job. `max_retries` is still passed this way in Ray < 2.64.
        warnings.simplefilter("ignore", DeprecationWarning)
        ds = ray.data.from_items(todo, override_num_blocks=len(todo)).map(
            work, num_cpus=cpus_per_input, max_retries=MAX_RETRIES)
    for row in ds.iter_rows():
        r = _result_from(dict(row["result"]))
        results[int(row["index"])] = r
        if progress is not None:
            progress(list(results.values()), total)
    for item in todo:
        if item["index"] not in results:
            shown, stream = input_names(item["path"])
            r = InputResult(input=shown, stream=stream)
            _fail(r, "WorkerDied", "the worker processing this input died on every try (out of memory, or a crash "
                                   "in native code); see the Ray logs", "runtime")
            results[item["index"]] = r

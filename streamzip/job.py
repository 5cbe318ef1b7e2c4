"""A job: a pipeline over several inputs, each written to its own output, none lost to another's error.

This is what ``streamzip run`` does. An input that fails (a missing file, not media, no usable
stream…) becomes an error record — in the summary and in ``OUTPUT/errors.jsonl`` — and the job goes on
with the next input.
"""

from __future__ import annotations

import hashlib
import json
import os
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from streamzip.errors import StreamzipError
from streamzip.output import ensure_writable, output_name, write_output
from streamzip.packets import Tokens
from streamzip.pipeline import Pipeline
from streamzip.runtime import get_runtime
from streamzip.sources._names import display_name, redact, stream_name
from streamzip.stats import InputResult

__all__ = ["ERRORS_FILE", "input_names", "output_names", "run_job"]

ERRORS_FILE = "errors.jsonl"


def input_names(path: str) -> tuple[str, str]:
    """(display name, stream id) of an input. Never raises: a malformed URL (a port that is not a
    number…) is named by its redacted text, and fails later as that input's own error."""
    try:
        return display_name(path), stream_name(path)
    except ValueError:
        return redact(path), "input"


def output_names(inputs: Sequence[str]) -> list[str]:
    """Output folder names for inputs; inputs sharing a file name get a short hash of their path,
    so ``a/clip.mp4`` and ``b/clip.mp4`` never overwrite each other."""
    names = [output_name(stream_name(p)) for p in inputs]
    counts: dict[str, int] = {}
    for n in names:
        counts[n] = counts.get(n, 0) + 1
    out = []
    for p, n in zip(inputs, names):
        if counts[n] > 1:
            digest = hashlib.sha1(os.path.abspath(p).encode()).hexdigest()[:8]
            n = output_name(f"{n}-{digest}")
        out.append(n)
    return out


def run_job(pipeline: Pipeline, inputs: Sequence[str], output_dir: str | os.PathLike[str] | None, *,
            runtime: str = "local", progress: Callable[[InputResult], None] | None = None,
            on_start: Callable[[InputResult], None] | None = None,
            runtime_options: dict[str, Any] | None = None) -> list[InputResult]:
    """Run ``pipeline`` on every input; write each input's tokens under ``output_dir`` (when given).

    Returns one :class:`InputResult` per input, in order. Raises only for problems of the whole job
    (an invalid pipeline); an input's problem is recorded in its result.
    """
    pipeline.validate()
    if output_dir is not None:
        ensure_writable(output_dir)
    rt = get_runtime(runtime, **(runtime_options or {}))
    results: list[InputResult] = []
    names = output_names(inputs)
    for path, name in zip(inputs, names):
        shown, stream = input_names(path)
        result = InputResult(input=shown, stream=stream)
        results.append(result)
        if on_start is not None:
            on_start(result)
        rt.progress = progress
        try:
            packets = [p for p in rt.run_input(pipeline, path, result) if isinstance(p, Tokens)]
            if output_dir is not None:
                manifest = {"input": result.input, "stream": result.stream, "pipeline": pipeline.to_dict(),
                            "runtime": runtime, "summary": result.to_dict()}
                result.output = str(write_output(output_dir, name, packets, manifest=manifest,
                                                 keep_assignment=pipeline.keep_assignment))
        except StreamzipError as err:
            result.ok = False
            result.error = redact(str(err))
            result.error_type = type(err).__name__
            result.stage = err.stage
        except Exception as err:  # noqa: BLE001 - a bug met on one input must not cost the others
            result.ok = False
            result.error = redact(f"{type(err).__name__}: {err} — {traceback.format_exc(limit=3)}")
            result.error_type = type(err).__name__
    if output_dir is not None:
        _write_errors(Path(output_dir), [r for r in results if not r.ok])
    return results


def _write_errors(out_dir: Path, failed: list[InputResult]) -> None:
    path = out_dir / ERRORS_FILE
    if not failed:
        if path.exists():
            path.unlink()
        return
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = out_dir / f".{ERRORS_FILE}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as fh:
        for r in failed:
            fh.write(json.dumps({"input": r.input, "stage": r.stage, "error_type": r.error_type,
                                 "message": r.error}) + "\n")
    os.replace(tmp, path)

"""Every broken input of the corpus, under the ``patch_only`` and ``default`` pipelines: no crash, no hang,
and either tokens for the decodable part or a typed error naming the input; then whole jobs (local and
Ray batch) where the good inputs' outputs come out byte-identical to runs without the broken ones."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from _hardening import bounded
from corpus import CASES, EITHER, TOKENS, Case

import streamzip.errors as errors_module
from streamzip.errors import InputError
from streamzip.job import ERRORS_FILE, output_names, run_job
from streamzip.output import TOKENS as TOKENS_FILE
from streamzip.output import is_complete, load, write_output
from streamzip.packets import Tokens
from streamzip.pipeline import load_pipeline
from streamzip.runtime.local import LocalRuntime
from streamzip.stats import InputResult

#: generous: the slowest case takes a few seconds on 2 busy cores; a hang takes forever.
CASE_TIMEOUT_S = 90
JOB_TIMEOUT_S = 420
BY_NAME = {c.name: c for c in CASES}
#: token groups that are the compressed stream itself (memory and read packets re-present them).
STREAM_KINDS = ("tokens", "window")


def stream_groups(out) -> dict[str, int]:  # type: ignore[no-untyped-def]
    return {g: v["num_tokens"] for g, v in out.manifest["groups"].items() if g.split("/")[0] in STREAM_KINDS}


def check_result(case: Case, pipeline: str, r: InputResult, path: Path, out_dir: Path) -> None:
    """What the engine made of ``case`` is what the corpus says it must."""
    expect = case.expect(pipeline)
    if r.ok:
        assert expect in (TOKENS, EITHER), f"{case.name}: expected {expect}, but it gave tokens"
        out = load(r.output)  # complete and readable
        groups = stream_groups(out)
        assert sum(groups.values()) > 0 and r.tokens_out > 0, (
            f"{case.name}: a success with no tokens; nothing decoded must be a CorruptMediaError, "
            f"never an empty output ({r.to_dict()})")
        assert r.frames >= case.min_frames, (f"{case.name}: {r.frames} frames sampled, the file holds "
                                              f"{case.min_frames} or more: decodable content was dropped")
        if case.max_media_s is not None:
            assert r.media_s <= case.max_media_s, f"{case.name}: claims {r.media_s:.1f} s of media"
            for g in groups:
                assert float(out.tensors[f"{g}.t1"].max()) <= case.max_media_s, f"{case.name}: {g} past the media"
        if case.audio and pipeline == "default":
            assert any(g.endswith("/audio") and n > 0 for g, n in groups.items()), f"{case.name}: no audio tokens"
        if case.ordered:
            for g in groups:
                t0 = out.tensors[f"{g}.t0"]
                assert bool((t0[1:] >= t0[:-1]).all()), f"{case.name}: {g} tokens out of time order"
        return
    assert expect != TOKENS, f"{case.name}: expected tokens, got {r.error_type}: {r.error}"
    allowed = (InputError,) if expect == EITHER else (expect if isinstance(expect, tuple) else (expect,))
    raised = getattr(errors_module, str(r.error_type), None)
    assert isinstance(raised, type) and issubclass(raised, allowed), (
        f"{case.name}: expected {[a.__name__ for a in allowed]}, got {r.error_type}: {r.error}")
    assert path.name in str(r.error), f"{case.name}: the message does not name the input: {r.error}"
    assert "Fix:" in str(r.error), f"{case.name}: the message does not say what to do: {r.error}"
    assert r.output is None and not (out_dir / output_names([str(path)])[0]).exists()


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
@pytest.mark.parametrize("pipeline", ["patch_only", "default"])
def test_an_input_gives_tokens_or_a_typed_error_naming_it(pipeline, case, corpus, tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = corpus[case.name]
    pipe = load_pipeline(pipeline)
    [result] = bounded(lambda: run_job(pipe, [str(path)], tmp_path), CASE_TIMEOUT_S, f"{pipeline} on {case.name}")
    check_result(case, pipeline, result, path, tmp_path)
    if not result.ok:
        [record] = [json.loads(line) for line in (tmp_path / ERRORS_FILE).read_text().splitlines()]
        assert record["input"] == str(path) and record["error_type"] == result.error_type


def test_the_corpus_covers_the_issue() -> None:
    assert len(CASES) >= 30 and len(BY_NAME) == len(CASES)
    outcomes = {c.default if isinstance(c.default, str) else "error" for c in CASES}
    assert {TOKENS, EITHER, "error"} <= outcomes


def test_the_same_tokens_make_the_same_bytes(good, tmp_path) -> None:  # type: ignore[no-untyped-def]
    packets = [p for p in LocalRuntime().run(load_pipeline("patch_only"), [str(good[0])]) if isinstance(p, Tokens)]
    blobs = {(write_output(tmp_path, f"out{i}", packets) / TOKENS_FILE).read_bytes() for i in range(8)}
    assert len(blobs) == 1, "identical tokens written twice must give identical files"


# -- whole jobs: a broken input costs nothing to the others ---------------------------------------
def mixed_inputs(corpus: dict[str, Path], good: list[Path]) -> list[str]:
    """The corpus with the good clips spread through it (after broken inputs, so nothing a broken one
    leaves behind can hide). Folders are left out: ``batch`` expands them into their files."""
    broken = [str(corpus[c.name]) for c in CASES if c.name != "a_folder.mp4"]
    third = len(broken) // 3
    return [*broken[:third], str(good[0]), *broken[third:2 * third], str(good[1]), *broken[2 * third:],
            str(good[2])]


@pytest.fixture(scope="module")
def reference(good, tmp_path_factory) -> dict[str, bytes]:  # type: ignore[no-untyped-def]
    """tokens.safetensors bytes of each good clip, run alone (without any broken input)."""
    out = tmp_path_factory.mktemp("reference")
    results = run_job(load_pipeline("default"), [str(p) for p in good], out)
    assert all(r.ok for r in results)
    return {p.name: (Path(r.output) / TOKENS_FILE).read_bytes() for p, r in zip(good, results)}  # type: ignore[arg-type]


def check_job(inputs: list[str], results: list[InputResult], out: Path, good: list[Path],
              reference: dict[str, bytes]) -> None:
    assert len(results) == len(inputs)
    by_input = dict(zip(inputs, results))
    for p in good:
        r = by_input[str(p)]
        assert r.ok, r.error
        folder = Path(r.output)  # type: ignore[arg-type]
        assert is_complete(folder) and folder.parent == out
        assert (folder / TOKENS_FILE).read_bytes() == reference[p.name], f"{p.name} differs from its clean run"
    for path, r in by_input.items():
        name = os.path.basename(path)
        if name in BY_NAME:
            check_result(BY_NAME[name], "default", r, Path(path), out)
    failed = [r.input for r in results if not r.ok]
    records = [json.loads(line) for line in (out / ERRORS_FILE).read_text().splitlines()]
    assert [rec["input"] for rec in records] == failed
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")], "temporary folders left behind"


def test_a_local_job_over_the_corpus_keeps_every_good_output(corpus, good, reference, tmp_path) -> None:  # type: ignore[no-untyped-def]
    inputs = mixed_inputs(corpus, good)
    out = tmp_path / "out"
    results = bounded(lambda: run_job(load_pipeline("default"), inputs, out), JOB_TIMEOUT_S, "run_job")
    check_job(inputs, results, out, good, reference)


def test_a_ray_batch_over_the_corpus_keeps_every_good_output(corpus, good, tmp_path) -> None:  # type: ignore[no-untyped-def]
    import ray

    from streamzip.batch import run_batch
    from streamzip.runtime.ray import init_ray

    inputs = mixed_inputs(corpus, good)
    pipe = load_pipeline("default")
    started = not ray.is_initialized()
    init_ray(num_cpus=2)
    try:
        # The clean run is a batch too: Ray workers run torch and FAISS on one thread each, and float
        # sums in another order may give other bits than this process's local run.
        clean = bounded(lambda: run_batch(pipe, [str(p) for p in good], tmp_path / "clean"), JOB_TIMEOUT_S,
                        "run_batch (good inputs only)")
        results = bounded(lambda: run_batch(pipe, inputs, tmp_path / "out"), JOB_TIMEOUT_S, "run_batch")
    finally:
        if started:
            ray.shutdown()
    assert all(r.ok for r in clean)
    reference = {p.name: (Path(r.output) / TOKENS_FILE).read_bytes() for p, r in zip(good, clean)}  # type: ignore[arg-type]
    check_job(inputs, results, tmp_path / "out", good, reference)

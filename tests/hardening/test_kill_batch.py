"""Faults: ``kill -9`` of ``streamzip run`` in the middle of a job, then ``streamzip batch`` over the same
inputs. No partial output is ever visible, finished inputs are skipped, and the final outputs are
byte-identical to a clean run's."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from streamzip.errors import InputError
from streamzip.job import output_names
from streamzip.output import TOKENS, is_complete, load
from streamzip.synthetic import make_clip

#: Ray workers run torch and FAISS on one thread; the local runs here do too, so that outputs written
#: by either can be compared bit for bit (float sums in another order give other bits).
ENV = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
RUN_TIMEOUT_S = 300


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> list[str]:  # type: ignore[no-untyped-def]
    folder = tmp_path_factory.mktemp("kill-media")
    return [make_clip(folder / f"clip{i}.mp4", scenes=(("pan", 2), ("motion", 2), ("static", 2)), width=160,
                      height=96, fps=10, speech=[(0.5, 2.5), (3.5, 5.0)], seed=20 + i).path for i in range(4)]


def streamzip(*args: str, timeout_s: float = RUN_TIMEOUT_S) -> subprocess.CompletedProcess[str]:
    res = subprocess.run([sys.executable, "-m", "streamzip", *args], capture_output=True, text=True, env=ENV,
                         timeout=timeout_s)
    assert res.returncode == 0, res.stdout + res.stderr
    return res


def visible(out: Path) -> list[Path]:
    return sorted(p for p in out.iterdir() if p.is_dir() and not p.name.startswith("."))


def kill_when_first_output_appears(inputs: list[str], out: Path) -> None:
    """Start ``streamzip run``, and SIGKILL it (its whole process group) as soon as its first output
    folder shows up, while it works on the next input."""
    proc = subprocess.Popen([sys.executable, "-m", "streamzip", "run", "default", *[a for p in inputs for a in ("-i", p)],
                             "-o", str(out), "--runtime", "local", "-q"], env=ENV, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + RUN_TIMEOUT_S
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if out.is_dir() and visible(out):
                break
            time.sleep(0.005)
        assert proc.poll() is None, f"the run ended before it could be killed: {proc.stderr.read()}"  # type: ignore[union-attr]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(30)
    assert proc.returncode == -signal.SIGKILL


def test_a_killed_run_leaves_no_partial_output_and_a_rerun_finishes_identically(inputs, tmp_path) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "out"
    kill_when_first_output_appears(inputs, out)

    # Nothing partial is visible: every folder a reader sees is complete and loads.
    names = output_names(inputs)
    done = visible(out)
    assert 1 <= len(done) < len(inputs), "killed too late: every input had finished"
    for folder in done:
        assert folder.name in names and is_complete(folder)
        load(folder)
    # What a kill leaves is hidden (a temporary folder mid-write): nothing takes it for an output.
    leftover = out / f".{names[-1]}.tmp-999999-deadbeef"
    leftover.mkdir()
    (leftover / TOKENS).write_bytes(b"\x00" * 10)  # a partly written file, as a kill mid-write leaves
    with pytest.raises(InputError, match="no streamzip output here"):
        load(leftover)
    before = {f.name: (f / TOKENS).stat().st_mtime_ns for f in done}

    # The re-run skips what is finished and does the rest.
    res = streamzip("batch", "-p", "default", "-o", str(out), "-q", *inputs)
    assert f"{len(done)} already done (skipped)" in res.stdout, res.stdout
    assert {f.name: (out / f.name / TOKENS).stat().st_mtime_ns for f in done} == before, "finished work redone"
    assert [f.name for f in visible(out)] == sorted(names)
    assert leftover.is_dir(), "the re-run must not touch what it does not own"
    assert not (out / "errors.jsonl").exists()

    # ... and ends where a clean run ends, byte for byte.
    clean = tmp_path / "clean"
    streamzip("run", "default", *[a for p in inputs for a in ("-i", p)], "-o", str(clean), "--runtime", "local", "-q")
    for name in names:
        assert (out / name / TOKENS).read_bytes() == (clean / name / TOKENS).read_bytes(), f"{name} differs"

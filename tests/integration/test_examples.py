"""Every example in examples/ runs (the ones a newcomer copies from must not rot)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = sorted((Path(__file__).resolve().parents[2] / "examples").glob("*.py"))


@pytest.mark.parametrize("script", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_example_runs(script: Path) -> None:
    args = [sys.executable, str(script)]
    if script.name == "train_ttm.py":
        args += ["--steps", "60", "--eval", "64"]  # a smoke run; the full run is the example itself
    res = subprocess.run(args, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.strip()

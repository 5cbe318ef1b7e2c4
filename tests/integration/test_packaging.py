"""The wheel holds streamzip.operators and streamzip.pipelines, and no top-level operators/pipelines."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_wheel_layout(tmp_path) -> None:  # type: ignore[no-untyped-def]
    # No build isolation: the build uses the setuptools already installed, so nothing is downloaded.
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(tmp_path), str(ROOT)], check=True, timeout=300, capture_output=True)
    wheel = next(tmp_path.glob("streamzip-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert "streamzip/operators/__init__.py" in names
    assert "streamzip/pipelines/default.yaml" in names
    assert "streamzip/py.typed" in names
    tops = {n.split("/", 1)[0] for n in names if "/" in n}
    assert "operators" not in tops and "pipelines" not in tops
    entry = next(n for n in names if n.endswith("entry_points.txt"))
    assert "streamzip = streamzip.cli:main" in zipfile.ZipFile(wheel).read(entry).decode()

"""What every benchmark script shares: the machine and versions, medians, and the JSON result file."""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> dict[str, Any]:
    """CPU, core count, memory and library versions, for the result file."""
    info: dict[str, Any] = {"python": platform.python_version(), "platform": platform.platform(),
                            "cpus": os.cpu_count(), "processor": platform.processor()}
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    info["cpu_model"] = line.split(":", 1)[1].strip()
                    break
        with open("/proc/meminfo") as fh:
            info["mem_total_kb"] = int(fh.readline().split()[1])
    except OSError:
        pass
    try:
        from streamzip.output import versions

        info["versions"] = versions()
    except Exception:  # noqa: BLE001 - a benchmark still reports without streamzip importable
        pass
    try:
        info["git"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                     cwd=Path(__file__).parent).stdout.strip()
    except OSError:
        pass
    return info


def median_time(fn: Callable[[], Any], repeats: int = 3) -> tuple[float, list[float]]:
    """Median wall seconds of ``repeats`` calls (and every time)."""
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), times


def write_result(name: str, result: dict[str, Any]) -> Path:
    """Write ``results/NAME.json`` with the machine and the date; print it; return the path."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    doc = {"benchmark": name, "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "machine": machine(), **result}
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(doc, indent=1))
    print(json.dumps({k: v for k, v in doc.items() if k != "machine"}, indent=1))
    return path

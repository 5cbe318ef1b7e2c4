"""Pins the public API: a change here is a change users see."""

from __future__ import annotations

import streamzip


def test_public_names() -> None:
    assert sorted(streamzip.__all__) == sorted([
        "AUDIO", "VIDEO", "AudioChunk", "BackendError", "Config", "ConfigError", "CorruptMediaError",
        "DecodeConfig", "DependencyError", "End", "FileSource", "Gap", "InputError", "InputNotFoundError", "ModelError",
        "NoStreamError", "NotMediaError", "Operator", "OutputError", "Packet", "Pipeline", "Problem",
        "SnapshotError", "StreamzipError", "TokenError", "Tokens", "VideoFrames", "__version__", "load",
        "load_pipeline", "register",
    ])
    for name in streamzip.__all__:
        assert hasattr(streamzip, name), name


def test_operators_and_pipelines_install_under_streamzip() -> None:
    from pathlib import Path

    import streamzip.operators
    import streamzip.pipelines

    assert Path(streamzip.operators.__file__).parent.name == "operators"
    assert Path(streamzip.pipelines.__file__).parent.name == "pipelines"
    assert "default" in streamzip.pipelines.builtin_names()


def test_only_the_ray_runtime_and_batch_import_ray() -> None:
    """Ray is the Ray runtime's business (and Ray Data the batch command's): no other module imports
    it, and ``import streamzip`` with the local runtime and the manifests never loads it."""
    import ast
    import subprocess
    import sys
    from pathlib import Path

    root = Path(streamzip.__file__).resolve().parents[1]
    importers = set()
    for path in [*(root / "streamzip").rglob("*.py"), *(root / "operators").rglob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else [])
            if any(n == "ray" or n.startswith("ray.") for n in names):
                importers.add(path.relative_to(root).as_posix())
    # The Ray runtime is streamzip.runtime.ray and its private modules (runtime/_ray_*.py).
    runtime = {p for p in importers if p == "streamzip/runtime/ray.py"
               or (p.startswith("streamzip/runtime/_ray_") and p.count("/") == 2)}
    assert "streamzip/runtime/ray.py" in runtime and importers - runtime == {"streamzip/batch.py"}
    code = ("import sys, streamzip, streamzip.k8s, streamzip.runtime.groups, streamzip.runtime.local, "
            "streamzip.pipeline; streamzip.k8s.plan_resources(streamzip.load_pipeline('default'), "
            "streamzip.k8s.OVERLAYS['dev']); print('ray' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "False"

"""Without PyAV: the package, its configs, the registry, the operators, pipelines and the Kubernetes
planner load and work; only opening media needs it, and then the error names the fix.

PyAV stays a hard dependency (pyproject.toml); this is about a broken or missing install failing
where media is read, with a clear message, instead of at ``import streamzip``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from streamzip import k8s
from streamzip.registry import available

ROOT = Path(__file__).resolve().parents[2]

# Run in a fresh interpreter where `import av` fails, as it does when PyAV is not installed.
CODE = """
import json, sys
sys.modules["av"] = None  # `import av` (and `import av.error`) now raise ImportError

import streamzip, streamzip.config, streamzip.k8s, streamzip.operators, streamzip.pipeline, streamzip.registry
from streamzip.runtime.local import LocalRuntime

pipe = streamzip.load_pipeline(sys.argv[1])
pipe.validate()
steps = [type(op).__name__ for op in pipe.build("s")]
errors = {}
for name, attempt in (("source", lambda: list(streamzip.FileSource(sys.argv[2]))),
                      ("runtime", lambda: list(LocalRuntime().run(pipe, [sys.argv[2]])))):
    try:
        attempt()
    except streamzip.DependencyError as err:
        errors[name] = {"message": str(err), "fix": err.fix, "import_error": isinstance(err, ImportError)}
print(json.dumps({"steps": steps, "registry": sorted(streamzip.registry.available()),
                  "manifests": streamzip.k8s.default_manifests(), "errors": errors,
                  "av_imported": sys.modules.get("av") is not None}))
"""


def test_streamzip_works_without_pyav_until_media_is_opened() -> None:
    source = "lavfi:testsrc2=size=64x64:rate=10:duration=1"
    run = subprocess.run([sys.executable, "-c", CODE, str(ROOT / "pipelines" / "default.yaml"), source],
                         capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert run.returncode == 0, run.stderr
    got = json.loads(run.stdout.strip().splitlines()[-1])
    assert not got["av_imported"]
    assert got["steps"] == ["PatchEncoder", "VAD", "FbankEncoder", "FrameFusion", "DPCKNN", "ATome", "Window",
                            "TokenMemory"]
    # every operator and encoder of the package registers without PyAV (other tests add their own)
    assert got["registry"] == sorted(n for n, info in available().items() if info.cls.__module__.startswith("streamzip."))
    assert got["manifests"] == k8s.default_manifests()  # the same manifests as with PyAV
    assert set(got["errors"]) == {"source", "runtime"}  # decoding is the one thing that fails…
    for err in got["errors"].values():  # …with a clear error that names the fix
        assert err["import_error"]
        assert "PyAV" in err["message"] and "cannot be imported" in err["message"]
        assert err["fix"].startswith("pip install av")
    assert source in got["errors"]["runtime"]["message"]  # the runtime names the input

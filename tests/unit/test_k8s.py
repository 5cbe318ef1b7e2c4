"""Kubernetes deployment (issue 8): the image, the generated KubeRay manifests, their offline validation.

Validation without a cluster: every pod template is checked as a ``v1 Pod`` by kubernetes-validate in
strict mode; RayCluster/RayJob bodies against the ``openAPIV3Schema`` of the KubeRay CRDs (read from
``$STREAMZIP_KUBERAY_CRDS``, never copied into the project), made strict the way the API server's
strict field validation is: an object schema with ``properties`` takes no other field.
"""

from __future__ import annotations

import argparse
import functools
import math
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from streamzip import k8s
from streamzip.errors import ConfigError
from streamzip.pipeline import Pipeline, load_pipeline
from streamzip.runtime.groups import stage_groups
from streamzip.sources._names import redact

ROOT = Path(__file__).resolve().parents[2]
RENDERED = ROOT / "k8s" / "rendered"
DOCKERFILE = ROOT / "k8s" / "Dockerfile"
#: the oldest Kubernetes the manifests claim (docs/deploy.md) and the newest the validator knows.
K8S_VERSIONS = ("1.30.0", kubernetes_validate.latest_version())
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


# -- validators -------------------------------------------------------------------------------------
def crd_dir() -> Path:
    env = os.environ.get("STREAMZIP_KUBERAY_CRDS")
    if env:
        path, origin = Path(env), "STREAMZIP_KUBERAY_CRDS"
    elif not os.environ.get("CI"):
        path, origin = ROOT.parent / "shared" / "k8s" / "kuberay-crds", "the fallback ../shared/k8s/kuberay-crds"
    else:
        pytest.fail("STREAMZIP_KUBERAY_CRDS is not set: point it at a folder holding the KubeRay CRDs "
                    "(ray.io_rayclusters.yaml, ray.io_rayjobs.yaml); .ci/run sets it to ../shared/k8s/kuberay-crds")
    if not (path / "ray.io_rayclusters.yaml").is_file():
        pytest.fail(f"no KubeRay CRDs in {path} (from {origin}); set STREAMZIP_KUBERAY_CRDS to the folder holding "
                    "ray.io_rayclusters.yaml and ray.io_rayjobs.yaml from ray-project/kuberay "
                    "ray-operator/config/crd/bases")
    return path


def strict(schema: Any) -> Any:
    """The schema with ``additionalProperties: false`` wherever the API server would reject unknown fields."""
    if isinstance(schema, list):
        return [strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: strict(v) for k, v in schema.items()}
    if "properties" in out and "additionalProperties" not in out and \
            not out.get("x-kubernetes-preserve-unknown-fields"):
        out["additionalProperties"] = False
    return out


@functools.cache
def crd_validator(kind: str) -> jsonschema.Draft4Validator:
    file = {"RayCluster": "ray.io_rayclusters.yaml", "RayJob": "ray.io_rayjobs.yaml"}[kind]
    with open(crd_dir() / file, encoding="utf-8") as fh:
        crd = yaml.load(fh, Loader=_LOADER)
    assert crd["spec"]["names"]["kind"] == kind
    (v1,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    return jsonschema.Draft4Validator(strict(v1["schema"]["openAPIV3Schema"]))


def pod_templates(manifest: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    spec = manifest["spec"]
    prefix = "spec"
    if manifest["kind"] == "RayJob":
        if "submitterPodTemplate" in spec:
            yield "spec.submitterPodTemplate", spec["submitterPodTemplate"]
        spec, prefix = spec["rayClusterSpec"], "spec.rayClusterSpec"
    yield f"{prefix}.headGroupSpec.template", spec["headGroupSpec"]["template"]
    for i, group in enumerate(spec.get("workerGroupSpecs", [])):
        yield f"{prefix}.workerGroupSpecs[{i}].template", group["template"]


def core_errors(obj: dict[str, Any], where: str) -> list[str]:
    errors = []
    for version in K8S_VERSIONS:
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as err:
            path = ".".join(str(p) for p in err.path)
            errors.append(f"{where} ({obj['kind']}, Kubernetes {version}) {path}: {err.message}")
    return errors


def validate(manifest: dict[str, Any]) -> tuple[list[str], int]:
    """Every problem found, and how many pod templates were checked."""
    kind = manifest["kind"]
    if kind not in ("RayCluster", "RayJob"):
        return core_errors(manifest, kind), 0
    errors = [f"{kind} {'.'.join(str(p) for p in e.absolute_path)}: {e.message}"
              for e in crd_validator(kind).iter_errors(manifest)]
    # The CRD leaves metadata to the API server: check it as a core object's.
    errors += core_errors({"apiVersion": "v1", "kind": "ConfigMap", "metadata": manifest["metadata"]},
                          f"{kind}.metadata")
    pods = 0
    for where, template in pod_templates(manifest):
        pods += 1
        meta = {"name": "validate", **template.get("metadata", {})}
        errors += core_errors({"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": template["spec"]},
                              f"{kind} {where}")
    return errors, pods


def load_docs(text: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(text) if d is not None]


def rendered_files() -> list[Path]:
    return sorted(RENDERED.rglob("*.yaml"))


def all_docs() -> list[dict[str, Any]]:
    return [d for f in rendered_files() for d in load_docs(f.read_text())]


def cluster_spec(manifest: dict[str, Any]) -> dict[str, Any]:
    return manifest["spec"]["rayClusterSpec"] if manifest["kind"] == "RayJob" else manifest["spec"]


def ray_manifests(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] in ("RayCluster", "RayJob")]


def gpu_pipeline(num_gpus: float = 0.25, num_cpus: float | None = None) -> Pipeline:
    pipe = load_pipeline("default")
    pipe.steps[0].resources = {"num_gpus": num_gpus, **({"num_cpus": num_cpus} if num_cpus is not None else {})}
    return pipe


JOB = {"kind": "job", "inputs": ["/data/videos/"], "output": "/data/tokens", "data_pvc": "videos"}
LIVE = {"kind": "cluster", "urls": ["rtsp://cam-1.local:554/s"]}


def test_missing_crds_fail_with_a_clear_message(tmp_path, monkeypatch):
    monkeypatch.setenv("STREAMZIP_KUBERAY_CRDS", str(tmp_path))
    with pytest.raises(pytest.fail.Exception, match="no KubeRay CRDs in .*STREAMZIP_KUBERAY_CRDS"):
        crd_dir()
    monkeypatch.delenv("STREAMZIP_KUBERAY_CRDS")
    monkeypatch.setenv("CI", "1")
    with pytest.raises(pytest.fail.Exception, match="STREAMZIP_KUBERAY_CRDS is not set"):
        crd_dir()


# -- the checked-in manifests -----------------------------------------------------------------------
def test_rendered_manifests_are_up_to_date_with_the_generator():
    expected = k8s.default_manifests()
    on_disk = {str(f.relative_to(RENDERED)): f.read_text() for f in rendered_files()}
    stale = sorted(p for p in expected if on_disk.get(p) != expected[p])
    orphans = sorted(set(on_disk) - set(expected))
    assert not stale and not orphans, (
        f"k8s/rendered is out of date (stale: {stale}, not generated: {orphans}); "
        "run `python -m streamzip.k8s defaults k8s/rendered` (or `streamzip k8s defaults`)")


@pytest.mark.parametrize("path", [str(p.relative_to(RENDERED)) for p in rendered_files()])
def test_checked_in_manifests_validate_strictly(path):
    docs = load_docs((RENDERED / path).read_text())
    kinds = [d["kind"] for d in docs]
    assert kinds in (["ConfigMap", "RayCluster", "Service"], ["ConfigMap", "RayJob"])
    pods = 0
    for doc in docs:
        errors, n = validate(doc)
        assert errors == []
        pods += n
    groups = len(cluster_spec(ray_manifests(docs)[0])["workerGroupSpecs"])
    assert pods == 1 + groups  # head + every worker group, none skipped


@pytest.mark.parametrize("options", [
    {**JOB, "overlay": "dev", "namespace": "media", "inputs": ["/data/in", "/data/more/a.mp4"]},
    {**JOB, "overlay": "prod", "storage_secret": "s3-creds", "streams_per_worker": 3},
    {**LIVE, "overlay": "dev", "image": "registry.example.com/team/streamzip:1.2.3", "secret": "cams"},
])
def test_rendered_options_validate_strictly(options):
    for doc in k8s.render(load_pipeline("default"), **options):
        assert validate(doc)[0] == []


@pytest.mark.parametrize("options,groups", [
    (LIVE, {"cpu-workers", "gpu-workers"}),  # the source and CPU stages stay on CPU workers
    (JOB, {"gpu-workers"}),  # a batch task runs the whole chain, so it goes where the GPUs are
])
def test_gpu_pipelines_get_a_gpu_group_that_validates(options, groups):
    docs = k8s.render(gpu_pipeline(), overlay="prod", **options)
    for doc in docs:
        assert validate(doc)[0] == []
    by_name = {g["groupName"]: g for g in cluster_spec(docs[1])["workerGroupSpecs"]}
    assert set(by_name) == groups
    spec = by_name["gpu-workers"]["template"]["spec"]
    assert spec["tolerations"][0]["key"] == "nvidia.com/gpu"
    assert spec["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"


# -- bad input: edited manifests ----------------------------------------------------------------------
def _edit(path: str, edit):
    docs = load_docs((RENDERED / path).read_text())
    edit(docs)
    return docs


@pytest.mark.parametrize("path,edit,field", [
    ("dev/cluster.yaml", lambda d: d[1]["spec"]["workerGroupSpecs"][0].update(maxReplica=3), "maxReplica"),
    ("dev/cluster.yaml", lambda d: d[1]["spec"].update(enableInTreeAutoscalin=True), "enableInTreeAutoscalin"),
    ("dev/cluster.yaml", lambda d: d[1]["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
     .update(resourcez={}), "resourcez"),
    ("dev/cluster.yaml", lambda d: d[1]["metadata"].update(lables={"a": "b"}), "lables"),
    ("prod/cluster-gpu.yaml", lambda d: d[1]["spec"]["workerGroupSpecs"][1]["template"]["spec"]
     .update(nodeSelecter={"gpu": "yes"}), "nodeSelecter"),
    ("dev/cluster.yaml", lambda d: d[2]["spec"]["ports"][0].update(targetPortt=8000), "targetPortt"),
    ("dev/job.yaml", lambda d: d[1]["spec"].update(entrypointt="x"), "entrypointt"),
    ("dev/job.yaml", lambda d: d[1]["spec"]["rayClusterSpec"]["headGroupSpec"].update(rayStartParam={}),
     "rayStartParam"),
    ("dev/job.yaml", lambda d: d[0].update(datas={}), "datas"),
    ("prod/cluster-gcs-ft.yaml", lambda d: d[1]["spec"]["gcsFaultToleranceOptions"].update(redisPasword={}),
     "redisPasword"),
    ("prod/cluster-gcs-ft.yaml", lambda d: d[1]["spec"]["gcsFaultToleranceOptions"]["redisPassword"]["valueFrom"]
     ["secretKeyRef"].update(keyy="x"), "keyy"),
])
def test_unknown_field_fails_validation(path, edit, field):
    docs = _edit(path, edit)
    errors = [e for doc in docs for e in validate(doc)[0]]
    assert errors and any(field in e for e in errors), errors


def test_wrong_types_and_values_fail_validation():
    docs = _edit("dev/cluster.yaml", lambda d: d[1]["spec"]["workerGroupSpecs"][0].update(replicas="2"))
    assert validate(docs[1])[0]
    docs = _edit("dev/cluster.yaml", lambda d: d[1]["spec"]["autoscalerOptions"].update(upscalingMode="Fast"))
    assert any("Fast" in e for e in validate(docs[1])[0])
    docs = _edit("dev/cluster.yaml", lambda d: d[1]["spec"]["headGroupSpec"]["rayStartParams"].update({"num-cpus": 0}))
    assert validate(docs[1])[0]  # rayStartParams values are strings
    docs = _edit("prod/cluster-gcs-ft.yaml", lambda d: d[1]["spec"]["gcsFaultToleranceOptions"]["redisPassword"]
                 ["valueFrom"]["secretKeyRef"].pop("key"))
    assert any("'key' is a required property" in e for e in validate(docs[1])[0])
    docs = _edit("prod/cluster-gcs-ft.yaml", lambda d: d[1]["spec"]["gcsFaultToleranceOptions"].update(redisAddress=6379))
    assert validate(docs[1])[0]


# -- invariants -------------------------------------------------------------------------------------
def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out, buf = [], ""
    for line in DOCKERFILE.read_text().splitlines():
        if not buf and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.rstrip().endswith("\\"):
            buf += line.rstrip()[:-1] + " "
            continue
        buf += line
        word, _, rest = buf.strip().partition(" ")
        out.append((word.upper(), rest.strip()))
        buf = ""
    return out


def dockerfile_args() -> dict[str, str]:
    return dict(rest.partition("=")[::2] for word, rest in dockerfile_instructions() if word == "ARG")


def test_ray_version_is_one_everywhere():
    pinned = dockerfile_args()["RAY_VERSION"]
    assert pinned == metadata.version("ray") == k8s.ray_version(), (
        f"k8s/Dockerfile pins Ray {pinned} but {metadata.version('ray')} is installed; the image, the manifests' "
        "rayVersion and pyproject's ray pin must change together")
    runs = [rest for word, rest in dockerfile_instructions() if word == "RUN"]
    assert any(re.search(r'"ray\[[a-z,]+\]==\$\{RAY_VERSION\}"', r) and "/src" in r for r in runs)
    for doc in ray_manifests(all_docs()):
        assert cluster_spec(doc)["rayVersion"] == pinned


def test_dockerfile_base_entrypoint_and_packages():
    ins = dockerfile_instructions()
    args = dockerfile_args()
    assert args["BASE_IMAGE"] == "python:3.11-slim"
    assert [rest for word, rest in ins if word == "FROM"] == ["${BASE_IMAGE}"]  # a CUDA base is a build argument
    assert ("ENTRYPOINT", '["streamzip"]') in ins
    apt = " ".join(rest for word, rest in ins if word == "RUN" and "apt-get install" in rest)
    packages = set(re.findall(r"apt-get install -y --no-install-recommends ([^;&]+)", apt)[0].split())
    assert "wget" in packages  # KubeRay's default probes run wget
    assert not packages & {"ffmpeg", "build-essential", "gcc", "libavcodec-dev"}  # PyAV wheels bundle FFmpeg
    (user,) = [rest for word, rest in ins if word == "USER"]
    uid = int(user.split(":")[0])
    assert uid != 0 and uid == k8s.UID
    for doc in ray_manifests(all_docs()):
        for _, template in pod_templates(doc):
            assert template["spec"]["securityContext"]["runAsUser"] == uid


def test_dockerfile_copies_what_the_build_context_keeps():
    allowed = {line[1:] for line in (ROOT / "k8s" / "Dockerfile.dockerignore").read_text().splitlines()
               if line.startswith("!")}
    sources = [s for word, rest in dockerfile_instructions() if word == "COPY" for s in rest.split()[:-1]
               if not s.startswith("--")]
    assert sources
    for src in sources:
        assert (ROOT / src).exists(), src
        assert src in allowed, f"{src} is copied but k8s/Dockerfile.dockerignore leaves it out of the context"
    assert {"pyproject.toml", "streamzip", "operators", "pipelines"} <= set(sources)


def test_replicas_within_bounds():
    for doc in ray_manifests(all_docs()):
        for group in cluster_spec(doc)["workerGroupSpecs"]:
            assert 0 <= group["minReplicas"] <= group["replicas"] <= group["maxReplicas"], group["groupName"]
    for ov in k8s.OVERLAYS.values():
        for lo, n, hi in (ov.cpu_workers, ov.gpu_workers):
            assert 0 <= lo <= n <= hi


def expected_sizes(pipeline: Pipeline, kind: str, streams: int, gpus: int = 1) -> dict[str, Any]:
    """The documented resource model (docs/deploy.md), written out independently of the generator."""
    per_step = pipeline.resources()
    gpu_ids = [s for s, r in per_step.items() if r.get("num_gpus", 0) > 0]
    src = k8s.SOURCE_RESOURCES
    if kind == "job":  # one task per input: the source and every step in one process
        units = [src, *per_step.values()]
        one = {"cpu": sum(u.get("num_cpus", 0) for u in units), "gpu": sum(u.get("num_gpus", 0) for u in units),
               "mem": k8s.ACTOR_MEMORY_MB + sum(u.get("memory_mb", 0) for u in units)}
        demands = {"gpu-workers": one} if gpu_ids else {"cpu-workers": one}
    else:  # an actor process per group of steps and stream, as the Ray runtime groups them
        def memory(actor: list[str]) -> float:  # what its steps declare, else one process
            declared = [per_step[s]["memory_mb"] for s in actor if "memory_mb" in per_step[s]]
            return sum(declared) if declared else k8s.ACTOR_MEMORY_MB

        actors = [[pipeline.steps[i].id for i in g] for g in stage_groups(pipeline)]
        cpu_units = [src] + [r for s, r in per_step.items() if s not in gpu_ids]
        demands = {"cpu-workers": {"cpu": sum(a.get("num_cpus", 0) for a in cpu_units), "gpu": 0,
                                   "mem": src.get("memory_mb", k8s.ACTOR_MEMORY_MB)
                                   + sum(memory(a) for a in actors if not set(a) & set(gpu_ids))}}
        if gpu_ids:
            gpu_units = [per_step[s] for s in gpu_ids]
            demands["gpu-workers"] = {"cpu": sum(a.get("num_cpus", 0) for a in gpu_units),
                                      "gpu": sum(a["num_gpus"] for a in gpu_units),
                                      "mem": sum(memory(a) for a in actors if set(a) & set(gpu_ids))}
    out = {}
    for group, d in demands.items():
        n = int(gpus / d["gpu"] + 1e-9) if group == "gpu-workers" else streams
        store = max(512, 192 * n)  # docs/deploy.md: 192 MB per stream, at least 512 MB
        out[group] = {"num-cpus": max(1, -(-round(n * d["cpu"] * 1000) // 1000)), "per_stream": d,
                      "num-gpus": gpus if group == "gpu-workers" else 0,
                      "memory_mb": n * d["mem"] + store + 1024, "store_mb": store}
    return out


def mebibytes(quantity: str) -> int:
    value, unit = re.fullmatch(r"(\d+)(Mi|Gi)", quantity).groups()  # type: ignore[union-attr]
    return int(value) * (1024 if unit == "Gi" else 1)


@pytest.mark.parametrize("kind", ["cluster", "job"])
@pytest.mark.parametrize("pipeline,streams", [
    (load_pipeline("default"), 2),
    (load_pipeline("default"), 8),
    (Pipeline("heavy", decode={"fps": 2}).add("patch_encoder", id="enc", resources={"num_cpus": 1.5, "memory_mb": 900})
     .add("patch_encoder", id="enc2", resources={"num_cpus": 0.1}), 3),
    (gpu_pipeline(0.25), 8),
    (gpu_pipeline(0.5, num_cpus=1.0), 5),
])
def test_requested_resources_match_declared_stage_resources(pipeline, streams, kind):
    options = LIVE if kind == "cluster" else JOB
    (manifest,) = ray_manifests(k8s.render(pipeline, overlay="prod", streams_per_worker=streams, **options))
    expected = expected_sizes(pipeline, kind, streams)
    groups = {g["groupName"]: g for g in cluster_spec(manifest)["workerGroupSpecs"]}
    assert set(groups) == set(expected)
    for name, want in expected.items():
        params = groups[name]["rayStartParams"]
        (container,) = groups[name]["template"]["spec"]["containers"]
        res = container["resources"]
        assert int(params["num-cpus"]) == want["num-cpus"]
        assert res["requests"]["cpu"] == res["limits"]["cpu"] == params["num-cpus"]  # Ray sees what the pod gets
        assert int(params["object-store-memory"]) == want["store_mb"] * 2**20
        assert want["memory_mb"] <= mebibytes(res["requests"]["memory"]) < want["memory_mb"] + 256
        assert res["requests"]["memory"] == res["limits"]["memory"]
        if want["num-gpus"]:
            assert params["num-gpus"] == res["limits"]["nvidia.com/gpu"] == str(want["num-gpus"])
        else:
            assert "num-gpus" not in params and "nvidia.com/gpu" not in res["limits"]
    if kind == "job":  # each input's task reserves exactly what the worker sizes assume
        (want,) = expected.values()
        words = shlex.split(shlex.split(manifest["spec"]["entrypoint"])[2])
        assert float(words[words.index("--cpus-per-input") + 1]) == pytest.approx(want["per_stream"]["cpu"])


def test_a_step_override_changes_the_worker_size():
    base = k8s.plan_resources(load_pipeline("default"), k8s.OVERLAYS["prod"])
    pipe = load_pipeline("default")
    pipe.steps[0].resources = {"num_cpus": 2.0, "memory_mb": 3000}
    heavier = k8s.plan_resources(pipe, k8s.OVERLAYS["prod"])
    assert base.cpu is not None and heavier.cpu is not None
    per_stream = sum(r.get("num_cpus", 0.0) for r in pipe.resources().values()) + k8s.SOURCE_RESOURCES["num_cpus"]
    assert heavier.cpu.num_cpus == math.ceil(heavier.cpu.streams * per_stream) > base.cpu.num_cpus
    assert heavier.cpu.memory_mb > base.cpu.memory_mb


@settings(max_examples=40, deadline=None)
@given(cpus=st.lists(st.sampled_from([0.0, 0.05, 0.1, 0.25, 0.3, 0.5, 1.0, 2.5]), min_size=1, max_size=4),
       streams=st.integers(1, 16))
def test_worker_cpus_hold_the_streams_without_waste(cpus, streams):
    pipe = Pipeline("p")
    for i, c in enumerate(cpus):
        pipe.add("patch_encoder", id=f"s{i}", resources={"num_cpus": c})
    need = streams * (sum(cpus) + k8s.SOURCE_RESOURCES["num_cpus"])
    for kind in k8s.KINDS:
        plan = k8s.plan_resources(pipe, k8s.OVERLAYS["dev"], kind=kind, streams_per_worker=streams)
        assert plan.cpu is not None and plan.gpu is None
        assert plan.cpu.num_cpus >= need - 1e-9  # every stream's actors (or input's task) fit
        assert plan.cpu.num_cpus < max(1.0, need) + 1  # and less than one core is left over


def test_gpu_demand_above_a_worker_is_refused_with_the_fix():
    with pytest.raises(ConfigError, match="--gpus-per-worker 2"):
        k8s.render(gpu_pipeline(1.5), **LIVE)
    plan = k8s.plan_resources(gpu_pipeline(1.5), k8s.OVERLAYS["prod"], gpus_per_worker=2)
    assert plan.gpu is not None and plan.gpu.streams == 1 and plan.gpu.num_gpus == 2


_SECRETISH = re.compile(r"PASS|TOKEN|SECRET|KEY|CREDENTIAL|USER", re.I)


def strings(obj: Any) -> Iterator[str]:
    if isinstance(obj, str):
        yield obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield str(k)
            yield from strings(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from strings(v)


def containers(doc: dict[str, Any]) -> Iterator[dict[str, Any]]:
    if doc["kind"] in ("RayCluster", "RayJob"):
        for _, template in pod_templates(doc):
            yield from template["spec"]["containers"]


def test_no_secret_values_in_the_manifests():
    docs = all_docs() + k8s.render(load_pipeline("default"), overlay="prod", storage_secret="s3", **JOB)
    assert "Secret" not in {d["kind"] for d in docs}
    for doc in docs:
        for s in strings(doc):
            assert redact(s) == s, f"credentials in {doc['kind']}: {redact(s)}"
        for c in containers(doc):
            for env in c.get("env", []):
                if _SECRETISH.search(env["name"]):
                    assert "value" not in env and "secretKeyRef" in env["valueFrom"], env["name"]
            for src in c.get("envFrom", []):
                assert set(src) == {"secretRef"}
    ft = [cluster_spec(d)["gcsFaultToleranceOptions"] for d in ray_manifests(all_docs())
          if "gcsFaultToleranceOptions" in cluster_spec(d)]
    assert ft  # the checked-in example has one
    for options in ft:  # the Redis password by reference only
        assert set(options["redisPassword"]) == {"valueFrom"}
        assert set(options["redisPassword"]["valueFrom"]) == {"secretKeyRef"}
    live = [c for d in all_docs() for c in containers(d) if c["name"] == "streamzip-live"]
    assert live
    for c in live:
        refs = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in c["env"]}
        assert refs == {var: {"name": k8s.SECRET_NAME, "key": key, "optional": opt}
                        for var, key, opt in k8s.SECRET_ENV}


def test_credentials_in_a_url_are_refused():
    with pytest.raises(ConfigError) as err:
        k8s.render(load_pipeline("default"), kind="cluster", urls=["rtsp://admin:hunter2@cam-1.local/s"])
    assert "hunter2" not in str(err.value) and "Secret" in str(err.value)


def test_bad_options_are_all_listed_at_once():
    with pytest.raises(ConfigError) as err:
        k8s.render(load_pipeline("default"), kind="job", name="Bad_Name", inputs=[], output=None)
    paths = {p.path for p in err.value.problems}
    assert {"--name", "--input", "--output"} <= paths
    with pytest.raises(ConfigError) as err:
        k8s.render(load_pipeline("default"), kind="job", inputs=["/data/in", "videos/"], output="s3://b/out")
    text = str(err.value)
    assert "--data-pvc NAME" in text and "'videos/' is not under /data" in text and "local paths only" in text
    with pytest.raises(ConfigError, match="camera URL"):
        k8s.render(load_pipeline("default"), kind="cluster")


def test_an_invalid_pipeline_is_refused_at_render_time():
    bad = Pipeline("bad").add("no_such_step")
    with pytest.raises(ConfigError, match="no_such_step"):
        k8s.render(bad, **LIVE)


# -- GCS fault tolerance ----------------------------------------------------------------------------
#: what KubeRay injects itself once gcsFaultToleranceOptions is set, and refuses to find set by hand beside it
#: (ValidateRayClusterSpec), or sets with a value of its own (the workers' reconnect timeout, 600 s).
KUBERAY_GCS_FT_ENV = {"RAY_REDIS_ADDRESS", "REDIS_PASSWORD", "REDIS_USERNAME", "RAY_external_storage_namespace",
                      "RAY_gcs_rpc_server_reconnect_timeout_s"}


@pytest.mark.parametrize("overlay", sorted(k8s.OVERLAYS))
@pytest.mark.parametrize("address", ["redis:6379", "redis://redis.data.svc.cluster.local:6379",
                                     "rediss://redis.example.com:6380", "10.0.0.5:6379", "[fd00::5]:6379"])
def test_gcs_ft_renders_what_kuberay_needs_and_validates(overlay, address):
    pipe = load_pipeline("default")
    docs = k8s.render(pipe, overlay=overlay, gcs_ft_redis=address, gcs_ft_redis_secret="redis-auth", **LIVE)
    for doc in docs:
        assert validate(doc)[0] == []
    (cluster,) = ray_manifests(docs)
    spec = cluster["spec"]
    assert spec["gcsFaultToleranceOptions"] == {  # no backend (newer than KubeRay 1.6), no namespace (the UID)
        "redisAddress": address,
        "redisPassword": {"valueFrom": {"secretKeyRef": {"name": "redis-auth", "key": k8s.REDIS_PASSWORD_KEY}}}}
    # What KubeRay refuses beside gcsFaultToleranceOptions: the old annotations, Redis credentials set by hand.
    assert not {"ray.io/ft-enabled", "ray.io/external-storage-namespace"} & set(cluster["metadata"]["annotations"])
    assert not {"redis-password", "redis-username"} & set(spec["headGroupSpec"]["rayStartParams"])
    for c in containers(cluster):
        assert not KUBERAY_GCS_FT_ENV & {e["name"] for e in c.get("env", [])}, c["name"]
    # KubeRay puts the Redis settings into the head's first container and builds its Redis cleanup Job from it.
    assert spec["headGroupSpec"]["template"]["spec"]["containers"][0]["name"] == "ray-head"
    del spec["gcsFaultToleranceOptions"]
    assert cluster == ray_manifests(k8s.render(pipe, overlay=overlay, **LIVE))[0]  # nothing else changes


@pytest.mark.parametrize("address,fix", [
    ("redis", "'redis' has no port; give HOST:PORT, e.g. redis:6379"),
    ("[fd00::5]", "has no port; give HOST:PORT, e.g. [fd00::5]:6379"),
    ("redis://:hunter2@redis:6379", "'redis://***@redis:6379' carries credentials"),
    ("default:hunter2@redis:6379", "'***@redis:6379' carries credentials"),
    ("redis:6379/0", "HOST:PORT only (no database number)"),
    ("https://redis:6379", "the scheme must be redis:// or rediss://"),
    ("redis-a:6379,redis-b:6379", "give one Redis (HOST:PORT)"),
    ("redis:65536", "the port must be a number from 1 to 65535"),
    ("redis:port", "the port must be a number from 1 to 65535"),
    ("fd00::5:6379", "an IPv6 address goes in brackets"),
    ("", "is empty"),
])
def test_bad_gcs_ft_addresses_are_refused_with_the_fix(address, fix):
    with pytest.raises(ConfigError) as err:
        k8s.render(load_pipeline("default"), gcs_ft_redis=address, gcs_ft_redis_secret="redis-auth", **LIVE)
    assert [p.path for p in err.value.problems] == ["--gcs-ft-redis"]
    assert fix in str(err.value) and "hunter2" not in str(err.value)
    if "credentials" in fix:
        assert f"Secret under key {k8s.REDIS_PASSWORD_KEY}, pass --gcs-ft-redis-secret NAME" in str(err.value)


def test_gcs_ft_needs_its_secret_and_a_live_cluster():
    pipe = load_pipeline("default")
    with pytest.raises(ConfigError, match=r"--gcs-ft-redis-secret: .*a Redis without a password is not rendered.*"
                                          r"--from-file=redis-password=\./redis-pass\) and pass --gcs-ft-redis-secret"):
        k8s.render(pipe, gcs_ft_redis="redis:6379", **LIVE)
    with pytest.raises(ConfigError, match="--gcs-ft-redis-secret: is set but --gcs-ft-redis is not"):
        k8s.render(pipe, gcs_ft_redis_secret="redis-auth", **LIVE)
    with pytest.raises(ConfigError, match="'Redis_Auth' is not a Secret name"):
        k8s.render(pipe, gcs_ft_redis="redis:6379", gcs_ft_redis_secret="Redis_Auth", **LIVE)
    with pytest.raises(ConfigError) as err:  # a lost head fails a Ray job whatever the GCS keeps
        k8s.render(pipe, gcs_ft_redis="redis:6379", gcs_ft_redis_secret="redis-auth", **JOB)
    assert [p.path for p in err.value.problems] == ["--gcs-ft-redis"]
    assert "live cluster only" in str(err.value) and "drop --gcs-ft-redis for --kind job" in str(err.value)
    with pytest.raises(ConfigError) as err:  # listed with the other problems, at once
        k8s.render(pipe, kind="cluster", name="Bad_Name", gcs_ft_redis="redis")
    assert {"--name", "--url", "--gcs-ft-redis", "--gcs-ft-redis-secret"} <= {p.path for p in err.value.problems}


def test_cli_renders_gcs_ft_and_refuses_credentials(tmp_path, capsys):
    out = tmp_path / "live.yaml"
    live = ["render", "default", "--url", "rtsp://cam.local/s"]
    assert k8s.main([*live, "--gcs-ft-redis", "redis.data.svc:6379", "--gcs-ft-redis-secret", "redis-auth",
                     "-o", str(out)]) == 0
    text = out.read_text()
    assert text.splitlines()[1].endswith("--gcs-ft-redis redis.data.svc:6379 --gcs-ft-redis-secret redis-auth")
    (cluster,) = ray_manifests(load_docs(text))
    assert cluster["spec"]["gcsFaultToleranceOptions"]["redisAddress"] == "redis.data.svc:6379"
    capsys.readouterr()
    assert k8s.main([*live, "--gcs-ft-redis", "default:hunter2@redis:6379", "--gcs-ft-redis-secret", "x"]) == 2
    err = capsys.readouterr().err
    assert "--gcs-ft-redis: '***@redis:6379' carries credentials" in err and "hunter2" not in err


# -- the entry commands -----------------------------------------------------------------------------
def shim_env(tmp_path: Path) -> tuple[dict[str, str], Path]:
    """PATH with a `streamzip` that logs its arguments and runs `validate` for real (anything else only
    logs: that is where Ray work would start), and a `ray` whose health check passes."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "calls.log"
    (bin_dir / "streamzip").write_text(
        "#!/bin/sh\n"
        f'for a in "$@"; do printf "[%s]" "$a"; done >> {shlex.quote(str(log))}; echo >> {shlex.quote(str(log))}\n'
        f'if [ "$1" = validate ]; then exec {shlex.quote(sys.executable)} -m streamzip "$@"; fi\n'
        "exit 0\n")
    (bin_dir / "ray").write_text("#!/bin/sh\nexit 0\n")
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    return env, log


def head_command(entrypoint: str, env: dict[str, str]) -> str:
    """What the head runs for a RayJob: KubeRay's submitter puts the entrypoint into
    `bash -c "… ray job submit … -- ENTRYPOINT ; fi"`, and `ray job submit` shlex-joins the words it got."""
    joiner = f"{shlex.quote(sys.executable)} -c 'import shlex, sys; print(shlex.join(sys.argv[1:]))'"
    done = subprocess.run(["bash", "-c", f"{joiner} {entrypoint} ; true"], capture_output=True, text=True, env=env,
                          check=True)
    return done.stdout.strip()


BAD_PIPELINE = "name: bad\nsteps:\n  - {id: enc, op: patch_encodr}\n"


def test_invalid_pipeline_in_the_configmap_stops_the_job_before_ray(tmp_path):
    env, log = shim_env(tmp_path)
    (job,) = ray_manifests(k8s.render(load_pipeline("default"), **JOB))
    bad = tmp_path / "pipeline.yaml"
    bad.write_text(BAD_PIPELINE)
    command = head_command(job["spec"]["entrypoint"], env).replace(k8s.PIPELINE_PATH, str(bad))
    done = subprocess.run(command, shell=True, capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode != 0
    assert "patch_encodr" in done.stdout + done.stderr and "did you mean 'patch_encoder'" in done.stdout + done.stderr
    assert log.read_text().splitlines() == [f"[validate][{bad}]"]  # batch never ran


def test_valid_pipeline_reaches_batch_with_its_words_intact(tmp_path):
    env, log = shim_env(tmp_path)
    inputs = ["/data/in dir/", "/data/it's here.mp4"]
    (job,) = ray_manifests(k8s.render(load_pipeline("default"), kind="job", inputs=inputs, output="/data/out",
                                      data_pvc="videos"))
    good = tmp_path / "pipeline.yaml"
    good.write_text(load_pipeline("default").to_yaml())
    command = head_command(job["spec"]["entrypoint"], env).replace(k8s.PIPELINE_PATH, str(good))
    done = subprocess.run(command, shell=True, capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    calls = log.read_text().splitlines()
    plan = k8s.plan_resources(load_pipeline("default"), k8s.OVERLAYS["dev"], kind="job")
    cpus = plan.task.num_cpus if plan.task is not None else 1.0
    batch = [a.replace(k8s.PIPELINE_PATH, str(good)) for a in k8s.batch_argv(inputs, "/data/out", cpus)[1:]]
    assert calls == [f"[validate][{good}]", "".join(f"[{a}]" for a in batch)]


def test_invalid_pipeline_stops_the_live_driver_before_ray(tmp_path):
    env, log = shim_env(tmp_path)
    (cluster,) = ray_manifests(k8s.render(load_pipeline("default"), **LIVE))
    (driver,) = [c for c in cluster["spec"]["headGroupSpec"]["template"]["spec"]["containers"]
                 if c["name"] == "streamzip-live"]
    bad = tmp_path / "pipeline.yaml"
    bad.write_text(BAD_PIPELINE)
    command = [a.replace(k8s.PIPELINE_PATH, str(bad)) for a in driver["command"]]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode != 0 and "patch_encodr" in done.stdout + done.stderr
    assert log.read_text().splitlines() == [f"[validate][{bad}]"]  # live never ran


# -- the CLI ----------------------------------------------------------------------------------------
def test_add_cli_registers_k8s_render(tmp_path):
    parser = argparse.ArgumentParser(prog="streamzip")
    k8s.add_cli(parser.add_subparsers(dest="command", required=True))
    out = tmp_path / "job.yaml"
    args = parser.parse_args(["k8s", "render", "default", "--kind", "job", "--overlay", "prod", "--data-pvc", "v",
                              "--input", "/data/in/", "--output", "/data/out/", "-o", str(out)])
    assert args.func(args) == 0
    docs = load_docs(out.read_text())
    assert [d["kind"] for d in docs] == ["ConfigMap", "RayJob"]
    assert out.read_text().startswith("# Generated by:\n#   streamzip k8s render default --kind job --overlay prod")
    assert load_pipeline(docs[0]["data"]["pipeline.yaml"]).to_dict() == load_pipeline("default").to_dict()


def test_module_entry_point_renders_and_refuses_bad_pipelines(tmp_path, capsys):
    done = subprocess.run([sys.executable, "-m", "streamzip.k8s", "render", "default", "--url", "rtsp://cam.local/s"],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert [d["kind"] for d in load_docs(done.stdout)] == ["ConfigMap", "RayCluster", "Service"]
    bad = tmp_path / "bad.yaml"
    bad.write_text(BAD_PIPELINE)
    assert k8s.main(["render", str(bad), "--url", "rtsp://cam.local/s"]) == 2
    assert "patch_encodr" in capsys.readouterr().err


def test_defaults_command_writes_and_checks(tmp_path):
    assert k8s.main(["defaults", "--check", str(RENDERED)]) == 0
    assert k8s.main(["defaults", "--check", str(tmp_path)]) == 1
    assert k8s.main(["defaults", str(tmp_path)]) == 0
    assert k8s.main(["defaults", "--check", str(tmp_path)]) == 0
    assert sorted(p.name for p in tmp_path.rglob("*.yaml")) == sorted(p.name for p in rendered_files())

"""KubeRay manifests computed from a pipeline: ``streamzip k8s render PIPELINE``.

A generator rather than Kustomize base + overlays, because the size of a worker pod follows from the
pipeline: every stage declares what one of its actors asks of Ray (:meth:`Pipeline.resources`, with
per-step overrides), and the generator turns that into Ray's ``num-cpus``/``num-gpus``, the pod's
Kubernetes requests and the batch command's ``--cpus-per-input``, the same numbers everywhere. With
Kustomize they would be copied by hand into patches and drift from the stages. The environments are two
:class:`Overlay` values (``dev``, ``prod``); the default manifests are checked in under ``k8s/rendered/``
for users without Python (``streamzip k8s defaults`` rewrites them, a test keeps them current).

Resource model (docs/deploy.md puts numbers on it). A *stream* is one camera (live) or one input file
(batch), and what it asks follows the runtime that runs it:

* live (``cluster``): each group of steps is an actor per stream, as the Ray runtime runs them
  (:func:`~streamzip.runtime.groups.stage_groups`: consecutive light steps fused into one actor,
  encoders and GPU steps alone). CPU group per stream: the source (:data:`SOURCE_RESOURCES`, the
  decoder) plus every step that asks no GPU, ``num_cpus`` summed; memory summed over those actor
  processes (an actor's steps' ``memory_mb`` summed, else :data:`ACTOR_MEMORY_MB`). GPU group per
  stream: the steps that ask ``num_gpus``, summed the same way.
* batch (``job``): one Ray Data task per input runs the whole chain in one process
  (:mod:`streamzip.batch`); it reserves what the stream's actors would (source + every step), passed as
  ``--cpus-per-input``; memory: one process (:data:`ACTOR_MEMORY_MB`) plus the declared ``memory_mb``.
  A pipeline asking GPUs runs its tasks on the GPU group only.

A CPU worker holds ``S`` streams (:attr:`Overlay.streams_per_cpu_worker`): Ray ``num-cpus`` =
``ceil(S × CPUs per stream)``, also the container's CPU request and limit; memory = ``S × memory per
stream`` + the object store + :data:`RAY_NODE_OVERHEAD_MB`. A GPU worker with ``g`` GPUs holds
``floor(g / GPUs per stream)`` streams. An encoder shared by streams as a pool makes these upper bounds.

Entry points: a RayJob runs ``sh -c 'streamzip validate /config/pipeline.yaml && exec streamzip batch …'``
so an invalid pipeline in the ConfigMap stops the job before any Ray work; the live cluster runs the
driver ``streamzip live …`` in a container beside the Ray head (it shares ``/tmp/ray`` and ``/dev/shm`` to
join that node), behind a Service. Credentials only ever appear as Secret references.

GCS fault tolerance (``--gcs-ft-redis HOST:PORT --gcs-ft-redis-secret NAME``, live only): the head keeps the
cluster's state in a Redis the user runs (KubeRay's ``gcsFaultToleranceOptions``), so the worker pods outlive a
head restart. The live driver is in the head pod and still restarts with it (docs/deploy.md says what survives);
a batch RayJob is refused the option, as a lost head fails its Ray job whatever the GCS keeps.
"""

from __future__ import annotations

import argparse
import hashlib
import math
import re
import shlex
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import yaml

from streamzip._version import __version__
from streamzip.errors import ConfigError, Problem, StreamzipError
from streamzip.pipeline import Pipeline, load_pipeline
from streamzip.sources._names import redact

__all__ = [
    "ACTOR_MEMORY_MB",
    "KINDS",
    "OVERLAYS",
    "PIPELINE_PATH",
    "SECRET_ENV",
    "SOURCE_RESOURCES",
    "Demand",
    "GroupPlan",
    "Overlay",
    "REDIS_PASSWORD_KEY",
    "ResourcePlan",
    "add_cli",
    "batch_argv",
    "default_manifests",
    "dump",
    "entrypoint_script",
    "live_argv",
    "main",
    "plan_resources",
    "ray_version",
    "render",
]

KINDS = ("cluster", "job")
CONFIG_DIR = "/config"
PIPELINE_FILE = "pipeline.yaml"
PIPELINE_PATH = f"{CONFIG_DIR}/{PIPELINE_FILE}"
#: where --data-pvc is mounted; batch inputs and outputs live under it (a ReadWriteMany volume).
DATA_DIR = "/data"
#: URI schemes `streamzip batch` reads and writes through fsspec/pyarrow. None yet: streamzip/batch.py
#: walks local folders, so object storage goes through a mounted volume until it learns them.
BATCH_URI_SCHEMES: tuple[str, ...] = ()
LIVE_PORT = 8000
UID = 1000  # the user of k8s/Dockerfile
#: the Secret the live driver reads, and how its keys reach the process: (env var, key, optional).
SECRET_NAME = "streamzip-secrets"
SECRET_ENV = (
    ("STREAMZIP_RTSP_USERNAME", "rtsp-username", True),  # optional: cameras without authentication
    ("STREAMZIP_RTSP_PASSWORD", "rtsp-password", True),
    ("STREAMZIP_LIVE_TOKEN", "live-token", False),  # the endpoint needs a bearer token off loopback
)
#: the decoder of one stream; 1080p30 H.264 decode measures ~0.3 core (research/engines.md §10.2).
SOURCE_RESOURCES: dict[str, float] = {"num_cpus": 0.5}
#: memory of one actor process when its stage declares none: the actors of a ``default`` stream peak at
#: 326-415 MB of private memory (the fused light stages the most; docs/deploy.md, measured), plus ~25 %.
ACTOR_MEMORY_MB = 512.0
#: object store per stream: one ``default`` stream peaks at 54-60 MiB fed as a live camera and 141-160 MiB
#: fed a file in 8-frame packets (docs/deploy.md, measured), plus ~20 %.
OBJECT_STORE_MB_PER_STREAM = 192
OBJECT_STORE_MIN_MB = 512
#: raylet, dashboard agent, runtime-env agent and log monitor of one node (estimate).
RAY_NODE_OVERHEAD_MB = 1024
EXAMPLE_URL = "rtsp://camera-1.example.com:554/stream1"
#: the key of the --gcs-ft-redis-secret Secret that holds the Redis password (the Bitnami Redis chart's key too).
REDIS_PASSWORD_KEY = "redis-password"
#: the checked-in GCS FT example: a Redis Service named `redis` in the cluster's namespace (KubeRay's sample).
EXAMPLE_REDIS = "redis:6379"
EXAMPLE_REDIS_SECRET = "streamzip-redis"
_NAME = re.compile(r"^[a-z]([-a-z0-9]{0,38}[a-z0-9])?$")
_SCHEME = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*)://")
#: the Redis addresses Ray's GCS parses (ray._private.services.get_address): HOST:PORT, redis://…, rediss://… (TLS).
_REDIS_SCHEMES = ("redis", "rediss")
_REDIS_HOST = re.compile(r"^([A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?|\[[0-9A-Fa-f:.]+\])$")
_SECRET_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


@dataclass(frozen=True)
class Overlay:
    """What differs between environments: sizes, bounds and timeouts, never the structure."""

    name: str
    head_cpus: int
    head_memory_mb: int
    driver_cpus: int  # the live driver container beside the head
    driver_memory_mb: int
    streams_per_cpu_worker: int
    cpu_workers: tuple[int, int, int]  # (min, replicas, max)
    gpu_workers: tuple[int, int, int]
    gpus_per_worker: int
    idle_timeout_s: int  # the autoscaler removes a worker idle this long
    job_ttl_s: int  # a finished RayJob's cluster is deleted after this
    job_backoff_limit: int  # retries of a failed batch job; a re-run skips finished inputs


OVERLAYS: dict[str, Overlay] = {
    # A laptop cluster (kind, minikube): one small worker, scale to zero when idle.
    "dev": Overlay("dev", head_cpus=1, head_memory_mb=3072, driver_cpus=1, driver_memory_mb=2048,
                   streams_per_cpu_worker=2, cpu_workers=(0, 1, 2), gpu_workers=(0, 0, 1), gpus_per_worker=1,
                   idle_timeout_s=60, job_ttl_s=600, job_backoff_limit=0),
    # Production: 8-stream workers, one always up, room for 64; a head sized for many actors.
    "prod": Overlay("prod", head_cpus=4, head_memory_mb=16384, driver_cpus=2, driver_memory_mb=8192,
                    streams_per_cpu_worker=8, cpu_workers=(1, 2, 64), gpu_workers=(0, 0, 8), gpus_per_worker=1,
                    idle_timeout_s=300, job_ttl_s=3600, job_backoff_limit=2),
}


def ray_version() -> str:
    """The installed Ray: the image pins the same (k8s/Dockerfile ``RAY_VERSION``; a test checks)."""
    return metadata.version("ray")


# -- resources --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Demand:
    """What one stream (live) or one input (batch) asks of the worker group that runs it."""

    num_cpus: float
    num_gpus: float
    memory_mb: float


@dataclass(frozen=True)
class GroupPlan:
    """One worker group: the per-stream demand and the pod that holds ``streams`` of them."""

    demand: Demand
    streams: int
    num_cpus: int
    num_gpus: int
    memory_mb: int
    object_store_mb: int


@dataclass(frozen=True)
class ResourcePlan:
    """The worker groups a pipeline needs (module docstring); ``cpu`` or ``gpu`` is None when unused."""

    kind: str
    cpu: GroupPlan | None
    gpu: GroupPlan | None
    gpu_steps: tuple[str, ...]
    #: batch: what each input's task reserves (``--cpus-per-input``); None for live.
    task: Demand | None = None


def _ceil(x: float) -> int:
    return math.ceil(x - 1e-9)  # 8 × 0.1 must stay 1, not become 2 through rounding


def _round_mb(mb: float) -> int:
    return 256 * _ceil(mb / 256)  # whole quarter-GiB steps read better in a manifest


def _source_resources() -> dict[str, float]:
    # When the sources declare their resources as stages do, those win over the constant here.
    from streamzip.sources.file import FileSource

    return dict(getattr(FileSource, "resources", SOURCE_RESOURCES))


def _group(d: Demand, streams: int, gpus: int = 0) -> GroupPlan:
    store = max(OBJECT_STORE_MIN_MB, streams * OBJECT_STORE_MB_PER_STREAM)
    return GroupPlan(d, streams, max(1, _ceil(streams * d.num_cpus)), gpus,
                     _round_mb(streams * d.memory_mb + store + RAY_NODE_OVERHEAD_MB), store)


def plan_resources(pipeline: Pipeline, overlay: Overlay, *, kind: str = "cluster",
                   streams_per_worker: int | None = None, gpus_per_worker: int | None = None) -> ResourcePlan:
    """The worker groups that hold ``pipeline``'s streams, from ``pipeline.resources()``."""
    per_step = pipeline.resources()
    src = _source_resources()
    gpu_steps = tuple(sid for sid, r in per_step.items() if r.get("num_gpus", 0.0) > 0)

    def total(units: Sequence[Mapping[str, float]], key: str, default: float = 0.0) -> float:
        return sum(u.get(key, default) for u in units)

    task = None
    cpu_d: Demand | None
    gpu_d: Demand | None
    if kind == "job":  # one process per input runs the whole chain
        units = [src, *per_step.values()]
        task = Demand(total(units, "num_cpus"), total(units, "num_gpus"), ACTOR_MEMORY_MB + total(units, "memory_mb"))
        cpu_d, gpu_d = (None, task) if gpu_steps else (task, None)
    else:  # one actor process per group of steps and stream, as the Ray runtime runs them
        from streamzip.runtime.groups import stage_groups

        def memory(actor: list[str]) -> float:
            declared = [per_step[sid]["memory_mb"] for sid in actor if "memory_mb" in per_step[sid]]
            return sum(declared) if declared else ACTOR_MEMORY_MB

        actors = [[pipeline.steps[i].id for i in g] for g in stage_groups(pipeline)]
        on_gpu = [a for a in actors if any(sid in gpu_steps for sid in a)]  # a GPU step runs alone
        cpu_units = [src, *(r for sid, r in per_step.items() if sid not in gpu_steps)]
        cpu_d = Demand(total(cpu_units, "num_cpus"), 0.0, src.get("memory_mb", ACTOR_MEMORY_MB)
                       + sum(memory(a) for a in actors if a not in on_gpu))
        gpu_units = [per_step[sid] for sid in gpu_steps]
        gpu_d = Demand(total(gpu_units, "num_cpus"), total(gpu_units, "num_gpus"),
                       sum(memory(a) for a in on_gpu)) if gpu_steps else None
    s = streams_per_worker or overlay.streams_per_cpu_worker
    if s < 1:
        raise ConfigError([Problem("--streams-per-worker", f"must be >= 1, got {s}")])
    gpu = None
    if gpu_d is not None:
        g = gpus_per_worker or overlay.gpus_per_worker
        if gpu_d.num_gpus > g:
            raise ConfigError([Problem("steps", f"steps {', '.join(gpu_steps)} ask {gpu_d.num_gpus:g} GPUs per "
                                                f"stream, more than a GPU worker has ({g}); lower their "
                                                f"resources.num_gpus or pass --gpus-per-worker "
                                                f"{_ceil(gpu_d.num_gpus)}")])
        gpu = _group(gpu_d, int(g / gpu_d.num_gpus + 1e-9), g)
    return ResourcePlan(kind, _group(cpu_d, s) if cpu_d is not None else None, gpu, gpu_steps, task)


# -- commands the pods run --------------------------------------------------------------------------
def _validate_argv() -> list[str]:
    return ["streamzip", "validate", PIPELINE_PATH]


def batch_argv(inputs: Sequence[str], output: str, cpus_per_input: float = 1.0) -> list[str]:
    """The batch command the RayJob runs on the head (as a Ray job driver)."""
    return ["streamzip", "batch", *inputs, "--pipeline", PIPELINE_PATH, "--output", output,
            "--cpus-per-input", f"{cpus_per_input:g}", "--address", "auto"]


def live_argv(urls: Sequence[str]) -> list[str]:
    """The live driver's command (credentials come from the environment, never the URLs)."""
    return ["streamzip", "live", *urls, "--pipeline", PIPELINE_PATH, "--serve", f"0.0.0.0:{LIVE_PORT}",
            "--address", "auto"]


def entrypoint_script(run: Sequence[str], *, wait_for_ray: bool = False) -> str:
    """A POSIX shell script: validate the mounted pipeline, then (only if valid) ``exec`` ``run``.

    ``wait_for_ray`` first waits for the Ray head of this pod (the live driver starts beside it)."""
    wait = "until ray health-check --address 127.0.0.1:6379 >/dev/null 2>&1; do sleep 2; done; " \
        if wait_for_ray else ""
    return f"{wait}{shlex.join(_validate_argv())} && exec {shlex.join(run)}"


# -- manifest pieces --------------------------------------------------------------------------------
_SECURITY = {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}


def _labels(instance: str, component: str) -> dict[str, str]:
    return {"app.kubernetes.io/name": "streamzip", "app.kubernetes.io/instance": instance,
            "app.kubernetes.io/component": component, "app.kubernetes.io/version": __version__,
            "app.kubernetes.io/managed-by": "streamzip-k8s-render"}


def _meta(name: str, instance: str, component: str, namespace: str | None, pipeline: Pipeline) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name}
    if namespace:
        meta["namespace"] = namespace
    meta["labels"] = _labels(instance, component)
    meta["annotations"] = {"streamzip.io/pipeline": pipeline.name}
    return meta


def _quantity_mb(mb: int) -> str:
    return f"{mb // 1024}Gi" if mb % 1024 == 0 else f"{mb}Mi"


def _resources(cpus: int, memory_mb: int, gpus: int = 0) -> dict[str, Any]:
    # requests == limits: the pod is Guaranteed, and Ray's view of the node equals Kubernetes'.
    res: dict[str, Any] = {"cpu": str(cpus), "memory": _quantity_mb(memory_mb)}
    if gpus:
        res["nvidia.com/gpu"] = str(gpus)
    return {"requests": dict(res), "limits": dict(res)}


def _mounts(data: bool) -> list[dict[str, Any]]:
    mounts: list[dict[str, Any]] = [
        {"name": "pipeline", "mountPath": CONFIG_DIR, "readOnly": True},
        {"name": "dshm", "mountPath": "/dev/shm"},  # the object store; the default 64 MiB is too small
        {"name": "ray-tmp", "mountPath": "/tmp/ray"},
    ]
    if data:
        mounts.append({"name": "data", "mountPath": DATA_DIR})
    return mounts


def _volumes(configmap: str, object_store_mb: int, data_pvc: str | None) -> list[dict[str, Any]]:
    vols: list[dict[str, Any]] = [
        {"name": "pipeline", "configMap": {"name": configmap, "items": [{"key": PIPELINE_FILE, "path": PIPELINE_FILE}]}},
        {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": _quantity_mb(object_store_mb)}},
        {"name": "ray-tmp", "emptyDir": {}},
    ]
    if data_pvc:
        vols.append({"name": "data", "persistentVolumeClaim": {"claimName": data_pvc}})
    return vols


def _ray_container(name: str, image: str, pull: str, resources: dict[str, Any], *, data: bool,
                   storage_secret: str | None, ports: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    c: dict[str, Any] = {"name": name, "image": image, "imagePullPolicy": pull}
    if ports:
        c["ports"] = ports
    if storage_secret:  # storage credentials (AWS_ACCESS_KEY_ID…) by reference, never by value
        c["envFrom"] = [{"secretRef": {"name": storage_secret}}]
    c.update({"resources": resources, "volumeMounts": _mounts(data),
              "lifecycle": {"preStop": {"exec": {"command": ["/bin/sh", "-c", "ray stop"]}}},
              "securityContext": dict(_SECURITY)})
    return c


def _pod_template(component: str, name: str, pipeline_sha: str, containers: list[dict[str, Any]],
                  volumes: list[dict[str, Any]], *, gpu: bool = False) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "securityContext": {"runAsNonRoot": True, "runAsUser": UID, "runAsGroup": 100, "fsGroup": 100},
        "containers": containers, "volumes": volumes,
    }
    if gpu:
        spec["tolerations"] = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    return {"metadata": {"labels": _labels(name, component),
                         # a changed pipeline changes the template, so `upgradeStrategy: Recreate` rolls the pods
                         "annotations": {"streamzip.io/pipeline-sha256": pipeline_sha}},
            "spec": spec}


def _worker_group(group: str, bounds: tuple[int, int, int], plan: GroupPlan, *, name: str, sha: str,
                  configmap: str, image: str, pull: str, data_pvc: str | None,
                  storage_secret: str | None) -> dict[str, Any]:
    lo, n, hi = bounds
    params = {"num-cpus": str(plan.num_cpus)}
    if plan.num_gpus:
        params["num-gpus"] = str(plan.num_gpus)
    params.update({"object-store-memory": str(plan.object_store_mb * 2**20), "metrics-export-port": "8080"})
    container = _ray_container("ray-worker", image, pull, _resources(plan.num_cpus, plan.memory_mb, plan.num_gpus),
                               data=data_pvc is not None, storage_secret=storage_secret)
    return {"groupName": group, "replicas": n, "minReplicas": lo, "maxReplicas": hi, "rayStartParams": params,
            "template": _pod_template(group.removesuffix("s"), name, sha, [container],
                                      _volumes(configmap, plan.object_store_mb, data_pvc), gpu=bool(plan.num_gpus))}


def _cluster_spec(pipeline: Pipeline, ov: Overlay, plan: ResourcePlan, *, name: str, configmap: str, image: str,
                  pull: str, data_pvc: str | None, storage_secret: str | None,
                  driver: dict[str, Any] | None) -> dict[str, Any]:
    sha = hashlib.sha256(pipeline.to_yaml().encode()).hexdigest()
    head_store = OBJECT_STORE_MIN_MB
    head = [_ray_container(
        "ray-head", image, pull, _resources(ov.head_cpus, ov.head_memory_mb), data=data_pvc is not None,
        storage_secret=storage_secret,
        ports=[{"containerPort": 6379, "name": "gcs-server"}, {"containerPort": 8265, "name": "dashboard"},
               {"containerPort": 10001, "name": "client"}, {"containerPort": 8080, "name": "metrics"}])]
    if driver is not None:
        head.append(driver)
    common: dict[str, Any] = {"name": name, "sha": sha, "configmap": configmap, "image": image, "pull": pull,
                              "data_pvc": data_pvc, "storage_secret": storage_secret}
    groups = []
    if plan.cpu is not None:
        groups.append(_worker_group("cpu-workers", ov.cpu_workers, plan.cpu, **common))
    if plan.gpu is not None:
        groups.append(_worker_group("gpu-workers", ov.gpu_workers, plan.gpu, **common))
    return {
        "rayVersion": ray_version(),
        "enableInTreeAutoscaling": True,
        "autoscalerOptions": {"upscalingMode": "Default", "idleTimeoutSeconds": ov.idle_timeout_s,
                              "resources": _resources(1, 1024)},
        "headGroupSpec": {
            # num-cpus 0: the head runs GCS, the dashboard and drivers, never a stage actor or batch task.
            "rayStartParams": {"num-cpus": "0", "dashboard-host": "0.0.0.0", "metrics-export-port": "8080",
                               "object-store-memory": str(head_store * 2**20)},
            "template": _pod_template("head", name, sha, head, _volumes(configmap, head_store, data_pvc)),
        },
        "workerGroupSpecs": groups,
    }


def _live_driver(urls: Sequence[str], ov: Overlay, image: str, pull: str, secret: str) -> dict[str, Any]:
    env = [{"name": var, "valueFrom": {"secretKeyRef": {"name": secret, "key": key, "optional": optional}}}
           for var, key, optional in SECRET_ENV]
    return {"name": "streamzip-live", "image": image, "imagePullPolicy": pull,
            "command": ["sh", "-c", entrypoint_script(live_argv(urls), wait_for_ray=True)],
            "env": env,
            "ports": [{"containerPort": LIVE_PORT, "name": "live"}],
            "readinessProbe": {"tcpSocket": {"port": "live"}, "periodSeconds": 10},
            "resources": _resources(ov.driver_cpus, ov.driver_memory_mb),
            # /tmp/ray (sockets, session) and /dev/shm (object store) of the head: the driver joins its node
            "volumeMounts": [{"name": "pipeline", "mountPath": CONFIG_DIR, "readOnly": True},
                             {"name": "dshm", "mountPath": "/dev/shm"},
                             {"name": "ray-tmp", "mountPath": "/tmp/ray"}],
            "securityContext": dict(_SECURITY)}


def _check_options(kind: str, overlay: str, name: str, urls: Sequence[str], inputs: Sequence[str],
                   output: str | None, data_pvc: str | None) -> list[Problem]:
    problems = []
    if kind not in KINDS:
        problems.append(Problem("--kind", f"must be one of {', '.join(KINDS)}, got {kind!r}"))
    if overlay not in OVERLAYS:
        problems.append(Problem("--overlay", f"must be one of {', '.join(OVERLAYS)}, got {overlay!r}"))
    if not _NAME.match(name):
        problems.append(Problem("--name", f"{name!r} is not a valid name: lower-case letters, digits and '-', "
                                          "starting with a letter, at most 40 characters (pods add suffixes)"))
    locations = [("--input", v) for v in inputs] + ([("--output", output)] if output else [])
    for opt, v in [("--url", u) for u in urls] + locations:
        if redact(v) != v:
            problems.append(Problem(opt, f"{redact(v)!r} carries credentials, which manifests must not; put them in "
                                         "the Secret (keys rtsp-username, rtsp-password) and give the URL without "
                                         "user:password@"))
    if kind == "cluster" and not urls:
        problems.append(Problem("--url", "the live cluster needs at least one camera URL (repeat --url)"))
    if kind != "job":
        return problems
    if not inputs:
        problems.append(Problem("--input", f"the batch job needs at least one input (repeat --input): a file or "
                                           f"folder under {DATA_DIR}"))
    if not output:
        problems.append(Problem("--output", f"the batch job needs an output folder under {DATA_DIR}"))
    for opt, v in locations:
        scheme = _SCHEME.match(v)
        if scheme and scheme.group(1).lower() in BATCH_URI_SCHEMES:
            continue
        if scheme:
            problems.append(Problem(opt, f"{v!r}: `streamzip batch` reads and writes local paths only for now; mount "
                                         f"the bucket or share as a volume (--data-pvc) and give a path under "
                                         f"{DATA_DIR}"))
        elif not (v == DATA_DIR or v.startswith(DATA_DIR + "/")):
            problems.append(Problem(opt, f"{v!r} is not under {DATA_DIR}; every pod must see the inputs and outputs, "
                                         f"so they live on the volume --data-pvc mounts at {DATA_DIR}"))
        elif data_pvc is None:
            problems.append(Problem("--data-pvc", f"{v!r} is under {DATA_DIR}, which exists only when a "
                                                  "PersistentVolumeClaim is mounted there; pass --data-pvc NAME"))
    return problems


def _check_gcs_ft(kind: str, address: str | None, secret: str | None) -> list[Problem]:
    """What is wrong with ``--gcs-ft-redis``/``--gcs-ft-redis-secret``, each with its fix."""
    if address is None:
        return [] if secret is None else [Problem("--gcs-ft-redis-secret", "is set but --gcs-ft-redis is not; pass "
                                                  "--gcs-ft-redis HOST:PORT too, or drop --gcs-ft-redis-secret")]
    opt = "--gcs-ft-redis"
    if kind == "job":
        return [Problem(opt, "GCS fault tolerance is for the live cluster only: a batch RayJob's driver runs on the "
                             "head, so a lost head fails the Ray job whatever the GCS keeps, and KubeRay retries it on "
                             "a new RayCluster (backoffLimit; finished inputs are skipped); drop --gcs-ft-redis for "
                             "--kind job")]
    problems = []
    if secret is None:
        problems.append(Problem("--gcs-ft-redis-secret", f"GCS fault tolerance needs the Redis password from a Secret: "
                                f"the GCS state in Redis includes the code of the cluster's actors, so a Redis "
                                f"without a password is not rendered; create one (kubectl create secret generic NAME "
                                f"--from-file={REDIS_PASSWORD_KEY}=./redis-pass) and pass --gcs-ft-redis-secret NAME"))
    elif len(secret) > 253 or not _SECRET_NAME.match(secret):
        problems.append(Problem("--gcs-ft-redis-secret", f"{secret!r} is not a Secret name (lower-case letters, "
                                f"digits, '-' and '.'); give the name of the Secret whose key {REDIS_PASSWORD_KEY} "
                                f"holds the Redis password"))
    scheme = _SCHEME.match(address)
    rest = address[scheme.end():] if scheme else address
    if "@" in address:  # shown as ***@HOST:PORT: a password may hold '@' or '://' itself
        masked = f"{scheme.group(0) if scheme else ''}***@{address.rpartition('@')[2]}"
        return [*problems, Problem(opt, f"{masked!r} carries credentials, which manifests must not; put the password "
                                        f"in the Secret under key {REDIS_PASSWORD_KEY}, pass --gcs-ft-redis-secret "
                                        f"NAME, and give the address as HOST:PORT")]
    if (scheme and scheme.group(1) not in _REDIS_SCHEMES) or "://" in rest:
        return [*problems, Problem(opt, f"{address!r}: the scheme must be redis:// or rediss:// (TLS), or none "
                                        "(HOST:PORT)")]
    if not rest:
        return [*problems, Problem(opt, "is empty; give the Redis as HOST:PORT, e.g. redis:6379")]
    if "," in rest:
        return [*problems, Problem(opt, f"{address!r} lists several addresses; give one Redis (HOST:PORT): KubeRay "
                                        "supports a single-shard Redis")]
    if any(c in rest for c in "/?#"):
        return [*problems, Problem(opt, f"{address!r} has a path or query; Ray's GCS takes HOST:PORT only (no "
                                        "database number)")]
    host, colon, port = rest.rpartition(":")
    if not colon or host.startswith("[") != host.endswith("]"):
        return [*problems, Problem(opt, f"{address!r} has no port; give HOST:PORT, e.g. {rest}:6379 (Redis' default "
                                        "port)")]
    if not _REDIS_HOST.match(host):
        problems.append(Problem(opt, f"{address!r}: {host!r} is not a host name or IP address (an IPv6 address goes "
                                     "in brackets: [fd00::1]:6379)"))
    if not (port.isdigit() and 1 <= int(port) <= 65535):
        problems.append(Problem(opt, f"{address!r}: the port must be a number from 1 to 65535, got {port!r}"))
    return problems


def _gcs_ft_options(address: str, secret: str) -> dict[str, Any]:
    """``spec.gcsFaultToleranceOptions``: the Redis and its password by Secret reference. Left to KubeRay: the
    storage namespace (the RayCluster's UID, so a re-created cluster starts clean), the backend (redis; the field is
    newer than KubeRay 1.6) and what it injects (``RAY_REDIS_ADDRESS`` and the password on the head's Ray container,
    ``RAY_gcs_rpc_server_reconnect_timeout_s=600`` on the workers so they wait for the new head)."""
    return {"redisAddress": address,
            "redisPassword": {"valueFrom": {"secretKeyRef": {"name": secret, "key": REDIS_PASSWORD_KEY}}}}


def render(pipeline: Pipeline, *, kind: str = "cluster", overlay: str = "dev", name: str | None = None,
           namespace: str | None = None, image: str | None = None, urls: Sequence[str] = (),
           inputs: Sequence[str] = (), output: str | None = None, data_pvc: str | None = None,
           storage_secret: str | None = None, secret: str = SECRET_NAME, streams_per_worker: int | None = None,
           gpus_per_worker: int | None = None, gcs_ft_redis: str | None = None,
           gcs_ft_redis_secret: str | None = None) -> list[dict[str, Any]]:
    """The manifests, in apply order: ConfigMap, RayCluster, Service (``cluster``) or ConfigMap, RayJob (``job``).

    ``gcs_ft_redis`` (HOST:PORT) turns on GCS fault tolerance for the live cluster, with the Redis password at key
    :data:`REDIS_PASSWORD_KEY` of the Secret ``gcs_ft_redis_secret``.
    Raises :class:`ConfigError` listing every problem (the pipeline's and the options') at once."""
    name = name or ("streamzip-live" if kind == "cluster" else "streamzip-batch")
    problems = (_check_options(kind, overlay, name, urls, inputs, output, data_pvc)
                + _check_gcs_ft(kind, gcs_ft_redis, gcs_ft_redis_secret) + pipeline.problems())
    if problems:
        raise ConfigError(problems)
    ov = OVERLAYS[overlay]
    plan = plan_resources(pipeline, ov, kind=kind, streams_per_worker=streams_per_worker,
                          gpus_per_worker=gpus_per_worker)
    image = image or f"streamzip:{__version__}"
    pull = "Always" if image.endswith(":latest") or ":" not in image.rsplit("/", 1)[-1] else "IfNotPresent"
    configmap = f"{name}-pipeline"
    cm = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": _meta(configmap, name, "pipeline", namespace, pipeline),
          "data": {PIPELINE_FILE: pipeline.to_yaml()}}
    common: dict[str, Any] = {"name": name, "configmap": configmap, "image": image, "pull": pull,
                              "data_pvc": data_pvc, "storage_secret": storage_secret}
    if kind == "cluster":
        spec = _cluster_spec(pipeline, ov, plan, driver=_live_driver(urls, ov, image, pull, secret), **common)
        if gcs_ft_redis is not None and gcs_ft_redis_secret is not None:
            spec = {"gcsFaultToleranceOptions": _gcs_ft_options(gcs_ft_redis, gcs_ft_redis_secret), **spec}
        # Re-applying with a new image or pipeline recreates the pods (KubeRay >= 1.6): live streams see a gap.
        cluster = {"apiVersion": "ray.io/v1", "kind": "RayCluster",
                   "metadata": _meta(name, name, "live", namespace, pipeline),
                   "spec": {"upgradeStrategy": {"type": "Recreate"}, **spec}}
        svc = {"apiVersion": "v1", "kind": "Service",
               "metadata": _meta(f"{name}-endpoint", name, "endpoint", namespace, pipeline),
               "spec": {"type": "ClusterIP", "selector": {"ray.io/cluster": name, "ray.io/node-type": "head"},
                        "ports": [{"name": "live", "port": LIVE_PORT, "targetPort": "live", "protocol": "TCP"}]}}
        return [cm, cluster, svc]
    assert output is not None and plan.task is not None
    spec = _cluster_spec(pipeline, ov, plan, driver=None, **common)
    # KubeRay pastes the entrypoint into `bash -c "… ray job submit … -- ENTRYPOINT"` and `ray job submit`
    # shlex-joins the words it gets, so the head runs exactly the words of this string: one `sh -c SCRIPT`.
    script = entrypoint_script(batch_argv(inputs, output, plan.task.num_cpus))
    job = {"apiVersion": "ray.io/v1", "kind": "RayJob", "metadata": _meta(name, name, "batch", namespace, pipeline),
           "spec": {"entrypoint": shlex.join(["sh", "-c", script]),
                    "submissionMode": "K8sJobMode",
                    "shutdownAfterJobFinishes": True,
                    "ttlSecondsAfterFinished": ov.job_ttl_s,
                    "backoffLimit": ov.job_backoff_limit,
                    "rayClusterSpec": spec}}
    return [cm, job]


# -- YAML -------------------------------------------------------------------------------------------
class _Dumper(yaml.SafeDumper):
    def ignore_aliases(self, data: Any) -> bool:
        return True  # no &id001 anchors: every manifest reads on its own


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
    style = "|" if "\n" in value else None  # the pipeline YAML stays readable inside the ConfigMap
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def dump(manifests: Sequence[Mapping[str, Any]], *, header: str = "") -> str:
    """Multi-document YAML, in order, with ``header`` as leading comment lines."""
    docs = [yaml.dump(m, Dumper=_Dumper, sort_keys=False, width=1000) for m in manifests]
    head = "".join(f"# {line}\n".replace("# \n", "#\n") for line in header.splitlines())
    return head + "---\n" + "---\n".join(docs)


def _command_line(pipeline: str, options: Mapping[str, Any]) -> str:
    """The ``streamzip k8s render`` command that gives these options."""
    flags = {"urls": "--url", "inputs": "--input"}
    words = ["streamzip", "k8s", "render", pipeline]
    for key, value in options.items():
        if value is None or value == [] or value == ():
            continue
        for v in value if isinstance(value, (list, tuple)) else [value]:
            words += [flags.get(key, "--" + key.replace("_", "-")), str(v)]
    return shlex.join(words)


def _gpu_example() -> Pipeline:
    """The built-in default pipeline with its encoders on GPUs, four streams per GPU."""
    from streamzip.registry import get as get_stage

    pipe = load_pipeline("default")
    for step in pipe.steps:
        if get_stage(step.op).cls.produces:
            step.resources = {**step.resources, "num_gpus": 0.25}
    return pipe


_DATA = {"inputs": ["/data/in"], "output": "/data/out", "data_pvc": "streamzip-data"}
#: the checked-in manifests: (file under k8s/rendered, pipeline, options).
_DEFAULTS: list[tuple[str, str, dict[str, Any]]] = [
    ("dev/cluster.yaml", "default", {"kind": "cluster", "overlay": "dev", "urls": [EXAMPLE_URL]}),
    ("dev/job.yaml", "default", {"kind": "job", "overlay": "dev", **_DATA}),
    ("prod/cluster.yaml", "default", {"kind": "cluster", "overlay": "prod", "urls": [EXAMPLE_URL]}),
    ("prod/job.yaml", "default", {"kind": "job", "overlay": "prod", **_DATA}),
    ("prod/cluster-gpu.yaml", "gpu", {"kind": "cluster", "overlay": "prod", "urls": [EXAMPLE_URL]}),
    ("prod/cluster-gcs-ft.yaml", "default", {"kind": "cluster", "overlay": "prod", "urls": [EXAMPLE_URL],
                                             "gcs_ft_redis": EXAMPLE_REDIS, "gcs_ft_redis_secret": EXAMPLE_REDIS_SECRET}),
]


def default_manifests() -> dict[str, str]:
    """The text of every checked-in manifest under ``k8s/rendered/``, by relative path."""
    out = {}
    for path, source, options in _DEFAULTS:
        if source == "gpu":
            pipe = _gpu_example()
            how = ("Generated by `streamzip k8s defaults` from the built-in `default` pipeline with\n"
                   "`resources: {num_gpus: 0.25}` on its encoder step (four streams per GPU).")
        else:
            pipe = load_pipeline(source)
            how = f"Generated by `streamzip k8s defaults`; the same as:\n  {_command_line(source, options)}"
        needs = (f"the Secret `{SECRET_NAME}` (keys rtsp-username, rtsp-password, live-token)"
                 if options["kind"] == "cluster" else
                 f"a ReadWriteMany PersistentVolumeClaim `{options['data_pvc']}` holding {options['inputs'][0]}")
        if "gcs_ft_redis" in options:
            needs += (f",\na Redis at {options['gcs_ft_redis']} for GCS fault tolerance, its password at key "
                      f"{REDIS_PASSWORD_KEY} of the Secret `{options['gcs_ft_redis_secret']}`")
        header = (f"{how}\nRe-render rather than edit: the worker sizes follow from the pipeline (docs/deploy.md).\n"
                  f"Needs the KubeRay operator >= 1.6 and {needs}.")
        out[path] = dump(render(pipe, **options), header=header)
    return out


# -- CLI --------------------------------------------------------------------------------------------
def _cmd_render(args: argparse.Namespace) -> int:
    pipeline = load_pipeline(args.pipeline)
    options: dict[str, Any] = {
        "kind": args.kind, "overlay": args.overlay, "name": args.name, "namespace": args.namespace,
        "image": args.image, "urls": args.url or [], "inputs": args.input or [], "output": args.output,
        "data_pvc": args.data_pvc, "storage_secret": args.storage_secret, "secret": args.secret,
        "streams_per_worker": args.streams_per_worker, "gpus_per_worker": args.gpus_per_worker,
        "gcs_ft_redis": args.gcs_ft_redis, "gcs_ft_redis_secret": args.gcs_ft_redis_secret}
    manifests = render(pipeline, **options)
    if options["secret"] == SECRET_NAME:
        del options["secret"]
    text = dump(manifests, header=f"Generated by:\n  {redact(_command_line(args.pipeline, options))}")
    if args.out and args.out != "-":
        Path(args.out).write_text(text, encoding="utf-8")
        print(f"wrote {args.out} ({', '.join(m['kind'] for m in manifests)})", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0


def _cmd_defaults(args: argparse.Namespace) -> int:
    root = Path(args.dir)
    stale = []
    for rel, text in default_manifests().items():
        path = root / rel
        if path.exists() and path.read_text(encoding="utf-8") == text:
            continue
        stale.append(rel)
        if not args.check:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
    if args.check and stale:
        print(f"out of date under {root}: {', '.join(stale)}; run `streamzip k8s defaults {root}`", file=sys.stderr)
        return 1
    total = len(_DEFAULTS)
    print(f"rewrote {len(stale)} of {total} files under {root}" if stale else f"all {total} files under {root} are "
          "current", file=sys.stderr)
    return 0


def add_cli(subparsers: Any) -> None:
    """Register ``k8s render`` and ``k8s defaults`` on the ``streamzip`` CLI's subparsers."""
    k = subparsers.add_parser("k8s", help="Kubernetes (KubeRay) manifests for a pipeline")
    ks = k.add_subparsers(dest="k8s_command", required=True)
    r = ks.add_parser("render", help="print the manifests for a pipeline (docs/deploy.md)")
    r.add_argument("pipeline", help="a pipeline YAML file, or a built-in pipeline name (e.g. default)")
    r.add_argument("--kind", choices=KINDS, default="cluster",
                   help="cluster: live RayCluster + driver + Service; job: batch RayJob")
    r.add_argument("--overlay", choices=sorted(OVERLAYS), default="dev", help="environment sizes and bounds")
    r.add_argument("--name", help="resource name (default streamzip-live / streamzip-batch)")
    r.add_argument("--namespace", help="namespace written into the manifests (default: none, use kubectl -n)")
    r.add_argument("--image", help=f"container image (default streamzip:{__version__}, built from k8s/Dockerfile)")
    r.add_argument("--url", action="append", help="a camera URL for the live driver, without credentials (repeat)")
    r.add_argument("--input", action="append", help=f"a batch input file or folder under {DATA_DIR} (repeat)")
    r.add_argument("--output", help=f"the batch output folder under {DATA_DIR}")
    r.add_argument("--data-pvc", help=f"a ReadWriteMany PersistentVolumeClaim mounted at {DATA_DIR} in every pod")
    r.add_argument("--storage-secret", help="a Secret whose keys become environment variables of the Ray pods")
    r.add_argument("--secret", default=SECRET_NAME, help="the Secret with rtsp-username, rtsp-password, live-token")
    r.add_argument("--streams-per-worker", type=int, help="streams (or batch inputs) a CPU worker holds")
    r.add_argument("--gpus-per-worker", type=int, help="GPUs of a GPU worker")
    r.add_argument("--gcs-ft-redis", metavar="HOST:PORT",
                   help="live: GCS fault tolerance, the head's state in this Redis, so the workers outlive a head "
                        "restart (docs/deploy.md)")
    r.add_argument("--gcs-ft-redis-secret", metavar="NAME",
                   help=f"the Secret whose key {REDIS_PASSWORD_KEY} holds the Redis password (with --gcs-ft-redis)")
    r.add_argument("-o", "--out", help="write to this file instead of standard output")
    r.set_defaults(func=_cmd_render)
    d = ks.add_parser("defaults", help="rewrite the checked-in manifests under k8s/rendered")
    d.add_argument("dir", nargs="?", default="k8s/rendered")
    d.add_argument("--check", action="store_true", help="only report files that are out of date (exit 1)")
    d.set_defaults(func=_cmd_defaults)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m streamzip.k8s render …``: the same as ``streamzip k8s render …``."""
    parser = argparse.ArgumentParser(prog="python -m streamzip.k8s", description=__doc__.splitlines()[0])
    add_cli(parser.add_subparsers(dest="command", required=True))
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "k8s":  # the CLI's spelling works too
        argv = argv[1:]
    args = parser.parse_args(["k8s", *argv])
    try:
        return int(args.func(args))
    except ConfigError as err:
        print(f"error: {redact(str(err))}", file=sys.stderr)
        return 2
    except StreamzipError as err:
        print(f"error: {redact(str(err))}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

"""What the Ray runtime's test modules share: Ray started once per module, and token comparison."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pytest
import ray
import torch

from streamzip.packets import Tokens
from streamzip.runtime.ray import init_ray


@pytest.fixture(scope="module", autouse=True)
def ray_started():  # type: ignore[no-untyped-def]
    # Ray's workers import this folder's helper modules by name (a test-only stage, which a stage
    # actor finds in the registry only once its module is imported there): they inherit the path
    # from the environment Ray starts in.
    here, saved = str(Path(__file__).resolve().parent), os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join([here, *([saved] if saved else [])])
    try:
        init_ray(num_cpus=2)
    finally:
        if saved is None:
            del os.environ["PYTHONPATH"]
        else:
            os.environ["PYTHONPATH"] = saved
    yield
    ray.shutdown()


def tokens_of(packets) -> list[Tokens]:  # type: ignore[no-untyped-def]
    return [p for p in packets if isinstance(p, Tokens)]


def assert_same(a: list[Tokens], b: list[Tokens], *, same_stream: bool = False) -> None:
    """Identical token packets (``same_stream``: their stream names too)."""
    assert len(a) == len(b) and a, "no tokens, or a different number of packets"
    for x, y in zip(a, b):
        assert x.modality == y.modality and x.meta == y.meta
        if same_stream:
            assert x.stream == y.stream
        for key in ("data", "t0", "t1", "pos", "size", "src", "assignment"):
            vx, vy = getattr(x, key), getattr(y, key)
            assert (vx is None) == (vy is None), key
            if vx is not None:
                assert torch.equal(vx, vy), key


def kill_and_wait(actor: Any, timeout_s: float = 60.0) -> None:
    """Kill a stage actor and wait until Ray has restarted it (it then holds no stream): the death
    lands before the stream's next call however fast the rest of the run goes (``ray.kill`` alone
    returns at once, and a short run may end before the actor dies)."""
    ray.kill(actor, no_restart=False)
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            # A short wait per call: a call sent while the actor restarts can stay pending in Ray past
            # the restart (seen once in about 10 runs: the new process alive, the call never delivered);
            # a fresh call reaches it. The runtime's own pings retry the same way.
            if not ray.get(actor.streams.remote(), timeout=2.0):
                return
        except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
            pass  # the call reached the dying process, or is stuck behind the restart
        assert time.monotonic() < deadline, "the killed actor did not come back"
        time.sleep(0.05)

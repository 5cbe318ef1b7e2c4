"""A test-only stage that holds a Ray stage actor at a chosen packet, or in its restore, until the test
lets it go (or dies in every restore), and an encoder whose every packet is big enough to be stored
(:data:`~streamzip.runtime.ray.STORE_BYTES`).

Imported lazily by the tests that use it, so that ``_test_gate`` is registered only while they run.
The stage actors import this module too: the encoder function travels to them by reference (in the
runtime's ``fns``), and unpickling it registers the stage there before the actor builds its steps.
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass
from typing import Any

import ray
import torch

from streamzip.config import Config
from streamzip.operator import Operator
from streamzip.packets import Packet, Tokens
from streamzip.registry import register

#: tokens per frame and their width: 100 x 768 float32 is 300 KB, over STORE_BYTES for one frame.
TOKENS_PER_FRAME, DIM = 100, 768


def encode_big(frames: torch.Tensor) -> torch.Tensor:
    """``(T, H, W, 3)`` frames -> ``(T, 100, 768)`` tokens, each frame's a fixed ramp plus its mean."""
    t = frames.shape[0]
    base = frames.float().reshape(t, -1).mean(1)
    return base[:, None, None] + torch.linspace(0, 1, TOKENS_PER_FRAME * DIM).reshape(1, TOKENS_PER_FRAME, DIM)


@ray.remote(num_cpus=0)
class Latch:
    """A gate the stage waits at (:meth:`wait`) until the test opens it; :meth:`arrived` tells the test
    that the stage is waiting, with the time of the packet it holds; :meth:`arrivals` waits for the
    ``n``-th wait (a restarted process waits again)."""

    def __init__(self) -> None:
        self.opened, self.reached = asyncio.Event(), asyncio.Event()
        self.held_s: float | None = None
        self.count, self.counted = 0, asyncio.Condition()

    async def wait(self, t_s: float) -> None:
        if not self.reached.is_set():
            self.held_s = t_s
            self.reached.set()
        async with self.counted:
            self.count += 1
            self.counted.notify_all()
        await self.opened.wait()

    async def arrived(self) -> float | None:
        await self.reached.wait()
        return self.held_s

    async def arrivals(self, n: int) -> int:
        async with self.counted:
            await self.counted.wait_for(lambda: self.count >= n)
        return self.count

    def open(self) -> None:
        self.opened.set()


@dataclass(frozen=True)
class GateConfig(Config):
    # The named Latch actor to wait at; empty: never wait (the reference run).
    latch: str = ""
    # Wait at the first video packet from this stream time on (and at every later one until opened).
    from_s: float = 0.0
    # The named Latch actor every restore (``load_state_dict``) waits at; empty: restores do not wait.
    restore_latch: str = ""
    # Every restore kills the actor's process, as a crash at each restore would (an empty state counts).
    die_on_restore: bool = False


@register("_test_gate")
class Gate(Operator):
    """Passes video tokens on unchanged; with a ``latch``, first waits until the latch is open. Its
    state is empty: a restore only waits (``restore_latch``) or dies (``die_on_restore``)."""

    config_class = GateConfig
    config: GateConfig
    modalities = ("video",)

    def process(self, packet: Packet) -> list[Packet]:
        assert isinstance(packet, Tokens)
        t_s = float(packet.t0.min())
        if self.config.latch and t_s >= self.config.from_s:
            ray.get(ray.get_actor(self.config.latch).wait.remote(t_s))
        return [packet]

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.config.die_on_restore:
            os._exit(1)
        if self.config.restore_latch:
            ray.get(ray.get_actor(self.config.restore_latch).wait.remote(-1.0))
        super().load_state_dict(state)

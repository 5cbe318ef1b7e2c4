"""The driver side of gathering (see "Gathering" in :mod:`streamzip.runtime.ray`): :class:`Gather`
sends the pushes of several streams to one encoder pool actor as one ``push_many`` call.

Continuous batching, as LLM servers batch requests: a push goes out at once while the actor has
nothing of this gather's in hand; while it is busy, the pushes of other streams wait and go out
together when it is done (or when ``max_calls`` are waiting, or after ``max_wait_s``). A lone stream
therefore never waits, and under load the calls grow with the load. Each stream still gets its own
result object (``num_returns``), so chains, cuts and replay work on it as on a plain push.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

import ray

__all__ = ["Gather"]

T = TypeVar("T")


class Gather:
    """Pushes to one pool actor from the streams of this process. ``max_calls``: the most streams in
    one call; ``max_wait_s``: the longest a push waits for the actor's call in hand to finish."""

    def __init__(self, actor: Any, *, max_calls: int = 64, max_wait_s: float = 0.1) -> None:
        self.actor, self.max_calls, self.max_wait_s = actor, max_calls, max_wait_s
        self._cv = threading.Condition()
        self._pending: list[tuple[str, Any, dict[str, Any]]] = []  # (key, batch ref, slot for the result ref)
        self._busy: Any = None  # a result of the last call sent: done when the actor is
        self.streams = 0  # streams sending through this gather now
        self.calls = 0  # calls sent, and the streams they carried (for tests and stats)
        self.pushes = 0

    def join(self) -> None:
        with self._cv:
            self.streams += 1

    def leave(self) -> None:
        with self._cv:
            self.streams = max(0, self.streams - 1)
            self._cv.notify_all()  # the waiting pushes may be all the streams now

    def push(self, key: str, batch: Any) -> Any:
        """The result of ``push(key, batch)`` on the actor, sent alone or with other streams' pushes."""
        slot: dict[str, Any] = {}
        with self._cv:
            self._pending.append((key, batch, slot))
            deadline = time.monotonic() + self.max_wait_s
            while "ref" not in slot:
                if self._due(deadline):
                    self._send()
                    break
                self._cv.wait(0.002)  # the actor's call in hand finishing is polled
        return slot["ref"]

    def call(self, fn: Callable[[], T]) -> T:
        """``fn()`` (another call to the actor) after the waiting pushes are sent: it stays behind
        them, as the pushes sent before it."""
        with self._cv:
            self._send()
            return fn()

    def _due(self, deadline: float) -> bool:
        if (len(self._pending) >= min(self.max_calls, max(self.streams, 1))
                or time.monotonic() >= deadline or self._busy is None):
            return True
        done, _ = ray.wait([self._busy], timeout=0)
        return bool(done)

    def _send(self) -> None:
        if not self._pending:
            return
        pending, self._pending = self._pending, []
        keys = [k for k, _, _ in pending]
        refs = self.actor.push_many.options(num_returns=len(pending)).remote(keys, *[b for _, b, _ in pending])
        refs = [refs] if len(pending) == 1 else refs
        for (_, _, slot), ref in zip(pending, refs):
            slot["ref"] = ref
        self._busy = refs[-1]
        self.calls += 1
        self.pushes += len(pending)
        self._cv.notify_all()

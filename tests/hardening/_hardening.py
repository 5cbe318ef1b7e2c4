"""Helpers of the hardening suite (a module of its own: ``conftest`` is a name several folders use)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TypeVar

import pytest

T = TypeVar("T")


def bounded(fn: Callable[[], T], timeout_s: float, what: str) -> T:
    """``fn()`` in a daemon thread, failing the test when it takes longer than ``timeout_s``.

    A hang fails its own test with a clear message instead of stalling the suite (the thread is left
    behind; it cannot be killed, and as a daemon it does not keep the process alive)."""
    box: dict[str, object] = {}

    def target() -> None:
        try:
            box["value"] = fn()
        except BaseException as err:  # noqa: BLE001 - handed back to the test thread below
            box["error"] = err

    thread = threading.Thread(target=target, name=f"bounded:{what}", daemon=True)
    thread.start()
    thread.join(timeout_s)
    if thread.is_alive():
        pytest.fail(f"{what} did not finish within {timeout_s:g} s (a hang)")
    if "error" in box:
        raise box["error"]  # type: ignore[misc]
    return box["value"]  # type: ignore[return-value]

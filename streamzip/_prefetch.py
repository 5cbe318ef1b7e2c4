"""Run a packet source in its own thread, a bounded queue ahead of the consumer.

Decoding (FFmpeg) and the stages (torch) both release the GIL, so a source thread overlaps decode
with the work on earlier packets. The source iterator is created, driven and closed in that one
thread (PyAV containers must not be closed from another thread). An exception in the source is
re-raised in the consumer; closing the consumer early stops the thread.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")

_DONE = object()


class _Raised:
    def __init__(self, err: BaseException) -> None:
        self.err = err


def prefetch(make: Callable[[], Iterable[T]], *, depth: int = 4, name: str = "streamzip-source") -> Iterator[T]:
    """Iterate ``make()`` in a background thread, at most ``depth`` items ahead."""
    q: queue.Queue[object] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item: object) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def work() -> None:
        try:
            it = iter(make())
            try:
                for item in it:
                    if not put(item):
                        break
            finally:
                close = getattr(it, "close", None)
                if close is not None:
                    close()
        except BaseException as err:  # noqa: BLE001 - handed to the consumer
            put(_Raised(err))
            return
        put(_DONE)

    thread = threading.Thread(target=work, name=name, daemon=True)
    thread.start()
    try:
        while True:
            item = q.get()
            if item is _DONE:
                return
            if isinstance(item, _Raised):
                raise item.err
            yield item  # type: ignore[misc]
    finally:
        stop.set()
        thread.join(timeout=10)

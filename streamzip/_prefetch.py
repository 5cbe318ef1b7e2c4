"""Run a packet source in its own thread, a bounded queue ahead of the consumer.

Decoding (FFmpeg) and the stages (torch) both release the GIL, so a source thread overlaps decode
with the work on earlier packets. The source iterator is created, driven and closed in that one
thread (PyAV containers must not be closed from another thread). An exception in the source is
re-raised in the consumer; closing the consumer early stops the thread.

When the queue is full, a file source waits (``drop_oldest=False``: nothing is lost); a live source
cannot wait — the camera goes on — so with ``drop_oldest=True`` the oldest queued media packet is
dropped and counted instead, which keeps latency bounded. Control packets (``Gap``, ``End``) are
never dropped.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

from streamzip.packets import End, Gap

T = TypeVar("T")

_DONE = object()


class _Raised:
    def __init__(self, err: BaseException) -> None:
        self.err = err


class Prefetch(Iterator[Any]):
    """Iterate ``make()`` in a background thread, at most ``depth`` items ahead.

    ``drops`` counts the media packets dropped (only with ``drop_oldest``).
    """

    def __init__(self, make: Callable[[], Iterable[Any]], *, depth: int = 4, drop_oldest: bool = False,
                 name: str = "streamzip-source", on_drop: Callable[[Any], None] | None = None) -> None:
        self.depth = max(1, depth)
        self.drop_oldest = drop_oldest
        self.on_drop = on_drop
        self.drops = 0
        self._items: deque[Any] = deque()
        self._cond = threading.Condition()
        self._stop = False
        self._finished = False
        self._thread = threading.Thread(target=self._work, args=(make,), name=name, daemon=True)
        self._thread.start()

    def _put(self, item: Any) -> bool:
        with self._cond:
            while len(self._items) >= self.depth and not self._stop:
                if self.drop_oldest:
                    victim = next((i for i, x in enumerate(self._items)
                                   if not isinstance(x, (Gap, End, _Raised)) and x is not _DONE), None)
                    if victim is not None:
                        dropped = self._items[victim]
                        del self._items[victim]
                        self.drops += 1
                        if self.on_drop is not None:
                            self.on_drop(dropped)
                        continue
                self._cond.wait(0.1)
            if self._stop:
                return False
            self._items.append(item)
            self._cond.notify_all()
            return True

    def _work(self, make: Callable[[], Iterable[Any]]) -> None:
        try:
            it = iter(make())
            try:
                for item in it:
                    if not self._put(item):
                        break
            finally:
                close = getattr(it, "close", None)
                if close is not None:
                    close()
        except BaseException as err:  # noqa: BLE001 - handed to the consumer
            self._put(_Raised(err))
            return
        self._put(_DONE)

    def __next__(self) -> Any:
        if self._finished:
            raise StopIteration
        with self._cond:
            while not self._items:
                self._cond.wait(0.1)
            item = self._items.popleft()
            self._cond.notify_all()
        if item is _DONE:
            self._finished = True
            raise StopIteration
        if isinstance(item, _Raised):
            self._finished = True
            raise item.err
        return item

    def ready(self, limit: int) -> list[Any]:
        """Up to ``limit`` more items that are queued already, without waiting (the end of the
        source and its errors are left for ``next``)."""
        out: list[Any] = []
        with self._cond:
            while len(out) < limit and self._items and self._items[0] is not _DONE \
                    and not isinstance(self._items[0], _Raised):
                out.append(self._items.popleft())
            if out:
                self._cond.notify_all()
        return out

    def close(self) -> None:
        """Stop the source thread (it closes its own iterator)."""
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        self._thread.join(timeout=10)

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter teardown
            pass


def prefetch(make: Callable[[], Iterable[T]], *, depth: int = 4, drop_oldest: bool = False,
             name: str = "streamzip-source") -> Iterator[T]:
    """Iterate ``make()`` in a background thread (see :class:`Prefetch`); stops it when closed."""
    p = Prefetch(make, depth=depth, drop_oldest=drop_oldest, name=name)
    try:
        yield from p
    finally:
        p.close()

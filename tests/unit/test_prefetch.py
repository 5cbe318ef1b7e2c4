from __future__ import annotations

import threading

import pytest

from streamzip._prefetch import Prefetch
from streamzip.packets import End, Gap


def produce(n: int, done: threading.Event, *, gap_at: int | None = None):  # type: ignore[no-untyped-def]
    for i in range(n):
        if i == gap_at:
            yield Gap("s", 0.0, 1.0)
        yield i
    done.set()
    yield End("s")


def test_file_mode_loses_nothing_and_keeps_order() -> None:
    done = threading.Event()
    assert [x for x in Prefetch(lambda: produce(50, done), depth=3) if not isinstance(x, End)] == list(range(50))


def test_live_mode_drops_the_oldest_media_never_control_packets() -> None:
    done = threading.Event()
    feed = Prefetch(lambda: produce(100, done, gap_at=50), depth=4, drop_oldest=True)
    assert done.wait(10)  # the producer never waited for the (absent) consumer
    items = list(feed)
    media = [x for x in items if isinstance(x, int)]
    assert isinstance(items[-1], End) and any(isinstance(x, Gap) for x in items)
    assert media == sorted(media) and media[-1] == 99  # the newest frames survive, in order
    assert feed.drops == 100 - len(media) and feed.drops > 90


def test_errors_reach_the_consumer() -> None:
    def bad():  # type: ignore[no-untyped-def]
        yield 1
        raise ValueError("decoder broke")

    feed = Prefetch(bad)
    assert next(feed) == 1
    with pytest.raises(ValueError, match="decoder broke"):
        next(feed)


def test_closing_early_stops_and_closes_the_source() -> None:
    closed = threading.Event()

    def endless():  # type: ignore[no-untyped-def]
        try:
            i = 0
            while True:
                yield i
                i += 1
        finally:
            closed.set()

    feed = Prefetch(endless, depth=2)
    assert next(feed) == 0
    feed.close()
    assert closed.wait(10)


def test_ready_takes_what_is_queued_without_waiting_and_leaves_the_end() -> None:
    done = threading.Event()
    feed = Prefetch(lambda: produce(5, done), depth=10)
    assert done.wait(10)  # everything queued: 0..4, End, then the end of the source
    assert next(feed) == 0
    assert feed.ready(2) == [1, 2]
    rest = feed.ready(10)  # End comes too (a packet); the end of the source stays for next()
    assert rest[:2] == [3, 4] and isinstance(rest[2], End) and len(rest) == 3
    assert feed.ready(3) == [] and list(feed) == []


def test_ready_leaves_an_error_for_next() -> None:
    def bad():  # type: ignore[no-untyped-def]
        yield 1
        yield 2
        raise ValueError("decoder broke")

    feed = Prefetch(bad, depth=10)
    assert next(feed) == 1
    while len(feed._items) < 2:  # wait until 2 and the error are queued
        threading.Event().wait(0.01)
    assert feed.ready(5) == [2]
    with pytest.raises(ValueError, match="decoder broke"):
        next(feed)

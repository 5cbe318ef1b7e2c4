"""A file source cut after its first packets: it then ends (the reference) or fails with a typed
error, for the tests that check what a runtime does with a source that fails mid-stream."""

from __future__ import annotations

from collections.abc import Iterator

from streamzip.errors import CorruptMediaError
from streamzip.packets import End, Packet
from streamzip.pipeline import Pipeline
from streamzip.runtime.local import open_source
from streamzip.stats import InputResult

#: 2 s windows over 64 px frames at 2 fps: a window is open when the source stops at packet 5
PIPELINE = (Pipeline("cut", decode={"fps": 2, "width": 64, "height": 64, "batch_frames": 1})
            .add("patch_encoder", patch_size=16).add("window", window_s=2.0))
INPUT = "lavfi:testsrc2=s=64x64:r=10:d=6"


class CutSource:
    """The first ``keep`` packets of :data:`INPUT`; then an :class:`End`, or ``CorruptMediaError``
    when ``fail``."""

    def __init__(self, result: InputResult, keep: int, fail: bool) -> None:
        self.inner = open_source(PIPELINE, INPUT, result)
        self.name, self.stream, self.stats = self.inner.name, self.inner.stream, self.inner.stats
        self.keep, self.fail = keep, fail

    def __iter__(self) -> Iterator[Packet]:
        packets = iter(self.inner)
        try:
            for _ in range(self.keep):
                yield next(packets)
        finally:
            packets.close()  # type: ignore[attr-defined]
        if self.fail:
            raise CorruptMediaError("the rest of the file is unreadable", input=self.name, stage="source",
                                    fix="re-encode the file")
        yield End(self.stream)

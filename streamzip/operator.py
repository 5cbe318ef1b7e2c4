"""The streaming operator protocol.

An operator is a small class around a kernel: ``process(packet) -> packets`` for each packet it
accepts, ``flush()`` at the end of the stream, ``on_gap(gap)`` when a live source lost time, and
``state_dict()/load_state_dict()`` for snapshots. It keeps only the state that crosses packets. The
runtime passes every packet the operator does not accept straight through, so stages of one modality
compose with stages of the other. Operators never import Ray.
"""

from __future__ import annotations

from typing import Any, ClassVar

from streamzip._version import __version__
from streamzip.config import Config
from streamzip.errors import ConfigError, Problem, SnapshotError
from streamzip.packets import AudioChunk, Gap, Packet, Tokens, VideoFrames

__all__ = ["Operator", "SNAPSHOT_FORMAT"]

#: Bumped whenever the layout of a snapshot changes incompatibly.
SNAPSHOT_FORMAT = 1


class Operator:
    """Base class of every stage (encoders and compression operators alike).

    Subclasses set :attr:`config_class`, :attr:`accepts` (packet types) and optionally
    :attr:`modalities` (for :class:`Tokens`, which modalities they take), then override
    :meth:`process` and, when they hold state, :meth:`flush`, :meth:`state_dict` and
    :meth:`load_state_dict`.
    """

    #: the registry name, set by :func:`streamzip.registry.register`.
    name: ClassVar[str] = ""
    config_class: ClassVar[type[Config]] = Config
    accepts: ClassVar[tuple[type, ...]] = (Tokens,)
    modalities: ClassVar[tuple[str, ...] | None] = None
    #: token modalities this stage creates (encoders), for pipeline validation.
    produces: ClassVar[tuple[str, ...]] = ()
    #: what one actor of this stage asks of the Ray runtime. A quarter core by default: most stages
    #: are light, and on a 2-core machine a whole core per actor would not even fit one pipeline.
    resources: ClassVar[dict[str, float]] = {"num_cpus": 0.25}
    #: whether the stage takes a text query (query-guided compression): the pipeline's ``query`` goes
    #: to its ``query`` option, and :meth:`set_query` changes it while a stream runs.
    accepts_query: ClassVar[bool] = False
    #: torch intra-op threads the stage computes with on the CPU. 1 for stages of small tensor ops:
    #: OpenMP's hand-off costs them more than it saves, and its workers spin on the cores the
    #: decoder's threads need after every op (measured: the decode-bound pipeline at 0.65x of
    #: decode-only with the process's 2 threads, 0.78x with 1). None, the default, leaves the
    #: process's setting: model forward passes, and a user's own stages. The runtimes set it around
    #: each call of the stage and restore it after (torch's setting is per thread once a thread used it).
    threads: ClassVar[int | None] = None

    def __init__(self, config: Config | None = None, *, stream: str = "", step_id: str | None = None) -> None:
        self.config = config if config is not None else self.config_class()
        if not isinstance(self.config, self.config_class):
            raise TypeError(f"{type(self).__name__} takes a {self.config_class.__name__}, "
                            f"got {type(self.config).__name__}")
        self.stream = stream
        self.step_id = step_id or self.name or type(self).__name__

    # -- routing ------------------------------------------------------------------------------
    def takes(self, packet: Packet) -> bool:
        """Whether this operator handles ``packet`` (otherwise the runtime passes it on).

        An override may only narrow what :attr:`accepts` and :attr:`modalities` declare, and a stage
        emits only packets of the types it accepts (in its modalities) and tokens of the modalities
        it :attr:`produces` (gaps and ends come from the source only, passed on, never made by a
        stage): the Ray runtime routes by those declarations, so that a big packet skips
        the actors that cannot take it and a batch skips an actor with nothing in it for its stages."""
        if not isinstance(packet, self.accepts):
            return False
        if self.modalities is not None and isinstance(packet, (Tokens, VideoFrames, AudioChunk)):
            return packet.modality in self.modalities
        return True

    # -- the protocol ------------------------------------------------------------------------
    def process(self, packet: Packet) -> list[Packet]:
        raise NotImplementedError

    def flush(self) -> list[Packet]:
        """Emit whatever is pending; called once at the end of the stream."""
        return []

    def on_gap(self, gap: Gap) -> list[Packet]:
        """Called when a live source lost time. By default nothing merges across a gap: pending
        state is flushed and the gap is passed on."""
        return [*self.flush(), gap]

    def set_query(self, text: str | None) -> None:
        """Weight what follows by relevance to ``text`` (None: no query). Only stages with
        :attr:`accepts_query` take one; they apply it from the next packet on."""
        raise ConfigError([Problem("query", f"stage {self.step_id!r} ({type(self).__name__}) takes no query")])

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume, as tensors and plain values."""
        return {}

    def report(self) -> dict[str, Any]:
        """Plain data about what this stage did, for the manifest and ``streamzip inspect`` (e.g.
        the speech segments a VAD found). Asked once, at the end of the stream."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state:
            raise SnapshotError(f"{type(self).__name__} is stateless but got state keys {sorted(state)}",
                                stage=self.step_id)

    # -- snapshots with a header -------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        """``state_dict()`` plus a header naming the operator, its config and the versions."""
        return {
            "operator": self.name or type(self).__name__,
            "config": self.config.to_dict(),
            "format": SNAPSHOT_FORMAT,
            "streamzip": __version__,
            "state": self.state_dict(),
        }

    def restore(self, snapshot: dict[str, Any]) -> None:
        """Load a :meth:`snapshot`; raise :class:`SnapshotError` naming any mismatch."""
        want: dict[str, Any] = {"operator": self.name or type(self).__name__, "config": self.config.to_dict(),
                "format": SNAPSHOT_FORMAT}
        for key, expected in want.items():
            got = snapshot.get(key)
            if got != expected:
                if key == "config" and isinstance(got, dict):
                    diff = {k: (got.get(k), expected.get(k)) for k in set(got) | set(expected)
                            if got.get(k) != expected.get(k)}
                    detail = ", ".join(f"{k}: snapshot {a!r} vs now {b!r}" for k, (a, b) in sorted(diff.items()))
                else:
                    detail = f"snapshot {got!r} vs now {expected!r}"
                raise SnapshotError(f"snapshot does not match this operator's {key} ({detail})",
                                    stage=self.step_id,
                                    fix="resume with the same pipeline and version that wrote the snapshot")
        self.load_state_dict(snapshot["state"])

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.config!r})"

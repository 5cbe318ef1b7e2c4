"""Counters of a run: per source, per stage and per input, for progress bars, summaries and metrics."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["InputResult", "SourceStats", "StageStats"]


@dataclass
class SourceStats:
    """What the source saw; the run summary shows it."""

    frames_decoded: int = 0
    frames_sampled: int = 0
    audio_samples: int = 0
    corrupt_packets: int = 0
    pts_fixed: int = 0
    truncated: bool = False
    duration_s: float = 0.0
    streams: list[str] = field(default_factory=list)


@dataclass
class StageStats:
    """What one stage saw and did for one input."""

    step_id: str
    op: str
    packets_in: int = 0
    frames_in: int = 0
    tokens_in: int = 0
    tokens_out: int = 0
    seconds: float = 0.0
    restarts: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class InputResult:
    """The outcome of one input: counts, or the error that stopped it."""

    input: str
    stream: str
    ok: bool = True
    error: str | None = None
    error_type: str | None = None
    stage: str | None = None
    media_s: float = 0.0
    frames: int = 0
    audio_s: float = 0.0
    tokens_in: int = 0
    tokens_out: int = 0
    fidelity: float | None = None
    wall_s: float = 0.0
    corrupt_packets: int = 0
    output: str | None = None
    skipped: bool = False
    restarts: int = 0
    drops: int = 0
    max_queue_depth: int = 0
    #: each stage's :meth:`~streamzip.operator.Operator.report`, by step id (non-empty ones only).
    reports: dict[str, Any] = field(default_factory=dict)
    stages: list[StageStats] = field(default_factory=list)

    @property
    def reduction(self) -> float | None:
        """Fraction of the encoder's tokens removed (0.9 = ten times fewer)."""
        if not self.tokens_in:
            return None
        return 1.0 - self.tokens_out / self.tokens_in

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["reduction"] = self.reduction
        return d
